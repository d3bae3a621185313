"""Command-line options and their ini twins, resolved once into a frozen :class:`Settings`.

Precedence: command line > ini file > default. Each option shares one help text with its ini twin.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_mlxcompile.modes import ALL_MODES, Mode, parse_modes

__all__ = ["OPTIONS", "Option", "Settings", "add_options", "parse_tolerance", "resolve"]

#: The statistics a baseline gate can compare (see ``parse_compare_fail``).
COMPARE_FIELDS = ("median", "min", "first_call")


def parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(value: str, source: str) -> str:
        if value not in choices:
            raise ValueError(f"{source}: {value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def parse_tolerance(value: object, source: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{source}: {value!r} is not a finite number >= 0")
    return number


def parse_flag(value: str, source: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{source}: {value!r} is not a boolean (true/false)")


def parse_seconds(value: str, source: str) -> float:
    seconds = parse_tolerance(value, source)
    if seconds == 0:
        raise ValueError(f"{source}: {value!r} must be more than 0 seconds")
    return seconds


def parse_json_path(value: str, source: str) -> str:
    """A path for a JSON report: not a directory, and named .json so nobody expects HTML."""
    if not value.strip():
        raise ValueError(f"{source}: an empty path; give a file such as mlx-report.json")
    if os.path.isdir(value) or value.endswith(("/", os.sep)):
        raise ValueError(
            f"{source}: {value!r} is a directory; give a file such as {value}/mlx.json"
        )
    if not value.endswith(".json"):
        raise ValueError(f"{source}: {value!r} must end in .json (the report is JSON only)")
    return value


def parse_html_path(value: str, source: str) -> str:
    """A path for the HTML report: not a directory, named .html so a browser opens it."""
    if not value.strip():
        raise ValueError(f"{source}: an empty path; give a file such as mlx-report.html")
    if os.path.isdir(value) or value.endswith(("/", os.sep)):
        raise ValueError(
            f"{source}: {value!r} is a directory; give a file such as {value}/mlx.html"
        )
    if not value.endswith((".html", ".htm")):
        raise ValueError(f"{source}: {value!r} must end in .html (the report is one HTML page)")
    return value


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


@dataclass(frozen=True)
class CompareRule:
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


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    help: str
    parse: Callable[[str, str], Any]
    default: Any
    is_flag: bool = False
    metavar: str | None = None

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
    ),
    Option(
        "modes",
        "--mlx-modes",
        "Comma-separated modes for the matrix (default: eager,compiled,shapeless)",
        lambda v, s: parse_modes(v, source=s),
        ALL_MODES,
        metavar="MODES",
    ),
    Option(
        "scope",
        "--mlx-matrix-scope",
        "Which tests the plugin instruments: 'marked' (marked tests and tests using the "
        "fixtures) or 'all' (every test) (default: marked)",
        parse_choice("marked", "all"),
        "marked",
        metavar="marked|all",
    ),
    Option(
        "parity",
        "--mlx-parity",
        "Compare compiled calls with eager: 'all' calls, the 'first' call after each trace, "
        "or 'off' (default: all)",
        parse_choice("all", "first", "off"),
        "all",
        metavar="all|first|off",
    ),
    Option(
        "rtol",
        "--mlx-rtol",
        "Relative tolerance for parity, for every dtype (default: per dtype, e.g. 1.3e-6 "
        "for float32)",
        parse_tolerance,
        None,
        metavar="RTOL",
    ),
    Option(
        "atol",
        "--mlx-atol",
        "Absolute tolerance for parity, for every dtype (default: per dtype, e.g. 1e-5 "
        "for float32)",
        parse_tolerance,
        None,
        metavar="ATOL",
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
    ),
    Option(
        "timings",
        "--mlx-timings",
        "Time every compiled function a test calls: eager, compiled and shapeless medians, "
        "speedup, compile cost, memory, ops -> kernels; prints a table at the end",
        parse_flag,
        False,
        is_flag=True,
    ),
    Option(
        "timings_budget",
        "--mlx-timings-budget",
        "Seconds of steady-state timing per test, shared by its functions and modes; first "
        "calls and warm-up come on top (default: 1.0)",
        parse_seconds,
        1.0,
        metavar="SECONDS",
    ),
    Option(
        "report_json",
        "--mlx-report-json",
        "Write every test variant's outcome, traces, diagnoses and timings to this JSON file "
        "(schema: docs/report-schema.md)",
        parse_json_path,
        None,
        metavar="PATH",
    ),
    Option(
        "report_html",
        "--mlx-report-html",
        "Write a self-contained HTML page (no network) with the timings table, speedup and "
        "bandwidth charts, trace histories and diagnoses (docs/html-report.md)",
        parse_html_path,
        None,
        metavar="PATH",
    ),
    Option(
        "compare",
        "--mlx-compare",
        "Compare timings with a JSON report saved by --mlx-report-json and print the deltas",
        parse_existing_json,
        None,
        metavar="PATH",
    ),
    Option(
        "compare_fail",
        "--mlx-compare-fail",
        "With --mlx-compare: fail tests that regressed beyond noise, e.g. 'speedup:10%' or "
        "'compiled.median:5%' (comma-separated)",
        parse_compare_fail,
        (),
        metavar="EXPR",
    ),
    Option(
        "sanitize",
        "--mlx-sanitize",
        "Diagnose compile bugs in compiled and shapeless variants: placeholder leaks, stale "
        "captures, uncaptured random state, host syncs while tracing, shapeless probes "
        "(default: on)",
        lambda v, s: parse_choice("on", "off")(v, s) == "on",
        True,
        metavar="on|off",
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
    ),
    Option(
        "cov_context",
        "--mlx-cov-context",
        "Set coverage.py's dynamic context to '<nodeid>|<mode>' ('|trace' appended while MLX "
        "traces) in instrumented tests; needs coverage running (--cov or coverage run)",
        parse_flag,
        False,
        is_flag=True,
    ),
)


@dataclass(frozen=True)
class Settings:
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


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlxcompile", "MLX compile testing (pytest-mlxcompile)")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, help=option.help)
        else:
            group.addoption(option.flag, default=None, metavar=option.metavar, help=option.help)
        parser.addini(option.ini, option.help, default=None)


def resolve(config: pytest.Config) -> Settings:
    """Settings from the command line and ini file; a bad value is a UsageError naming it."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        cli = config.getoption(option.flag)
        ini = config.getini(option.ini)
        try:
            if cli is not None:
                values[option.field] = True if option.is_flag else option.parse(cli, option.flag)
            elif ini not in (None, "", []):
                text = ini if isinstance(ini, str) else " ".join(ini)
                source = f"{option.ini} = {text} (ini file)"
                values[option.field] = option.parse(text, source)
            else:
                values[option.field] = option.default
        except ValueError as exc:
            raise pytest.UsageError(f"pytest-mlxcompile: {exc}") from None
    if values["compare_fail"] and values["compare"] is None:
        raise pytest.UsageError(
            "pytest-mlxcompile: --mlx-compare-fail needs a baseline; add --mlx-compare=PATH "
            "(a report saved with --mlx-report-json)"
        )
    return Settings(**values)
