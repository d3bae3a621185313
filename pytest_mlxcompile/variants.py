"""Which tests run in which modes: matrix parametrization at collection, the plan per item."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import pytest

from pytest_mlxcompile.markers import (
    BARE,
    MARKER,
    CompiledMarker,
    MarkerError,
    case_marked,
    closest_outside_cases,
    from_item,
    parse,
)
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.parity import Tolerance
from pytest_mlxcompile.settings import Settings

if TYPE_CHECKING:
    from _pytest.nodes import Node

__all__ = [
    "MODE_KEY",
    "MODE_PARAM",
    "VariantPlan",
    "check_cases",
    "check_markers",
    "is_member",
    "matrix_mode",
    "parametrize",
    "plan",
]

#: The parameter name the matrix uses; also the name of the ``mlx_mode`` fixture it overrides.
MODE_PARAM = "mlx_mode"
#: The mode of a matrix variant made without parametrizing: a unittest.TestCase method
#: (testcases.py), which pytest cannot parametrize.
MODE_KEY = pytest.StashKey[Mode]()
_FIXTURES = frozenset({"mlx_compile", "mlx_recompiles", MODE_PARAM})


class VariantPlan(NamedTuple):
    mode: Mode
    parity: str
    tolerance: Tolerance
    marker: CompiledMarker


def _is_member(marker: CompiledMarker | None, fixturenames: list[str], settings: Settings) -> bool:
    return marker is not None or settings.scope == "all" or not _FIXTURES.isdisjoint(fixturenames)


#: Whether the matrix covers a test with this marker and these fixtures (also for testcases.py).
is_member = _is_member


def matrix_mode(item: pytest.Item) -> Mode | None:
    """The mode the matrix gave this item: its ``mlx_mode`` parameter, or a TestCase variant's."""
    # getattr with a default, never vars(): reading an object's __dict__ makes every later
    # attribute read of it ~5x slower on CPython 3.11, in pytest's code too (benchmarks, P4)
    callspec = getattr(item, "callspec", None)
    mode = callspec.params.get(MODE_PARAM) if callspec is not None else None
    if isinstance(mode, Mode):
        return mode
    if type(item) is pytest.Function:  # only TestCase variants carry a MODE_KEY (P4: a stash
        return None  # miss raises and catches a KeyError)
    return item.stash.get(MODE_KEY, None)


def _marker(metafunc: pytest.Metafunc, cache: PlanCache) -> CompiledMarker | None:
    definition = metafunc.definition
    # a cheap test that rules out most tests before the marker lookup (benchmarks/run.py, P4)
    return from_item(definition) if cache.applies(definition) else None


#: ``choose(metafunc, modes) -> (modes, error)``: the ``pytest_mlxcompile_modes`` hook's answer
ChooseModes = Callable[[pytest.Metafunc, tuple[Mode, ...]], tuple[tuple[Mode, ...], str]]


def parametrize(
    metafunc: pytest.Metafunc,
    settings: Settings,
    cache: PlanCache,
    choose: ChooseModes | None = None,
) -> None:
    """With the matrix on, give each member test one variant per mode: ``test_x[eager]``, ...
    With it off, validate the test's marker (one collection error naming the test)."""
    try:
        marker = _marker(metafunc, cache)
    except MarkerError as exc:
        error = str(exc)
    else:
        error = ""
    if error:  # outside the except block: the report shows the message once, no chained copy
        pytest.fail(error, pytrace=False)
    if not settings.matrix:
        return
    if not _is_member(marker, metafunc.fixturenames, settings) and not _cases_marked(metafunc):
        return
    modes = settings.modes
    if marker is not None and marker.modes is not None:
        modes = tuple(m for m in modes if m in marker.modes)
    vetoed = ""
    if choose is not None:
        chosen, error = choose(metafunc, modes)
        if error:
            pytest.fail(error, pytrace=False)
        if not chosen and modes:
            vetoed = f"the pytest_mlxcompile_modes hook vetoed every mode ({', '.join(modes)})"
        modes = chosen
    if MODE_PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(MODE_PARAM)
    if vetoed:
        metafunc.parametrize(
            MODE_PARAM, [pytest.param(None, marks=pytest.mark.skip(reason=vetoed))], ids=["none"]
        )
        return
    if not modes:
        narrowed = marker.modes if marker is not None and marker.modes else ()
        reason = (
            f"none of the marker's modes ({', '.join(map(str, narrowed))}) is among "
            f"--mlx-modes ({', '.join(map(str, settings.modes))})"
        )
        metafunc.parametrize(
            MODE_PARAM, [pytest.param(None, marks=pytest.mark.skip(reason=reason))], ids=["none"]
        )
        return
    metafunc.parametrize(MODE_PARAM, modes, ids=[m.value for m in modes])


