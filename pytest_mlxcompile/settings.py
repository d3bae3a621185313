"""Command-line options and their ini twins, resolved once into a frozen :class:`Settings`.

Precedence: command line > ini file > default. Each option shares one help text with its ini twin.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from pytest_mlxcompile.modes import ALL_MODES, Mode, parse_modes

__all__ = [
    "OPTIONS",
    "Option",
    "Settings",
    "add_options",
    "check_writable",
    "parse_tolerance",
    "resolve",
]

#: The statistics a baseline gate can compare (see ``parse_compare_fail``).
COMPARE_FIELDS = ("median", "min", "first_call")


def parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(value: str, source: str) -> str:
        if value not in choices:
            raise ValueError(f"{source}: {value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)``, shortened in the middle when long (``10**400`` is 401 digits)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-8:]} ({len(text)} characters)"


def parse_tolerance(value: object, source: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for float
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{source}: {short_repr(value)} is not a finite number >= 0")
    return number


def parse_flag(value: str, source: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{source}: {value!r} is not a boolean (true/false)")


def parse_switch(value: str, source: str) -> bool:
    """``on``/``off`` (and the boolean words, so TOML's ``false`` reads naturally)."""
    lowered = value.strip().lower()
    if lowered in ("on", "off"):
        return lowered == "on"
    try:
        return parse_flag(value, source)
    except ValueError:
        raise ValueError(f"{source}: {value!r} is not one of on, off") from None


def parse_seconds(value: str, source: str) -> float:
    seconds = parse_tolerance(value, source)
    if seconds == 0:
        raise ValueError(f"{source}: {value!r} must be more than 0 seconds")
    return seconds


def _report_path(kind: str, suffixes: tuple[str, ...], why: str) -> Callable[[str, str], str]:
    """A parser for a report path: not a directory, and named with the report's suffix."""
    example = f"mlx-report{suffixes[0]}"

    def parse(value: str, source: str) -> str:
        if not value.strip():
            raise ValueError(f"{source}: an empty path; give a file such as {example}")
        if os.path.isdir(value) or value.endswith(("/", os.sep)):
            raise ValueError(
                f"{source}: {value!r} is a directory; give a file such as "
                f"{value.rstrip('/' + os.sep)}/{example}"
            )
        if not value.endswith(suffixes):
            raise ValueError(f"{source}: {value!r} must end in {suffixes[0]} ({why})")
        return value

    parse.__name__ = f"parse_{kind}_path"
    return parse


#: A JSON report's path, named .json so nobody expects HTML.
parse_json_path = _report_path("json", (".json",), "the report is JSON only")
#: The HTML report's path, named .html so a browser opens it.
parse_html_path = _report_path("html", (".html", ".htm"), "the report is one HTML page")


def parse_existing_json(value: str, source: str) -> str:
    if not os.path.isfile(value):
        raise ValueError(
            f"{source}: {value!r} is not a file; give a report saved by --mlx-report-json"
        )
    return value


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: str, source: str) -> int:
    """Bytes: an int, or a number with a unit (``512MiB``, ``2GB``); ``0`` means no limit."""
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    try:
        amount = float(number) if unit in _SIZE_UNITS and number else math.nan
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(
            f"{source}: {value!r} is not a size: give bytes as an int or a number with a unit "
            "(512MiB, 2GB); 0 means no limit"
        )
    return int(amount * _SIZE_UNITS[unit])


class CompareRule(NamedTuple):
    """One ``--mlx-compare-fail`` gate: fail a test whose ``field`` got worse by > ``percent``."""

    mode: str  # "compiled", "eager", "shapeless", or "" for the speedup
    field: str  # "speedup" or one of COMPARE_FIELDS
    percent: float

    def __str__(self) -> str:
        name = self.field if not self.mode else f"{self.mode}.{self.field}"
        return f"{name}:{self.percent:g}%"


def parse_compare_fail(value: str, source: str) -> tuple[CompareRule, ...]:
    """``speedup:10%,compiled.median:5%`` -> rules; each names a statistic and a percentage."""
    rules = []
    modes = [m.value for m in ALL_MODES]
    for part in (p.strip() for p in value.split(",")):
        name, sep, amount = part.partition(":")
        mode, dot, field = name.rpartition(".")
        ok_name = (not dot and field == "speedup") or (mode in modes and field in COMPARE_FIELDS)
        try:
            percent = float(amount.strip().removesuffix("%"))
        except ValueError:
            percent = math.nan
        if not sep or not ok_name or not amount.strip().endswith("%") or not percent >= 0:
            fields = ", ".join(f"MODE.{f}" for f in COMPARE_FIELDS)
            raise ValueError(
                f"{source}: {part!r} is not FIELD:N% with FIELD 'speedup' or {fields} "
                f"(MODE one of {', '.join(modes)}), e.g. 'speedup:10%,compiled.median:5%'"
            )
        rules.append(CompareRule(mode, field, percent))
    return tuple(rules)


