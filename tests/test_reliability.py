"""No lost report or baseline, and every bad input a clear error (issue 11).

Interrupts and worker crashes run in subprocesses: they end the process they happen in.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from schema_check import validate

#: A traceback entry in our code, in pytest's (`path:line: in f`) or Python's form.
OUR_FRAME = re.compile(r'pytest_mlxcompile/\w+\.py:\d+: in |File "[^"]*pytest_mlxcompile/')

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "pytest_mlxcompile" / "report.schema.json").read_text()
)

SUITE = """
import os, signal
import mlx.core as mx
import pytest


@mx.compile
def f(x):
    return x * 2 + 1

@pytest.mark.compiled
@pytest.mark.parametrize("i", range(4))
def test_many(i):
    assert f(mx.ones((3,))).tolist() == [3.0] * 3
    if i == 2 and os.environ.get("MLX_TEST_INTERRUPT"):
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
    if i == 2 and os.environ.get("MLX_TEST_EXIT") and mx.default_device() is not None:
        os._exit(7)  # a worker that dies mid-test
"""


def _no_traceback(result: pytest.RunResult) -> None:
    text = "\n".join(result.outlines + result.errlines)
    assert "INTERNALERROR" not in text
    assert not OUR_FRAME.search(text), text


def _temp_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob(".mlx-report*"))


# one file for report and baseline --------------------------------------------------------------
@pytest.mark.parametrize("via", ["command line", "ini twin"])
def test_a_report_written_over_its_own_baseline_is_refused_at_start_up(pytester, run, via):
    pytester.makepyfile(SUITE)
    run("--mlx-report-json=base.json").assert_outcomes(passed=4)
    before = (pytester.path / "base.json").read_bytes()
    if via == "ini twin":
        pytester.makeini("[pytest]\nmlx_report_json = ./base.json\n")
        result = run("--mlx-compare=base.json")
        named = "mlx_report_json (ini file)='./base.json'"
    else:
        result = run("--mlx-compare=base.json", "--mlx-report-json=./base.json")
        named = "--mlx-report-json='./base.json'"
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-mlxcompile: {named} and --mlx-compare='base.json' are the same "
            "file: this run would overwrite its own baseline (even when the gate fails). Write "
            "the report elsewhere (e.g. --mlx-report-json=new.json) and replace the baseline "
            "deliberately when the run is good"
        ]
    )
    assert (pytester.path / "base.json").read_bytes() == before


# interrupts ------------------------------------------------------------------------------------
def test_an_interrupted_run_keeps_the_previous_report_and_writes_its_own_beside_it(
    pytester, run, monkeypatch
):
    pytester.makepyfile(SUITE)
    full = run("--mlx-compile-matrix", "--mlx-report-json=out/r.json")
    full.assert_outcomes(passed=12)
    before = (pytester.path / "out" / "r.json").read_bytes()
    monkeypatch.setenv("MLX_TEST_INTERRUPT", "1")
    result = run("--mlx-compile-matrix", "--mlx-report-json=out/r.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "mlx report: this run is incomplete (interrupted, exit status 2): kept the previous "
            "out/r.json; this run's 6 test variants are in out/r.partial.json",
            "*6 passed*",
        ]
    )
    assert (pytester.path / "out" / "r.json").read_bytes() == before
    assert json.loads(before)["run"] | {"workers": 1} == json.loads(before)["run"]
    partial = json.loads((pytester.path / "out" / "r.partial.json").read_text())
    assert validate(partial, SCHEMA) == []
    run_end = {k: partial["run"][k] for k in ("exitstatus", "interrupted", "complete")}
    assert run_end == {"exitstatus": 2, "interrupted": True, "complete": False}
    assert len(partial["tests"]) == 6
    assert json.loads(before)["run"]["complete"] is True
    assert _temp_files(pytester.path) == []


def test_an_interrupted_run_with_no_previous_report_writes_it_marked_incomplete(
    pytester, run, monkeypatch
):
    pytester.makepyfile(SUITE)
    monkeypatch.setenv("MLX_TEST_INTERRUPT", "1")
    result = run("--mlx-report-json=r.json")
    result.stdout.fnmatch_lines(
        ["mlx report: r.json (2 test variants; incomplete: interrupted, exit status 2)"]
    )
    doc = json.loads((pytester.path / "r.json").read_text())
    assert (doc["run"]["interrupted"], doc["run"]["complete"]) == (True, False)


def test_a_run_stopped_by_exitfirst_is_incomplete_and_keeps_the_previous_report(pytester, run):
    first = "import pytest\n\n@pytest.mark.compiled\ndef test_a_fail():\n    assert False\n"
    pytester.makepyfile(first + SUITE)
    run("--mlx-report-json=r.json").assert_outcomes(passed=4, failed=1)
    result = run("-x", "--mlx-report-json=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "mlx report: this run is incomplete (stopped early, exit status 1): kept the "
            "previous r.json; this run's 1 test variants are in r.partial.json"
        ]
    )
    assert len(json.loads((pytester.path / "r.json").read_text())["tests"]) == 5


def test_a_run_stopped_by_exitfirst_keeps_the_previous_html_page_too(pytester, run):
    first = "import pytest\n\n@pytest.mark.compiled\ndef test_a_fail():\n    assert False\n"
    pytester.makepyfile(first + SUITE)
    run("--mlx-report-html=r.html").assert_outcomes(passed=4, failed=1)
    before = (pytester.path / "r.html").read_text()
    result = run("-x", "--mlx-report-html=r.html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["mlx report: r.partial.html (HTML, 1 test variants)"])
    assert (pytester.path / "r.html").read_text() == before


# xdist worker crashes --------------------------------------------------------------------------
def test_a_crashed_xdist_worker_s_test_is_recorded_as_crashed_with_its_id(
    pytester, run, monkeypatch
):
    pytester.makepyfile(SUITE)
    monkeypatch.setenv("MLX_TEST_EXIT", "1")
    result = run(
        "-n", "2", "--mlx-compile-matrix", "--mlx-modes=compiled", "--mlx-report-json=r.json"
    )
    result.assert_outcomes(passed=3, failed=1)
    doc = json.loads((pytester.path / "r.json").read_text())
    assert validate(doc, SCHEMA) == []
    crashed = [(t["nodeid"], t["mode"]) for t in doc["tests"] if t["outcome"] == "crashed"]
    assert crashed == [
        (
            "test_a_crashed_xdist_worker_s_test_is_recorded_as_crashed_with_its_id.py::test_many[2-compiled]",
            "compiled",
        )
    ]
    (lost,) = doc["run"]["lost_workers"]
    assert lost.startswith("gw")
    assert lost.endswith(" while running " + crashed[0][0])
    assert len(doc["tests"]) == 4


# report paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "missing/../r.json",
            "'missing' does not exist, so '..' after it cannot be resolved; give the path "
            "without it, e.g. 'r.json'",
        ),
        ("data.txt/r.json", "'data.txt' is a file, not a folder"),
        ("/proc/r.json", "No such file or directory ('/proc')"),
    ],
)
def test_a_report_path_that_cannot_be_written_is_a_usage_error_at_start_up(
    pytester, run, path, message
):
    pytester.makepyfile(SUITE)
    pytester.makefile(".txt", data="not a folder")
    result = run(f"--mlx-report-json={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-mlxcompile: --mlx-report-json={path!r}: cannot write a report there: {message}"
        ]
    )
    assert _temp_files(pytester.path) == []
    assert not (pytester.path / "missing").exists()


def test_a_report_that_fails_to_write_at_the_end_is_an_error_line_and_the_result_stays(
    pytester, run
):
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.compiled
        def test_takes_the_folder():
            with open("out", "w") as handle:  # where the report's folder was to be created
                handle.write("in the way")
        """
    )
    result = run("--mlx-report-json=out/r.json")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "mlx report: ERROR: could not write out/r.json: *File exists*; no report was written",
            "*1 passed*",
        ]
    )
    _no_traceback(result)
    assert _temp_files(pytester.path) == []


