"""A pytest plugin for ``benchmarks/run.py --device``: MLX's default device in each child run.

MLX reads no environment variable for its default device, so ``run.py`` loads this module with
``-p benchmarks._device`` in every pytest process it starts, on both sides of every ratio.
"""

from __future__ import annotations

import os

import pytest

VARIABLE = "MLXCOMPILE_BENCH_DEVICE"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get(VARIABLE)
    if name:
        import mlx.core as mx

        mx.set_default_device(getattr(mx, name))  # mx.cpu / mx.gpu
