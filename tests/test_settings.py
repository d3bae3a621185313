"""Settings in every form (command line, pytest.ini, pyproject's two tables), --help, --markers,
the header line, and a fuzz table of bad values: each a usage or collection error naming it.

The TOML-form and fuzz tests iterate over ``settings.OPTIONS``: a new row is covered as soon as
it has an ``example`` (a test fails until it does).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mlx.core
import pytest

from pytest_mlxcompile import report
from pytest_mlxcompile.markers import CompiledMarker
from pytest_mlxcompile.settings import OPTIONS, Option, Settings

#: A traceback entry in our code, in pytest's (`path:line: in f`) or Python's form.
OUR_FRAME = re.compile(r'pytest_mlxcompile/\w+\.py:\d+: in |File "[^"]*pytest_mlxcompile/')

SNAPSHOTS = Path(__file__).parent / "snapshots"
PYTEST9 = pytest.version_tuple >= (9, 0)
ORIGINAL_COMPILE = mlx.core.compile


def _inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A run that stops at start-up (usage/collection error, --help): no MLX state to leak."""
    result = pytester.runpytest_inprocess("-p", "mlxcompile", "-p", "no:cacheprovider", *args)
    assert mlx.core.compile is ORIGINAL_COMPILE, "the in-process run left mx.compile patched"
    return result


def _no_crash(result: pytest.RunResult) -> None:
    text = "\n".join(result.outlines + result.errlines)
    assert "INTERNALERROR" not in text
    assert "Traceback" not in text
    assert not OUR_FRAME.search(text), text


# --help and --markers -----------------------------------------------------------------------
def _our_help(result: pytest.RunResult) -> list[str]:
    lines = result.outlines
    start = lines.index("MLX compile testing (pytest-mlxcompile):")
    end = lines.index("", start)
    return lines[start:end]


def _text(lines: list[str]) -> str:
    return "".join("".join(lines).split())


def _snapshot(name: str, lines: list[str]) -> list[str]:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return path.read_text().splitlines()


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("matrix", [[], ["--mlx-compile-matrix"]], ids=["plain", "matrix"])
def test_help_shows_our_options_fitted_to_the_terminal_and_matches_the_snapshot(
    pytester, monkeypatch, columns, matrix
):
    monkeypatch.setenv("COLUMNS", str(columns))
    result = pytester.runpytest_subprocess("-p", "mlxcompile", "--help", *matrix)
    assert result.ret == pytest.ExitCode.OK
    ours = _our_help(result)
    # argparse's line breaks differ between pytest versions (hyphens): compare the text, and
    # check the fit separately
    assert _text(ours) == _text(_snapshot(f"help-{columns}.txt", ours))
    assert max(len(line) for line in ours) <= columns
    for option in OPTIONS:
        result.stdout.fnmatch_lines([f"  {option.flag}*"])
        result.stdout.fnmatch_lines([f"  {option.ini} (*):*"])
    result.stdout.no_fnmatch_line("*ValueError*")