# bad baselines ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timed_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One real report with a timing, made once for the baseline cases."""
    folder = tmp_path_factory.mktemp("timed")
    (folder / "test_timed.py").write_text(
        "import mlx.core as mx\nimport pytest\n\n@mx.compile\ndef gelu(x):\n    return x * 2\n\n"
        "@pytest.mark.compiled(timings=True)\ndef test_gelu():\n    gelu(mx.ones((8,)))\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "mlxcompile",
            "-p",
            "no:cacheprovider",
            "--mlx-timings-budget=0.02",
            "--mlx-report-json=base.json",
            "test_timed.py",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    return json.loads((folder / "base.json").read_text())


def _timing(doc):
    return doc["tests"][0]["timings"][0]


BAD_BASELINES = {
    "null median": (
        lambda d: _timing(d)["modes"]["compiled"]["stats"].update(median=None),
        "field tests[0].timings[0].modes.compiled.stats.median: None is not of type 'number'",
    ),
    "string median": (
        lambda d: _timing(d)["modes"]["compiled"]["stats"].update(median="fast"),
        "field tests[0].timings[0].modes.compiled.stats.median: 'fast' is not of type 'number'",
    ),
    "zero medians": (
        lambda d: [
            m["stats"].update(min=0.0, median=0.0, q1=0.0, q3=0.0)
            for m in _timing(d)["modes"].values()
        ],
        "field tests[0].timings[0].modes.eager.stats.min: 0.0 is not a time > 0",
    ),
    "null paired ratio": (
        lambda d: _timing(d)["modes"]["compiled"].update(paired_ratio={"q1": None, "q3": None}),
        "field tests[0].timings[0].modes.compiled.paired_ratio.q1: None is not of type 'number'",
    ),
    "machine null": (
        lambda d: d.update(machine=None),
        "field machine: None is not of type 'object'",
    ),
    "machine list": (
        lambda d: d.update(machine=[1, 2]),
        "field machine: [[]1, 2[]] is not of type 'object'",
    ),
    "not a report": (lambda d: d.update(schema="other"), "'schema' is 'other', not *"),
}


@pytest.mark.parametrize("case", [*BAD_BASELINES, "deeply nested", "not JSON"])
def test_a_bad_baseline_is_a_usage_error_naming_the_file_and_field(
    pytester, run, timed_report, case
):
    pytester.makepyfile("def test_x(): pass")
    path = pytester.path / "bad.json"
    if case == "deeply nested":
        path.write_text("[" * 100000 + "]" * 100000)
        message = "nested too deeply to be a report"
    elif case == "not JSON":
        path.write_text('{"schema": ')
        message = "not JSON (Expecting value: line 1 column 12 (char 11))"
    else:
        mutate, message = BAD_BASELINES[case]
        doc = copy.deepcopy(timed_report)
        mutate(doc)
        path.write_text(json.dumps(doc))
    result = run("--mlx-compare=bad.json", "--mlx-compare-fail=speedup:10%,compiled.median:5%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-mlxcompile: --mlx-compare='bad.json' is not a report saved by --mlx-report-json: {message}"
        ]
    )
    _no_traceback(result)


