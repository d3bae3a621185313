"""The patched ``mx.compile`` and the per-call path: dispatch by mode, fresh caches, trace counts,
shadow-eager parity.

Facts this rests on (reference/mlx-compile-probe.md §1): the Python body runs once per trace and
never on a cache hit, so a counting wrapper counts traces exactly; MLX keys its cache by the
identity of the callable handed to ``mx.compile`` and shares entries between compiles of the same
object, so every (test variant, function) pair compiles a fresh wrapper object and keeps it alive
until the test ends.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pytest_mlxcompile import _mlx, locations
from pytest_mlxcompile.compile_switch import CompileSwitch
from pytest_mlxcompile.errors import CompileDisabledError, ParityError
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.parity import Mismatch, Tolerance, compare_call
from pytest_mlxcompile.state import capture, restore, structure

__all__ = [
    "CompileDisabledError",
    "FunctionRecord",
    "InstrumentedFunction",
    "Observer",
    "VariantRun",
    "activate",
    "active_run",
    "current_transform",
    "detached",
    "install",
    "installed",
    "running_eagerly",
    "uninstall",
]

#: Transformations that call the user's function while MLX is tracing it. Calls made inside
#: them must not evaluate anything (eval raises inside vmap and compile), so they are marked.
_TRANSFORMS = ("grad", "value_and_grad", "vjp", "jvp", "vmap", "checkpoint")


class _CallDepth(threading.local):
    #: >0 inside an instrumented call, its eager shadow, or a transformation: nested calls run
    #: without checks, because only the outermost call may evaluate.
    depth = 0
    #: True inside the eager shadow: nested instrumented calls run the plain Python function.
    eager = False
    #: The innermost transformation running (``"grad"``), "" outside any: MLX traces a compiled
    #: function again on every call made under one, which recompile reports explain.
    transform = ""


_tls = _CallDepth()


class Patches:
    """The originals we replaced in ``mlx.core``, to call through and to put back."""

    def __init__(self, mx: Any) -> None:
        self.mx = mx
        self.originals: dict[str, Any] = {
            name: getattr(mx, name)
            for name in ("compile", "enable_compile", "disable_compile", *_TRANSFORMS)
            if hasattr(mx, name)
        }
        self.compile: Callable[..., Any] = self.originals["compile"]
        self.switch = CompileSwitch(
            self.compile, self.originals["enable_compile"], self.originals["disable_compile"]
        )


_patches: Patches | None = None
_active: VariantRun | None = None
#: Bumped on entering and leaving every trace of an instrumented function and every function a
#: transformation (grad, vmap) runs, and at every change of the active variant: a record takes
#: the fast path only while its ``fast_generation`` equals it (its observers said they ignore its
#: cache hits since then). So a call nested in a trace never takes it, and a call that traced
#: is seen by the generation it left behind; a test cheaper than the thread-local ``_tls``.
_generation = 0
_get_ident = threading.get_ident


def installed() -> Patches | None:
    return _patches


def active_run() -> VariantRun | None:
    return _active


def _set_active(run: VariantRun | None) -> None:
    """Every change of the active variant goes through here: it also picks the class's call.

    With no variant active an instrumented function is called through a property that hands
    back its plain compiled function, all in C: no Python frame, so code outside member tests
    runs as fast as with plain ``mx.compile`` (benchmarks/run.py, P1).
    """
    global _active, _generation
    _active = run
    _generation += 1  # a record's fast path belongs to the run that was active when it was set
    type.__setattr__(
        InstrumentedFunction, "__call__", _ROUTED_CALL if run is not None else _PLAIN_CALL
    )


class _NoFast:
    fast_generation = -1
    thread = -1


_NO_FAST = _NoFast()


def _routed_call(fast: list[Any], ref: weakref.ref[InstrumentedFunction]) -> Callable[..., Any]:
    """An instrumented function's call while a variant is active, one per function.

    The fast path, a cache hit of a compiled variant that no check watches, runs here in one
    frame and touches nothing but two counters; anything else, or a call that traced, goes
    through :meth:`VariantRun.call` or :meth:`VariantRun._traced`. It holds its function weakly
    (the function holds it), so dropping a compiled function frees it without a GC cycle.
    """

    def routed(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        record = fast[0]
        if record.fast_generation != _generation or record.thread != _get_ident():
            return _full_call(ref(), args, kwargs)
        record.calls += 1
        try:
            # without kwargs MLX's vectorcall skips converting an empty dict (5% of a tiny call)
            out = record.compiled(*args, **kwargs) if kwargs else record.compiled(*args)
        except Exception as exc:
            record.run._call_failed(record, args, kwargs, exc)
            raise
        if _generation != record.fast_generation:  # the body ran: this call traced
            record.run._traced(record, args, kwargs, out)
        return out

    return routed


def _full_call(
    fn: InstrumentedFunction | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    __tracebackhide__ = True
    assert fn is not None, "pytest-mlxcompile: an instrumented function called after it was freed"
    run = _active
    if run is None:
        return fn._plain(*args, **kwargs)
    return run.call(fn, args, kwargs)


@contextlib.contextmanager
def detached(mode: Mode) -> Iterator[None]:
    """Replay calls outside the current test variant: nothing is counted or checked.

    For timing. In eager mode nested instrumented functions run their plain Python (as in an
    [eager] variant); in compiled modes they run as declared, inlined into the caller's trace.
    """
    saved, tls = _active, _tls
    _set_active(
        VariantRun(Mode.EAGER, label="detached", parity="off") if mode is Mode.EAGER else None
    )
    saved_depth, saved_eager = tls.depth, tls.eager
    tls.depth, tls.eager = 1, mode is Mode.EAGER
    try:
        yield
    finally:
        _set_active(saved)
        tls.depth, tls.eager = saved_depth, saved_eager


def install(mx: Any) -> None:
    """Replace ``mx.compile`` (and friends) in the loaded ``mlx.core``. Idempotent."""
    global _patches
    if _patches is not None:
        return
    patches = Patches(mx)
    _patches = patches
    mx.compile = instrumented_compile
    mx.enable_compile = patches.switch.enable
    mx.disable_compile = patches.switch.disable
    for name in _TRANSFORMS:
        if name in patches.originals:
            setattr(mx, name, _marking_transform(patches.originals[name]))


def uninstall() -> None:
    global _patches
    if _patches is None:
        return
    for name, original in _patches.originals.items():
        setattr(_patches.mx, name, original)
    _patches = None


def _marking_transform(transform: Callable[..., Any]) -> Callable[..., Any]:
    name = getattr(transform, "__name__", "transformation")

    @functools.wraps(transform)
    def patched(fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def inside(*a: Any, **k: Any) -> Any:
            __tracebackhide__ = True
            global _generation
            _tls.depth += 1
            _generation += 1
            outer, _tls.transform = _tls.transform, name
            try:
                return fun(*a, **k)
            finally:
                _tls.depth -= 1
                _generation += 1
                _tls.transform = outer

        return transform(inside, *args, **kwargs)

    return patched


def instrumented_compile(
    fun: Callable[..., Any],
    inputs: object | None = None,
    outputs: object | None = None,
    shapeless: bool = False,
) -> Callable[..., Any]:
    """Drop-in for ``mx.compile``: returns a function that follows the current test variant."""
    assert _patches is not None, "pytest-mlxcompile: instrumented_compile called while uninstalled"
    caller = sys._getframe(1)
    # MLX's own compiled helpers (mlx.nn activations) are not the user's code under test.
    if caller.f_globals.get("__name__", "").startswith("mlx."):
        return _patches.compile(fun, inputs, outputs, shapeless)  # type: ignore[no-any-return]
    compiled = InstrumentedFunction(fun, inputs, outputs, shapeless, _patches.compile)
    compiled.compiled_at = (caller.f_code.co_filename, caller.f_lineno)
    return compiled


def activate(run: VariantRun | None) -> VariantRun | None:
    """Make ``run`` the active variant without the start-up checks; returns the previous one.

    For budgets outside pytest (``max_recompiles``), which switch their own run in per call.
    """
    previous = _active
    _set_active(run)
    return previous


def current_transform() -> str:
    """The transformation (``"grad"``, ``"vmap"``) the current call runs under, or ""."""
    return _tls.transform


def running_eagerly() -> bool:
    """True in an eager variant or an eager shadow run: Python bodies run without tracing."""
    return _tls.eager or (_active is not None and _active.mode is Mode.EAGER)


def describe(fun: object) -> tuple[str, str]:
    """A user's name for a callable and where its code is (``file:line``)."""
    target = fun
    for _ in range(8):
        if isinstance(target, functools.partial):
            target = target.func
        elif isinstance(target, InstrumentedFunction):
            target = target.fun
        elif getattr(target, "__func__", None) is not None:
            target = target.__func__  # type: ignore[attr-defined]
        else:
            break
    code = getattr(target, "__code__", None)
    if code is not None:
        name = getattr(target, "__qualname__", None) or getattr(target, "__name__", "<function>")
    else:
        name = type(target).__name__
        code = getattr(vars(type(target)).get("__call__"), "__code__", None)
        for klass in type(target).__mro__:
            if code is None:
                code = getattr(vars(klass).get("__call__"), "__code__", None)
    if code is None:
        return str(name), "<unknown>"
    return str(name), f"{locations.relative(code.co_filename)}:{code.co_firstlineno}"


