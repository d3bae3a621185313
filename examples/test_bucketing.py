"""Many sequence lengths, few traces: the bucket-padding pattern under every mode."""

from __future__ import annotations

import mlx.core as mx
import pytest
from bucketing import BUCKETS, bucket_for, padded_mean


@pytest.mark.compiled
def test_padded_mean_equals_the_plain_mean_for_every_length():
    for length in range(1, 60, 7):
        x = mx.random.normal((3, length))
        assert mx.allclose(padded_mean(x), x.mean(axis=-1), atol=1e-5)


def test_lengths_map_to_the_smallest_bucket_that_fits():
    assert [bucket_for(n) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        bucket_for(BUCKETS[-1] + 1)
