"""Each pytest_mlxcompile_* hookspec, implemented by a conftest, changes what the docs say."""

from __future__ import annotations

import glob
import json

import pytest

from pytest_mlxcompile import hookspecs

# A global read inside a compiled function: the graph keeps the trace-time value (1.0) while
# eager reads the new one (1.001), a relative difference of 1e-3 that the float32 default
# tolerance (rtol 1.3e-6) rejects. The sanitizer is off so parity is what judges it.
DRIFT = """
import mlx.core as mx
import pytest

scale = mx.array(1.0)

@mx.compile
def scaled(x):
    return x * scale

@pytest.mark.compiled
def test_drift():
    global scale
    scaled(mx.ones(4))
    scale = mx.array(1.001)
    scaled(mx.ones(4))
"""

WIDEN = """
def pytest_mlxcompile_tolerance(item, function, where, dtype, default):
    if function == "scaled" and dtype == "float32":
        return (1e-2, 0.0)
    return None
"""


def test_every_hookspec_is_named_with_the_prefix_and_documents_a_worked_example():
    specs = [name for name in dir(hookspecs) if name.startswith("pytest_")]
    assert specs == [
        "pytest_mlxcompile_machine_info",
        "pytest_mlxcompile_modes",
        "pytest_mlxcompile_record",
        "pytest_mlxcompile_tolerance",
    ]
    for name in specs:
        doc = getattr(hookspecs, name).__doc__
        assert "Example" in doc, name
        assert f"def {name}(" in doc, name


def test_without_a_tolerance_hook_the_drifted_result_fails_parity(pytester, run):
    pytester.makepyfile(test_drift=DRIFT)
    result = run("--mlx-sanitize=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E *ParityError: scaled [[]compiled[]] call 2 differs from eager at out"]
    )


def test_a_tolerance_hook_that_widens_the_tolerance_makes_the_drifted_result_pass(pytester, run):
    pytester.makepyfile(test_drift=DRIFT)
    pytester.makeconftest(WIDEN)
    result = run("--mlx-sanitize=off", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_drift.py::test_drift PASSED*"])


def test_a_tolerance_from_the_hook_is_named_in_the_parity_message(pytester, run):
    pytester.makepyfile(test_drift=DRIFT)
    pytester.makeconftest(
        """
def pytest_mlxcompile_tolerance(item, function, where, dtype, default):
    assert where.startswith("test_drift.py:")
    assert default == (1.3e-6, 1e-5)
    return (1e-4, 0.0)
"""
    )
    result = run("--mlx-sanitize=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E     *rtol 1.0e-04 atol 0e+00 (from the pytest_mlxcompile_tolerance hook)"]
    )


def test_a_tolerance_hook_returning_nonsense_fails_the_test_naming_the_hook(pytester, run):
    pytester.makepyfile(test_drift=DRIFT)
    pytester.makeconftest(
        """
def pytest_mlxcompile_tolerance(item, function, where, dtype, default):
    return "wide"
"""
    )
    result = run("--mlx-sanitize=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest-mlxcompile: the pytest_mlxcompile_tolerance hook returned "
            "'wide' for scaled (test_drift.py:*) float32: *; return (rtol, atol), two numbers "
            ">= 0, or None to keep the default"
        ]
    )
    assert "pytest_mlxcompile/" not in result.stdout.str()  # no traceback through the plugin


RECORDER = """
import json

seen = []

def pytest_mlxcompile_record(item, kind, record):
    seen.append((item.name, kind, record))

def pytest_terminal_summary(terminalreporter):
    for test, kind, record in seen:
        if kind == "trace":
            text = f"{record['function']} trace {record['trace']}: {'; '.join(record['reasons'])}"
        elif kind == "parity":
            text = f"{record['function']} call {record['call']} passed={record['passed']}"
            text += " " + record.get("message", "").splitlines()[0] if "message" in record else ""
        elif kind == "diagnosis":
            text = f"{record['function']} {record['error']}"
        elif kind == "timing":
            text = f"{record['function']} modes={sorted(record['modes'])}"
        else:
            text = json.dumps(record)
        terminalreporter.write_line(f"RECORD {test} {kind} {text}")
"""


def test_the_record_hook_sees_each_trace_with_its_reasons_and_each_parity_check(pytester, run):
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(
        """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled
def test_shapes():
    double(mx.ones(3))
    double(mx.ones(3))
    double(mx.ones(5))
"""
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "RECORD test_shapes trace double trace 1: first trace: arg 0 'x' array (3,) float32",
            "RECORD test_shapes parity double call 1 passed=True",
            "RECORD test_shapes parity double call 2 passed=True",
            "RECORD test_shapes trace double trace 2: arg 0 'x' shape (3,) -> (5,)",
            "RECORD test_shapes parity double call 3 passed=True",
        ]
    )


def test_the_record_hook_sees_a_diagnosis_and_a_failed_parity_check(pytester, run):
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(test_drift=DRIFT)
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["RECORD test_drift[[]compiled[]] diagnosis scaled StaleCaptureError"]
    )
    sanitize_off = run("--mlx-sanitize=off")
    sanitize_off.assert_outcomes(failed=1)
    sanitize_off.stdout.fnmatch_lines(
        [
            "RECORD test_drift parity scaled call 1 passed=True",
            "RECORD test_drift parity scaled call 2 passed=False scaled [[]compiled[]] call 2 "
            "differs from eager at out",
        ]
    )


