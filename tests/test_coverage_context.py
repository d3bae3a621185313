"""--mlx-cov-context: coverage.py records which lines ran in which mode, and which only while
MLX traced. Each test runs a real coverage measurement and reads its data file back.

Checks that run the Python body eagerly (the parity shadow, the shapeless probe) count under
``<mode>`` too, so the tests that show "only while tracing" switch them off."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

coverage = pytest.importorskip("coverage")
pytest.importorskip("pytest_cov")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

LIB = """
import mlx.core as mx

@mx.compile
def double(x):
    return x * 2
"""

SUITE = """
import mlx.core as mx
import pytest
from lib import double

@pytest.mark.compiled
def test_double():
    assert double(mx.ones(3)).tolist() == [2.0, 2.0, 2.0]
"""

# the lines of ``return x * 2`` in LIB and of the call in SUITE (makepyfile strips the first \n)
BODY_LINE = LIB.strip().splitlines().index("    return x * 2") + 1
TEST_LINE = (
    SUITE.strip().splitlines().index("    assert double(mx.ones(3)).tolist() == [2.0, 2.0, 2.0]")
    + 1
)


def _contexts(data_file: Path, name: str) -> dict[int, set[str]]:
    data = coverage.CoverageData(str(data_file))
    data.read()
    (path,) = [f for f in data.measured_files() if Path(f).as_posix().endswith("/" + name)]
    return {line: set(contexts) for line, contexts in data.contexts_by_lineno(path).items()}


def test_with_pytest_cov_a_compiled_body_runs_in_eager_and_only_while_tracing_otherwise(
    pytester, run
):
    pytester.makepyfile(lib=LIB, test_lib=SUITE)
    result = run(
        "--mlx-compile-matrix",
        "--mlx-parity=off",
        "--mlx-sanitize=off",
        "--mlx-cov-context",
        "--cov=.",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*lib.py*100%*"])
    contexts = _contexts(pytester.path / ".coverage", "lib.py")
    assert contexts[BODY_LINE] == {
        "test_lib.py::test_double[eager]|eager",
        "test_lib.py::test_double[compiled]|compiled|trace",
        "test_lib.py::test_double[shapeless]|shapeless|trace",
    }
    test_line = _contexts(pytester.path / ".coverage", "test_lib.py")[TEST_LINE]
    assert test_line == {
        "test_lib.py::test_double[eager]|eager",
        "test_lib.py::test_double[compiled]|compiled",
        "test_lib.py::test_double[shapeless]|shapeless",
    }


def test_with_pytest_cov_and_xdist_workers_the_contexts_are_the_same(pytester, run):
    # pytest-cov starts a worker's coverage only at session start, after pytest_configure
    pytester.makepyfile(lib=LIB, test_lib=SUITE)
    result = run(
        "-n", "2", "--mlx-compile-matrix", "--mlx-parity=off", "--mlx-sanitize=off",
        "--mlx-cov-context", "--cov=.",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    contexts = _contexts(pytester.path / ".coverage", "lib.py")
    assert contexts[BODY_LINE] == {
        "test_lib.py::test_double[eager]|eager",
        "test_lib.py::test_double[compiled]|compiled|trace",
        "test_lib.py::test_double[shapeless]|shapeless|trace",
    }


def test_under_coverage_run_the_contexts_are_the_same(pytester):
    pytester.makepyfile(lib=LIB, test_lib=SUITE)
    args = ["-m", "pytest", "-p", "mlxcompile", "-p", "no:cacheprovider", "-p", "no:cov"]
    result = pytester.run(
        sys.executable,
        "-m",
        "coverage",
        "run",
        *args,
        "--mlx-compile-matrix",
        "--mlx-parity=off",
        "--mlx-sanitize=off",
        "--mlx-cov-context",
    )
    result.assert_outcomes(passed=3)
    contexts = _contexts(pytester.path / ".coverage", "lib.py")
    assert contexts[BODY_LINE] == {
        "test_lib.py::test_double[eager]|eager",
        "test_lib.py::test_double[compiled]|compiled|trace",
        "test_lib.py::test_double[shapeless]|shapeless|trace",
    }


def test_the_examples_run_yields_contexts_for_every_mode(pytester, run):
    shutil.copytree(EXAMPLES, pytester.path / "examples")
    result = run("examples", "--mlx-compile-matrix", "--mlx-cov-context", "--cov=examples")
    assert result.ret == pytest.ExitCode.OK  # the pitfalls are expected failures (xfail)
    result.stdout.fnmatch_lines(["*examples/activations.py*"])
    data = coverage.CoverageData(str(pytester.path / ".coverage"))
    data.read()
    endings = {context.rsplit("|", 1)[-1] for context in data.measured_contexts() if context}
    assert {"eager", "compiled", "shapeless", "trace"} <= endings
    gelu = _contexts(pytester.path / ".coverage", "examples/activations.py")[13]
    assert {c.rsplit("|", 1)[-1] for c in gelu} == {"eager", "compiled", "shapeless", "trace"}


def test_mlx_cov_context_with_pytest_cov_context_is_a_usage_error(pytester, run):
    pytester.makepyfile(lib=LIB, test_lib=SUITE)
    result = run("--mlx-cov-context", "--cov=.", "--cov-context=test")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-mlxcompile: --mlx-cov-context and pytest-cov's --cov-context=test "
            "both set coverage's dynamic context; use one: --mlx-cov-context gives "
            "'<nodeid>|<mode>' (and '|trace'), --cov-context=test gives '<nodeid>|<phase>'"
        ]
    )


def test_mlx_cov_context_with_a_dynamic_context_setting_is_a_usage_error(pytester, run):
    pytester.makepyfile(lib=LIB, test_lib=SUITE)
    (pytester.path / ".coveragerc").write_text("[run]\ndynamic_context = test_function\n")
    result = run("--mlx-cov-context", "--cov=.")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-mlxcompile: --mlx-cov-context and coverage's setting "
            "dynamic_context = test_function both set coverage's dynamic context; remove "
            "dynamic_context from the coverage config (.coveragerc / pyproject.toml "
            "[[]tool.coverage.run[]]) or drop --mlx-cov-context"
        ]
    )


def test_mlx_cov_context_without_coverage_running_is_a_usage_error(pytester, run, monkeypatch):
    # CI measures every subprocess through COVERAGE_PROCESS_START: this run must have none
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    pytester.makepyfile(lib=LIB, test_lib=SUITE)
    result = run("--mlx-cov-context", "-p", "no:cov")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-mlxcompile: --mlx-cov-context needs coverage.py measuring this "
            "process: run 'coverage run -m pytest ...' or add pytest-cov's --cov=SOURCE"
        ]
    )