def parse_budget(value: str, source: str) -> int | str:
    """``auto`` or a number of retraces allowed after the first trace."""
    text = value.strip()
    if text == "auto":
        return "auto"
    if text.isascii() and text.isdigit():
        return int(text)
    raise ValueError(f"{source}: {value!r} is not 'auto' or an int >= 0")


def parse_count(value: str, source: str) -> int:
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    raise ValueError(f"{source}: {value!r} is not an int >= 0")


class Option(NamedTuple):
    """One row of the option table: a command-line flag, its ini twin, and how to read both.

    ``ini_types`` are the pytest ini types the ini twin accepts, most specific first (``bool``,
    ``float``, ``int``, ``args``, ``string``): pytest >= 9.2 registers their union, older pytest
    the last one it knows (``string`` for an option such as ``auto|N``). ``example`` is a valid
    value in native TOML form; the test suite sets every option from it in pytest.ini,
    ``[tool.pytest.ini_options]`` and ``[tool.pytest]``, and fuzzes every option with ``bad``
    plus generic bad values.
    """

    field: str
    flag: str
    help: str
    parse: Callable[[str, str], Any]
    default: Any
    is_flag: bool = False
    metavar: str | None = None
    ini_types: tuple[str, ...] = ("string",)
    example: Any = None
    bad: tuple[str, ...] = ()

    @property
    def ini(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "matrix",
        "--mlx-compile-matrix",
        "Run tests marked 'compiled' (and tests using mlx_compile) once per mode: "
        "test_x[eager], test_x[compiled], test_x[shapeless]",
        parse_flag,
        False,
        is_flag=True,
        ini_types=("bool",),
        example=True,
        bad=("maybe",),
    ),
    Option(
        "modes",
        "--mlx-modes",
        "Comma-separated modes for the matrix (default: eager,compiled,shapeless)",
        lambda v, s: parse_modes(v, source=s),
        ALL_MODES,
        metavar="MODES",
        ini_types=("args",),
        example=["eager", "compiled"],
        bad=("eager,nope", ",", "eager;compiled"),
    ),
    Option(
        "scope",
        "--mlx-matrix-scope",
        "Which tests the plugin instruments: 'marked' (marked tests and tests using the "
        "fixtures) or 'all' (every test) (default: marked)",
        parse_choice("marked", "all"),
        "marked",
        metavar="marked|all",
        example="all",
    ),
    Option(
        "parity",
        "--mlx-parity",
        "Compare compiled calls with eager: 'all' calls, the 'first' call after each trace, "
        "or 'off' (default: all)",
        parse_choice("all", "first", "off"),
        "all",
        metavar="all|first|off",
        example="first",
    ),
    Option(
        "rtol",
        "--mlx-rtol",
        "Relative tolerance for parity, for every dtype (default: per dtype, e.g. 1.3e-6 "
        "for float32)",
        parse_tolerance,
        None,
        metavar="RTOL",
        ini_types=("float",),
        example=0.001,
        bad=("-1", "nan", "inf", "1e999", "1" + "0" * 400),
    ),
    Option(
        "atol",
        "--mlx-atol",
        "Absolute tolerance for parity, for every dtype (default: per dtype, e.g. 1e-5 "
        "for float32)",
        parse_tolerance,
        None,
        metavar="ATOL",
        ini_types=("float",),
        example=0.5,
        bad=("-1", "nan", "inf", "1e999", "1" + "0" * 400),
    ),
    Option(
        "max_recompiles",
        "--mlx-max-recompiles",
        "Retraces allowed per compiled function per test variant after its first trace: a "
        "number, or 'auto' (fail on retraces caused only by Python constants, by compiling the "
        "same code again, or, in [shapeless], by shapes; allow and report the others) "
        "(default: auto)",
        parse_budget,
        "auto",
        metavar="auto|N",
        ini_types=("int", "string"),
        example=3,
        bad=("-1", "1.5", "two"),
    ),
    Option(
        "max_shapes",
        "--mlx-max-shapes",
        "Under the auto budget, how many distinct input shapes (or values of one Python "
        "argument) one compiled function may trace per test variant before it is a retrace "
        "storm (MLX keeps every graph); 0 = no limit (default: 8)",
        parse_count,
        8,
        metavar="N",
        ini_types=("int",),
        example=12,
        bad=("-1", "1.5", "many"),
    ),
    Option(
        "timings",
        "--mlx-timings",
        "Time every compiled function a test calls: eager, compiled and shapeless medians, "
        "speedup, compile cost, memory, ops -> kernels; prints a table at the end",
        parse_flag,
        False,
        is_flag=True,
        ini_types=("bool",),
        example=True,
        bad=("maybe",),
    ),
    Option(
        "timings_budget",
        "--mlx-timings-budget",
        "Seconds of steady-state timing per test, shared by its functions and modes; first "
        "calls and warm-up come on top (default: 1.0)",
        parse_seconds,
        1.0,
        metavar="SECONDS",
        ini_types=("float",),
        example=0.2,
        bad=("0", "-1", "nan", "inf", "1e999"),
    ),
    Option(
        "report_json",
        "--mlx-report-json",
        "Write every test variant's outcome, traces, diagnoses and timings to this JSON file "
        "(schema: docs/report-schema.md)",
        parse_json_path,
        None,
        metavar="PATH",
        example="out/report.json",
        bad=(".", "r.xml", "missing/../r.json", "/proc/r.json", "data.txt/r.json"),
    ),
    Option(
        "report_html",
        "--mlx-report-html",
        "Write a self-contained HTML page (no network) with the timings table, speedup and "
        "bandwidth charts, trace histories and diagnoses (docs/html-report.md)",
        parse_html_path,
        None,
        metavar="PATH",
        example="out/report.html",
        bad=(".", "r.json", "missing/../r.html", "data.txt/r.html"),
    ),
    Option(
        "compare",
        "--mlx-compare",
        "Compare timings with a JSON report saved by --mlx-report-json and print the deltas",
        parse_existing_json,
        None,
        metavar="PATH",
        example="baseline.json",
        bad=("missing.json", "."),
    ),
    Option(
        "compare_fail",
        "--mlx-compare-fail",
        "With --mlx-compare: fail tests that regressed beyond noise, e.g. 'speedup:10%' or "
        "'compiled.median:5%' (comma-separated)",
        parse_compare_fail,
        (),
        metavar="EXPR",
        example="speedup:10%,compiled.median:5%",
        bad=("speedup", "speedup:10", "eager.speedup:5%", "compiled.median:-5%"),
    ),
    Option(
        "sanitize",
        "--mlx-sanitize",
        "Diagnose compile bugs in compiled and shapeless variants: placeholder leaks, stale "
        "captures, uncaptured random state, host syncs while tracing, shapeless probes "
        "(default: on)",
        parse_switch,
        True,
        metavar="on|off",
        ini_types=("bool", "string"),
        example="off",
        bad=("maybe",),
    ),
    Option(
        "max_check_bytes",
        "--mlx-max-check-bytes",
        "Checks (parity shadow, shapeless probe) skip a call, with a note, whose estimated "
        "bytes (arguments, captured arrays, declared state, outputs) exceed this: an int or "
        "a size such as 512MiB or 2GB; 0 means no limit (default: 1GiB)",
        parse_size,
        2**30,
        metavar="SIZE",
        ini_types=("int", "string"),
        example="512MiB",
        bad=("-1", "2XB"),
    ),
    Option(
        "cov_context",
        "--mlx-cov-context",
        "Set coverage.py's dynamic context to '<nodeid>|<mode>' ('|trace' appended while MLX "
        "traces) in instrumented tests; needs coverage running (--cov or coverage run)",
        parse_flag,
        False,
        is_flag=True,
        ini_types=("bool",),
        example=True,
        bad=("maybe",),
    ),
)


