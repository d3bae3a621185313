"""``python -m pytest_mlxcompile report``: the end-of-run summary from saved JSON reports."""

from __future__ import annotations

import json
import sys

import pytest

SUITE = """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled(timings=True)
def test_double():
    double(mx.ones(3))
    double(mx.ones(5))
"""


def _cli(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_mlxcompile", *args)


@pytest.fixture
def saved(pytester, run):
    pytester.makepyfile(SUITE)
    run("--mlx-timings-budget=0.05", "--mlx-report-json=run.json").assert_outcomes(passed=1)
    return pytester.path / "run.json"


def test_report_prints_the_recompiles_and_timings_of_a_saved_run(pytester, saved):
    result = _cli(pytester, "report", "run.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "mlx report run.json: saved * (1 passed)",
            "machine: mlx *, backend *, device *",
            "*= recompiles =*",
            "test_report_prints_the_recompiles_and_timings_of_a_saved_run.py::test_double: "
            "double (test_report_prints_the_recompiles_and_timings_of_a_saved_run.py:4) "
            "traced 2 times",
            "  trace 2 (call 2): arg 0 'x' shape (3,) -> (5,)",
            "*= mlx timings =*",
            "test::function *eager *compiled *shapeless *speedup [[]range[]]*",
            "test_double::double *",
        ]
    )


def test_report_compares_with_a_baseline_and_writes_the_html_page(pytester, saved):
    result = _cli(pytester, "report", "run.json", "--compare", "run.json", "--html", "o/r.html")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*= mlx compare with run.json =*",
            "test::function *mode *median then *median now *change *speedup",
            "test_double::double *compiled *+0.0%*",
            "mlx report: o/r.html (HTML, 1 test variants)",
        ]
    )
    page = (pytester.path / "o" / "r.html").read_text()
    assert page.count('<rect class="bar speedup-bar"') == 1


def test_report_of_a_file_that_does_not_exist_exits_2_naming_it(pytester):
    result = _cli(pytester, "report", "missing.json")
    assert result.ret == 2
    result.stderr.fnmatch_lines(
        [
            "python -m pytest_mlxcompile: error: RUN.json 'missing.json': cannot read it: "
            "No such file or directory"
        ]
    )


def test_report_of_a_file_that_is_not_json_exits_2_naming_it(pytester):
    pytester.path.joinpath("run.json").write_text("<html>")
    result = _cli(pytester, "report", "run.json")
    assert result.ret == 2
    result.stderr.fnmatch_lines(
        ["python -m pytest_mlxcompile: error: RUN.json 'run.json' is not JSON: Expecting value*"]
    )


def test_report_of_json_that_is_not_a_report_exits_2_saying_why(pytester):
    pytester.path.joinpath("run.json").write_text(json.dumps({"tests": []}))
    result = _cli(pytester, "report", "run.json")
    assert result.ret == 2
    result.stderr.fnmatch_lines(
        [
            "python -m pytest_mlxcompile: error: RUN.json 'run.json' is not a report saved by "
            "pytest --mlx-report-json: 'schema' is None, not 'pytest-mlxcompile/report'"
        ]
    )


def test_a_baseline_with_a_malformed_timing_exits_2_naming_the_entry(pytester, saved):
    doc = json.loads(saved.read_text())
    del doc["tests"][0]["timings"][0]["modes"]
    pytester.path.joinpath("old.json").write_text(json.dumps(doc))
    result = _cli(pytester, "report", "run.json", "--compare", "old.json")
    assert result.ret == 2
    result.stderr.fnmatch_lines(
        [
            "python -m pytest_mlxcompile: error: --compare 'old.json' is not a report saved by "
            "pytest --mlx-report-json: tests[[]0[]].timings[[]0[]] is malformed (KeyError: 'modes')"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_an_html_output_that_is_not_html_exits_2(pytester, saved):
    result = _cli(pytester, "report", "run.json", "--html", "out.json")
    assert result.ret == 2
    result.stderr.fnmatch_lines(
        [
            "python -m pytest_mlxcompile: error: --html: 'out.json' must end in .html "
            "(the report is one HTML page)"
        ]
    )


def test_no_command_prints_the_usage_and_exits_2(pytester):
    result = _cli(pytester)
    assert result.ret == 2
    result.stderr.fnmatch_lines(
        [
            "usage: python -m pytest_mlxcompile [[]-h[]] COMMAND ...",
            "python -m pytest_mlxcompile: error: choose a command: report RUN.json "
            "[[]--compare OLD.json[]] [[]--html OUT.html[]]",
        ]
    )
