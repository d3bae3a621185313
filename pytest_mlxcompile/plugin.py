"""Hooks and fixtures of pytest-mlxcompile; each delegates to the module that does the work."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import textwrap
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_mlxcompile import (
    _mlx,
    coverage_context,
    hookspecs,
    instrument,
    recompiles,
    record_hook,
    report,
    sanitize,
    settings,
    shapeless_probe,
    testcases,
    timing,
    variants,
)
from pytest_mlxcompile.errors import ParityError
from pytest_mlxcompile.isolation import GlobalState
from pytest_mlxcompile.markers import MARKER_HELP, MarkerError
from pytest_mlxcompile.modes import Mode, parse_modes

settings_key = pytest.StashKey[settings.Settings]()
patched_key = pytest.StashKey[bool]()
run_key = pytest.StashKey[instrument.VariantRun]()
globals_key = pytest.StashKey["GlobalState | None"]()
collector_key = pytest.StashKey[report.Collector]()
baseline_key = pytest.StashKey["report.Baseline | None"]()
last_calls_key = pytest.StashKey[timing.LastCalls]()
timings_key = pytest.StashKey[list[timing.FunctionTiming]]()
emitter_key = pytest.StashKey[record_hook.RecordEmitter]()
cov_context_key = pytest.StashKey[bool]()
coverage_key = pytest.StashKey[Any]()
machine_key = pytest.StashKey[dict[str, Any]]()
saved_key = pytest.StashKey[str]()
html_saved_key = pytest.StashKey[str]()


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


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


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
    config.stash[collector_key] = collector = report.Collector()
    config.pluginmanager.register(collector, "mlxcompile-collector")  # its logreport hook
    config.stash[baseline_key] = (
        report.Baseline.load(resolved.compare) if resolved.compare else None
    )
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(config), "mlxcompile-xdist")
    if resolved.cov_context:
        _start_coverage_contexts(config)


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
    config.stash[cov_context_key] = True


_NO_COVERAGE = (
    "--mlx-cov-context needs coverage.py measuring this process: run "
    "'coverage run -m pytest ...' or add pytest-cov's --cov=SOURCE"
)


def _coverage(item: pytest.Item) -> Any:
    """The running coverage.Coverage for --mlx-cov-context, looked up per test (xdist workers
    start theirs late); None without the option."""
    if not item.config.stash.get(cov_context_key, False):
        return None
    cov = coverage_context.current()
    if cov is None:
        pytest.fail(f"pytest-mlxcompile: {_NO_COVERAGE}", pytrace=False)
    item.stash[coverage_key] = cov
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


# trylast: after @pytest.mark.parametrize, so the mode comes last in ids: test_x[1-compiled].
@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    variants.parametrize(metafunc, metafunc.config.stash[settings_key], _choose_modes)


# wrapper: what the collectors made, adjusted. pytest cannot parametrize a unittest.TestCase:
# swap the collector its unittest plugin makes for one that gives each member method one item
# per mode (testcases.py). A parametrize case's own ``compiled`` marker is validated here (one
# collection error naming the case), and its ``modes=`` honoured by deselecting the variants it
# excludes.
@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, object, object]:
    result = testcases.swap_collector((yield), collector.config.stash[settings_key])
    if not isinstance(result, list) or not result:
        return result
    kept, dropped = variants.check_cases(result)
    if dropped:
        collector.config.hook.pytest_deselected(items=dropped)
    return kept


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


def _observers(item: pytest.Item, plan: variants.VariantPlan) -> list[instrument.Observer]:
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
    observers += _timing_observers(item, plan)
    if item.ihook.pytest_mlxcompile_record.get_hookimpls():
        item.stash[emitter_key] = emitter = record_hook.RecordEmitter(_emit_to(item))
        observers.append(emitter)
    cov = item.stash.get(coverage_key, None)
    if cov is not None and plan.mode.compiles:
        observers.append(coverage_context.TraceContext(cov, _cov_context(item, plan.mode)))
    return observers


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
    hook = item.ihook.pytest_mlxcompile_tolerance
    if len(hook.get_hookimpls()) <= 1:
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


def _timing_observers(item: pytest.Item, plan: variants.VariantPlan) -> list[instrument.Observer]:
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
        _start(item)
    except MarkerError as exc:  # a marker added after collection (item.add_marker)
        error = pytest.fail.Exception(str(exc), pytrace=False)
    except Exception as exc:
        error = exc
    result = yield
    # After every fixture's setup: what a module or session fixture set (a default stream, a
    # device) is the state this test starts from, and stays after it.
    item.stash[globals_key] = GlobalState.capture()
    if error is not None:
        raise error
    return result


def _start(item: pytest.Item) -> None:
    plan = variants.plan(item, item.config.stash[settings_key])
    if plan is None:
        return
    _mlx.core()  # loading mlx.core applies the patch
    cov = _coverage(item)
    if cov is not None:
        coverage_context.switch(cov, _cov_context(item, plan.mode))
    run = instrument.VariantRun(
        plan.mode,
        label=item.nodeid,
        parity=plan.parity,
        tolerance=dataclasses.replace(plan.tolerance, hook=_tolerance_hook(item)),
        # built on the first instrumented call: most trivial tests never make one
        observers=lambda: _observers(item, plan),
        max_check_bytes=item.config.stash[settings_key].max_check_bytes,
    )
    item.stash[run_key] = run
    run.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    __tracebackhide__ = True  # a failed shapeless probe reports without our frames
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
    # Only a passed test gets here: its shapeless graphs are probed at other sizes (a failure
    # of this phase), and it is timed (a failed one is not: its last call may be what broke).
    run = item.stash.get(run_key, None)
    if run is not None:
        shapeless_probe.check(run)
    last = item.stash.get(last_calls_key, None)
    timings = item.stash.setdefault(timings_key, [])
    if last is not None:
        timings += last.measure(contended=_workers(item.config) > 1)
    if timings and item.ihook.pytest_mlxcompile_record.get_hookimpls():
        emit = _emit_to(item)
        for entry in timings:
            emit("timing", entry.to_json())
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
    emitter = item.stash.get(emitter_key, None)
    if emitter is not None and call.excinfo is not None and call.excinfo.errisinstance(ParityError):
        emitter.parity_error = str(call.excinfo.value)
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
        _forget(item, emitter_key)
        _forget(item, coverage_key)
    return test_report


def _forget(item: pytest.Item, key: pytest.StashKey[Any]) -> None:
    if key in item.stash:
        del item.stash[key]


# trylast: stop the variant and restore MLX only after every fixture has been torn down.
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None]:
    __tracebackhide__ = True  # end-of-test checks (shapeless probe) report without our frames
    # Before the fixtures' finalizers (this wrapper is the innermost): undo what the test itself
    # changed, so that fixtures tear down from the state they set up.
    saved = item.stash.get(globals_key, None)
    if saved is not None:
        for note in saved.restore():
            warnings.warn(pytest.PytestWarning(f"pytest-mlxcompile: {note}"), stacklevel=1)
    try:
        return (yield)
    finally:
        run = item.stash.get(run_key, None)
        try:
            if run is not None:
                run.stop()  # may raise: checks that run at the end (shapeless probe) report here
        finally:
            cov = item.stash.get(coverage_key, None)
            if cov is not None:
                coverage_context.switch(cov, "")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    collector = config.stash[collector_key]
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
    report.write_summary(terminalreporter, collector, config.stash[baseline_key], None)
    saved = config.stash.get(saved_key, None)
    if saved is not None:
        terminalreporter.write_line(saved, red="ERROR" in saved, yellow="incomplete" in saved)
    html = config.stash.get(html_saved_key, None)
    if html is not None:
        terminalreporter.write_line(
            f"mlx report: {html} (HTML, {len(collector.records)} test variants)"
        )


# tryfirst: before session fixtures are finalized, which must not run under a dead variant.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    # pytest.exit() or Ctrl-C inside a test skips its teardown: end its variant here.
    active = instrument.active_run()
    if active is not None:
        with contextlib.suppress(Exception):
            active.stop()
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
    ``mlx_recompiles.count(fn)``, ``.history(fn)``, ``with mlx_recompiles.budget(n, fn=None):``,
    ``with mlx_recompiles.allow():`` (accept retraces of code you cannot change)."""
    return recompiles.RecompileCounter(request.node.stash.get(run_key, None))