def test_a_record_hook_that_changes_its_record_leaves_the_report_alone(pytester, run):
    pytester.makeconftest(
        """
def pytest_mlxcompile_record(item, kind, record):
    record.clear()
"""
    )
    pytester.makepyfile(
        """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled
def test_shapes():
    double(mx.ones(3))
    double(mx.ones(5))
"""
    )
    run("--mlx-report-json=out.json").assert_outcomes(passed=1)
    (test,) = json.loads((pytester.path / "out.json").read_text())["tests"]
    events = test["functions"][0]["recompiles"]
    assert [e["reasons"] for e in events] == [
        ["first trace: arg 0 'x' array (3,) float32"],
        ["arg 0 'x' shape (3,) -> (5,)"],
    ]


def test_the_record_hook_sees_each_timing(pytester, run):
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(
        """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled(timings=True)
def test_timed():
    double(mx.ones(3))
"""
    )
    result = run("--mlx-timings-budget=0.05")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["RECORD test_timed timing double modes=['compiled', 'eager', 'shapeless']"]
    )


MACHINE_SUITE = """
import mlx.core as mx
import pytest

@pytest.mark.compiled
def test_x():
    pass
"""


def test_machine_info_from_the_hook_lands_in_the_json_report(pytester, run):
    pytester.makeconftest(
        """
def pytest_mlxcompile_machine_info(config):
    return {"commit": "abc123", "runner": {"name": "ci-7"}}
"""
    )
    pytester.makepyfile(MACHINE_SUITE)
    result = run("--mlx-report-json=out.json", "--mlx-report-html=out.html")
    result.assert_outcomes(passed=1)
    machine = json.loads((pytester.path / "out.json").read_text())["machine"]
    assert machine["commit"] == "abc123"
    assert machine["runner"] == {"name": "ci-7"}
    assert machine["mlx"]  # the plugin's own keys stay
    page = (pytester.path / "out.html").read_text()
    assert "<dt>commit</dt><dd>abc123</dd>" in page


def test_machine_info_that_would_replace_a_builtin_key_is_a_usage_error(pytester, run):
    pytester.makeconftest(
        """
def pytest_mlxcompile_machine_info(config):
    return {"mlx": "9.9", "commit": "abc"}
"""
    )
    pytester.makepyfile(MACHINE_SUITE)
    result = run("--mlx-report-json=out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-mlxcompile: a pytest_mlxcompile_machine_info hook returned the key(s) "
            "'mlx', which the plugin fills itself; rename them (e.g. 'ci_' + key)"
        ]
    )


MODES_SUITE = """
import mlx.core as mx
import pytest

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled
@pytest.mark.slow
def test_slow():
    double(mx.ones(3))

@pytest.mark.compiled
def test_fast():
    double(mx.ones(3))
"""


def test_a_modes_hook_vetoes_a_mode_for_the_tests_it_chooses(pytester, run):
    pytester.makeini("[pytest]\nmarkers = slow: slow")
    pytester.makeconftest(
        """
def pytest_mlxcompile_modes(metafunc, modes):
    if metafunc.definition.get_closest_marker("slow"):
        return [m for m in modes if m != "shapeless"]
    return None
"""
    )
    pytester.makepyfile(MODES_SUITE)
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_slow[[]eager[]] PASSED*",
            "*::test_slow[[]compiled[]] PASSED*",
            "*::test_fast[[]shapeless[]] PASSED*",
        ]
    )
    assert "test_slow[shapeless]" not in result.stdout.str()


def test_a_modes_hook_adds_a_mode_the_command_line_left_out(pytester, run):
    pytester.makeconftest(
        """
def pytest_mlxcompile_modes(metafunc, modes):
    return [*modes, "shapeless"]
"""
    )
    pytester.makepyfile(MODES_SUITE.replace("@pytest.mark.slow\n", ""))
    result = run("--mlx-compile-matrix", "--mlx-modes=eager", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        ["*::test_slow[[]shapeless[]] PASSED*", "*::test_fast[[]eager[]] PASSED*"]
    )


def test_a_modes_hook_that_vetoes_every_mode_skips_the_test_saying_so(pytester, run):
    pytester.makeconftest("def pytest_mlxcompile_modes(metafunc, modes):\n    return []\n")
    pytester.makepyfile(MODES_SUITE.replace("@pytest.mark.slow\n", ""))
    result = run("--mlx-compile-matrix", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *.py:8: the pytest_mlxcompile_modes hook vetoed every mode "
            "(eager, compiled, shapeless)",
            "SKIPPED [[]1[]] *.py:12: the pytest_mlxcompile_modes hook vetoed every mode "
            "(eager, compiled, shapeless)",
        ]
    )


def test_a_modes_hook_returning_an_unknown_mode_is_a_collection_error(pytester, run):
    pytester.makeconftest(
        "def pytest_mlxcompile_modes(metafunc, modes):\n    return ['eager', 'jit']\n"
    )
    pytester.makepyfile(MODES_SUITE.replace("@pytest.mark.slow\n", ""))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            glob.escape(
                "test_a_modes_hook_returning_an_unknown_mode_is_a_collection_error.py::test_slow: "
                "the pytest_mlxcompile_modes hook returned ['eager', 'jit']: unknown mode 'jit'; "
                "choose from eager, compiled, shapeless (return a list of mode names, or None to "
                "keep ['eager', 'compiled', 'shapeless'])"
            )
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str()
