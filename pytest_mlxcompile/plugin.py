"""Hooks and fixtures of pytest-mlxcompile; each delegates to the module that does the work."""

from __future__ import annotations

import json
import textwrap
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_mlxcompile import (
    _mlx,
    instrument,
    recompiles,
    report,
    sanitize,
    settings,
    timing,
    variants,
)
from pytest_mlxcompile.isolation import GlobalState
from pytest_mlxcompile.markers import MARKER_HELP, MarkerError
from pytest_mlxcompile.modes import Mode

settings_key = pytest.StashKey[settings.Settings]()
patched_key = pytest.StashKey[bool]()
run_key = pytest.StashKey[instrument.VariantRun]()
globals_key = pytest.StashKey["GlobalState | None"]()
collector_key = pytest.StashKey[report.Collector]()
baseline_key = pytest.StashKey["report.Baseline | None"]()
last_calls_key = pytest.StashKey[timing.LastCalls]()
timings_key = pytest.StashKey[list[timing.FunctionTiming]]()
saved_key = pytest.StashKey[str]()


def _patch_mlx(config: pytest.Config) -> None:
    if config.stash.get(patched_key, False):
        return
    config.stash[patched_key] = True
    # Leave MLX as we found it: a patch installed before this config (importing the package
    # installs it, for max_recompiles() in scripts) outlives it.
    patched_before = instrument.installed() is not None
    undo = _mlx.on_load(instrument.install)
    if not patched_before:
        config.add_cleanup(instrument.uninstall)
    config.add_cleanup(undo)


# tryfirst: patch before conftest files import library code that applies @mx.compile.
@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    _patch_mlx(early_config)


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


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
    config.stash[collector_key] = collector = report.Collector()
    config.pluginmanager.register(collector, "mlxcompile-collector")  # its logreport hook
    config.stash[baseline_key] = (
        report.Baseline.load(resolved.compare) if resolved.compare else None
    )
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(config), "mlxcompile-xdist")


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


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    """A parametrize case's own ``compiled`` marker: validated here (one collection error
    naming the case), and its ``modes=`` honoured by deselecting the variants it excludes."""
    result = yield
    if not isinstance(result, list) or not result:
        return result
    kept, dropped = variants.check_cases(result)
    if dropped:
        collector.config.hook.pytest_deselected(items=dropped)
    return kept


# trylast: after @pytest.mark.parametrize, so the mode comes last in ids: test_x[1-compiled].
@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    variants.parametrize(metafunc, metafunc.config.stash[settings_key])


def _observers(item: pytest.Item, plan: variants.VariantPlan) -> list[instrument.Observer]:
    """The checks that watch this variant's calls (recompiles, sanitizer, timings)."""
    observers = [_recompile_observer(item, plan)]
    if plan.mode.compiles and item.config.stash[settings_key].sanitize:
        observers.append(sanitize.Sanitizer(plan.mode, plan.tolerance))
    return [*observers, *_timing_observers(item, plan)]


def _recompile_observer(item: pytest.Item, plan: variants.VariantPlan) -> instrument.Observer:
    rule = recompiles.budget_rule(
        plan.marker, plan.mode, item.config.stash[settings_key].max_recompiles
    )
    return recompiles.RecompileObserver(
        plan.mode,
        rule,
        label=item.nodeid,
        # stacklevel 6: the user's call, past the observer and the instrumented call path
        warn=lambda message: warnings.warn(pytest.PytestWarning(message), stacklevel=6),
    )


def _timing_observers(item: pytest.Item, plan: variants.VariantPlan) -> list[instrument.Observer]:
    chosen = item.config.stash[settings_key]
    callspec = getattr(item, "callspec", None)
    modes = timing.auto_modes(
        plan.mode,
        plan.marker.timings,
        plan.marker.modes,
        chosen.modes,
        timings_on=chosen.timings,
        in_matrix=callspec is not None and variants.MODE_PARAM in callspec.params,
    )
    if modes is None:
        return []
    item.stash[last_calls_key] = last = timing.LastCalls(
        modes, timing.Budget(max_time=chosen.timings_budget)
    )
    return [last]


# tryfirst: the variant must be active before any fixture's setup calls compiled code.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    # Nothing here may raise before the yield: the other plugins' setup must run, their
    # teardown relies on it (pytest's logging plugin fails with a KeyError otherwise).
    error: BaseException | None = None
    try:
        item.stash[globals_key] = GlobalState.capture()
        _start(item)
    except MarkerError as exc:  # a marker added after collection (item.add_marker)
        error = pytest.fail.Exception(str(exc), pytrace=False)
    except Exception as exc:
        error = exc
    result = yield
    if error is not None:
        raise error
    return result


