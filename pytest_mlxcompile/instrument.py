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
import os
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, SupportsIndex

from pytest_mlxcompile import _mlx, isolation, locations
from pytest_mlxcompile.budget_bytes import estimate_bytes, format_bytes
from pytest_mlxcompile.compile_switch import CompileSwitch
from pytest_mlxcompile.errors import (
    CompileDisabledError,
    MLXCompileError,
    ParityError,
    PlaceholderLeakError,
)
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.parity import (
    Mismatch,
    Tolerance,
    compare_call,
    first_unevaluable,
)
from pytest_mlxcompile.state import capture, restore, structure

if TYPE_CHECKING:
    from pytest_mlxcompile import shadow


def _shadow() -> Any:
    """The parity shadow's module, loaded with the first check that needs it (not with the
    plugin: benchmarks/run.py, P4). Typed Any: callers use it as ``shadow``."""
    from pytest_mlxcompile import shadow

    return shadow


__all__ = [
    "CompileDisabledError",
    "FunctionRecord",
    "InstrumentedFunction",
    "Observer",
    "VariantRun",
    "activate",
    "active_run",
    "check_compile_on",
    "current_transform",
    "detached",
    "install",
    "installed",
    "running_eagerly",
    "start_later",
    "uninstall",
]

#: Transformations that call the user's function while MLX is tracing it. Calls made inside
#: them must not evaluate anything (eval raises inside vmap and compile), so they are marked.
_TRANSFORMS = ("grad", "value_and_grad", "vjp", "jvp", "vmap", "checkpoint")
#: What changes the default device or stream: each test's isolation watches them instead of
#: reading the default stream from MLX around every test (isolation.before_change).
_STREAM_SETTERS = ("set_default_device", "set_default_stream", "clear_streams", "stream")


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
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class Patches:
    """The originals we replaced in ``mlx.core``, to call through and to put back."""

    def __init__(self, mx: Any) -> None:
        self.mx = mx
        self.originals: dict[str, Any] = {
            name: getattr(mx, name)
            for name in (
                "compile",
                "enable_compile",
                "disable_compile",
                *_TRANSFORMS,
                *_STREAM_SETTERS,
            )
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
    return _active if _pending is None else _current()


#: A variant that starts on first use (start_later), and the thread of its test.
_pending: Callable[[], VariantRun] | None = None
_pending_thread = 0


def start_later(make: Callable[[], VariantRun] | None) -> None:
    """Let ``make`` build and start the test's variant when something first needs it: an
    instrumented call, :func:`active_run`, a fixture. Most trivial tests never call compiled
    code, and building a VariantRun for each costs a suite of them (benchmarks/run.py, P4).
    ``None`` drops a variant that was never needed."""
    global _pending, _pending_thread, _generation
    if make is not None and _active is not None:
        # a variant is running (a test that runs pytest in-process): start this one now, as
        # it would have started before the first call anyway, so that it takes over
        make()
        return
    _pending, _pending_thread = make, threading.get_ident()
    _generation += 1
    if make is not None and not _routed_now:
        _route(True)


def _current() -> VariantRun | None:
    """The active variant, started now if it was pending: only from the test's thread (a
    data loader's call runs outside the variant, as it would once started)."""
    global _pending
    make = _pending
    if _active is None and make is not None and threading.get_ident() == _pending_thread:
        _pending = None
        make()  # starts it: _active is the new run
    return _active


def _set_active(run: VariantRun | None) -> None:
    """Every change of the active variant goes through here: a variant's start routes the
    instrumented functions' calls through it (:func:`_route`)."""
    global _active, _generation
    _active = run
    _generation += 1  # a record's fast path belongs to the run that was active when it was set
    if run is not None and not _routed_now:
        _route(True)


#: Whether instrumented functions are of the routed class (see _route).
_routed_now = False

#: Every live instrumented function, weakly, for _route: a plain set of references that drop
#: themselves (a WeakSet would be walked in Python code, where another thread may change it).
_live: set[weakref.ref[InstrumentedFunction]] = set()


def _route(routed: bool) -> None:
    """Make every instrumented function call the routed call, or the plain one.

    Outside variants an instrumented function is of :class:`InstrumentedFunction`, a
    ``functools.partial`` with no arguments, so calling it is the C call of its plain compiled
    function (with vectorcall from Python 3.12): code outside member tests runs as fast as with
    plain ``mx.compile`` (benchmarks/run.py, P1b). In a variant each is switched to
    :class:`_RoutedFunction`, whose ``__call__`` is :func:`_routed_call`. The switch is per
    object: setting ``__call__`` on the class instead would drop its vectorcall for good
    (CPython 3.12+ clears the flag and never restores it).

    Switching costs a fraction of a microsecond per live object, so it is done when a variant
    starts after plain calls, and by the first call made after a variant ended
    (``_full_call``): not at the end of every variant, most of which never call a compiled
    function (benchmarks/run.py, P4).
    """
    global _routed_now
    with _route_lock:  # against a compile or a switch in another thread (a data loader)
        if not routed and (_active is not None or _pending is not None):
            return  # a variant started meanwhile (from the test's thread): stay routed
        cls = _RoutedFunction if routed else InstrumentedFunction
        # a snapshot taken in C: a collected function's reference may leave the set meanwhile
        for ref in _live.copy():
            fn = ref()
            if fn is not None:
                fn.__class__ = cls
        _routed_now = routed  # after the switch: a flag read meanwhile finds it not done


#: Held while the instrumented functions' class is switched, and while a new one picks its
#: class: a reentrant lock, as a finalizer run by the garbage collector may call one.
_route_lock = threading.RLock()


class _NoFast:
    fast_generation = -1
    thread = -1


_NO_FAST = _NoFast()


def _routed_call(self: InstrumentedFunction, *args: Any, **kwargs: Any) -> Any:
    """``__call__`` of instrumented functions while a variant is (or was last) active.

    The fast path, a cache hit of a compiled variant that no check watches, runs here in one
    frame and touches nothing but a counter; anything else, or a call that traced, goes through
    :meth:`VariantRun.call` or :meth:`VariantRun._traced`. A plain ``def`` on the class: Python
    calls it with ``self`` prepended, cheaper than a property handing back a closure.

    The fast path does not ask which thread calls (a third of its cost): a cache hit from
    another thread (a data loader) is counted in ``calls`` and is otherwise invisible; a trace
    in another thread runs the body without observers (see ``FunctionRecord._make_body``),
    and the hooks below run only in the test's thread.
    """
    __tracebackhide__ = True
    record = self._fast[0]
    if record.fast_generation != _generation:
        return _full_call(self, args, kwargs)
    record.calls += 1
    try:
        # without kwargs MLX's vectorcall skips converting an empty dict (5% of a tiny call)
        out = record.compiled(*args, **kwargs) if kwargs else record.compiled(*args)
    except Exception as exc:
        if record.thread == _get_ident():
            record.run._call_failed(record, args, kwargs, exc)
        raise
    except BaseException as exc:
        if record.thread == _get_ident():
            for observer in record.run.observers:
                observer.call_interrupted(record, exc)
        raise
    if _generation != record.fast_generation and record.thread == _get_ident():
        record.run._traced(record, args, kwargs, out)  # the body ran: this call traced
    return out


def _full_call(fn: InstrumentedFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    run = active_run()
    if run is None:
        # The variant ended and left the routed call in place (_set_active): the first call
        # after it puts the plain one back, for this and every later call outside a variant.
        if _pending is None:
            _route(False)
        return fn._plain(*args, **kwargs)
    return run.call(fn, args, kwargs)


@contextlib.contextmanager
def detached(mode: Mode) -> Iterator[None]:
    """Replay calls outside the current test variant: nothing is counted or checked.

    For timing. In eager mode nested instrumented functions run their plain Python (as in an
    [eager] variant); in compiled modes they run as declared, inlined into the caller's trace.
    """
    global _pending
    saved, saved_pending, tls = _active, _pending, _tls
    _pending = None  # a variant not started yet stays so: these calls are not the test's
    _set_active(
        VariantRun(Mode.EAGER, label="detached", parity="off") if mode is Mode.EAGER else None
    )
    saved_depth, saved_eager = tls.depth, tls.eager
    tls.depth, tls.eager = 1, mode is Mode.EAGER
    try:
        yield
    finally:
        _pending = saved_pending
        _set_active(saved)
        if saved_pending is not None and not _routed_now:
            _route(True)
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
    isolation.switch = patches.switch  # what each test's restore puts back
    for name in _TRANSFORMS:
        if name in patches.originals:
            setattr(mx, name, _marking_transform(patches.originals[name]))
    for name in _STREAM_SETTERS:
        if name in patches.originals:
            setattr(mx, name, _watched_setter(patches.originals[name], name))


def _watched_setter(setter: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``setter``, telling isolation first what it is about to change: the default stream of
    the device of its argument for ``set_default_stream`` and ``mx.stream`` (whose context
    changes the default device and stream in MLX's own code, and puts them back on exit: a
    change made inside it must not take the block's state for the test's)."""
    keyword = {"set_default_stream": "stream", "stream": "s"}.get(name)

    @functools.wraps(setter)
    def watched(*args: Any, **kwargs: Any) -> Any:
        if keyword is not None:
            isolation.before_change(args[0] if args else kwargs.get(keyword))
        else:
            isolation.before_change()
        return setter(*args, **kwargs)

    return watched


def uninstall() -> None:
    global _patches, _pending
    _pending = None
    if _active is not None:
        # a variant that never reached its teardown (pytest.exit, Ctrl-C): compiled functions
        # called after the session run as plain mx.compile again
        _set_active(None)
    if _routed_now:
        _route(False)
    if _patches is None:
        return
    for name, original in _patches.originals.items():
        setattr(_patches.mx, name, original)
    _patches = None
    isolation.switch = None


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

        # MLX's transformed function forwards attribute reads to ``inside``: describe() names
        # mx.compile(mx.grad(loss)) "grad(loss)" at loss's line, not after this wrapper
        inside.__mlx_transform__ = name  # type: ignore[attr-defined]
        inside.__wrapped__ = fun  # type: ignore[attr-defined]
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
    # MLX's own compiled helpers (mlx.nn activations) are not the user's code under test: never
    # mode-switched, but compiles made during a compiled variant are watched (their retraces
    # are real cost: nn.Upsample(mode="cubic") compiles fresh helpers on every call).
    if caller.f_globals.get("__name__", "").startswith("mlx."):
        run = active_run()
        if run is not None and run.mode.compiles and not _tls.eager:
            site = (caller.f_code.co_filename, caller.f_lineno)
            for observer in run.observers:
                fun = observer.library_compile(fun, bool(shapeless), site)
        return _patches.compile(fun, inputs, outputs, shapeless)  # type: ignore[no-any-return]
    compiled = InstrumentedFunction(fun, inputs, outputs, shapeless, _patches.compile)
    compiled.compiled_at = (caller.f_code.co_filename, caller.f_lineno)
    if compiled.where in (BUILT_IN, "<unknown>"):
        compiled.where = f"{locations.relative(caller.f_code.co_filename)}:{caller.f_lineno}"
    compiled.compiled_by = _owner_ref(caller)
    return compiled


def _owner_ref(frame: FrameType) -> weakref.ref[Any] | None:
    """A weak reference to ``self`` of the method that called ``mx.compile``: a function compiled
    per instance (in ``__init__``) is one function per object, not a per-call compile."""
    if "self" not in frame.f_code.co_varnames:
        return None
    try:
        return weakref.ref(frame.f_locals["self"])
    except (KeyError, TypeError):  # deleted, or an object that takes no weak references
        return None


def activate(run: VariantRun | None) -> VariantRun | None:
    """Make ``run`` the active variant without the start-up checks; returns the previous one.

    For budgets outside pytest (``max_recompiles``), which switch their own run in per call.
    """
    previous = active_run()
    _set_active(run)
    return previous


def current_transform() -> str:
    """The transformation (``"grad"``, ``"vmap"``) the current call runs under, or ""."""
    return _tls.transform


def running_eagerly() -> bool:
    """True in an eager variant or an eager shadow run: Python bodies run without tracing."""
    run = active_run()
    return _tls.eager or (run is not None and run.mode is Mode.EAGER)


#: ``describe``'s "where" for a function with no Python source (``mx.exp``): the place of the
#: ``mx.compile`` call is used instead when it is known
BUILT_IN = "<built-in>"


def describe(fun: object) -> tuple[str, str]:
    """A user's name for a callable and where its code is (``file:line``)."""
    target = fun
    for _ in range(8):
        transform = getattr(target, "__mlx_transform__", None)
        if isinstance(transform, str) and getattr(target, "__wrapped__", None) is not None:
            # mx.grad(loss) through our marking wrapper: name it after the user's function
            inner_name, inner_where = describe(target.__wrapped__)  # type: ignore[attr-defined]
            return f"{transform}({inner_name})", inner_where
        if isinstance(target, InstrumentedFunction):
            target = target.fun
        elif isinstance(target, functools.partial):
            target = target.func
        elif getattr(target, "__func__", None) is not None:
            target = target.__func__  # type: ignore[attr-defined]
        else:
            break
    code = getattr(target, "__code__", None)
    if code is not None:
        name = getattr(target, "__qualname__", None) or getattr(target, "__name__", "<function>")
    elif isinstance(target, types.BuiltinFunctionType) or type(target).__name__ == "nb_func":
        # mx.compile(mx.exp): a function of a compiled extension, which has no source line
        module = str(getattr(target, "__module__", "") or "")
        module = "mx" if module == "mlx.core" else module
        plain = str(getattr(target, "__name__", type(target).__name__))
        return (f"{module}.{plain}" if module else plain), BUILT_IN
    else:
        name = type(target).__name__
        code = getattr(vars(type(target)).get("__call__"), "__code__", None)
        for klass in type(target).__mro__:
            if code is None:
                code = getattr(vars(klass).get("__call__"), "__code__", None)
    if code is None:
        return str(name), "<unknown>"
    return str(name), f"{locations.relative(code.co_filename)}:{code.co_firstlineno}"


class InstrumentedFunction(functools.partial[Any]):
    """What the patched ``mx.compile`` returns.

    A ``functools.partial`` of the plain compiled function with no arguments: outside a test
    variant, calling it is a C call of that function (no Python frame, vectorcall on 3.12+).
    While a variant is active it is of :class:`_RoutedFunction`, which routes every call
    through the variant's :class:`VariantRun` (see :func:`_route`).
    """

    # read on every routed call: a slot, where an instance-dict read of a C-based class costs
    # ~45 ns more (the other attributes are in the partial's dict)
    __slots__ = ("_fast",)
    _mlxcompile_instrumented = True  # holders.instrumented

    def __new__(
        cls,
        fun: Callable[..., Any],
        inputs: object | None,
        outputs: object | None,
        shapeless: bool,
        real_compile: Callable[..., Any],
    ) -> InstrumentedFunction:
        plain = real_compile(fun, inputs, outputs, shapeless)
        with _route_lock:  # not between _route's switch of the others and its flag
            self = super().__new__(_RoutedFunction if _routed_now else cls, plain)
            _live.add(weakref.ref(self, _live.discard))
        return self

    def __init__(
        self,
        fun: Callable[..., Any],
        inputs: object | None,
        outputs: object | None,
        shapeless: bool,
        real_compile: Callable[..., Any],
    ) -> None:
        self._plain: Callable[..., Any] = self.func
        #: [the FunctionRecord whose cache hits may take the fast path, or a stand-in that
        #: never matches]: read on every call, so no None test
        self._fast: list[Any] = [_NO_FAST]
        self.fun = fun
        self.inputs = inputs
        self.outputs = outputs
        self.shapeless = bool(shapeless)
        self.name, self.where = describe(fun)
        #: (file, line) of the ``mx.compile`` call, when it came through ``instrumented_compile``
        self.compiled_at: tuple[str, int] | None = None
        #: ``self`` of the method that compiled it, when compiled inside one (weakly)
        self.compiled_by: weakref.ref[Any] | None = None
        # what functools.wraps would copy, where the callable has it (an nn.Module has no name)
        self.__wrapped__ = fun
        self.__doc__ = getattr(fun, "__doc__", None)
        self.__name__ = str(getattr(fun, "__name__", type(fun).__name__))
        self.__qualname__ = str(getattr(fun, "__qualname__", self.__name__))
        self.__module__ = str(getattr(fun, "__module__", type(fun).__module__))

    if sys.version_info >= (3, 13):
        # A partial as a class attribute warns on 3.13 and binds on 3.14; a compiled function
        # does neither (``self.step = mx.compile(...)`` at class level stays unbound).
        def __get__(self, obj: object, objtype: type | None = None) -> InstrumentedFunction:
            return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        # copy and pickle as the plain compiled function does (today: TypeError), not as a
        # partial (whose rebuild would call this class with the wrong arguments)
        return self._plain.__reduce_ex__(protocol)

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

    def call_aborted(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        """An outermost compiled call raised ``exc``, before declared state is put back: what
        the failed trace left behind is still there to see. Never raise here; keep the finding
        for :meth:`call_failed`."""

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        """An outermost compiled call raised ``exc``; raise a clearer error ``from exc`` here."""

    def call_interrupted(self, record: FunctionRecord, exc: BaseException) -> None:
        """A BaseException (KeyboardInterrupt, ``pytest.skip``/``fail`` inside the function)
        escaped an outermost compiled call, maybe mid-trace: undo per-call state, never raise."""

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

    def library_compile(
        self, fun: Callable[..., Any], shapeless: bool, site: tuple[str, int]
    ) -> Callable[..., Any]:
        """MLX's own code (``site``: file, line) compiles ``fun`` during this variant: return
        the callable to compile instead (it must behave as ``fun``), e.g. one that sees traces.
        """
        return fun


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
        assert _patches is not None
        switch, mode = _patches.switch, self.run.mode

        def observed_body(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # an observer's error (RecompileError) points at the call
            global _generation
            if _get_ident() != record.thread:
                # another thread's call that traced on the fast path: its trace is not the
                # test's, and observers belong to the test's thread
                return fun(*args, **kwargs)
            record.traces += 1
            # every trace: with compile off (a flip that bypassed mx), every call is one
            if switch.off_since_verified():
                raise CompileDisabledError(
                    f"{record.fn.name} [{mode}] call {record.calls}: mx.compile is switched off, "
                    f"so this call runs eagerly: {switch.why_off()}"
                )
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


def check_compile_on(mode: Mode) -> None:
    """Raise CompileDisabledError when ``mode`` compiles and mx.compile would compile nothing."""
    if not mode.compiles:
        return
    assert _patches is not None
    reason = _patches.switch.off_reason()
    if reason is not None:
        raise CompileDisabledError(
            f"mx.compile is switched off, so the [{mode}] variant would run eagerly "
            f"and prove nothing: {reason}"
        )


class VariantRun:
    """Everything instrumented calls need during one test variant, active between start/stop."""

    def __init__(
        self,
        mode: Mode,
        *,
        label: str,
        parity: str = "all",
        tolerance: Tolerance | None = None,
        observers: Sequence[Observer] | Callable[[], Sequence[Observer]] = (),
        max_check_bytes: int = 0,
    ) -> None:
        self.mode = mode
        #: largest call a check may evaluate (0: no limit), see budget_bytes.estimate_bytes
        self.max_check_bytes = max_check_bytes
        self.label = label
        self.parity = parity
        self.tolerance = tolerance or Tolerance()
        #: ``observers`` given as a callable is called on first use (the first instrumented
        #: call, or a look at :attr:`observers`): a test that calls no compiled function never
        #: builds them (benchmarks/run.py, P4)
        self._make_observers: Callable[[], Sequence[Observer]] | None = None
        if callable(observers):
            self._observers: tuple[Observer, ...] = ()
            self._before: tuple[Callable[..., None], ...] = ()
            self._returned: tuple[Callable[..., None], ...] = ()
            self._after: tuple[Callable[..., None], ...] = ()
            self._failed: tuple[Callable[..., None], ...] = ()
            self._hit_hooks: tuple[Observer, ...] = ()
            self._make_observers = observers
        else:
            self.observers = tuple(observers)
        #: one record per compile target, keyed the way MLX shares its cache: compiling the same
        #: callable again (a model compiled in every block's __init__) reuses the entry
        self.records: dict[tuple[int, int, int, bool], FunctionRecord] = {}
        self._record_of: dict[InstrumentedFunction, FunctionRecord] = {}
        self._thread = threading.get_ident()

    @property
    def observers(self) -> tuple[Observer, ...]:
        if self._make_observers is not None:
            make, self._make_observers = self._make_observers, None
            self.observers = tuple(make())
        return self._observers

    @observers.setter
    def observers(self, observers: tuple[Observer, ...]) -> None:
        self._make_observers = None
        self._observers = observers
        # Only hooks an observer overrides are called.
        self._before = _overriding(observers, "before_call")
        self._returned = _overriding(observers, "call_returned")
        self._after = _overriding(observers, "after_call")
        self._failed = _overriding(observers, "call_failed")
        self._hit_hooks = tuple(
            o
            for o in observers
            if any(_overrides(o, hook) for hook in ("before_call", "call_returned", "after_call"))
        )

    @property
    def built_observers(self) -> tuple[Observer, ...]:
        """The observers if built, else none: for end-of-test work that has nothing to do when
        no instrumented call was made (building them then would be wasted)."""
        return self._observers

    # lifecycle -------------------------------------------------------------------------------
    def start(self, *, checked: bool = False) -> None:
        """Make this the active variant; compiled modes first check that compile is really on
        (``checked``: the caller did, at the test's start; a switch flipped since is the call's
        to report, naming itself)."""
        _set_active(self)
        self._thread = threading.get_ident()
        if not checked:
            check_compile_on(self.mode)

    def stop(self) -> None:
        """Deactivate and drop the compiled wrappers (their MLX cache entries go with them)."""
        __tracebackhide__ = True  # a check failing in finish() is about the test, not us
        if _active is self:
            _set_active(None)
        try:
            # observers never built saw nothing to finish
            for observer in self._observers:
                observer.finish(self)
        finally:
            self._release()

    def _release(self) -> None:
        """Drop every reference that reaches the test's arrays; keep the counts for reports.

        Observers keep the last call's arguments (the shapeless probe replays them) and records,
        bodies and observers refer to each other: without this the arguments live on until the
        cyclic GC runs, and N big tests hold N times the memory. After ``finish`` nothing needs
        them: the observers go, and so do the bodies (whose closures hold them).
        """
        if self._observers:
            self.observers = ()
        self._make_observers = None  # never built: never will be
        self._record_of.clear()
        shadow = sys.modules.get("pytest_mlxcompile.shadow")  # not loaded: it kept nothing
        for record in self.records.values():
            record.compiled = None
            record.body = _finished_body
            if shadow is not None:
                shadow.forget_slots(record)

    def _record_for(self, fn: InstrumentedFunction) -> FunctionRecord:
        key = (id(fn.fun), id(fn.inputs), id(fn.outputs), fn.shapeless)
        record = self.records.get(key)
        if record is None:
            self.observers  # noqa: B018 - built before the first record: its hooks see every call
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
            if isinstance(exc, Exception):
                for observer in self.observers:
                    observer.call_aborted(record, args, kwargs, exc)
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
            else:
                for observer in self.observers:
                    observer.call_interrupted(record, exc)
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
        # Every check hears of the failure (the probe removes its .shape spy, coverage leaves
        # its trace context) even when an earlier one raises its diagnosis: the first one wins.
        diagnosis: BaseException | None = None
        for call_failed in self._failed:
            try:
                call_failed(record, args, kwargs, exc)
            except BaseException as raised:
                if diagnosis is None:
                    diagnosis = raised
        if diagnosis is not None:
            for note in getattr(exc, "__notes__", ()):
                if diagnosis is not exc and hasattr(diagnosis, "add_note"):
                    diagnosis.add_note(note)  # e.g. "this call also retraced over budget"
            raise diagnosis

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
        """Run the plain function on copies of the same inputs and state; compare with ``out``.

        The compiled call runs first: it is the call the test sees, its exception is the one
        raised, and ``parity=first`` knows whether it traced without predicting MLX's cache.
        The eager run gets copies of the arguments, of declared state as it was before the call
        and of the arrays it reaches (:mod:`pytest_mlxcompile.shadow`); afterwards everything is
        put back to what the compiled call left, so nothing the shadow does reaches the test.
        """
        __tracebackhide__ = True
        fn = record.fn
        shadow = _shadow()
        if traced:
            shadow.forget_slots(record)
        if isinstance(out, types.GeneratorType):
            raise ParityError(_generator_message(record, self.mode))
        after = [(name, capture(tree)) for name, tree in fn.state_roots()]
        if any(structure(a) != structure(b) for (_, a), (_, b) in zip(before, after, strict=True)):
            # The call created state (an optimizer's first update adds its moments and flips
            # Python flags we cannot see), so the eager run cannot start from the same point.
            # Check the next call instead.
            record.parity_skipped += 1
            record._check_next = True
            return
        record._check_next = False
        slots = shadow.reachable_slots(record, args, kwargs)
        if self._over_budget(record, args, kwargs, out, slots):
            return
        run = shadow.Shadow(fn.fun, args, kwargs)
        declared = shadow.declared_snapshots(before)
        tls = _tls
        tls.depth += 1
        tls.eager = True
        try:
            run.prepare(slots, declared)
            expected = run.run()
        except Exception as exc:
            error = self._eager_raised(record, exc)
            # a placeholder's message quotes MLX's; any other error's traceback is the user's
            raise error from (None if isinstance(error, PlaceholderLeakError) else exc)
        finally:
            tls.depth -= 1
            tls.eager = False
            eager_after = [(name, capture(tree)) for name, tree in fn.state_roots()]
            run.restore_world()
            for _, snap in after:
                restore(snap)
        changes = run.argument_changes(expected)
        if changes:
            record.parity_checks += 1
            raise ParityError(self._argument_message(record, changes))
        expected_snap, out_snap = capture(expected), capture(out)
        state = (
            (name, want, got) for (name, want), (_, got) in zip(eager_after, after, strict=True)
        )
        tolerance = self.tolerance.bind(record.fn.name, record.fn.where)
        failure: Exception | None = None
        try:
            mismatch = compare_call(expected_snap, out_snap, state, tolerance)
        except Exception as exc:
            failure, mismatch = exc, None
        if failure is not None:
            # Comparing evaluates: MLX refused an array on one side (a placeholder, an op this
            # backend cannot run). Find which, and say so instead of MLX's bare error (outside
            # the except block, so that the error is not chained to MLX's).
            if self._unevaluable(record, expected_snap, out_snap, eager_after, after):
                return
            raise failure
        record.parity_checks += 1
        if mismatch is not None:
            raise ParityError(self._parity_message(record, mismatch, traced))

    def _over_budget(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        slots: list[Any],
    ) -> bool:
        """Whether the call is bigger than --mlx-max-check-bytes; a note (once) if so."""
        if not self.max_check_bytes:
            return False
        fn = record.fn
        reached = [slot.current() for slot in slots]
        size = estimate_bytes(args, kwargs, fn.inputs, fn.outputs, reached, out)
        if size <= self.max_check_bytes:
            return False
        record.parity_skipped += 1
        message = (
            f"{fn.name} [{self.mode}] call {record.calls}: parity not checked: the eager shadow "
            f"would evaluate about {format_bytes(size)} (arguments, captured and state arrays, "
            f"outputs), over --mlx-max-check-bytes={format_bytes(self.max_check_bytes)}. "
            f"{fn.name} is defined at {fn.where}. To check it, raise --mlx-max-check-bytes "
            "(0: no limit)"
        )
        _note(record, self.mode, "check_over_budget", message)
        return True

    def _eager_raised(self, record: FunctionRecord, exc: Exception) -> MLXCompileError:
        fn = record.fn
        if "without a primitive" in str(exc):
            return PlaceholderLeakError(
                f"{fn.name} [{self.mode}] call {record.calls}: the eager reference run of "
                f"{fn.name} read a placeholder array (a value a compile trace left behind): "
                f"{str(exc).splitlines()[0]}\n"
                f"  where: {fn.name} defined at {fn.where}\n"
                "  why: an earlier trace stored an array computed inside mx.compile somewhere "
                "the function reads (a global, an attribute, undeclared state); it has no value\n"
                "  fix: return the array from the compiled function and store the returned value, "
                "or declare its holder: mx.compile(fn, inputs=state, outputs=state)"
            )
        return ParityError(
            f"{fn.name} [{self.mode}] call {record.calls}: the compiled call returned "
            f"but the eager reference raised {type(exc).__name__}: {exc}\n"
            f"  {fn.name} is defined at {fn.where}"
        )

    def _unevaluable(
        self,
        record: FunctionRecord,
        expected: object,
        out: object,
        eager_state: list[tuple[str, object]],
        compiled_state: list[tuple[str, object]],
    ) -> bool:
        """After a comparison failed: turn MLX's refusal to evaluate into a diagnosis or a skip.

        Returns True when the check is skipped (eager itself cannot be evaluated: nothing to
        compare with). Raises when only the compiled side fails, or on a placeholder; returns
        False when both sides evaluate (the comparison failed for another reason).
        """
        __tracebackhide__ = True
        got = first_unevaluable(out, "out") or next(
            (u for label, snap in compiled_state if (u := first_unevaluable(snap, label))), None
        )
        want = first_unevaluable(expected, "out") or next(
            (u for label, snap in eager_state if (u := first_unevaluable(snap, label))), None
        )
        fn = record.fn
        where = f"  where: {fn.name} defined at {fn.where}"
        head = f"{fn.name} [{self.mode}] call {record.calls}"
        why_fix = (
            "  why: an array computed inside mx.compile while it traced was kept outside the "
            "graph (declared in inputs= but not outputs=, or stored in a global or attribute); "
            "it has no value and any use raises\n"
            "  fix: return the array and store the returned value, or declare its holder in both "
            "inputs= and outputs="
        )
        if got is not None and got.placeholder:
            raise PlaceholderLeakError(
                f"{head}: the compiled call left a placeholder array at {got.path}: "
                f"{got.said}\n{where}\n{why_fix}"
            )
        if want is not None and want.placeholder:
            raise PlaceholderLeakError(
                f"{head}: the eager reference run of {fn.name} read a placeholder array (a value "
                f"a compile trace left behind): {want.said}\n"
                f"  its result at {want.path} depends on it\n{where}\n{why_fix}"
            )
        if want is not None:
            message = (
                f"{head}: parity not checked: pytest-mlxcompile could not evaluate the results "
                f"to compare them (the test itself may never evaluate them): MLX says at "
                f"{want.path}: {want.said} ({fn.name} is defined at {fn.where})"
            )
            record.parity_skipped += 1
            if _note(record, self.mode, "check_not_evaluable", message):
                _warn(message)  # once per function and test, as the note: not once per call
            return True
        if got is not None:
            raise ParityError(
                f"{head}: the compiled result at {got.path} cannot be evaluated, the eager one "
                f"can: MLX says: {got.said}\n{where}\n"
                "  why: the compiled graph uses an operation or dtype MLX cannot run here, or it "
                "fused operations into one that fails\n"
                "  fix: report it to MLX with this function; meanwhile keep the function eager "
                "or change the dtype"
            )
        return False

    def _argument_message(
        self, record: FunctionRecord, changes: list[shadow.ArgumentChange]
    ) -> str:
        fn, shadow = record.fn, _shadow()
        first = changes[0]
        label = shadow.argument_label(fn.fun, first.index) + (
            f" at {first.subpath}" if first.subpath else ""
        )
        lines = [
            f"{fn.name} [{self.mode}] call {record.calls}: eager {first.verb} {label} in place, "
            "the compiled call did not (mx.compile does not write through to arguments: return "
            "the new value)",
        ]
        for change in changes:
            place = shadow.argument_label(fn.fun, change.index) + change.subpath
            lines.append(f"  {place}: {change.verb} in place{change.detail}")
        lines += [
            f"  where: {fn.name} defined at {fn.where}",
            "  why: mx.compile traces the function on copies of its arguments (new containers, "
            "tracers), so an assignment like cache[:, pos] = k or x += 1, or an append to an "
            "argument list, changes the caller's object only when the function runs eagerly",
            f"  fix: return the updated value from {fn.name} and use the returned one "
            "(cache = step(cache, ...)), or declare it as state: mx.compile(fn, "
            "inputs=state, outputs=state)",
        ]
        return "\n".join(lines)

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


def _finished_body(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("pytest-mlxcompile: a compiled function was called after its test ended")


def _note(record: FunctionRecord, mode: Mode, kind: str, message: str) -> bool:
    """A check skipped or softened, recorded for the reports (once per kind and function).

    Returns whether the note is new (False: this function already has one of this kind)."""
    notes = record.extra.setdefault("notes", [])
    if any(note.get("kind") == kind for note in notes):
        return False
    fn = record.fn
    notes.append(
        {
            "kind": kind,
            "function": fn.name,
            "where": fn.where,
            "mode": str(mode),
            "message": message,
        }
    )
    return True


def _warn(message: str) -> None:
    """A PytestWarning attributed to the user's call, the first frame outside this package."""
    import pytest

    level: int = 2
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    warnings.warn(pytest.PytestWarning(f"pytest-mlxcompile: {message}"), stacklevel=level)


def _generator_message(record: FunctionRecord, mode: Mode) -> str:
    fn = record.fn
    return (
        f"{fn.name} [{mode}] call {record.calls}: {fn.name} is a generator function, and "
        "mx.compile cannot compile a generator\n"
        f"  where: {fn.name} defined at {fn.where}\n"
        "  why: the trace only creates the generator object; its body runs later, outside the "
        "trace, on tracer arguments that have no value ('[eval] Attempting to eval an array "
        "without a primitive')\n"
        f"  fix: return the arrays (a list or tuple) from {fn.name} instead of yielding them, "
        "or compile the function the generator calls for each item"
    )


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


class _RoutedFunction(InstrumentedFunction):
    """An instrumented function while a variant is (or was last) active (see :func:`_route`).

    Named as its base: to a user it is the same kind of object in and out of a variant.
    """

    __call__ = _routed_call


_RoutedFunction.__name__ = _RoutedFunction.__qualname__ = "InstrumentedFunction"


def _skip_not_shapeless(record: FunctionRecord, exc: BaseException) -> None:
    __tracebackhide__ = True  # the skip's location is then the user's call
    import pytest

    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    pytest.skip(
        f"{record.fn.name} ({record.fn.where}) is not shapeless-capable: {first_line} "
        "It is not declared shapeless=True, so MLX never compiles it shapeless outside this "
        "variant."
    )
