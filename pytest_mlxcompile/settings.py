"""Command-line options and their ini twins, resolved once into a frozen :class:`Settings`.

Precedence: command line > ini file > default. Each option shares one help text with its ini twin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_mlxcompile.modes import ALL_MODES, Mode, parse_modes

__all__ = ["OPTIONS", "Option", "Settings", "add_options", "parse_tolerance", "resolve"]


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
        "sanitize",
        "--mlx-sanitize",
        "Diagnose compile bugs in compiled and shapeless variants: placeholder leaks, stale "
        "captures, uncaptured random state, host syncs while tracing, shapeless probes "
        "(default: on)",
        lambda v, s: parse_choice("on", "off")(v, s) == "on",
        True,
        metavar="on|off",
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
    sanitize: bool = True


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
    return Settings(**values)