def test_markers_lists_the_compiled_marker_and_matches_the_snapshot(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = pytester.runpytest_subprocess("-p", "mlxcompile", "--markers")
    assert result.ret == pytest.ExitCode.OK
    ours = [line for line in result.outlines if line.startswith("@pytest.mark.compiled")]
    assert ours == _snapshot("markers.txt", ours)
    result.stdout.fnmatch_lines(["@pytest.mark.compiled(*, modes=None, rtol=None, *"])


def test_a_help_text_with_a_percent_sign_is_shown_literally(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = pytester.runpytest_subprocess("-p", "mlxcompile", "--help")
    result.stdout.fnmatch_lines(["*e.g. 'speedup:10%' or 'compiled.median:5%'*"])


# the header line ------------------------------------------------------------------------------
def test_the_header_says_the_plugin_is_active_and_how_it_is_set(pytester, run, monkeypatch):
    pytester.makepyfile("def test_x(): pass")
    monkeypatch.setenv("COLUMNS", "200")
    result = run("--mlx-compile-matrix", "--mlx-modes=eager,compiled", "--mlx-parity=first")
    result.stdout.fnmatch_lines(
        [
            "mlxcompile: matrix on (eager, compiled), scope marked, parity first, "
            "sanitize on, timings off"
        ]
    )
    plain = run("--mlx-timings", "--mlx-timings-budget=0.2", "--mlx-sanitize=off")
    plain.stdout.fnmatch_lines(
        [
            "mlxcompile: matrix off, scope marked, parity all, sanitize off, "
            "timings on (0.2s per test)"
        ]
    )


def test_the_header_wraps_to_an_80_column_terminal(pytester, run, monkeypatch):
    pytester.makepyfile("def test_x(): pass")
    monkeypatch.setenv("COLUMNS", "80")
    result = run("--mlx-compile-matrix", "--mlx-rtol=0.001", "--mlx-max-recompiles=2")
    result.stdout.fnmatch_lines(
        [
            "mlxcompile: matrix on (eager, compiled, shapeless), scope marked, parity all,",
            "  rtol 0.001 atol None, max recompiles 2, sanitize on, timings off",
        ]
    )
    assert all(len(line) <= 80 for line in result.outlines if "mlxcompile" in line)


# the plugin switched off ---------------------------------------------------------------------
def test_with_the_plugin_off_a_strict_markers_suite_still_runs_and_fixtures_skip(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(modes=["eager"])
        def test_marked():
            pass

        def test_benchmark(mlx_benchmark):
            mlx_benchmark(lambda: None)

        def test_mode(mlx_mode):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:mlxcompile", "--strict-markers", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_*.py:*: the mlx_benchmark fixture needs pytest-mlxcompile, "
            "which is disabled in this run (-p no:mlxcompile); run without it to use the fixture",
            "SKIPPED [[]1[]] test_*.py:*: the mlx_mode fixture needs pytest-mlxcompile*",
        ]
    )
    result.stdout.no_fnmatch_line("mlxcompile: matrix*")


def test_help_works_even_when_an_ini_value_is_bad(pytester, run):
    pytester.makeini("[pytest]\nmlx_parity = most\n")
    result = run("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["MLX compile testing (pytest-mlxcompile):"])
    assert run().ret == pytest.ExitCode.USAGE_ERROR


def test_with_the_plugin_on_the_stand_ins_stay_out_of_the_way(pytester, run):
    pytester.makepyfile(
        """
        def test_mode(mlx_mode):
            assert mlx_mode == "compiled"
        """
    )
    result = run("--strict-markers", "--markers")
    assert len([line for line in result.outlines if line.startswith("@pytest.mark.compiled")]) == 1
    run("--strict-markers").assert_outcomes(passed=1)


# every option in every form ------------------------------------------------------------------
def _baseline(path: Path) -> None:
    """A minimal valid report to compare with (no tests timed)."""
    machine = dict.fromkeys(("mlx", "device", "system", "architecture", "platform", "python"), "x")
    doc = report.document(report.Collector(), Settings(), {**machine, "backend": "cpu"}, 1)
    doc["machine"]["cpu_count"] = 1
    path.write_text(json.dumps(doc))


def _toml(value: object) -> str:
    return json.dumps(value)  # TOML's strings, numbers, booleans and arrays read as JSON's


def _ini(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "\n    " + "\n    ".join(value)  # one per line, as pytest.ini lists are written
    return str(value)


def _cli(option: Option) -> list[str]:
    if option.is_flag:
        return [option.flag]
    value = option.example
    text = ",".join(value) if isinstance(value, list) else str(value)
    return [f"{option.flag}={text}"]


_SHOW = """
import pytest
from pytest_mlxcompile import plugin


def pytest_report_header(config):
    chosen = config.stash[plugin.settings_key]
    return [f"SETTING {{name}} = {{getattr(chosen, name)!r}}" for name in {fields!r}]
"""


def _settings_shown(result: pytest.RunResult) -> dict[str, str]:
    shown = {}
    for line in result.outlines:
        if line.startswith("SETTING "):
            name, _, value = line.removeprefix("SETTING ").partition(" = ")
            shown[name] = value
    return shown


def test_every_option_has_an_example_and_a_typed_ini_twin():
    for option in OPTIONS:
        assert option.example is not None, f"{option.flag}: add example= to its row"
        if option.is_flag:
            assert option.ini_types == ("bool",), option.flag


@pytest.mark.parametrize("form", ["pytest.ini", "tool.pytest.ini_options", "tool.pytest"])
def test_every_option_set_in_each_config_form_resolves_as_on_the_command_line(pytester, run, form):
    if form == "tool.pytest" and not PYTEST9:
        pytest.skip("[tool.pytest] is read from pytest 9 on")
    _baseline(pytester.path / "baseline.json")
    pytester.makeconftest(_SHOW.format(fields=[o.field for o in OPTIONS]))
    pytester.makepyfile("def test_x(): pass")
    # --mlx-cov-context needs coverage measuring the run: pytest-cov, in both forms alike
    cov = ("--cov=.", "--cov-report=")
    expected = _settings_shown(run(*cov, *(arg for option in OPTIONS for arg in _cli(option))))
    assert set(expected) == {o.field for o in OPTIONS}
    if form == "pytest.ini":
        pytester.makeini("[pytest]\n" + "".join(f"{o.ini} = {_ini(o.example)}\n" for o in OPTIONS))
    else:
        pytester.makepyprojecttoml(
            f"[{form}]\n" + "".join(f"{o.ini} = {_toml(o.example)}\n" for o in OPTIONS)
        )
    result = run(*cov)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.no_fnmatch_line("*PytestRemovedIn*Warning*")
    shown = _settings_shown(result)
    for option in OPTIONS:
        assert shown[option.field] == expected[option.field], f"{option.ini} in [{form}]"
        assert shown[option.field] != repr(option.default), f"{option.ini}: example is default"


def test_a_toml_value_of_the_wrong_type_is_a_usage_error_naming_the_option(pytester, run):
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        mlx_modes = "eager compiled shapeless"
        mlx_compile_matrix = "perhaps"
        """
    )
    pytester.makepyfile("def test_x(): pass")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-mlxcompile: mlx_compile_matrix (ini file *pyproject.toml): *'perhaps'*"]
    )


# the fuzz table ------------------------------------------------------------------------------
#: Bad for every option that takes a value: a format character and an empty value.
GENERIC_BAD = ("%nope", "%(prog)s")


def _bad_values(option: Option) -> list[str]:
    return [*(() if option.is_flag else GENERIC_BAD), *option.bad]


def _fuzz_cases(*, flags: bool) -> list[object]:
    return [
        pytest.param(option, value, id=f"{option.ini}={value[:24]}")
        for option in OPTIONS
        if flags or not option.is_flag
        for value in _bad_values(option)
    ]


@pytest.mark.parametrize(("option", "value"), _fuzz_cases(flags=False))
def test_a_bad_option_value_is_a_usage_error_naming_the_option_and_value(pytester, option, value):
    pytester.makepyfile("def test_x(): pass")
    pytester.makefile(".txt", data="a file where a folder is expected")
    args = [f"{option.flag}={value}"]
    if option.field == "compare_fail":
        _baseline(pytester.path / "baseline.json")
        args.append("--mlx-compare=baseline.json")
    result = _inprocess(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    _no_crash(result)
    result.stderr.fnmatch_lines([f"ERROR: pytest-mlxcompile: {option.flag}*"])
    assert _names(value, result.errlines), value


def _names(value: str, lines: list[str]) -> bool:
    """Whether the error shows the bad value (long ones shortened, lists by their bad entry)."""
    text = "\n".join(lines)
    try:
        as_float = str(float(value))  # pytest reads a float-typed ini value before we do
    except ValueError:
        as_float = value
    return any(part[:19] in text for part in (value, as_float, *value.split(",")) if part)


@pytest.mark.parametrize(("option", "value"), _fuzz_cases(flags=True))
def test_a_bad_ini_value_is_a_usage_error_naming_the_ini_key(pytester, option, value):
    pytester.makepyfile("def test_x(): pass")
    pytester.makefile(".txt", data="a file where a folder is expected")
    extra = ""
    if option.field == "compare_fail":
        _baseline(pytester.path / "baseline.json")
        extra = "mlx_compare = baseline.json\n"
    pytester.makeini(f"[pytest]\n{option.ini} = {value}\n{extra}")
    result = _inprocess(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    _no_crash(result)
    result.stderr.fnmatch_lines([f"ERROR: pytest-mlxcompile: {option.ini}*"])
    assert _names(value, result.errlines), value


#: Bad for every marker argument.
MARKER_BAD = ("'nope'", "-1", "10**400", "float('nan')", "object()", "[[1]]")


def _marker_cases() -> list[object]:
    counts = ("max_recompiles", "max_shapes")  # any int >= 0 is a count, 10**400 included
    names = [name for name in CompiledMarker._fields if name not in counts]
    cases = [
        pytest.param(name, value, id=f"{name}={value}") for name in names for value in MARKER_BAD
    ]
    cases += [
        pytest.param("max_recompiles", value, id=f"max_recompiles={value}")
        for value in ("'nope'", "-1", "1.5", "{'jit': 1}", "{'compiled': -1}", "object()")
    ]
    cases += [
        pytest.param("max_shapes", value, id=f"max_shapes={value}")
        for value in ("'nope'", "-1", "1.5", "object()")
    ]
    return cases


@pytest.mark.parametrize(("name", "value"), _marker_cases())
@pytest.mark.parametrize("where", ["function", "case"])
def test_a_bad_marker_argument_is_one_collection_error_naming_the_test_and_argument(
    pytester, name, value, where
):
    if where == "function":
        source = f"@pytest.mark.compiled({name}={value})\ndef test_bad(n=1):\n    pass\n"
        test = "test_bad"
    else:
        source = (
            '@pytest.mark.parametrize("n", [1, pytest.param(2, '
            f"marks=pytest.mark.compiled({name}={value}))])\n"
            "def test_bad(n):\n    pass\n"
        )
        test = "test_bad[[]2-*[]]"
    pytester.makepyfile(f"import pytest\n\n{source}")
    result = _inprocess(pytester, "--mlx-compile-matrix")
    result.assert_outcomes(errors=1)
    _no_crash(result)
    result.stdout.fnmatch_lines([f"@pytest.mark.compiled on test_*.py::{test}: *{name}*"])


def test_a_huge_int_tolerance_names_the_test_and_is_shortened(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(rtol=10**400)
        def test_x():
            pass
        """
    )
    result = _inprocess(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.compiled on test_*.py::test_x: rtol: 10000000000000000000..."
            "00000000 (401 characters) is not a finite number >= 0"
        ]
    )
    _no_crash(result)


def test_modes_without_the_matrix_warn_that_they_have_no_effect(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled
        def test_x(mlx_mode):
            assert mlx_mode == "compiled"
        """
    )
    result = run("--mlx-modes=eager")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestConfigWarning: pytest-mlxcompile: --mlx-modes=eager has no effect without "
            "--mlx-compile-matrix*"
        ]
    )
    pytester.makeini("[pytest]\nmlx_modes = eager\n")
    run().assert_outcomes(passed=1)  # set for when the matrix is on: no warning
