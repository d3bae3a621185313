"""Hooks and fixtures of pytest-mlxcompile; each delegates to the module that does the work."""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest
from _pytest.reports import CollectErrorRepr
from _pytest.unittest import UnitTestCase

from pytest_mlxcompile import _mlx, hookspecs, isolation, records, settings, variants
from pytest_mlxcompile.errors import ParityError
from pytest_mlxcompile.markers import MARKER_HELP, MarkerError
from pytest_mlxcompile.modes import Mode, parse_modes


def instrument_loaded() -> bool:
    """Whether the instrumented compile exists in this process (it comes with ``mlx.core``)."""
    return "pytest_mlxcompile.instrument" in sys.modules


class _Lazy:
    """A module of ours imported on its first use, which then takes its name in this module's
    globals. Loading the plugin costs a suite that never uses a check only what it needs:
    the checks, the timings and the reports stay unloaded (benchmarks/run.py, P4)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            # what pytest and inspect probe every module global for (__wrapped__, _mock_name):
            # only the public names this module uses load the module
            raise AttributeError(attr)
        module = importlib.import_module(f"pytest_mlxcompile.{self._name}")
        globals()[self._name] = module
        return getattr(module, attr)


if TYPE_CHECKING:
    from pytest_mlxcompile import (
        coverage_context,
        instrument,
        recompiles,
        record_hook,
        report,
        sanitize,
        shapeless_probe,
        testcases,
        timing,
    )
else:
    coverage_context = _Lazy("coverage_context")
    instrument = _Lazy("instrument")
    recompiles = _Lazy("recompiles")
    record_hook = _Lazy("record_hook")
    report = _Lazy("report")
    sanitize = _Lazy("sanitize")
    shapeless_probe = _Lazy("shapeless_probe")
    testcases = _Lazy("testcases")
    timing = _Lazy("timing")

settings_key = pytest.StashKey[settings.Settings]()
patched_key = pytest.StashKey[bool]()
#: a member test's VariantRun, from its first use to the next test's setup (or the session's end)
run_key = pytest.StashKey["instrument.VariantRun"]()
collector_key = pytest.StashKey[records.Collector]()
baseline_key = pytest.StashKey["report.Baseline | None"]()
per_test_key = pytest.StashKey["PerTest"]()
machine_key = pytest.StashKey[dict[str, Any]]()
saved_key = pytest.StashKey[str]()
html_saved_key = pytest.StashKey[str]()


def _patch_mlx(config: pytest.Config) -> None:
    if config.stash.get(patched_key, False):
        return
    config.stash[patched_key] = True
    # Leave MLX as we found it: a patch installed before this config (importing the package
    # installs it, for max_recompiles() in scripts) outlives it.
    patched_before = instrument_loaded() and instrument.installed() is not None
    undo = _mlx.on_load(_install)  # instrument is imported when mlx.core is
    if not patched_before:
        config.add_cleanup(_uninstall)
    config.add_cleanup(undo)


def _install(mx: Any) -> None:
    instrument.install(mx)


def _uninstall() -> None:
    if instrument_loaded():
        instrument.uninstall()


# tryfirst: patch before conftest files import library code that applies @mx.compile.
@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    _patch_mlx(early_config)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    # Called while pluggy registers this module: the parametrize hook takes the module's place
    # among other plugins' and conftests' implementations (see Parametrize).
    pluginmanager.register(Parametrize(), PARAMETRIZE)


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


# trylast: the built-in answer, asked after every other implementation returned None.
@pytest.hookimpl(trylast=True)
def pytest_mlxcompile_tolerance(
    item: pytest.Item, function: str, where: str, dtype: str, default: tuple[float, float]
) -> tuple[float, float]:
    return default


# trylast: the built-in answer, asked after every other implementation returned None.
@pytest.hookimpl(trylast=True)
def pytest_mlxcompile_modes(metafunc: pytest.Metafunc, modes: tuple[Mode, ...]) -> tuple[Mode, ...]:
    return modes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        resolved = settings.resolve(config)
    except pytest.UsageError:
        if not config.getoption("help", False):
            raise
        resolved = settings.Settings()  # --help works even when a setting is bad
    config.stash[settings_key] = resolved
    _patch_mlx(config)
    if _mlx.loaded_before_hook:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                "pytest-mlxcompile: mlx.core was imported before the plugin loaded, so functions "
                "compiled before then are plain mx.compile and do not follow the test variants. "
                "Load the plugin first: let pytest load it (no early 'import mlx' in the process "
                "that starts pytest or in plugins loaded before it)."
            ),
            stacklevel=2,
        )
    if config.getoption("--mlx-modes") is not None and not resolved.matrix:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"pytest-mlxcompile: --mlx-modes={config.getoption('--mlx-modes')} has no effect "
                "without --mlx-compile-matrix: each marked test runs once, in [compiled] (or the "
                "first of its marker's modes). Add --mlx-compile-matrix to run one variant per "
                "mode, or narrow one test with @pytest.mark.compiled(modes=[...])."
            ),
            stacklevel=2,
        )
    config.stash[collector_key] = records.Collector()
    config.stash[per_test_key] = per_test = PerTest(config, resolved)
    parametrize = config.pluginmanager.get_plugin(PARAMETRIZE)
    if parametrize is not None and not resolved.matrix:
        config.pluginmanager.unregister(parametrize)  # markers: see Parametrize
    config.pluginmanager.register(per_test, "mlxcompile-per-test")
    if per_test.every_record or getattr(config.option, "dist", "no") != "no":
        per_test.reports = Reports(per_test)
        config.pluginmanager.register(per_test.reports, "mlxcompile-reports")
    config.stash[baseline_key] = (
        report.Baseline.load(resolved.compare) if resolved.compare else None
    )
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(config), "mlxcompile-xdist")
    config.add_cleanup(_forget_static_lookups)
    # the state of a test cut short by pytest.exit, or of the test that runs this session
    config.add_cleanup(isolation.unwind())
    if resolved.cov_context:
        _start_coverage_contexts(config)


def _forget_static_lookups() -> None:
    """Empty CPython 3.12's cache of ``inspect.getattr_static``, at the end of a session.

    pluggy reads an instance plugin's hooks with ``getattr_static``, which on 3.12 keeps the
    MRO of each class it saw in a ``functools.lru_cache`` (``_shadowed_dict_from_mro_tuple``;
    3.13 keys it by weak references). Through this plugin's per-session classes, their
    methods' globals and the module's ``__loader__`` (pytest's rewriting import hook, for a
    plugin on sys.path or installed from a wheel), the cache keeps the config and the whole
    session alive until the module clearing at exit, one more full garbage collection
    (tests/test_isolation.py). The cache only saves time; emptying it loses nothing else.
    """
    cache = getattr(inspect, "_shadowed_dict_from_mro_tuple", None)
    clear = getattr(cache, "cache_clear", None)
    if clear is not None:
        clear()


def _start_coverage_contexts(config: pytest.Config) -> None:
    cov = coverage_context.current()
    problem = coverage_context.conflict(cov, getattr(config.option, "cov_context", None))
    # pytest-cov starts a worker's coverage at session start, and an xdist controller runs no
    # tests: there, the check waits for the first test (_coverage)
    distributed = _is_worker(config) or getattr(config.option, "dist", "no") != "no"
    if problem is None and cov is None and not distributed:
        problem = _NO_COVERAGE
    if problem is not None:
        raise pytest.UsageError(f"pytest-mlxcompile: {problem}")
    config.stash[per_test_key].cov_context = True


_NO_COVERAGE = (
    "--mlx-cov-context needs coverage.py measuring this process: run "
    "'coverage run -m pytest ...' or add pytest-cov's --cov=SOURCE"
)


def _coverage() -> Any:
    """The running coverage.Coverage for --mlx-cov-context, looked up per test (xdist workers
    start theirs late)."""
    cov = coverage_context.current()
    if cov is None:
        pytest.fail(f"pytest-mlxcompile: {_NO_COVERAGE}", pytrace=False)
    return cov


def _workers(config: pytest.Config) -> int:
    """How many pytest-xdist workers share this machine (1 without xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    numprocesses = getattr(config.option, "numprocesses", None)
    return max(int(numprocesses or 1), 1) if isinstance(numprocesses, int) else 1


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def settings_line(chosen: settings.Settings) -> str:
    """The header line that says the plugin is active and how it is set."""
    matrix = f"on ({', '.join(map(str, chosen.modes))})" if chosen.matrix else "off"
    timings = f"on ({chosen.timings_budget:g}s per test)" if chosen.timings else "off"
    parts = [
        f"matrix {matrix}",
        f"scope {chosen.scope}",
        f"parity {chosen.parity}",
        f"sanitize {'on' if chosen.sanitize else 'off'}",
        f"timings {timings}",
    ]
    # settings whose default needs no word: shown only when set
    if chosen.max_recompiles != "auto":
        parts.insert(3, f"max recompiles {chosen.max_recompiles}")
    if chosen.rtol is not None or chosen.atol is not None:
        parts.insert(3, f"rtol {chosen.rtol} atol {chosen.atol}")
    return "mlxcompile: " + ", ".join(parts)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if _is_worker(config) or settings_key not in config.stash:
        return []
    width = max(config.get_terminal_writer().fullwidth, 40)
    # wrapped at ", " to the terminal, continuation lines indented
    lines = textwrap.wrap(
        settings_line(config.stash[settings_key]),
        width=width,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    baseline = config.stash.get(baseline_key, None)
    if baseline is None:
        return lines
    lines.append(f"mlxcompile: comparing timings with {baseline.path} (saved {baseline.created})")
    differs = report.machine_mismatch(baseline.machine, report.machine_info())
    if differs:
        lines.append(f"mlxcompile: WARNING: {report.mismatch_warning(differs)}")
    return lines


# Collection hooks, registered with the plugin (before conftests and the per-session object):
# where they run among other plugins' hooks of the same kind decides test ids (a conftest's
# trylast parametrize comes after the mode: test_x[1-eager-a]) and whether a conftest's
# collection wrapper runs around ours.

PARAMETRIZE = "mlxcompile-parametrize"


class Parametrize:
    """The matrix's parametrize hook, on its own object, registered while pluggy registers the
    plugin's module (``pytest_addhooks``), so that it runs where a module-level hook would.

    A run without ``--mlx-compile-matrix`` unregisters it at configure: pytest calls a
    parametrize hook once for every test function it collects, about 12 k instructions each
    (~0.5% of a suite of trivial tests, benchmarks/run.py P4), and without the matrix it
    would only validate markers, which the collection wrapper does then (``_adjust``).
    """

    # trylast: after @pytest.mark.parametrize, so the mode comes last in ids: test_x[1-compiled].
    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        config = metafunc.config
        per_test = config.stash.get(per_test_key, None)
        # the plugin blocked after it loaded (-p no:mlxcompile, set_blocked in a conftest)
        if per_test is None or not config.pluginmanager.is_registered(sys.modules[__name__]):
            return
        variants.parametrize(metafunc, per_test.chosen, per_test.plans, _choose_modes)


# wrapper: what each module's and class's collector made, adjusted (once per collector: a hook
# on each name, pytest_pycollect_makeitem, costs a suite of trivial tests ~0.4%, benchmarks/run.py
# P4). pytest cannot parametrize a unittest.TestCase: its methods' items are replaced by one per
# mode (testcases.py). A parametrize case's own ``compiled`` marker is validated here (one
# collection error naming the case); the variants its ``modes=`` excludes are noted, and
# deselected with pytest's own selection (pytest_collection_modifyitems). trylast: the innermost
# wrapper, so that other plugins' and conftests' wrappers see the adjusted nodes (a trylast one
# registered later still runs inside this one).
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    nodes = report.result
    if not nodes or not isinstance(collector, (pytest.Module, pytest.Class)):
        return report
    call = pytest.CallInfo.from_call(
        lambda: _adjust(collector, nodes), "collect", reraise=(KeyboardInterrupt, SystemExit)
    )
    if call.excinfo is None:
        report.result = call.result
        return report
    # what pytest makes of an error raised while collecting
    longrepr = collector.repr_failure(call.excinfo)
    if not hasattr(longrepr, "toterminal"):
        longrepr = CollectErrorRepr(str(longrepr))
    failed = pytest.CollectReport(collector.nodeid, "failed", longrepr, None)
    failed.call = call  # type: ignore[attr-defined]  # as pytest's own collect reports
    return failed


def _adjust(
    collector: pytest.Collector, nodes: list[pytest.Item | pytest.Collector]
) -> list[pytest.Item | pytest.Collector]:
    if type(collector) is UnitTestCase:  # pytest's own, not another plugin's subclass
        return testcases.expand(collector, nodes, collector.config.stash[settings_key])
    per_test = collector.config.stash[per_test_key]
    if not per_test.chosen.matrix:  # no parametrize hook has seen these tests' markers
        variants.check_markers(nodes, per_test.plans)
    excluded = variants.check_cases(nodes)
    if excluded:
        per_test.excluded.update(excluded)
    return nodes


# trylast: after pytest's own selection (-k, -m, --deselect): the variants a case's ``modes=``
# excludes are counted among the collected items, and as deselected only if still selected.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    excluded = config.stash[per_test_key].excluded
    if not excluded:
        return
    dropped = [item for item in items if item in excluded]
    if dropped:
        items[:] = [item for item in items if item not in excluded]
        config.hook.pytest_deselected(items=dropped)


def _choose_modes(
    metafunc: pytest.Metafunc, modes: tuple[Mode, ...]
) -> tuple[tuple[Mode, ...], str]:
    """The pytest_mlxcompile_modes hook's answer, or an error naming the test and the answer."""
    answer = metafunc.definition.ihook.pytest_mlxcompile_modes(metafunc=metafunc, modes=modes)
    if answer is None:
        return modes, ""
    source = f"{metafunc.definition.nodeid}: the pytest_mlxcompile_modes hook returned {answer!r}"
    if isinstance(answer, (list, tuple)) and not answer:
        return (), ""
    try:
        return parse_modes(
            list(answer) if isinstance(answer, (list, tuple)) else answer, source=source
        ), ""
    except ValueError as exc:
        return (), f"{exc} (return a list of mode names, or None to keep {list(map(str, modes))})"


def _observers(
    item: pytest.Item, plan: variants.VariantPlan, variant: _Variant
) -> list[instrument.Observer]:
    """The checks that watch this variant's calls (recompiles, sanitizer, probe, timings)."""
    observers = [_recompile_observer(item, plan)]
    chosen = item.config.stash[settings_key]
    if plan.mode.compiles and chosen.sanitize:
        sanitizer = sanitize.Sanitizer(plan.mode, plan.tolerance)
        probe = shapeless_probe.ShapelessProbe(
            plan.mode,
            plan.tolerance,
            max_check_bytes=chosen.max_check_bytes,
            stale=sanitizer.graph_is_stale,
        )
        observers += [sanitizer, probe]
    observers += _timing_observers(item, plan, variant)
    if _has_record_hook(item):
        variant.emitter = emitter = record_hook.RecordEmitter(_emit_to(item))
        observers.append(emitter)
    cov = variant.coverage
    if cov is not None and plan.mode.compiles:
        observers.append(coverage_context.TraceContext(cov, _cov_context(item, plan.mode)))
    return observers


def _item_hook(item: pytest.Item, name: str, builtin: int = 0) -> Any:
    """The item's hook ``name`` when an implementation beyond the plugin's ``builtin`` ones
    hears of this test, else None. The session's hook (conftest files' included) is asked
    first: a run without one never builds the item's hook proxy, which costs microseconds per
    test."""
    if len(getattr(item.config.hook, name).get_hookimpls()) <= builtin:
        return None
    hook = getattr(item.ihook, name)
    return hook if len(hook.get_hookimpls()) > builtin else None


def _has_record_hook(item: pytest.Item) -> bool:
    """Whether a pytest_mlxcompile_record implementation hears of this test."""
    return _item_hook(item, "pytest_mlxcompile_record") is not None


def _emit_to(item: pytest.Item) -> record_hook.Emit:
    hook = item.ihook.pytest_mlxcompile_record

    def emit(kind: str, record: dict[str, Any]) -> None:
        # a copy: what an implementation does to it must not change the report
        hook(item=item, kind=kind, record=copy.deepcopy(record))

    return emit


def _cov_context(item: pytest.Item, mode: Mode) -> str:
    return f"{item.nodeid}|{mode}"


def _tolerance_hook(item: pytest.Item) -> Callable[..., tuple[float, float] | None] | None:
    """What parity asks for a tolerance; None when only the built-in answer is there (then a
    parity check pays nothing for the hook)."""
    hook = _item_hook(item, "pytest_mlxcompile_tolerance", builtin=1)
    if hook is None:
        return None

    def ask(
        function: str, where: str, dtype: str, default: tuple[float, float]
    ) -> tuple[float, float] | None:
        answer = hook(item=item, function=function, where=where, dtype=dtype, default=default)
        if answer is None:
            return None
        try:
            rtol, atol = answer
            return (
                settings.parse_tolerance(rtol, "rtol"),
                settings.parse_tolerance(atol, "atol"),
            )
        except (TypeError, ValueError) as exc:
            error = str(exc)
        pytest.fail(
            f"pytest-mlxcompile: the pytest_mlxcompile_tolerance hook returned {answer!r} "
            f"for {function} ({where}) {dtype}: {error}; return (rtol, atol), two numbers "
            ">= 0, or None to keep the default",
            pytrace=False,
        )

    return ask


def _recompile_observer(item: pytest.Item, plan: variants.VariantPlan) -> instrument.Observer:
    chosen = item.config.stash[settings_key]
    rule = recompiles.budget_rule(plan.marker, plan.mode, chosen.max_recompiles, chosen.max_shapes)
    return recompiles.RecompileObserver(
        plan.mode,
        rule,
        label=item.nodeid,
        # stacklevel 6: the user's call, past the observer and the instrumented call path
        warn=lambda message: warnings.warn(pytest.PytestWarning(message), stacklevel=6),
    )


def _timing_observers(
    item: pytest.Item, plan: variants.VariantPlan, variant: _Variant
) -> list[instrument.Observer]:
    chosen = item.config.stash[settings_key]
    modes = timing.auto_modes(
        plan.mode,
        plan.marker.timings,
        plan.marker.modes,
        chosen.modes,
        timings_on=chosen.timings,
        in_matrix=variants.matrix_mode(item) is not None,
    )
    if modes is None:
        return []
    variant.last = last = timing.LastCalls(modes, timing.Budget(max_time=chosen.timings_budget))
    return [last]


def _gate(item: pytest.Item, timings: list[timing.FunctionTiming]) -> None:
    """--mlx-compare-fail: fail this test (an ordinary failure) if its timings regressed."""
    baseline, rules = item.config.stash[baseline_key], item.config.stash[settings_key].compare_fail
    try:
        message = report.gate(item.nodeid, timings, baseline, rules)
    except (ArithmeticError, TypeError, ValueError) as exc:  # a baseline is validated at start-up
        warnings.warn(
            pytest.PytestWarning(
                f"pytest-mlxcompile: could not compare {item.nodeid} with the baseline "
                f"{baseline.path if baseline else ''}: {type(exc).__name__}: {exc}; "
                "the test's result is its own"
            ),
            stacklevel=1,
        )
        return
    if message is not None:
        pytest.fail(message, pytrace=False)


class _Variant:
    """What the plugin keeps about one test it runs: a member of the matrix (``run``), or a test
    that uses ``mlx_benchmark`` (``timings``)."""

    __slots__ = ("coverage", "emitter", "last", "plan", "reports", "run", "timings")

    def __init__(self, plan: variants.VariantPlan | None = None) -> None:
        self.plan = plan
        #: started on first use (instrument.start_later): None while the test has not needed it
        self.run: instrument.VariantRun | None = None
        self.last: timing.LastCalls | None = None
        self.timings: list[timing.FunctionTiming] = []
        self.emitter: record_hook.RecordEmitter | None = None
        self.coverage: Any = None
        #: the setup and call reports, for the record's outcome and duration (where
        #: :class:`Reports` reads them)
        self.reports: list[pytest.TestReport] = []


class PerTest:
    """The hooks that run for every test, one instance per session (registered at configure).

    What they keep about the running test lives in attributes, not in the item's stash: a
    stash lookup is a Python call (a miss raises inside), and these hooks run for every test of
    a suite, most of which the plugin leaves alone (benchmarks/run.py, P4). pytest runs one
    test at a time per process, and each item's hooks from its setup to the end of its
    teardown.
    """

    def __init__(self, config: pytest.Config, chosen: settings.Settings) -> None:
        self.config = config
        self.chosen = chosen
        self.collector = config.stash[collector_key]
        self.plans = variants.PlanCache()
        #: matrix variants a parametrize case's ``modes=`` excludes (deselected after collection)
        self.excluded: set[pytest.Item] = set()
        self.worker = _is_worker(config)
        #: a record for every variant, not only those that called compiled code: for the JSON
        #: and HTML reports, which list them all (and an xdist controller may write them)
        self.every_record = (
            self.worker or chosen.report_json is not None or chosen.report_html is not None
        )
        #: where the tests' reports are read (None: nothing needs them, the common run)
        self.reports: Reports | None = None
        self.cov_context = False  # --mlx-cov-context, set by _start_coverage_contexts
        #: the test in progress, and what the plugin keeps about it (None: it is left alone)
        self.item: pytest.Item | None = None
        #: the nodeid of the test whose variant this is: current while ``variant`` is not None
        self.nodeid = ""
        self.variant: _Variant | None = None
        self.saved: isolation.GlobalState | None = None
        #: the finished test whose stash still holds its run, for conftest code that reads it
        #: up to its last report (forget_run)
        self.ran: pytest.Item | None = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # what the parametrize hook learned of classes' and modules' markers predates
        # pytest_collection_modifyitems, which may add some (cls.add_marker)
        self.plans.parents.clear()

    def forget_run(self) -> None:
        """Drop the last finished test's run from its stash, at the next test's setup or the
        session's end: pytest keeps every item until the session ends, and a run holds the
        test's arrays, models and last call arguments."""
        if self.ran is not None:
            with contextlib.suppress(KeyError):  # a conftest may have deleted it
                del self.ran.stash[run_key]
            self.ran = None

    def variant_of(self, item: pytest.Item, *, create: bool = False) -> _Variant | None:
        """The test's variant state; ``create``: make it (mlx_benchmark in a plain test)."""
        if self.item is not item:
            return None
        if self.variant is None and create:
            self.nodeid = item.nodeid
            self.variant = _Variant()
        return self.variant

    # tryfirst: the variant must be active before any fixture's setup calls compiled code.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None]:
        # self.nodeid is set with the variant (_start, variant_of), not here: nodeid is a
        # property, whose getter builds the string in pytest 9.2 (two calls for every test)
        self.item, self.variant, self.saved = item, None, None
        if self.ran is not None:
            self.forget_run()
        # Nothing here may raise before the yield: the other plugins' setup must run, their
        # teardown relies on it (pytest's logging plugin fails with a KeyError otherwise).
        error: BaseException | None = None
        try:
            plan = variants.plan(item, self.chosen, self.plans)
            if plan is not None:  # None for most tests: no frame of _start for them
                self._start(item, plan)
        except MarkerError as exc:  # a marker added after collection (item.add_marker)
            error = pytest.fail.Exception(str(exc), pytrace=False)
        except Exception as exc:
            error = exc
        try:
            result = yield
        except ParityError as exc:  # a fixture's compiled call
            self._parity_failed(exc)
            raise
        # After every fixture's setup: what a module or session fixture set (a default stream,
        # a device) is the state this test starts from, and stays after it.
        self.saved = isolation.GlobalState.capture()
        if error is not None:
            raise error
        return result

    def _start(self, item: pytest.Item, plan: variants.VariantPlan) -> None:
        _mlx.core()  # loading mlx.core applies the patch
        self.nodeid = item.nodeid
        self.variant = variant = _Variant(plan)
        if self.cov_context:
            variant.coverage = cov = _coverage()
            coverage_context.switch(cov, _cov_context(item, plan.mode))
        instrument.check_compile_on(plan.mode)
        # built when the test first needs it: most trivial tests never call compiled code
        instrument.start_later(lambda: self._run(item, variant))

    def _run(self, item: pytest.Item, variant: _Variant) -> instrument.VariantRun:
        plan = variant.plan
        assert plan is not None
        hook, tolerance = _tolerance_hook(item), plan.tolerance
        run = instrument.VariantRun(
            plan.mode,
            label=item.nodeid,
            parity=plan.parity,
            tolerance=tolerance if hook is None else tolerance._replace(hook=hook),
            # built on the first instrumented call
            observers=lambda: _observers(item, plan, variant),
            max_check_bytes=self.chosen.max_check_bytes,
        )
        variant.run = run
        item.stash[run_key] = run  # for conftest code that inspects a variant's records
        run.start(checked=True)  # at the test's start (_start)
        return run

    def run_of(self, item: pytest.Item) -> instrument.VariantRun | None:
        """The test's VariantRun, started now if it was not yet (a fixture asks for it)."""
        variant = self.variant_of(item)
        if variant is not None and variant.run is None and variant.plan is not None:
            instrument.active_run()  # starts the pending variant
        return variant.run if variant is not None else None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None]:
        __tracebackhide__ = True  # a failed shapeless probe reports without our frames
        variant = self.variant if self.item is item else None
        if variant is None:
            result = yield
            # not the plugin's test, unless its body asked for mlx_benchmark
            # (request.getfixturevalue)
            if self.variant is None or self.item is not item:
                return result
            self._after_call(item, self.variant)
            return result
        try:
            result = yield
        except ParityError as exc:
            self._parity_failed(exc)
            raise
        except (RuntimeError, ValueError) as exc:
            if variant.plan is None:
                raise
            device = _mlx.core().default_device()
            needs = _mlx.kernel_cannot_run(exc, device.type.name)
            if needs is None:
                raise
            skip = pytest.skip.Exception(f"needs {needs} (default device: {device}): {exc}")
            # keep the kernel call's traceback, so the skip points at the user's line
            raise skip.with_traceback(exc.__traceback__) from None
        self._after_call(item, variant)
        return result

    def _after_call(self, item: pytest.Item, variant: _Variant) -> None:
        __tracebackhide__ = True
        # Only a passed test gets here: its shapeless graphs are probed at other sizes (a
        # failure of this phase), and it is timed (a failed one is not: its last call may be
        # what broke).
        run = variant.run  # None: the test needed no variant (it called no compiled code)
        if run is not None and run.built_observers:  # none built: no compiled call was made
            shapeless_probe.check(run)
        timings = variant.timings
        if variant.last is not None:
            timings += variant.last.measure(contended=_workers(self.config) > 1)
        if timings and _has_record_hook(item):
            emit = _emit_to(item)
            for entry in timings:
                emit("timing", entry.to_json())
        if self.config.stash[baseline_key] is not None:
            _gate(item, timings)

    def _parity_failed(self, exc: ParityError) -> None:
        emitter = self.variant.emitter if self.variant is not None else None
        if emitter is not None:
            emitter.parity_error = str(exc)

    # trylast: stop the variant and restore MLX only after every fixture has been torn down.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None]:
        __tracebackhide__ = True  # end-of-test checks (shapeless probe) report without our frames
        # Before the fixtures' finalizers (this wrapper is the innermost): undo what the test
        # itself changed, so that fixtures tear down from the state they set up.
        mine = self.item is item
        saved = self.saved if mine else None
        if saved is not None:
            for note in saved.restore():
                warnings.warn(pytest.PytestWarning(f"pytest-mlxcompile: {note}"), stacklevel=1)
        variant = self.variant if mine else None
        if variant is None:  # most tests: nothing to stop or record after the finalizers
            self.item = self.saved = None
            return (yield)
        try:
            return (yield)
        finally:
            run = variant.run
            try:
                if run is not None:
                    run.stop()  # may raise: checks that run at the end (shapeless probe) do
                elif variant.plan is not None:
                    instrument.start_later(None)  # a variant nothing needed
            finally:
                if variant.coverage is not None:
                    coverage_context.switch(variant.coverage, "")
                self._finish(item, variant)
                self.item = self.variant = self.saved = None

    def _finish(self, item: pytest.Item, variant: _Variant) -> None:
        """At the end of the teardown, after every fixture's: the variant's record, with its
        JUnit properties on the item (pytest copies them onto the teardown report, which
        junitxml reads). Its outcome and duration come from its reports, where
        :class:`Reports` is registered (the JSON and HTML reports, xdist)."""
        run = variant.run
        if run is not None:
            self.ran = item
        if not (variant.timings or (run is not None and run.records) or self.every_record):
            # nothing to show: a variant that called no compiled function (an earlier run
            # of the same item may have left properties)
            records.set_junit_properties(item.user_properties, None)
            return
        plan = variant.plan
        record = records.variant_record(
            self.nodeid, run, variant.timings, plan.mode if plan is not None else None
        )
        records.set_junit_properties(item.user_properties, record)
        if self.reports is None:
            self.collector.records[self.nodeid] = record
        else:
            self.reports.pending = (record, variant.reports)


class Reports:
    """``pytest_runtest_logreport``, registered only where a record needs its test's reports:
    the JSON and HTML reports (a variant's outcome and duration, and whether every test ran),
    an xdist worker (a record travels to the controller on its test's teardown report) and an
    xdist controller (records arrive that way, and a crashed worker's report). A plain run
    has its records from :class:`PerTest` and pays nothing per test here (benchmarks, P4).
    """

    def __init__(self, per_test: PerTest) -> None:
        self.per_test = per_test
        self.collector = per_test.collector
        self.worker = per_test.worker
        #: the record of the variant whose teardown just ran (PerTest._finish), with its setup
        #: and call reports: its teardown report is the next one
        self.pending: tuple[dict[str, Any], list[pytest.TestReport]] | None = None

    # tryfirst: before xdist's worker sends the report to the controller
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        when = report.when
        pending = self.pending
        if when == "setup" or when == "call":
            variant = self.per_test.variant
            if variant is not None and report.nodeid == self.per_test.nodeid:
                variant.reports.append(report)
            elif pending is not None and pending[0]["nodeid"] == report.nodeid:
                # logged after its test's teardown: a rerun plugin (pytest-rerunfailures)
                # runs the test with log=False and logs its three reports afterwards
                pending[1].append(report)
            return
        if pending is not None and pending[0]["nodeid"] == report.nodeid:  # its teardown
            self.pending = None
            record, phases = pending
            outcome, duration = None, 0.0
            for phase in (*phases, report):
                outcome = records.outcome(outcome, phase)
                duration += phase.duration
            record["outcome"], record["duration"] = outcome, duration
            # A report attribute travels from xdist workers to the controller: as JSON text.
            report.mlx_record = json.dumps(record) if self.worker else record  # type: ignore[attr-defined]
        # on an xdist controller this sees every worker's reports too
        self.collector.add(report)  # teardown, or a crashed worker's


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    collector = config.stash[collector_key]
    if config.stash[baseline_key] is not None or any(
        r["functions"] or r["timings"] for r in collector.records.values()
    ):
        _write_sections(terminalreporter, collector)
    saved = config.stash.get(saved_key, None)
    if saved is not None:
        terminalreporter.write_line(saved, red="ERROR" in saved, yellow="incomplete" in saved)
    html = config.stash.get(html_saved_key, None)
    if html is not None:
        terminalreporter.write_line(
            f"mlx report: {html} (HTML, {len(collector.records)} test variants)"
        )


def _write_sections(
    terminalreporter: pytest.TerminalReporter, collector: records.Collector
) -> None:
    """The recompiles, shapeless and timings sections (a run that called no compiled function
    has none, and never loads the modules that write them)."""
    entries = recompiles.summary_entries(collector.records.items())
    lines = recompiles.summary_lines(entries, terminalreporter.verbosity)
    if lines:
        terminalreporter.write_sep("=", "recompiles")
        for line in lines:
            terminalreporter.write_line(line)
    lines = shapeless_probe.summary_lines(collector.records.values())
    if lines:
        terminalreporter.write_sep("=", "shapeless")
        for line in lines:
            terminalreporter.write_line(line)
    baseline = terminalreporter.config.stash[baseline_key]
    report.write_summary(terminalreporter, collector, baseline, None)


# tryfirst: before session fixtures are finalized, which must not run under a dead variant.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    # pytest.exit() or Ctrl-C inside a test skips its teardown: end its variant here.
    active = instrument.active_run() if instrument_loaded() else None
    if active is not None:
        with contextlib.suppress(Exception):
            active.stop()
    per_test = session.config.stash.get(per_test_key, None)
    if per_test is not None:
        per_test.forget_run()
    _write_reports(session, exitstatus)


def _write_reports(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    config = session.config
    chosen = config.stash.get(settings_key, None)
    if chosen is None or collector_key not in config.stash:
        return  # pytest_configure did not finish (a usage error)
    if _is_worker(config) or (chosen.report_json is None and chosen.report_html is None):
        return
    interrupted = int(exitstatus) == pytest.ExitCode.INTERRUPTED
    # -x/--maxfail stop the session; a stop after the last test left nothing out
    stopped = bool(session.shouldstop or session.shouldfail) and (
        config.stash[collector_key].finished < session.testscollected
    )
    complete = not interrupted and not stopped and int(exitstatus) in _COMPLETE
    doc = report.document(
        config.stash[collector_key],
        chosen,
        config.stash[machine_key] if machine_key in config.stash else report.machine_info(),
        _workers(config),
        report.RunEnd(int(exitstatus), interrupted, complete),
    )
    if chosen.report_json is not None:
        config.stash[saved_key] = report.save(chosen.report_json, doc)
    if chosen.report_html is not None:
        # imported here: a run without --mlx-report-html never pays for loading it
        from pytest_mlxcompile import report_html

        # the JSON report's rule: an incomplete run never replaces a page already there
        target = chosen.report_html
        if not complete and os.path.exists(target):
            target = report.partial_path(target)
        try:
            report_html.write_html(target, doc)
            config.stash[html_saved_key] = target
        except OSError as exc:
            # the run is over: say why there is no page and make the exit status say it too
            config.get_terminal_writer().line(
                f"ERROR: pytest-mlxcompile: cannot write --mlx-report-html="
                f"{chosen.report_html}: {exc.strerror or exc} ({exc.filename or ''})",
                red=True,
            )
            session.exitstatus = pytest.ExitCode.USAGE_ERROR


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    chosen = config.stash.get(settings_key, None)
    if chosen is None or _is_worker(config):
        return
    if chosen.report_json is not None or chosen.report_html is not None:
        # here, not at the end: a bad hook answer is a usage error before any test runs
        config.stash[machine_key] = _machine_info(config)


def _machine_info(config: pytest.Config) -> dict[str, Any]:
    """The plugin's machine facts plus what pytest_mlxcompile_machine_info implementations add."""
    machine = report.machine_info()
    for extra in config.hook.pytest_mlxcompile_machine_info(config=config):
        if extra is None:
            continue
        if not isinstance(extra, dict):
            raise pytest.UsageError(
                f"pytest-mlxcompile: a pytest_mlxcompile_machine_info hook returned {extra!r}; "
                "return a dict of JSON values, or None"
            )
        clash = sorted(set(extra) & set(machine))
        if clash:
            raise pytest.UsageError(
                f"pytest-mlxcompile: a pytest_mlxcompile_machine_info hook returned the key(s) "
                f"{', '.join(map(repr, clash))}, which the plugin fills itself; rename them "
                "(e.g. 'ci_' + key)"
            )
        machine.update(extra)
    return machine


#: Exit statuses of a run that ran every test it collected.
_COMPLETE = frozenset(
    {pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED}
)


class XdistHooks:
    """Registered only when pytest-xdist is installed."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        if error is not None:
            worker = getattr(getattr(node, "gateway", None), "id", "?")
            self.config.stash[collector_key].worker_down(str(worker), error)


@pytest.fixture
def mlx_benchmark(request: pytest.FixtureRequest) -> timing.Benchmark:
    """``mlx_benchmark(fn, *args, modes=("eager", "compiled"), **kwargs)``: time fn in each mode."""
    _mlx.core()
    config = request.config
    variant = config.stash[per_test_key].variant_of(request.node, create=True)
    return timing.Benchmark(
        timing.Budget(max_time=config.stash[settings_key].timings_budget),
        contended=_workers(config) > 1,
        sink=variant.timings if variant is not None else [],
    )


@pytest.fixture
def mlx_mode(request: pytest.FixtureRequest) -> Mode:
    """The mode of the current test variant (a ``Mode``; ``Mode.COMPILED == "compiled"``)."""
    variant = request.config.stash[per_test_key].variant_of(request.node)
    plan = variant.plan if variant is not None else None
    return plan.mode if plan is not None else Mode.EAGER


@pytest.fixture
def mlx_compile() -> Callable[..., Any]:
    """``mx.compile`` instrumented for the current variant: same signature, same results."""
    _mlx.core()
    return instrument.instrumented_compile


@pytest.fixture
def mlx_recompiles(request: pytest.FixtureRequest) -> recompiles.RecompileCounter:
    """Trace counts and histories of compiled functions in this test variant, and budgets:
    ``mlx_recompiles.count(fn)``, ``.history(fn)``, ``with mlx_recompiles.budget(n, fn=None):``,
    ``with mlx_recompiles.allow():`` (accept retraces of code you cannot change)."""
    return recompiles.RecompileCounter(request.config.stash[per_test_key].run_of(request.node))
