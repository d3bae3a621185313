"""The examples are real suites: run them under the matrix and check what they report."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_examples_pass_except_the_pitfalls_which_fail_in_compiled_variants(pytester, run):
    for path in EXAMPLES.glob("*.py"):
        pytester.makepyfile(**{path.stem: path.read_text()})
    result = run("--mlx-compile-matrix", "-v", "-rs")
    mx = pytest.importorskip("mlx.core")
    gpu = mx.cuda.is_available() or mx.metal.is_available()
    # the custom-kernel example runs where a GPU backend exists and skips elsewhere
    result.assert_outcomes(passed=25 + 3 * gpu, failed=2, skipped=1 + 3 * (not gpu))
    result.stdout.fnmatch_lines_random(
        [
            "*test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]eager[]] PASSED*",
            "*test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]compiled[]] FAILED*",
            "*test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]shapeless[]] FAILED*",
            "*test_training.py::test_a_compiled_training_step_lowers_the_loss[[]compiled[]] PASSED*",
            "SKIPPED [[]1[]] test_training.py:*: make_step.<locals>.step (training.py:*) is not "
            "shapeless-capable: *RandomBits cannot infer output shapes*",
            "E *StaleCaptureError: apply_scale [[]compiled[]] call 2 reused a graph traced with "
            "global 'scale' in test_pitfalls.py (scale) frozen in, and it has changed since",
        ]
    )
