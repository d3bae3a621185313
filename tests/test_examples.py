"""The examples are real suites: run them under the matrix and check what they report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import GPU

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CAUGHT = (
    "  pytest_mlxcompile.errors.StaleCaptureError: apply_scale [[]{mode}[]] call 2 reused a graph "
    "traced with global 'scale' in test_pitfalls.py (scale) frozen in, and it has changed since"
)


@pytest.fixture
def examples(pytester: pytest.Pytester) -> pytest.Pytester:
    """The example suite, its conftest.py and pytest.ini copied into a fresh directory."""
    for path in EXAMPLES.glob("*.py"):
        pytester.makepyfile(**{path.stem: path.read_text()})
    pytester.makefile(".ini", pytest=(EXAMPLES / "pytest.ini").read_text())
    return pytester


@pytest.mark.usefixtures("examples")
def test_the_examples_end_green_and_print_each_pitfall_the_plugin_caught(run):
    result = run("--mlx-compile-matrix", "-v")
    # the custom-kernel example runs where a GPU backend exists and skips elsewhere
    result.assert_outcomes(passed=25 + 3 * GPU, xfailed=2, skipped=1 + 3 * (not GPU))
    assert result.ret == 0
    result.stdout.fnmatch_lines_random(
        [
            "*test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]eager[]] PASSED*",
            "*test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]compiled[]] XFAIL*",
            "*test_training.py::test_a_compiled_training_step_lowers_the_loss[[]compiled[]] PASSED*",
            "SKIPPED [[]1[]] test_training.py:*: make_step.<locals>.step (training.py:*) is not "
            "shapeless-capable: *RandomBits cannot infer output shapes*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= pitfalls caught as documented (expected failures) =*",
            "test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]compiled[]]",
            CAUGHT.format(mode="compiled"),
            "    fix: pass it to apply_scale as an argument, or declare it: *",
            "test_pitfalls.py::test_an_undeclared_global_reassigned_between_calls_goes_stale"
            "[[]shapeless[]]",
            CAUGHT.format(mode="shapeless"),
            "*",
            "(add --runxfail to see them as failures with tracebacks)",
            "*= short test summary info =*",
        ]
    )


@pytest.mark.usefixtures("examples")
def test_with_runxfail_the_pitfalls_fail_with_the_whole_diagnosis(run):
    result = run("--mlx-compile-matrix", "--runxfail", "test_pitfalls.py")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E *.StaleCaptureError: apply_scale [[]compiled[]] call 2 reused a graph traced with "
            "global 'scale' in test_pitfalls.py (scale) frozen in, and it has changed since",
        ]
    )
    result.stdout.no_fnmatch_line("*pitfalls caught as documented*")


@pytest.mark.usefixtures("examples")
def test_a_pitfall_caught_as_another_error_than_documented_fails_the_run(run):
    # with the sanitizer off, parity still catches the stale global, as a plain ParityError
    result = run("--mlx-compile-matrix", "--mlx-sanitize=off", "test_pitfalls.py")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["E *.ParityError: apply_scale [[]compiled[]] call 2 differs *"])