class Settings(NamedTuple):
    matrix: bool = False
    modes: tuple[Mode, ...] = ALL_MODES
    scope: str = "marked"
    parity: str = "all"
    rtol: float | None = None
    atol: float | None = None
    max_recompiles: int | str = "auto"
    max_shapes: int = 8
    timings: bool = False
    timings_budget: float = 1.0
    report_json: str | None = None
    report_html: str | None = None
    compare: str | None = None
    compare_fail: tuple[CompareRule, ...] = ()
    sanitize: bool = True
    #: bytes a check may evaluate per call; 0 means no limit
    max_check_bytes: int = 2**30
    cov_context: bool = False


def _ini_type(option: Option) -> Any:
    """The ini type to register: the union of ``option.ini_types`` where pytest knows unions
    (>= 9.2); else, for a mixed option (an int or ``auto``), the last, most permissive type it
    knows; else its one type if this pytest knows it (``int``/``float`` came in 8.4)."""
    known = {"string", "bool", "args", "linelist"}
    if pytest.version_tuple >= (8, 4):
        known |= {"int", "float"}
    types = [t for t in option.ini_types if t in known] or ["string"]
    if len(types) == 1:
        return types[0]
    python = {"string": str, "bool": bool, "int": int, "float": float}
    if pytest.version_tuple < (9, 2) or not all(t in python for t in types):
        return types[-1]
    union: Any = python[types[0]]
    for name in types[1:]:
        union = union | python[name]
    return union


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlxcompile", "MLX compile testing (pytest-mlxcompile)")
    for option in OPTIONS:
        # argparse %-formats help strings ('%(default)s'): a literal % must be doubled.
        help_text = option.help.replace("%", "%%")
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, help=help_text)
        else:
            group.addoption(option.flag, default=None, metavar=option.metavar, help=help_text)
        parser.addini(option.ini, option.help, type=_ini_type(option), default=None)


