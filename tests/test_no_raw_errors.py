"""No run of ours shows a raw MLX RuntimeError out of pytest_mlxcompile/ (issue 10).

``conftest.run`` greps every pytester run of the suite for one (``raw_errors``); this test runs the
programs that used to produce them, all together, with the checks that evaluated them."""

from __future__ import annotations

import pytest
from conftest import GPU, raw_errors

CORPUS = {
    "test_placeholder_state": """
        from functools import partial

        import mlx.core as mx
        import pytest

        state = [mx.zeros((2,))]

        @partial(mx.compile, inputs=state)
        def step(x):
            state[0] = state[0] + x
            return x * 2

        @pytest.mark.compiled
        def test_step():
            step(mx.ones((2,)))
        """,
    "test_generator": """
        import mlx.core as mx
        import pytest

        @mx.compile
        def gen(x):
            yield x * 2

        @pytest.mark.compiled
        def test_generator():
            next(gen(mx.ones((2,))))
        """,
    "test_float16_gather": """
        import mlx.core as mx
        import pytest

        @mx.compile
        def act(x):
            return x * mx.sigmoid(x)

        @pytest.mark.compiled
        def test_shapes_only():
            x = mx.ones((1, 1, 4), dtype=mx.float16)
            w = mx.ones((2, 4, 4), dtype=mx.float16)
            assert act(mx.gather_mm(x, w, rhs_indices=mx.array([1]))).shape == (1, 1, 4)
        """,
}


@pytest.mark.skipif(GPU, reason="the float16 GatherMM refusal is the CPU backend's")
def test_programs_whose_results_mlx_refuses_give_diagnoses_not_raw_runtime_errors(pytester):
    pytester.makepyfile(**CORPUS)
    result = pytester.runpytest_subprocess(
        "-p", "mlxcompile", "-p", "no:cacheprovider", "--mlx-sanitize=off", "-rfs"
    )
    assert raw_errors(result) == []
    result.assert_outcomes(passed=1, failed=2, warnings=1)
    result.stdout.fnmatch_lines_random(
        [
            "E *PlaceholderLeakError: step [[]compiled[]] call 1: the compiled call left a "
            "placeholder array at inputs[[]0[]]: *",
            "E *ParityError: gen [[]compiled[]] call 1: gen is a generator function, and "
            "mx.compile cannot compile a generator",
            "*PytestWarning: pytest-mlxcompile: act [[]compiled[]] call 1: parity not checked: *"
            "MLX says at out: [[]GatherMM::eval[]] Currently only supports float32.*",
        ]
    )
