"""The ``compiled`` marker: its documented signature and its validated, frozen form."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from pytest_mlxcompile.modes import Mode, parse_modes
from pytest_mlxcompile.settings import parse_tolerance

if TYPE_CHECKING:
    from collections.abc import Sequence

    from _pytest.nodes import Node

__all__ = [
    "BARE",
    "MARKER",
    "MARKER_HELP",
    "CompiledMarker",
    "MarkerError",
    "case_marked",
    "closest",
    "closest_outside_cases",
    "from_item",
    "parse",
]

MARKER = "compiled"
MARKER_HELP = (
    "compiled(*, modes=None, rtol=None, atol=None, max_recompiles=None, parity=None, "
    "timings=None, max_shapes=None): run the test with every mx.compile instrumented and "
    "checked against eager; "
    "with --mlx-compile-matrix once per mode ([eager], [compiled], [shapeless]). modes narrows the "
    "matrix; rtol/atol set parity tolerances; max_recompiles is an int or a dict per mode; parity "
    "is 'all', 'first' or 'off'; timings=True times every compiled function the test calls; "
    "max_shapes is how many distinct input shapes a function may trace under the auto budget "
    "(0: no limit)."
)


class MarkerError(ValueError):
    """A bad ``@pytest.mark.compiled(...)``; the message names the test and the argument."""


class CompiledMarker(NamedTuple):
    modes: tuple[Mode, ...] | None = None
    rtol: float | None = None
    atol: float | None = None
    max_recompiles: int | str | dict[Mode, int] | None = None
    parity: str | None = None
    timings: bool | None = None
    max_shapes: int | None = None

    @classmethod
    def from_mark(cls, mark: pytest.Mark, test: str) -> CompiledMarker:
        if not mark.args and not mark.kwargs:
            return BARE  # a bare @pytest.mark.compiled: nothing to validate
        where = f"@pytest.mark.compiled on {test}"
        if mark.args:
            raise MarkerError(
                f"{where}: takes keyword arguments only, got positional {mark.args!r}; "
                "write e.g. @pytest.mark.compiled(modes=['compiled'])"
            )
        known = cls._fields
        values: dict[str, Any] = {}
        for key, value in mark.kwargs.items():
            if key not in known:
                import difflib  # only for this message: not loaded with the plugin

                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise MarkerError(
                    f"{where}: unknown keyword {key!r}{hint} (accepted: {', '.join(known)})"
                )
            if value is None:
                continue
            try:
                values[key] = _VALIDATORS[key](value, f"{where}: {key}")
            except ValueError as exc:
                raise MarkerError(str(exc)) from None
        return cls(**values)


#: ``@pytest.mark.compiled`` without arguments, and the settings of a test the matrix covers
#: without a marker (frozen: one is shared)
BARE = CompiledMarker()


def _modes(value: object, source: str) -> tuple[Mode, ...]:
    return parse_modes(value, source=source)


def _parity(value: object, source: str) -> str:
    if value not in ("all", "first", "off"):
        raise ValueError(f"{source}={value!r} is not one of 'all', 'first', 'off'")
    return str(value)


def _timings(value: object, source: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{source}={value!r} must be True or False")
    return value


def _budget(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{source}={value!r} must be an int >= 0")
    return value


def _max_recompiles(value: object, source: str) -> int | str | dict[Mode, int]:
    if value == "auto":
        return "auto"
    if isinstance(value, dict):
        per_mode: dict[Mode, int] = {}
        for mode, budget in value.items():
            (parsed,) = parse_modes([mode], source=f"{source} key")
            per_mode[parsed] = _budget(budget, f"{source}[{mode!r}]")
        return per_mode
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{source}={value!r} must be an int >= 0, 'auto', or a dict such as "
            "{'compiled': 2, 'shapeless': 0}"
        )
    return value


def _tolerance(value: object, source: str) -> float:
    return parse_tolerance(value, source)


_VALIDATORS = {
    "modes": _modes,
    "rtol": _tolerance,
    "atol": _tolerance,
    "max_recompiles": _max_recompiles,
    "parity": _parity,
    "timings": _timings,
    "max_shapes": _budget,
}


def closest(node: pytest.Item | pytest.Function) -> pytest.Mark | None:
    """The marker that applies to ``node``: a parametrize case's own
    (``pytest.param(..., marks=pytest.mark.compiled(...))``) before the function's, class's or
    module's (pytest's ``get_closest_marker`` puts the function's first)."""
    # a test without parameters has no callspec (never vars(): see variants.matrix_mode)
    callspec = getattr(node, "callspec", None)
    for mark in callspec.marks if callspec is not None else ():
        if isinstance(mark, pytest.Mark) and mark.name == MARKER:
            return mark
    return _walk(node, ())  # no case carries the marker: none to pass over


def closest_outside_cases(node: pytest.Function) -> pytest.Mark | None:
    """The function's, class's or module's marker, passing over a parametrize case's own
    (which pytest adds to the item's own markers)."""
    callspec = getattr(node, "callspec", None)
    return _walk(node, callspec.marks if callspec is not None else ())


def _walk(node: Node, cases: Sequence[pytest.Mark]) -> pytest.Mark | None:
    """get_closest_marker's order (the node's own markers, then its parents'), passing over
    ``cases``, without the list and generators it builds: asked for every marked test
    (benchmarks/run.py, P4)."""
    at: Node | None = node
    while at is not None:
        for mark in at.own_markers:
            if mark.name == MARKER and not (cases and any(mark is case for case in cases)):
                return mark
        at = at.parent
    return None


def from_item(node: pytest.Item | pytest.Function) -> CompiledMarker | None:
    mark = closest(node)
    if mark is None:
        return None
    if not mark.args and not mark.kwargs:  # bare: nothing to parse, no test id to name
        return BARE
    return parse(mark, node.nodeid)


def parse(mark: pytest.Mark, test: str) -> CompiledMarker:
    """``mark`` parsed for ``test`` (whose id a bad one's error names)."""
    # One Mark object serves every test it decorates (all of a module's, all of a function's
    # parametrize cases): parse it once. A bad one raises every time, naming each test.
    known = _parsed.get(id(mark))
    if known is not None and known[0] is mark:
        return known[1]
    parsed = CompiledMarker.from_mark(mark, test)
    _parsed[id(mark)] = (mark, parsed)  # the mark kept alive: its id stays its own
    return parsed


_parsed: dict[int, tuple[pytest.Mark, CompiledMarker]] = {}


def case_marked(argvalues: object) -> bool:
    """Whether a ``@pytest.mark.parametrize`` argvalues list has a case marked ``compiled``."""
    if not isinstance(argvalues, (list, tuple)):
        return False  # a generator was consumed by pytest already: nothing to look at
    return any(
        getattr(mark, "name", None) == MARKER
        for value in argvalues
        for mark in getattr(value, "marks", ())
    )
