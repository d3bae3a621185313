"""A custom GPU kernel with a Metal and a CUDA source, picked by the backend MLX runs on."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

_METAL = """
    uint elem = thread_position_in_grid.x;
    out[elem] = metal::exp(inp[elem]);
"""
_CUDA = """
    auto elem = cooperative_groups::this_grid().thread_rank();
    out[elem] = exp(inp[elem]);
"""


def _kernel() -> Any:
    if mx.cuda.is_available():
        return mx.fast.cuda_kernel(
            name="fast_exp", input_names=["inp"], output_names=["out"], source=_CUDA
        )
    # Metal, or no GPU backend at all: then the call raises "[metal_kernel] No Metal back-end"
    return mx.fast.metal_kernel(
        name="fast_exp", input_names=["inp"], output_names=["out"], source=_METAL
    )


def fast_exp(x: mx.array) -> mx.array:
    (out,) = _kernel()(
        inputs=[x],
        grid=(x.size, 1, 1),
        threadgroup=(min(x.size, 256), 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )
    return out


@mx.compile
def softplus_fast(x: mx.array) -> mx.array:
    return mx.log1p(fast_exp(x))
