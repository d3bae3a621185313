from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from schema_check import validate

from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.report import regressions
from pytest_mlxcompile.settings import parse_compare_fail
from pytest_mlxcompile.timing import FunctionTiming, ModeTiming, Stats

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "pytest_mlxcompile" / "report.schema.json").read_text()
)
FAST = "--mlx-timings-budget=0.05"

SUITE = """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled
def test_pass():
    double(mx.ones(3))
    double(mx.ones(4))

@pytest.mark.compiled
def test_fail():
    double(mx.ones(3))
    assert False

@pytest.mark.compiled
def test_skip():
    pytest.skip("not today")

def test_bench(mlx_benchmark):
    mlx_benchmark(lambda x: x + 1, mx.ones(3))
"""


def _records(path: Path) -> dict[tuple[str, str | None], dict[str, object]]:
    doc = json.loads(path.read_text())
    return {
        (test["nodeid"], test["mode"]): {
            "outcome": test["outcome"],
            "functions": sorted(
                (f["function"], f["calls"], f["traces"], f["parity_checks"])
                for f in test["functions"]
            ),
            "timed": sorted(t["function"] for t in test["timings"]),
        }
        for test in doc["tests"]
    }


def test_the_json_report_validates_against_the_documented_schema(pytester, run):
    pytester.makepyfile(SUITE)
    result = run("--mlx-compile-matrix", "--mlx-timings", FAST, "--mlx-report-json=out.json")
    result.assert_outcomes(passed=4, failed=3, skipped=3)
    result.stdout.fnmatch_lines(["mlx report: out.json (10 test variants)"])
    doc = json.loads((pytester.path / "out.json").read_text())
    assert validate(doc, SCHEMA) == []
    assert doc["machine"]["backend"] in ("cpu", "metal", "cuda")
    outcomes = {test["nodeid"].split("::")[1]: test["outcome"] for test in doc["tests"]}
    assert outcomes["test_pass[compiled]"] == "passed"
    assert outcomes["test_fail[shapeless]"] == "failed"
    assert outcomes["test_skip[eager]"] == "skipped"
    compiled = next(t for t in doc["tests"] if t["nodeid"].endswith("test_pass[compiled]"))
    assert compiled["functions"][0]["traces"] == 2
    assert compiled["timings"][0]["modes"]["compiled"]["stats"]["rounds"] >= 1
    bench = next(t for t in doc["tests"] if t["nodeid"].endswith("test_bench"))
    assert (bench["mode"], bench["timings"][0]["source"]) == (None, "benchmark")


