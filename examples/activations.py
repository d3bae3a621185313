"""A tiny 'library' whose functions are already compiled, the way users write them."""

from __future__ import annotations

import math

import mlx.core as mx


@mx.compile
def gelu(x: mx.array) -> mx.array:
    """GELU with erf: nine primitives eager, one fused kernel compiled."""
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


@mx.compile
def silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


@mx.compile
def rms_norm(x: mx.array, weight: mx.array, eps: float = 1e-5) -> mx.array:
    return x * mx.rsqrt(mx.mean(mx.square(x), axis=-1, keepdims=True) + eps) * weight