def _cases_marked(metafunc: pytest.Metafunc) -> bool:
    """A parametrize case marked ``compiled`` makes its test a member of the matrix."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        argvalues = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues")
        if case_marked(argvalues):
            return True
    return False


def check_markers(nodes: list[pytest.Item | pytest.Collector], cache: PlanCache) -> None:
    """Validate the marker of each test a module or class made, where no parametrize hook
    did (the matrix off): one collection error naming the test and the argument, as
    :func:`parametrize` gives."""
    checked: set[str] = set()
    for node in nodes:
        if not isinstance(node, pytest.Function) or not cache.applies(node):
            continue
        name = node.originalname  # a parametrized function's cases share its marker
        if name in checked:
            continue
        checked.add(name)
        mark = closest_outside_cases(node)
        if mark is None or not (mark.args or mark.kwargs):  # no marker but its cases', or bare
            continue
        # named after the function, as the parametrize hook names it (not one of its cases)
        nodeid = node.nodeid[: len(node.nodeid) - len(node.name)] + name
        try:
            parse(mark, nodeid)
        except MarkerError as exc:
            error = str(exc)
        else:
            continue
        pytest.fail(error, pytrace=False)  # outside the except block: no chained copy


def check_cases(items: list[pytest.Item | pytest.Collector]) -> list[pytest.Item]:
    """Validate the markers of parametrize cases; return the matrix variants a case's own
    ``modes=`` excludes (the function's own marker narrowed the matrix already), to deselect.
    A bad case marker is one collection error naming the case and the argument."""
    excluded: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or not isinstance(item, pytest.Function):  # most tests, collectors
            continue
        for mark in callspec.marks:
            if mark.name == MARKER:
                break
        else:
            continue
        try:
            marker = from_item(item)
        except MarkerError as exc:
            error = str(exc)
        else:
            error = ""
        if error:  # outside the except block: the report shows the message once
            pytest.fail(error, pytrace=False)
        mode = callspec.params.get(MODE_PARAM)
        allowed = marker.modes if marker is not None else None
        if isinstance(mode, Mode) and allowed is not None and mode not in allowed:
            excluded.append(item)
    return excluded


class PlanCache:
    """What :func:`plan` keeps for one session (a plan depends on the settings too)."""

    __slots__ = ("parents", "plans")

    def __init__(self) -> None:
        #: (id of the marker, mode) -> (the marker, its plan)
        self.plans: dict[tuple[int, Mode], tuple[CompiledMarker, VariantPlan]] = {}
        #: id of a node (a class, a module) -> whether it or a parent carries the marker;
        #: nodes live as long as the session, so their ids stay theirs
        self.parents: dict[int, bool] = {}

    def applies(self, node: Node) -> bool:
        """Whether the marker applies to ``node``: its own markers read now (a test is asked
        once; a loop, not any(): this runs for every test), its parents' from the cache."""
        for mark in node.own_markers:
            if mark.name == MARKER:
                return True
        return self.marked(node.parent)

    def marked(self, node: Node | None) -> bool:
        """Whether ``node`` or one of its parents (class, module, package) carries the marker:
        what ``_marker``'s keywords test tells, without walking every parent's keywords for
        every test (benchmarks/run.py, P4)."""
        if node is None:
            return False
        known = self.parents.get(id(node))
        if known is None:
            known = any(m.name == MARKER for m in node.own_markers) or self.marked(node.parent)
            self.parents[id(node)] = known
        return known


def plan(item: pytest.Item, settings: Settings, cache: PlanCache) -> VariantPlan | None:
    """The mode and checks for this test, or None when the plugin leaves it alone.

    Asked for every test, so a test the plugin leaves alone is ruled out with a few dict
    lookups; a plan is made once per marker and mode (``cache``, kept for one session: a
    plan depends on the settings too), and markers are parsed once (``markers.from_item``).
    """
    if not isinstance(item, pytest.Function):
        return None
    # PlanCache.applies and matrix_mode, inline for the test the plugin leaves alone: no
    # compiled marker (its own markers are its function's and its parametrize case's; its
    # parents' are cached), no matrix parameter, no fixture of ours (benchmarks/run.py, P4)
    for mark in item.own_markers:
        if mark.name == MARKER:
            marker = from_item(item)  # validated at collection
            break
    else:
        parent = item.parent
        marked = cache.parents.get(id(parent))
        if marked is None:
            marked = cache.marked(parent)
        marker = from_item(item) if marked else None
    callspec = getattr(item, "callspec", None)
    mode = matrix_mode(item) if callspec is not None or type(item) is not pytest.Function else None
    if mode is None:
        if marker is None and settings.scope != "all" and _FIXTURES.isdisjoint(item.fixturenames):
            return None
        allowed = marker.modes if marker is not None and marker.modes else None
        mode = Mode.COMPILED if allowed is None or Mode.COMPILED in allowed else allowed[0]
    marker = marker or BARE
    key = (id(marker), mode)
    known = cache.plans.get(key)
    if known is not None:
        return known[1]
    made = VariantPlan(
        mode=mode,
        parity=marker.parity or settings.parity,
        tolerance=Tolerance(
            rtol=marker.rtol if marker.rtol is not None else settings.rtol,
            atol=marker.atol if marker.atol is not None else settings.atol,
        ),
        marker=marker,
    )
    cache.plans[key] = (marker, made)  # the marker kept alive: its id stays its own
    return made
