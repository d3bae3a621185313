"""``max_recompiles(n)``: a recompile budget as a decorator or a context manager, in pytest
tests and in plain scripts.

Outside a pytest variant there is no run to record traces, so a budget brings its own: a
compiled-mode :class:`~pytest_mlxcompile.instrument.VariantRun` with parity off and one
:class:`~pytest_mlxcompile.recompiles.RecompileObserver`, made active only around the calls it
budgets (the decorator) or for the block (the context manager). Inside a pytest variant the budget
is added to that variant's observer instead. Only functions compiled through the instrumented
``mx.compile`` can be counted: ``import pytest_mlxcompile`` installs it when MLX loads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_mlxcompile import _mlx, instrument
from pytest_mlxcompile.errors import RecompileError
from pytest_mlxcompile.instrument import InstrumentedFunction, VariantRun
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.recompiles import (
    WHY_AND_FIX,
    FunctionTraces,
    RecompileObserver,
    Rule,
    TraceEvent,
    check_budget,
    function_key,
    observer_of,
)
from pytest_mlxcompile.signature import parameter_names, signature_of

__all__ = ["BudgetedFunction", "RecompileBudget", "TraceCountingFunction", "max_recompiles"]


@dataclass
class _Entered:
    """One ``with max_recompiles(n):`` in progress."""

    observer: RecompileObserver | None = None
    scope: Rule | None = None
    run: VariantRun | None = None
    previous: VariantRun | None = None


class RecompileBudget:
    """What ``max_recompiles(n)`` returns: a decorator and a context manager."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.source = f"max_recompiles({n})"
        self._entered: list[_Entered] = []

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if isinstance(fn, InstrumentedFunction):
            return BudgetedFunction(fn, self)
        if type(fn).__module__ == "mlx.core":
            raise TypeError(
                f"{self.source} cannot see the traces of {fn!r}: it was compiled by MLX before "
                "pytest-mlxcompile patched mx.compile. Fix: import pytest_mlxcompile before "
                "compiling it, or put @max_recompiles under @mx.compile"
            )
        if not callable(fn):
            raise TypeError(f"{self.source} decorates a function, got {fn!r}")
        return TraceCountingFunction(fn, self)

    def __enter__(self) -> RecompileBudget:
        active = instrument.active_run()
        observer = observer_of(active)
        if observer is not None:  # inside a pytest variant: add a scoped budget to its checks
            scope = Rule(self.n, self.source)
            observer.scopes.append(scope)
            self._entered.append(_Entered(observer=observer, scope=scope))
        elif active is not None:  # an [eager] variant: nothing traces
            self._entered.append(_Entered())
        else:
            run = _standalone_run(Rule(self.n, self.source))
            self._entered.append(_Entered(run=run, previous=instrument.activate(run)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        entered = self._entered.pop()
        if entered.observer is not None and entered.scope is not None:
            entered.observer.scopes.remove(entered.scope)
        if entered.run is not None:
            instrument.activate(entered.previous)
            entered.run.stop()


def _standalone_run(rule: Rule | None) -> VariantRun:
    """A compiled-mode run of our own, for budgets outside pytest: fresh caches, no parity."""
    _mlx.core()  # loading MLX applies the patch
    observer = RecompileObserver(Mode.COMPILED, rule, label="standalone")
    run = VariantRun(Mode.COMPILED, label="standalone", parity="off", observers=[observer])
    previous = instrument.active_run()
    try:
        run.start()  # checks that compile is really on
    finally:
        instrument.activate(previous)
    return run


class BudgetedFunction:
    """An ``mx.compile``'d function under ``@max_recompiles(n)``: at most n retraces, ever."""

    def __init__(self, fn: InstrumentedFunction, budget: RecompileBudget) -> None:
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self._budget = budget
        self._run: VariantRun | None = None

    def __repr__(self) -> str:
        return f"<{self._budget.source} {self.__wrapped__!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        fn = self.__wrapped__
        observer = observer_of(instrument.active_run())
        if observer is not None:  # inside a pytest variant: add this budget to its checks
            key = function_key(fn)
            if key not in observer.function_rules:
                observer.function_rules[key] = Rule(self._budget.n, self._budget.source)
            return fn(*args, **kwargs)
        if instrument.active_run() is not None:  # [eager]
            return fn(*args, **kwargs)
        if self._run is None:
            self._run = _standalone_run(None)
            own = observer_of(self._run)
            assert own is not None
            own.function_rules[function_key(fn)] = Rule(self._budget.n, self._budget.source)
        previous = instrument.activate(self._run)
        try:
            return fn(*args, **kwargs)
        finally:
            instrument.activate(previous)


class TraceCountingFunction:
    """A Python function under ``@max_recompiles(n)``, itself under ``@mx.compile``: every run
    of the body is a trace, so it counts them with no help from the instrumented compile."""

    def __init__(self, fun: Callable[..., Any], budget: RecompileBudget) -> None:
        functools.update_wrapper(self, fun)
        # describe() and function_key() find the user's code through __code__
        self.__code__ = getattr(fun, "__code__", None)
        self._fun = fun
        self._budget = budget
        self._run: object = None
        self.traces = self._fresh_traces()

    def _fresh_traces(self) -> FunctionTraces:
        name, where = instrument.describe(self._fun)
        return FunctionTraces(name, where, parameter_names(self._fun))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if instrument.running_eagerly():
            return self._fun(*args, **kwargs)
        run = instrument.active_run()
        if run is not self._run:
            # Each test variant compiles a fresh wrapper, so its traces are its own: never count
            # across variants (the chex false positive).
            self._run, self.traces = run, self._fresh_traces()
        traces = self.traces
        signature = signature_of(args, kwargs, names=traces.names)
        event = traces.add(signature, len(traces.events) + 1, self, None)
        message = self._over_budget(traces, event) if traces.retraces > self._budget.n else None
        try:
            out = self._fun(*args, **kwargs)
        except Exception as exc:
            # The body's own error (a validation of the new value) is the one to show.
            if message is not None and hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(
                    f"pytest-mlxcompile: this call also retraced over budget "
                    f"({message.splitlines()[0]})"
                )
            raise
        if message is not None:
            raise RecompileError(message)
        return out

    def _over_budget(self, traces: FunctionTraces, event: TraceEvent) -> str:
        why, fix = WHY_AND_FIX[event.kind]
        if event.kind == "unknown":
            why += "; or the function is not compiled (put @max_recompiles under @mx.compile)"
        return "\n".join(
            [
                f"{traces.name} trace {event.trace} retraced: {'; '.join(event.reason_texts)}",
                f"  where: {traces.name} defined at {traces.where}",
                f"  budget: {self._budget.n} retrace(s) after the first trace "
                f"({self._budget.source}): this is retrace {traces.retraces}",
                *traces.table(),
                f"  why: {why}",
                f"  fix: {fix}",
            ]
        )


def max_recompiles(n: int) -> RecompileBudget:
    """Allow at most ``n`` retraces after the first trace, per compiled function.

    As a decorator on an ``mx.compile``'d function it budgets that function for its lifetime;
    under ``@mx.compile`` (on the Python function) it counts the body's runs. As a context manager
    it budgets every compiled function called inside the block. Exceeding the budget raises
    :class:`RecompileError` at the call, with the trace history and the reasons. Works inside
    pytest tests and in plain scripts (functions compiled after ``import pytest_mlxcompile``).
    """
    check_budget(n, "max_recompiles(n)")
    instrument.install(_mlx.core())  # functions compiled from now on can be budgeted
    return RecompileBudget(n)
