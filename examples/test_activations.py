"""Clean compiled functions: every variant passes, and parity is checked on every call."""

from __future__ import annotations

import mlx.core as mx
import pytest
from activations import gelu, rms_norm, silu


@pytest.mark.compiled
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16], ids=str)
def test_gelu_is_zero_at_zero_and_odd_around_the_identity(dtype):
    x = mx.linspace(-3, 3, 64).astype(dtype).reshape(8, 8)
    y = gelu(x)
    assert y.dtype == dtype
    assert abs(gelu(mx.zeros((1,), dtype=dtype)).item()) == 0.0
    # gelu(x) - gelu(-x) == x
    assert mx.allclose((y - gelu(-x)).astype(mx.float32), x.astype(mx.float32), atol=5e-2)


@pytest.mark.compiled
def test_silu_matches_its_definition_at_several_shapes():
    for shape in [(4,), (3, 5), (2, 3, 4)]:
        x = mx.random.normal(shape)
        assert mx.allclose(silu(x), x / (1 + mx.exp(-x)), atol=1e-6)


@pytest.mark.compiled
def test_rms_norm_gives_unit_root_mean_square():
    x = mx.random.normal((4, 32))
    y = rms_norm(x, mx.ones((32,)))
    assert mx.allclose(mx.sqrt(mx.mean(y * y, axis=-1)), mx.ones((4,)), atol=1e-3)