def test_a_report_this_plugin_wrote_is_a_valid_baseline(pytester, run, timed_report):
    pytester.makepyfile("def test_x(): pass")
    (pytester.path / "base.json").write_text(json.dumps(timed_report))
    result = run("--mlx-compare=base.json", "--mlx-compare-fail=speedup:10%")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mlxcompile: comparing timings with base.json (saved *)"])


# markers on parametrize cases, and hook wrappers ------------------------------------------------
def test_a_case_s_own_compiled_marker_narrows_its_modes_in_the_matrix(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.parametrize(
            "case",
            [
                pytest.param("broken", marks=pytest.mark.compiled(modes=["eager"]), id="broken"),
                pytest.param("fine", marks=pytest.mark.compiled, id="fine"),
            ],
        )
        def test_case(case, mlx_mode):
            assert case == "fine" or mlx_mode == "eager"
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=4, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*collected 6 items / 2 deselected / 4 selected",
            "*test_case[[]broken-eager[]] PASSED*",
            "*test_case[[]fine-eager[]] PASSED*",
            "*test_case[[]fine-compiled[]] PASSED*",
            "*test_case[[]fine-shapeless[]] PASSED*",
        ]
    )
    result.stdout.no_fnmatch_line("*broken-compiled*")


def test_variants_a_case_excludes_count_as_deselected_only_when_the_user_selected_them(
    pytester, run
):
    pytester.makepyfile(
        test_sel="""
        import pytest

        @pytest.mark.parametrize(
            "case", [pytest.param("eager only", marks=pytest.mark.compiled(modes=["eager"]))]
        )
        def test_case(case):
            pass

        def test_other():
            pass
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all", "-v", "test_sel.py::test_other")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*collected 3 items"])
    result.stdout.no_fnmatch_line("*collected 3 items / *")  # nothing deselected
    result = run("--mlx-compile-matrix", "-v", "-k", "test_case and not shapeless")
    # -k deselects two (shapeless, test_other), the case's modes= one (compiled)
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(
        [
            "*collected 4 items / 3 deselected / 1 selected",
            "*test_case[[]eager only-eager[]] PASSED*",
        ]
    )


def test_a_case_marked_compiled_puts_its_test_in_the_matrix_without_a_function_marker(
    pytester, run
):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", [pytest.param(1, marks=pytest.mark.compiled(modes=["compiled"]))])
        def test_x(n):
            pass
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*test_x[[]1-compiled[]] PASSED*"])


def test_a_bad_marker_added_after_collection_is_one_setup_error_and_nothing_else(pytester, run):
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                item.add_marker(pytest.mark.compiled(parity="sometimes"))
        """
    )
    pytester.makepyfile("def test_x(): pass")
    result = run("-p", "logging")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_x*",
            "@pytest.mark.compiled on test_*.py::test_x: parity='sometimes' is not one of "
            "'all', 'first', 'off'",
        ]
    )
    result.stdout.no_fnmatch_line("*KeyError*")
    result.stdout.no_fnmatch_line("*ERROR at teardown*")
    _no_traceback(result)
