"""Bugs compile introduces and eager code never has: the plugin must catch each one.

Run ``pytest examples --mlx-compile-matrix``: [eager] passes, [compiled] and [shapeless] are
expected failures (``@pytest.mark.pitfall``, see conftest.py) whose diagnosis the summary prints.
``--runxfail`` shows them as plain failures with the whole message.
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from pytest_mlxcompile import StaleCaptureError

scale = mx.array([1.0, 2.0, 3.0])


@mx.compile
def apply_scale(x: mx.array) -> mx.array:
    # Reads the global `scale` without declaring it: the graph freezes its value at trace time.
    return x * scale


@pytest.mark.compiled
@pytest.mark.pitfall(raises=StaleCaptureError, reason="a global frozen at trace time")
def test_an_undeclared_global_reassigned_between_calls_goes_stale():
    global scale
    original = scale
    try:
        x = mx.ones((3,))
        assert apply_scale(x).tolist() == [1.0, 2.0, 3.0]
        scale = mx.array([10.0, 20.0, 30.0])
        assert apply_scale(x).tolist() == [10.0, 20.0, 30.0]
    finally:
        scale = original
