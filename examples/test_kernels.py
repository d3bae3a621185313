"""Custom kernels run where their backend exists; elsewhere the plugin skips with the reason."""

from __future__ import annotations

import mlx.core as mx
import pytest
from kernels import softplus_fast


@pytest.mark.compiled
def test_a_custom_exp_kernel_matches_mx_exp_inside_a_compiled_function():
    x = mx.linspace(-4, 4, 1024)
    assert mx.allclose(softplus_fast(x), mx.log1p(mx.exp(x)), atol=1e-5)
