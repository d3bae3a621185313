"""Correct under every mode, and `--mlx-timings` flags it: compiling one op buys nothing."""

from __future__ import annotations

import mlx.core as mx
import pytest
from projection import project


@pytest.mark.compiled
def test_projection_matches_a_plain_matmul():
    x, w = mx.random.normal((64, 128)), mx.random.normal((128, 32))
    assert mx.allclose(project(x, w), x @ w, atol=1e-4)