def _start(item: pytest.Item) -> None:
    plan = variants.plan(item, item.config.stash[settings_key])
    if plan is None:
        return
    _mlx.core()  # loading mlx.core applies the patch
    run = instrument.VariantRun(
        plan.mode,
        label=item.nodeid,
        parity=plan.parity,
        tolerance=plan.tolerance,
        observers=_observers(item, plan),
    )
    item.stash[run_key] = run
    run.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    try:
        result = yield
    except RuntimeError as exc:
        backend = _mlx.missing_backend(exc) if run_key in item.stash else None
        if backend is None:
            raise
        skip = pytest.skip.Exception(
            f"needs MLX's {backend} backend for a custom kernel, which this build lacks "
            f"(default device: {_mlx.core().default_device()}): {exc}"
        )
        # keep the kernel call's traceback, so the skip points at the user's line
        raise skip.with_traceback(exc.__traceback__) from None
    # Only a passed test gets here: a failed one is not timed, its last call may be what broke.
    last = item.stash.get(last_calls_key, None)
    timings = item.stash.setdefault(timings_key, [])
    if last is not None:
        timings += last.measure(contended=_workers(item.config) > 1)
    _gate(item, timings)
    return result


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    record = None
    run, timings = item.stash.get(run_key, None), item.stash.get(timings_key, [])
    if call.when == "teardown" and (run is not None or timings):
        record = report.variant_record(item.nodeid, run, timings)
        item.user_properties.extend(report.junit_properties(record))
    test_report = yield
    if record is not None:
        # A report attribute travels from xdist workers to the controller (as JSON text).
        test_report.mlx_record = json.dumps(record)  # type: ignore[attr-defined]
    if call.when == "teardown":
        # pytest keeps every item until the session ends: drop what holds the test's arrays,
        # models and last call arguments now.
        _forget(item, run_key)
        _forget(item, last_calls_key)
        _forget(item, timings_key)
        _forget(item, globals_key)
    return test_report


def _forget(item: pytest.Item, key: pytest.StashKey[Any]) -> None:
    if key in item.stash:
        del item.stash[key]


# trylast: stop the variant and restore MLX only after every fixture has been torn down.
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None]:
    __tracebackhide__ = True  # end-of-test checks (shapeless probe) report without our frames
    try:
        return (yield)
    finally:
        run = item.stash.get(run_key, None)
        try:
            if run is not None:
                run.stop()  # may raise: checks that run at the end (shapeless probe) report here
        finally:
            saved = item.stash.get(globals_key, None) or GlobalState.capture()
            if saved is not None:
                for note in saved.restore():
                    warnings.warn(pytest.PytestWarning(f"pytest-mlxcompile: {note}"), stacklevel=1)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    collector = config.stash[collector_key]
    lines = recompiles.summary_lines(recompiles.summary_entries(collector.records.items()))
    if lines:
        terminalreporter.write_sep("=", "recompiles")
        for line in lines:
            terminalreporter.write_line(line)
    report.write_summary(terminalreporter, collector, config.stash[baseline_key], None)
    saved = config.stash.get(saved_key, None)
    if saved is not None:
        terminalreporter.write_line(saved, red="ERROR" in saved, yellow="incomplete" in saved)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    config = session.config
    if settings_key not in config.stash or collector_key not in config.stash:
        return  # pytest_configure did not finish (a usage error)
    path = config.stash[settings_key].report_json
    if path is None or _is_worker(config):
        return
    interrupted = int(exitstatus) == pytest.ExitCode.INTERRUPTED
    # -x/--maxfail stop the session; a stop after the last test left nothing out
    stopped = bool(session.shouldstop or session.shouldfail) and (
        config.stash[collector_key].finished < session.testscollected
    )
    complete = not interrupted and not stopped and int(exitstatus) in _COMPLETE
    doc = report.document(
        config.stash[collector_key],
        config.stash[settings_key],
        report.machine_info(),
        _workers(config),
        report.RunEnd(int(exitstatus), interrupted, complete),
    )
    config.stash[saved_key] = report.save(path, doc)


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
    return timing.Benchmark(
        timing.Budget(max_time=config.stash[settings_key].timings_budget),
        contended=_workers(config) > 1,
        sink=request.node.stash.setdefault(timings_key, []),
    )


@pytest.fixture
def mlx_mode(request: pytest.FixtureRequest) -> Mode:
    """The mode of the current test variant (a ``Mode``; ``Mode.COMPILED == "compiled"``)."""
    run = request.node.stash.get(run_key, None)
    return run.mode if run is not None else Mode.EAGER


@pytest.fixture
def mlx_compile() -> Callable[..., Any]:
    """``mx.compile`` instrumented for the current variant: same signature, same results."""
    _mlx.core()
    return instrument.instrumented_compile


@pytest.fixture
def mlx_recompiles(request: pytest.FixtureRequest) -> recompiles.RecompileCounter:
    """Trace counts and histories of compiled functions in this test variant, and budgets:
    ``mlx_recompiles.count(fn)``, ``.history(fn)``, ``with mlx_recompiles.budget(n, fn=None):``."""
    return recompiles.RecompileCounter(request.node.stash.get(run_key, None))
