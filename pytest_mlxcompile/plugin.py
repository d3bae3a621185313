"""Hooks and fixtures of pytest-mlxcompile; each delegates to the module that does the work."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_mlxcompile import _mlx, instrument, sanitize, settings, variants
from pytest_mlxcompile.isolation import GlobalState
from pytest_mlxcompile.markers import MARKER_HELP
from pytest_mlxcompile.modes import Mode

settings_key = pytest.StashKey[settings.Settings]()
patched_key = pytest.StashKey[bool]()
run_key = pytest.StashKey[instrument.VariantRun]()
globals_key = pytest.StashKey["GlobalState | None"]()


def _patch_mlx(config: pytest.Config) -> None:
    if config.stash.get(patched_key, False):
        return
    config.stash[patched_key] = True
    undo = _mlx.on_load(instrument.install)
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
    config.stash[settings_key] = settings.resolve(config)
    _patch_mlx(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    variants.parametrize(metafunc, metafunc.config.stash[settings_key])


def _observers(item: pytest.Item, plan: variants.VariantPlan) -> list[instrument.Observer]:
    """The checks that watch this variant's calls (recompiles, sanitizer, timings)."""
    observers: list[instrument.Observer] = []
    if plan.mode.compiles and item.config.stash[settings_key].sanitize:
        observers.append(sanitize.Sanitizer(plan.mode, plan.tolerance))
    return observers


# tryfirst: the variant must be active before any fixture's setup calls compiled code.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    item.stash[globals_key] = GlobalState.capture()
    plan = variants.plan(item, item.config.stash[settings_key])
    if plan is None:
        return (yield)
    _mlx.core()  # loading mlx.core applies the patch
    run = instrument.VariantRun(
        plan.mode,
        label=item.nodeid,
        parity=plan.parity,
        tolerance=plan.tolerance,
        observers=_observers(item, plan),
    )
    item.stash[run_key] = run
    try:
        run.start()
    except instrument.CompileDisabledError as exc:
        error: Exception | None = exc
    else:
        error = None
    result = yield  # other plugins' setup must run even when we fail: teardown relies on it
    if error is not None:
        raise error
    return result


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