class InstrumentedFunction:
    """What the patched ``mx.compile`` returns.

    Outside a test variant it is the plain compiled function (one attribute read of overhead);
    inside one it routes every call through the variant's :class:`VariantRun`.
    """

    def __init__(
        self,
        fun: Callable[..., Any],
        inputs: object | None,
        outputs: object | None,
        shapeless: bool,
        real_compile: Callable[..., Any],
    ) -> None:
        self._plain = real_compile(fun, inputs, outputs, shapeless)
        #: [the FunctionRecord whose cache hits may take the fast path, or a stand-in that
        #: never matches]: read on every call, so no None test
        self._fast: list[Any] = [_NO_FAST]
        self._routed = _routed_call(self._fast, weakref.ref(self))
        self.fun = fun
        self.inputs = inputs
        self.outputs = outputs
        self.shapeless = bool(shapeless)
        self.name, self.where = describe(fun)
        #: (file, line) of the ``mx.compile`` call, when it came through ``instrumented_compile``
        self.compiled_at: tuple[str, int] | None = None
        # what functools.wraps would copy, where the callable has it (an nn.Module has no name)
        self.__wrapped__ = fun
        self.__doc__ = getattr(fun, "__doc__", None)
        self.__name__ = str(getattr(fun, "__name__", type(fun).__name__))
        self.__qualname__ = str(getattr(fun, "__qualname__", self.__name__))
        self.__module__ = str(getattr(fun, "__module__", type(fun).__module__))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Never runs: _set_active makes __call__ a property that hands back _plain (no variant
        # active) or _routed (one is), so that Python calls them without a frame of ours.
        return self._routed(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<mx.compile'd {self.name} at {self.where} (instrumented by pytest-mlxcompile)>"

    def state_roots(self) -> list[tuple[str, object]]:
        """Declared state and the global RNG key: what a call may change, by name."""
        roots: list[tuple[str, object]] = []
        if self.inputs is not None:
            roots.append(("inputs", self.inputs))
        if self.outputs is not None and self.outputs is not self.inputs:
            roots.append(("outputs", self.outputs))
        roots.append(("mx.random.state", _mlx.random_key_list()))
        return roots


class Observer:
    """Extension point: a check that watches every instrumented call of a test variant.

    Methods are no-ops here; override what you need (hooks left as they are cost nothing).
    ``trace_*`` run inside MLX's trace (the arguments are tracers: read shapes and dtypes, never
    evaluate); the others run after the outermost call returned, where evaluating is allowed.
    """

    def watches_hits(self, record: FunctionRecord) -> bool:
        """Whether ``before_call``/``call_returned``/``after_call`` must run on every call of
        ``record``. When no observer does, a call that reuses the compiled graph (a cache hit)
        costs nothing beyond the plain call, and ``call_returned``/``after_call`` run only for
        calls that traced. Asked again after every call that traced."""
        return True

    def trace_started(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """The function's body is about to run for a (re)trace."""

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        """The body returned during a trace."""

    def before_call(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """An outermost call in a compiled mode is about to run."""

    def call_returned(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        """An outermost compiled call returned, before parity: raise here to win over it."""

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        """An outermost compiled call raised ``exc``; raise a clearer error ``from exc`` here."""

    def after_call(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        """An outermost call in a compiled mode returned (after parity passed)."""

    def finish(self, run: VariantRun) -> None:
        """The test variant is over (pass or fail)."""


class FunctionRecord:
    """One instrumented function inside one test variant: its fresh compiled wrapper and counts."""

    def __init__(self, fn: InstrumentedFunction, run: VariantRun) -> None:
        self.fn = fn
        self.run = run
        #: outermost calls made by the test
        self.calls = 0
        #: times the Python body ran: traces in compiled modes, every call in eager mode
        self.traces = 0
        self.parity_checks = 0
        #: calls not checked because they created new declared state (see _shadow_check)
        self.parity_skipped = 0
        self._check_next = False
        #: per-check data observers attach (signature history, diagnoses, timings), by key
        self.extra: dict[str, Any] = {}
        #: the ``_generation`` at which no observer watched this record's cache hits (-1: one
        #: does, or not asked since the last trace): the fast path runs while it is current
        self.fast_generation = -1
        #: calls may take the fast path at all (a compiled variant with parity off)
        self.fast = run.mode is Mode.COMPILED and run.parity == "off"
        self.thread = run._thread
        self.body = self._make_body()
        self.compiled: Callable[..., Any] | None
        if run.mode is Mode.EAGER:
            self.compiled = None
        else:
            assert _patches is not None
            self.compiled = _patches.compile(
                self.body,
                fn.inputs,
                fn.outputs,
                fn.shapeless or run.mode is Mode.SHAPELESS,
            )

    def _make_body(self) -> Callable[..., Any]:
        # A new function object per record: a fresh MLX cache entry per (variant, function).
        fun = self.fn.fun
        observers = self.run.observers
        record = self
        tls = _tls

        if self.run.mode is Mode.EAGER:

            def body(*args: Any, **kwargs: Any) -> Any:
                record.traces += 1
                return fun(*args, **kwargs)

            return body

        # Compiled modes: the body runs only while MLX traces, and marks that time as nested,
        # so the fast path of a cache hit need not (instrumented calls in it are inlined).
        def observed_body(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # an observer's error (RecompileError) points at the call
            global _generation
            record.traces += 1
            _generation += 1
            tls.depth += 1
            try:
                for observer in observers:
                    observer.trace_started(record, args, kwargs)
                out = fun(*args, **kwargs)
                for observer in observers:
                    observer.trace_finished(record, args, kwargs, out)
            finally:
                tls.depth -= 1
                _generation += 1
            return out

        return observed_body

    def refresh_fast_path(self) -> None:
        """After a full-path call: may the next calls take the fast path?"""
        run = self.run
        watched = any(observer.watches_hits(self) for observer in run._hit_hooks)
        self.thread = run._thread
        self.fast_generation = -1 if watched or not self.fast else _generation

    def run_mode(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call in this variant's mode, with no checks (nested and transformed calls)."""
        __tracebackhide__ = True
        if self.compiled is None:
            return self.body(*args, **kwargs)
        return self.compiled(*args, **kwargs)


class VariantRun:
    """Everything instrumented calls need during one test variant, active between start/stop."""

    def __init__(
        self,
        mode: Mode,
        *,
        label: str,
        parity: str = "all",
        tolerance: Tolerance | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.mode = mode
        self.label = label
        self.parity = parity
        self.tolerance = tolerance or Tolerance()
        self.observers: tuple[Observer, ...] = tuple(observers)
        #: one record per compile target, keyed the way MLX shares its cache: compiling the same
        #: callable again (a model compiled in every block's __init__) reuses the entry
        self.records: dict[tuple[int, int, int, bool], FunctionRecord] = {}
        self._record_of: dict[InstrumentedFunction, FunctionRecord] = {}
        self._thread = threading.get_ident()
        # Only hooks an observer overrides are called.
        self._before = _overriding(self.observers, "before_call")
        self._returned = _overriding(self.observers, "call_returned")
        self._after = _overriding(self.observers, "after_call")
        self._failed = _overriding(self.observers, "call_failed")
        self._hit_hooks = tuple(
            o
            for o in self.observers
            if any(_overrides(o, hook) for hook in ("before_call", "call_returned", "after_call"))
        )

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Make this the active variant; compiled modes first check that compile is really on."""
        _set_active(self)
        self._thread = threading.get_ident()
        if self.mode.compiles:
            assert _patches is not None
            reason = _patches.switch.off_reason()
            if reason is not None:
                raise CompileDisabledError(
                    f"mx.compile is switched off, so the [{self.mode}] variant would run eagerly "
                    f"and prove nothing: {reason}"
                )

    def stop(self) -> None:
        """Deactivate and drop the compiled wrappers (their MLX cache entries go with them)."""
        __tracebackhide__ = True  # a check failing in finish() is about the test, not us
        if _active is self:
            _set_active(None)
        try:
            for observer in self.observers:
                observer.finish(self)
        finally:
            for record in self.records.values():
                record.compiled = None

    def _record_for(self, fn: InstrumentedFunction) -> FunctionRecord:
        key = (id(fn.fun), id(fn.inputs), id(fn.outputs), fn.shapeless)
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = FunctionRecord(fn, self)
        return record

    # the per-call path -----------------------------------------------------------------------
    def call(self, fn: InstrumentedFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        __tracebackhide__ = True
        if threading.get_ident() != self._thread:
            # Checks and their bookkeeping belong to the test's thread; other threads (a data
            # loader) run the function as declared, plain Python in an eager variant.
            return fn._plain(*args, **kwargs) if self.mode.compiles else fn.fun(*args, **kwargs)
        record = self._record_of.get(fn)
        if record is None:
            record = self._record_of[fn] = self._record_for(fn)
            if record.fast:
                fn._fast[0] = record
        tls = _tls
        if tls.depth:
            if tls.eager:
                return fn.fun(*args, **kwargs)
            return record.run_mode(args, kwargs)
        record.calls += 1
        if self.mode is Mode.EAGER:
            tls.depth += 1
            try:
                return record.body(*args, **kwargs)
            finally:
                tls.depth -= 1
        return self._checked_call(record, args, kwargs)

    def _checked_call(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        __tracebackhide__ = True
        assert _patches is not None
        assert record.compiled is not None
        switch = _patches.switch
        if switch.switched_on is False:
            raise CompileDisabledError(
                f"{record.fn.name} [{self.mode}] call {record.calls}: mx.compile was switched off "
                f"by mx.disable_compile() at {switch.switched_at}, so this call would run eagerly."
                " Fix: call mx.enable_compile() again before calling compiled code"
            )
        for before_call in self._before:
            before_call(record, args, kwargs)
        check = self.parity != "off"
        roots = record.fn.state_roots() if check or self.mode is Mode.SHAPELESS else []
        before = [(name, capture(tree)) for name, tree in roots]
        traces_before = record.traces
        tls = _tls
        tls.depth += 1
        try:
            out = record.compiled(*args, **kwargs)
        except BaseException as exc:
            # A failed trace leaves tracers in declared inputs (MLX restores them only on success).
            for _, snap in before:
                restore(snap)
            if (
                self.mode is Mode.SHAPELESS
                and not record.fn.shapeless
                and _mlx.refuses_shapeless(exc)
            ):
                _skip_not_shapeless(record, exc)
            if isinstance(exc, Exception):
                self._call_failed(record, args, kwargs, exc)
            raise
        finally:
            tls.depth -= 1
        traced = record.traces != traces_before
        for call_returned in self._returned:
            call_returned(record, args, kwargs, out, traced)
        if check and (self.parity == "all" or traced or record._check_next):
            self._shadow_check(record, args, kwargs, out, before, traced)
        for after_call in self._after:
            after_call(record, args, kwargs, out, traced)
        record.refresh_fast_path()
        return out

    def _call_failed(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: Exception,
    ) -> None:
        __tracebackhide__ = True
        for call_failed in self._failed:
            call_failed(record, args, kwargs, exc)

    def _traced(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        """After a fast-path call that traced: the hooks a traced call always gets."""
        __tracebackhide__ = True
        assert _patches is not None
        switch = _patches.switch
        if switch.switched_on is False:
            # Compile switched off: the body ran eagerly, which is how we notice on this path.
            raise CompileDisabledError(
                f"{record.fn.name} [{self.mode}] call {record.calls}: mx.compile was switched off "
                f"by mx.disable_compile() at {switch.switched_at}, so this call ran eagerly."
                " Fix: call mx.enable_compile() again before calling compiled code"
            )
        for call_returned in self._returned:
            call_returned(record, args, kwargs, out, True)
        for after_call in self._after:
            after_call(record, args, kwargs, out, True)
        record.refresh_fast_path()

    def _shadow_check(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        before: list[tuple[str, object]],
        traced: bool,
    ) -> None:
        """Run the plain function on the same inputs and state, and compare with ``out``.

        The compiled call runs first: it is the call the test sees, its exception is the one
        raised, and ``parity=first`` knows whether it traced without predicting MLX's cache.
        Declared state is put back to what it was before the call for the eager run, then to
        the compiled result, so the test continues from the compiled state.
        """
        __tracebackhide__ = True
        after = [(name, capture(tree)) for name, tree in record.fn.state_roots()]
        if any(structure(a) != structure(b) for (_, a), (_, b) in zip(before, after, strict=True)):
            # The call created state (an optimizer's first update adds its moments and flips
            # Python flags we cannot see), so the eager run cannot start from the same point.
            # Check the next call instead.
            record.parity_skipped += 1
            record._check_next = True
            return
        record._check_next = False
        record.parity_checks += 1
        for _, snap in before:
            restore(snap)
        tls = _tls
        tls.depth += 1
        tls.eager = True
        try:
            expected = record.fn.fun(*args, **kwargs)
        except Exception as exc:
            for _, snap in after:
                restore(snap)
            raise ParityError(
                f"{record.fn.name} [{self.mode}] call {record.calls}: the compiled call returned "
                f"but the eager reference raised {type(exc).__name__}: {exc}\n"
                f"  {record.fn.name} is defined at {record.fn.where}"
            ) from exc
        finally:
            tls.depth -= 1
            tls.eager = False
        eager_after = [(name, capture(tree)) for name, tree in record.fn.state_roots()]
        for _, snap in after:
            restore(snap)
        state = (
            (name, want, got) for (name, want), (_, got) in zip(eager_after, after, strict=True)
        )
        mismatch = compare_call(capture(expected), capture(out), state, self.tolerance)
        if mismatch is not None:
            raise ParityError(self._parity_message(record, mismatch, traced))

    def _parity_message(self, record: FunctionRecord, mismatch: Mismatch, traced: bool) -> str:
        fn = record.fn
        lines = [
            f"{fn.name} [{self.mode}] call {record.calls} differs from eager at {mismatch.path}",
            f"  {mismatch.summary}",
            *(f"  {detail}" for detail in mismatch.details),
            f"  where: {fn.name} defined at {fn.where}; "
            f"traced {record.traces} time(s) in this test"
            + ("" if traced else "; this call reused the graph"),
        ]
        if traced:
            lines += [
                "  why: the freshly traced graph computes something other than the Python "
                "function on the same inputs",
                "  fix: if this is rounding from fused kernels, widen the tolerance with "
                "@pytest.mark.compiled(rtol=..., atol=...) or --mlx-rtol/--mlx-atol; if the "
                "function reads shapes or Python values, see docs/pitfalls.md",
            ]
        else:
            lines += [
                "  why: the graph froze, at trace time, something that is not an argument or "
                "declared state (a global or closure array, an attribute, a Python number, or "
                "the random state), and it has changed since",
                "  fix: pass it as an argument, or declare it with mx.compile(..., inputs=..., "
                "outputs=...); for random numbers capture mx.random.state in both",
            ]
        return "\n".join(lines)


_HOOKS = ("before_call", "call_returned", "after_call", "call_failed")
_overridden: dict[type, frozenset[str]] = {}


def _overrides(observer: Observer, hook: str) -> bool:
    kind = type(observer)
    hooks = _overridden.get(kind)
    if hooks is None:
        hooks = _overridden[kind] = frozenset(
            h for h in _HOOKS if getattr(kind, h) is not getattr(Observer, h)
        )
    return hook in hooks


def _overriding(observers: Sequence[Observer], hook: str) -> tuple[Callable[..., None], ...]:
    return tuple(getattr(o, hook) for o in observers if _overrides(o, hook))


#: ``InstrumentedFunction.__call__`` while a variant is active, and while none is: properties
#: whose getters (in C) return the per-function routed call or the plain compiled function,
#: which Python then calls; a ``def __call__`` would cost a frame and a method lookup per call.
_ROUTED_CALL = property(operator.attrgetter("_routed"))
_PLAIN_CALL = property(operator.attrgetter("_plain"))
type.__setattr__(InstrumentedFunction, "__call__", _PLAIN_CALL)


def _skip_not_shapeless(record: FunctionRecord, exc: BaseException) -> None:
    __tracebackhide__ = True  # the skip's location is then the user's call
    import pytest

    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    pytest.skip(
        f"{record.fn.name} ({record.fn.where}) is not shapeless-capable: {first_line} "
        "It is not declared shapeless=True, so MLX never compiles it shapeless outside this "
        "variant."
    )