def test_a_variant_that_called_no_compiled_code_keeps_its_mode_in_the_json_report(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled
        def test_calls_nothing():
            pass
        """
    )
    run("--mlx-compile-matrix", "--mlx-report-json=out.json").assert_outcomes(passed=3)
    tests = json.loads((pytester.path / "out.json").read_text())["tests"]
    modes = {t["nodeid"].rsplit("[", 1)[1].rstrip("]"): t["mode"] for t in tests}
    assert modes == {"eager": "eager", "compiled": "compiled", "shapeless": "shapeless"}
    assert all(t["functions"] == [] and t["outcome"] == "passed" for t in tests)


def test_the_json_report_creates_missing_parent_folders(pytester, run):
    pytester.makepyfile(SUITE)
    run("--mlx-report-json=reports/ci/mlx.json")
    assert (pytester.path / "reports" / "ci" / "mlx.json").is_file()


def test_the_json_report_gets_the_permissions_a_plain_open_would_give(pytester, run):
    pytester.makepyfile(SUITE)
    run("--mlx-report-json=mlx.json")
    umask = os.umask(0)
    os.umask(umask)
    assert (pytester.path / "mlx.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (".", "*--mlx-report-json: '.' is a directory; give a file such as ./mlx-report.json"),
        ("report.xml", "*--mlx-report-json: 'report.xml' must end in .json (the report is JSON*"),
    ],
)
def test_a_report_path_that_is_not_a_json_file_is_a_usage_error(pytester, run, value, message):
    pytester.makepyfile("def test_x(): pass")
    result = run(f"--mlx-report-json={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_the_json_report_copies_recompiles_and_diagnoses_other_checks_recorded(pytester, run):
    pytester.makeconftest(
        """
        import pytest
        from pytest_mlxcompile import instrument

        @pytest.fixture(autouse=True)
        def other_checks():
            yield
            for record in instrument.active_run().records.values():
                record.extra["recompiles"] = [{"trace": 2, "call": 2, "reasons": ["x: (3,)"]}]
                record.extra["diagnoses"] = [{"kind": "stale", "function": "double"}]
        """
    )
    pytester.makepyfile(SUITE)
    run("-k", "test_pass", "--mlx-report-json=out.json")
    doc = json.loads((pytester.path / "out.json").read_text())
    (function,) = doc["tests"][0]["functions"]
    assert function["recompiles"] == [{"trace": 2, "call": 2, "reasons": ["x: (3,)"]}]
    assert function["diagnoses"] == [{"kind": "stale", "function": "double"}]
    assert validate(doc, SCHEMA) == []


def test_xdist_workers_report_the_same_records_as_a_serial_run(pytester, run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # the table's ids as an 80-column terminal shows them
    pytester.makepyfile(SUITE)
    args = ("--mlx-compile-matrix", "--mlx-timings", FAST)
    serial = run(*args, "-n", "0", "--mlx-report-json=serial.json")
    parallel = run(*args, "-n", "2", "--mlx-report-json=parallel.json")
    parallel.assert_outcomes(passed=4, failed=3, skipped=3)
    assert _records(pytester.path / "parallel.json") == _records(pytester.path / "serial.json")
    serial.stdout.no_fnmatch_line("*contended*")
    parallel.stdout.fnmatch_lines(["test_pass::double *", "    flags: *contended", "contended: *"])


def test_junitxml_gets_traces_and_speedup_properties_per_test(pytester, run):
    pytester.makepyfile(SUITE)
    run("-k", "test_pass", "--mlx-timings", FAST, "--junitxml=junit.xml")
    case = ET.parse(pytester.path / "junit.xml").find(".//testcase[@name='test_pass']")
    assert case is not None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["mlx_traces[double]"] == "2"
    assert float(props["mlx_speedup[double][compiled]"]) > 0


RERUN_CONFTEST = """
import pytest
from _pytest.runner import runtestprotocol

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # as pytest-rerunfailures does: each run of the item with log=False, and the reports of
    # the run that counts logged after its teardown
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    item.attempt = 1
    runtestprotocol(item, nextitem=None, log=False)
    item._initrequest()
    item.attempt = 2
    for report in runtestprotocol(item, nextitem=nextitem, log=False):
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""

RERUN_SUITE = """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled
def test_fail(request, record_property):
    record_property("mine", "kept")
    if request.node.attempt == 1:
        double(mx.ones(3))
    assert False

@pytest.mark.compiled
def test_skip():
    double(mx.ones(3))
    pytest.skip("not today")

@pytest.mark.compiled
def test_pass(record_property):
    record_property("mine", "kept")
    double(mx.ones(3))
"""


def test_a_test_run_twice_carries_the_junit_properties_of_its_last_run_beside_the_users_own(
    pytester, run
):
    pytester.makeconftest(RERUN_CONFTEST)
    pytester.makepyfile(RERUN_SUITE)
    run("--junitxml=junit.xml").assert_outcomes(passed=1, failed=1, skipped=1)
    cases = ET.parse(pytester.path / "junit.xml").findall(".//testcase")
    names = {c.get("name"): [p.get("name") for p in c.iter("property")] for c in cases}
    assert names["test_pass"].count("mlx_traces[double]") == 1
    assert "mine" in names["test_pass"]
    # its first run called double, its last one did not: no property of the first is left
    assert names["test_fail"] == ["mine", "mine"]


def test_reports_logged_after_the_teardown_still_give_each_variant_its_outcome(pytester, run):
    pytester.makeconftest(RERUN_CONFTEST)
    pytester.makepyfile(RERUN_SUITE)
    run("--mlx-report-json=report.json").assert_outcomes(passed=1, failed=1, skipped=1)
    tests = json.loads((pytester.path / "report.json").read_text())["tests"]
    outcomes = {t["nodeid"].rsplit("::", 1)[1]: t["outcome"] for t in tests}
    assert outcomes == {"test_fail": "failed", "test_skip": "skipped", "test_pass": "passed"}


SLOWABLE = """
import os

import mlx.core as mx
import pytest

@mx.compile
def steady(x):
    return x * 2

@mx.compile
def slowable(x):
    # the test-only slow variant: 300 chained ops instead of one
    for _ in range(300 if os.environ.get("MAKE_IT_SLOW") else 1):
        x = mx.sin(x)
    return x

@pytest.mark.compiled
def test_steady():
    steady(mx.ones(64))

@pytest.mark.compiled
def test_slowable():
    slowable(mx.ones(64))
"""


def _save_baseline(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(SLOWABLE)
    run("--mlx-timings", FAST, "--mlx-report-json=base.json").assert_outcomes(passed=2)


def test_compare_prints_deltas_against_a_saved_report(pytester, run):
    _save_baseline(pytester, run)
    result = run("--mlx-timings", FAST, "--mlx-compare=base.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "mlxcompile: comparing timings with base.json (saved *)",
            "*= mlx compare with base.json =*",
            "test::function*mode*median then*median now*change*speedup",
            "test_steady::steady *compiled *s *s *[+-]*.*% *x -> *x",
        ]
    )


def test_compare_fail_fails_only_the_test_whose_function_got_slower(pytester, run, monkeypatch):
    _save_baseline(pytester, run)
    # Machine noise must not fail the unchanged test, so its baseline is made 10x slower.
    path = pytester.path / "base.json"
    doc = json.loads(path.read_text())
    for test in doc["tests"]:
        for timing in test["timings"] if "steady" in test["nodeid"] else []:
            stats = timing["modes"]["compiled"]["stats"]
            for key in ("min", "median", "q1", "q3"):
                stats[key] *= 10
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("MAKE_IT_SLOW", "1")
    result = run(
        "--mlx-timings", FAST, "--mlx-compare=base.json", "--mlx-compare-fail=compiled.median:100%"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_slowable _*",
            "pytest-mlxcompile: timings regressed against the baseline base.json:",
            "  slowable: compiled.median * -> * (+*%), beyond compiled.median:100% and outside "
            "the baseline's spread",
            "FAILED *::test_slowable*",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_mlx_benchmark_asked_for_in_the_body_of_an_unmarked_test_is_still_gated(
    pytester, run, monkeypatch
):
    # request.getfixturevalue in the body: the plugin learns of the benchmark only while the
    # call runs, and still gates it when the call has passed
    pytester.makepyfile(
        """
        import os
        import mlx.core as mx

        def slowable(x):
            for _ in range(300 if os.environ.get("MAKE_IT_SLOW") else 1):
                x = mx.sin(x)
            return x

        def test_late(request):
            bench = request.getfixturevalue("mlx_benchmark")
            bench(slowable, mx.ones(64), modes=("compiled",))

        def test_late_and_failing(request):
            bench = request.getfixturevalue("mlx_benchmark")
            bench(slowable, mx.ones(64), modes=("compiled",))
            assert False, "the body failed"
        """
    )
    run(FAST, "--mlx-report-json=base.json").assert_outcomes(passed=1, failed=1)
    monkeypatch.setenv("MAKE_IT_SLOW", "1")
    result = run(FAST, "--mlx-compare=base.json", "--mlx-compare-fail=compiled.median:100%")
    result.assert_outcomes(passed=0, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_late _*",
            "pytest-mlxcompile: timings regressed against the baseline base.json:",
            "  slowable: compiled.median * -> * (+*%), beyond compiled.median:100%*",
        ]
    )
    # a failed body is not gated: its failure is the one the user sees
    result.stdout.fnmatch_lines(
        ["E       AssertionError: the body failed", "FAILED *::test_late_and_failing*"]
    )
    regressed = "pytest-mlxcompile: timings regressed against the baseline"
    assert [line.startswith(regressed) for line in result.stdout.lines].count(True) == 1


def test_a_baseline_from_another_machine_is_a_warning_in_the_header(pytester, run):
    _save_baseline(pytester, run)
    path = pytester.path / "base.json"
    doc = json.loads(path.read_text())
    doc["machine"]["device"] = "Apple M9 Ultra"
    path.write_text(json.dumps(doc))
    result = run("--mlx-compare=base.json")
    result.stdout.fnmatch_lines(
        [
            "mlxcompile: WARNING: the baseline was saved on another machine or version (device "
            "'Apple M9 Ultra' != *), so its timings may differ for reasons other than the code"
        ]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--mlx-compare-fail=speedup:10%"],
            "*--mlx-compare-fail needs a baseline; add --mlx-compare=PATH*",
        ),
        (
            ["--mlx-compare=missing.json"],
            "*--mlx-compare: 'missing.json' is not a file; give a report saved by*",
        ),
        (
            ["--mlx-compare=conftest.py"],
            "*--mlx-compare='conftest.py' is not a report saved by --mlx-report-json: *",
        ),
        (
            ["--mlx-compare=conftest.py", "--mlx-compare-fail=mean:10%"],
            "*--mlx-compare-fail: 'mean:10%' is not FIELD:N% with FIELD 'speedup' or MODE.median*",
        ),
    ],
    ids=["fail-without-compare", "missing-file", "not-a-report", "bad-expr"],
)
def test_bad_compare_options_are_usage_errors_naming_the_value(pytester, run, args, message):
    pytester.makeconftest("")
    pytester.makepyfile("def test_x(): pass")
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def _compiled(median: float, spread: float, paired: tuple[float, float]) -> FunctionTiming:
    def stats(value: float) -> Stats:
        return Stats(value * (1 - spread), value, value * (1 - spread), value * (1 + spread), 9, 1)

    return FunctionTiming(
        "f",
        "f.py:1",
        {
            Mode.EAGER: ModeTiming(stats=stats(1.0)),
            Mode.COMPILED: ModeTiming(stats=stats(median), paired_ratio=paired),
        },
    )


