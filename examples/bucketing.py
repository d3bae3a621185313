"""Bucket padding: keep a shape-dependent compiled function to a handful of traces.

Compiled MLX graphs are specialised to input shapes (unless ``shapeless=True``), so a function fed
every sequence length traces once per length. Padding to a few bucket sizes bounds the traces;
a mask keeps padded positions out of the result.
"""

from __future__ import annotations

import mlx.core as mx

BUCKETS = (16, 32, 64)


def bucket_for(length: int) -> int:
    for size in BUCKETS:
        if length <= size:
            return size
    raise ValueError(f"sequence of length {length} is longer than the largest bucket {BUCKETS[-1]}")


@mx.compile
def masked_mean(x: mx.array, mask: mx.array) -> mx.array:
    """Mean over the valid positions of each row of a padded (batch, length) array."""
    return (x * mask).sum(axis=-1) / mask.sum(axis=-1)


def padded_mean(x: mx.array) -> mx.array:
    batch, length = x.shape
    size = bucket_for(length)
    pad = mx.zeros((batch, size - length), dtype=x.dtype)
    mask = mx.concatenate([mx.ones((batch, length)), mx.zeros((batch, size - length))], axis=1)
    return masked_mean(mx.concatenate([x, pad], axis=1), mask)