def _ini_text(value: object) -> str:
    """An ini value in whatever type pytest gave it, as the text our parsers read."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(part) for part in value)
    return str(value)


def _ini_value(config: pytest.Config, option: Option) -> object:
    try:
        return config.getini(option.ini)
    except (pytest.UsageError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{option.ini} (ini file {config.inipath}): {exc}; "
            f"give it as {option.flag} takes it, e.g. {option.ini} = {_toml(option.example)}"
        ) from None


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def resolve(config: pytest.Config) -> Settings:
    """Settings from the command line and ini file; a bad value is a UsageError naming it."""
    values: dict[str, Any] = {}
    named: dict[str, str] = {}  # how to name where each value came from, in messages
    try:
        for option in OPTIONS:
            cli = config.getoption(option.flag)
            named[option.field] = option.flag
            if cli is not None:
                values[option.field] = True if option.is_flag else option.parse(cli, option.flag)
                continue
            ini = _ini_value(config, option)
            if ini in (None, "", []):
                values[option.field] = option.default
                continue
            text = _ini_text(ini)
            source = f"{option.ini} = {text} (ini file)"
            named[option.field] = f"{option.ini} (ini file)"
            values[option.field] = option.parse(text, source)
        if values["compare_fail"] and values["compare"] is None:
            raise ValueError(
                "--mlx-compare-fail needs a baseline; add --mlx-compare=PATH "
                "(a report saved with --mlx-report-json)"
            )
        for field in ("report_json", "report_html"):
            if values[field] is not None:
                values[field] = check_writable(values[field], named[field])
        if values["report_json"] is not None and values["compare"] is not None:
            refuse_same_file(values["report_json"], values["compare"], named)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-mlxcompile: {exc}") from None
    return Settings(**values)


def refuse_same_file(report: str, baseline: str, named: dict[str, str]) -> None:
    """A report written over the baseline it was compared with ratchets the gate: a run that
    regressed (or one within tolerance, run after run) becomes the next run's reference."""
    same = os.path.realpath(report) == os.path.realpath(baseline)
    if not same and os.path.exists(report):
        same = os.path.samefile(report, baseline)
    if same:
        raise ValueError(
            f"{named['report_json']}={report!r} and {named['compare']}={baseline!r} are the "
            "same file: "
            "this run would overwrite its own baseline (even when the gate fails). Write the "
            "report elsewhere (e.g. --mlx-report-json=new.json) and replace the baseline "
            "deliberately when the run is good"
        )


def check_writable(path: str, flag: str) -> str:
    """Check at start-up that a report can be written at ``path`` (folders may be missing).

    Walks the parent folders as the OS will (a ``..`` after a missing folder cannot be
    resolved), then creates and removes a temporary file in the nearest existing folder.
    """
    where = f"{flag}={path!r}: cannot write a report there"
    parent = os.path.dirname(path)
    current = os.sep if os.path.isabs(path) else ""
    missing: str | None = None
    for part in [p for p in parent.split(os.sep) if p]:
        step = os.path.join(current, part)
        if missing is not None:
            if part == os.pardir:
                raise ValueError(
                    f"{where}: {missing!r} does not exist, so '..' after it cannot be resolved; "
                    f"give the path without it, e.g. {os.path.normpath(path)!r}"
                )
        elif os.path.isdir(step or os.curdir):
            current = step
        elif os.path.exists(step):
            raise ValueError(f"{where}: {step!r} is a file, not a folder")
        else:
            missing = step
    try:
        fd, probe = tempfile.mkstemp(prefix=".mlx-report-probe-", dir=current or os.curdir)
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc} ({current or os.curdir!r})") from None
    os.close(fd)
    os.unlink(probe)
    return path