@pytest.mark.parametrize(
    ("rule", "now", "regressed"),
    [
        ("compiled.median:5%", _compiled(0.60, 0.2, (1.5, 1.8)), False),  # +20%, inside spread
        ("compiled.median:5%", _compiled(0.90, 0.05, (1.0, 1.2)), True),
        ("compiled.median:100%", _compiled(0.90, 0.05, (1.0, 1.2)), False),  # +80% < 100%
        ("speedup:10%", _compiled(0.60, 0.05, (1.6, 1.8)), False),  # 2.0x -> 1.67x, ranges meet
        ("speedup:10%", _compiled(0.90, 0.05, (1.0, 1.2)), True),
    ],
    ids=["noise", "slower", "under-percent", "overlapping-ranges", "speedup-drop"],
)
def test_a_regression_must_exceed_both_the_percent_and_the_baselines_spread(rule, now, regressed):
    base = _compiled(0.50, 0.1, (1.7, 2.2))
    (parsed,) = parse_compare_fail(rule, "test")
    assert bool(regressions(now, base, [parsed])) is regressed


def test_the_json_report_carries_each_retrace_with_its_reason(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def double(x):
            return x * 2

        @pytest.mark.compiled(max_recompiles=1)
        def test_x():
            double(mx.ones(3))
            double(mx.ones(4))
        """
    )
    run("--mlx-report-json=out.json").assert_outcomes(passed=1)
    (test,) = json.loads((pytester.path / "out.json").read_text())["tests"]
    (function,) = test["functions"]
    assert [r["reasons"] for r in function["recompiles"]][-1] == ["arg 0 'x' shape (3,) -> (4,)"]
