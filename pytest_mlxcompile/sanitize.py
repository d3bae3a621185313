"""The compile sanitizer: placeholder leaks, stale captures, uncaptured RNG and host syncs, each
turned into its own error class with what/where/why/fix (the shapeless probe is
:mod:`pytest_mlxcompile.shapeless_probe`).

Mechanisms are the measured ones in reference/mlx-compile-probe.md ("Detection recipes"):

- leaks (§2, §12): while tracing, a ``gc`` sweep before and after the body finds the arrays
  that appeared (plus the tracer inputs); after the call, ``mx.eval`` in try/except matching
  "without a primitive" is the only placeholder test, applied to those and to every leaf of the
  declared state. Holders are named by walking what the function reaches
  (:mod:`pytest_mlxcompile.holders`), with one ``gc.get_referrers`` pass as a fallback.
- stale captures (§4): at trace time, the arrays and named Python scalars the function reads
  that are not arguments nor declared state; before later calls, identity AND data-buffer address
  (an alias, ``mx.stop_gradient(W)``, holds the old buffer so donation cannot reuse the address).
- RNG (§5): the global key (``mx.random.state[0]``) is another object after the body ran.
- host syncs (§3): MLX's ``ValueError ... during function transformations``, last frame = the
  user's line.

All of the heap walking happens on traces only. A cache-hit call costs an identity check and a
buffer-address read per captured array (see benchmarks/bench_sanitize_overhead.py).
"""

from __future__ import annotations

import ctypes
import gc
import linecache
import os
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from pytest_mlxcompile import _mlx, holders, locations
from pytest_mlxcompile.errors import (
    HostSyncError,
    MLXCompileError,
    PlaceholderLeakError,
    StaleCaptureError,
    UncapturedRandomStateError,
)
from pytest_mlxcompile.holders import Path, Slot
from pytest_mlxcompile.instrument import FunctionRecord, Observer, VariantRun
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.parity import Tolerance

__all__ = ["Sanitizer", "diagnosis"]

_T = TypeVar("_T")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_HOST_SYNC = "during function transformations"


def diagnosis(
    record: FunctionRecord, error: type[MLXCompileError], kind: str, message: str
) -> MLXCompileError:
    """Keep a diagnosis as plain data for the reports; returns the error to raise."""
    record.extra.setdefault("diagnoses", []).append(
        {
            "kind": kind,
            "error": error.__name__,
            "function": record.fn.name,
            "where": record.fn.where,
            "mode": str(record.run.mode),
            "message": message,
        }
    )
    return error(message)


# buffer addresses -------------------------------------------------------------------------------
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def buffer_address(array: Any) -> int | None:
    """The address of an array's data (evaluates it), or None for a placeholder.

    DLPack rather than ``memoryview``: it works for every dtype (numpy has no bfloat16) and is
    the cheaper of the two (~1.2 µs). ``DLTensor.data`` is the first field of the struct.
    """
    try:
        capsule = array.__dlpack__()  # alive until we read: its destructor frees the struct
        pointer = _capsule_pointer(capsule, b"dltensor")
    except Exception:
        return None
    return ctypes.c_void_p.from_address(pointer).value if pointer else None


def _describe_array(array: Any) -> str:
    dtype = str(array.dtype).rsplit(".", 1)[-1]
    return f"shape {tuple(array.shape)} {dtype}"


# stale captures ----------------------------------------------------------------------------------
@dataclass
class Captured:
    """One value a graph froze at trace time, and what it looked like then."""

    slot: Slot
    #: ``mx.stop_gradient`` of the array: it keeps the trace-time buffer alive, so an in-place
    #: update has to allocate a new one and the address comparison sees it (probe §4)
    alias: Any = None
    address: int | None = None

    def change(self, array_type: type, *, by_address: bool = True) -> str | None:
        now = self.slot.current()
        if holders.missing(now):
            return None  # the holder is gone: nothing reads it any more
        then = self.slot.value
        if isinstance(then, array_type):
            if now is not then:
                new = _describe_array(now) if isinstance(now, array_type) else type(now).__name__
                return (
                    f"rebound to another value since the trace (trace-time "
                    f"{_describe_array(then)}, now {new})"
                )
            if by_address and self.address is not None and buffer_address(now) != self.address:
                return (
                    "updated in place since the trace (same array object, new data: an "
                    "assignment like W[0] = ... or W += ...)"
                )
            return None
        if now is not then and (type(now) is not type(then) or now != then):  # NaN is itself
            return f"trace-time {then!r}, now {now!r}"
        return None


def _captures(fun: object, array_type: type, skip: set[int]) -> list[Captured]:
    found: list[Captured] = []
    seen: set[tuple[int, object]] = set()
    for slot in holders.reachable(fun, array_type, skip, reads_only=True):
        if not isinstance(slot.value, array_type) and not slot.named:
            continue
        if isinstance(slot.value, str) and slot.value.startswith("__"):
            continue  # dunder strings (__name__) are not computation inputs
        where = (id(slot.holder), slot.key)
        if where in seen:
            continue
        seen.add(where)
        found.append(Captured(slot))
    return found


# the observer ------------------------------------------------------------------------------------
@dataclass
class _Trace:
    """What one outermost trace looked like, from its start to the end of its call."""

    record: FunctionRecord
    number: int
    key_before: Any
    before: list[Any]
    tracer_inputs: list[Any]
    captured: list[Captured]
    candidates: list[Any] = field(default_factory=list)
    random_advanced: bool = False


class Sanitizer(Observer):
    """Watches one compiled or shapeless test variant; raises the precise error class."""

    def __init__(self, mode: Mode, tolerance: Tolerance | None = None) -> None:
        self.mode = mode
        self.tolerance = tolerance or Tolerance()
        self._mx = _mlx.core()
        self._armed: FunctionRecord | None = None
        self._call: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
        self._trace: _Trace | None = None
        self._changes: list[str] = []
        self._captured: dict[FunctionRecord, list[Captured]] = {}
        self._failed = False
        #: True between before_call and after_call: a call that never got to after_call
        #: failed (parity or an exception), and the test with it
        self._open = False

    # outside the trace ---------------------------------------------------------------------
    def before_call(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._armed = record
        self._open = True
        self._changes = []
        captured = self._captured.get(record)
        if captured:
            # Compared now, judged after the call: a call that retraces reads the new values.
            array = self._mx.array
            self._changes = [
                f"{c.slot.path}: {change}" for c in captured if (change := c.change(array))
            ]
        self._call = (args, kwargs)  # exclusions are worked out only if the call traces

    def _exclusions(self, record: FunctionRecord, tracers: list[Any]) -> set[int]:
        """Objects a graph does not freeze: arguments, declared state, the RNG key.

        Runs inside the trace, where MLX has swapped tracers into the declared containers: the
        containers themselves are skipped, and the arguments as the test passed them.
        """
        array = self._mx.array
        fn = record.fn
        skip = {id(a) for a in holders.array_leaves(self._call, array, [])}
        skip.update(id(t) for t in tracers)
        for tree in (fn.inputs, fn.outputs):
            if tree is not None:
                holders.containers(tree, skip)
        keys = _mlx.random_key_list()
        skip.update((id(keys), id(self._mx.random.state), id(fn)))
        return skip

    def call_returned(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        __tracebackhide__ = True
        trace, self._trace, self._armed = self._trace, None, None
        if trace is None or trace.record is not record:
            if self._changes and not traced:
                self._failed = True
                raise diagnosis(
                    record, StaleCaptureError, "stale_capture", self._stale_message(record)
                )
            return
        if trace.random_advanced:
            self._failed = True
            raise diagnosis(
                record,
                UncapturedRandomStateError,
                "uncaptured_random_state",
                self._random_message(trace),
            )
        leaks = self._leaks(trace)
        if leaks:
            self._failed = True
            raise diagnosis(
                record, PlaceholderLeakError, "placeholder_leak", self._leak_message(trace, leaks)
            )
        array = self._mx.array
        self._changes = [
            f"{c.slot.path}: {change}"
            for c in trace.captured
            if (change := c.change(array, by_address=False))
        ]
        if self._changes:
            # The function changed a value it reads (``cache.offset += 1``): the graph keeps
            # the trace-time value, so every later call would repeat it.
            self._failed = True
            raise diagnosis(
                record, StaleCaptureError, "stale_capture", self._stale_message(record, trace)
            )
        self._freeze(trace)

    def after_call(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        self._open = False

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        __tracebackhide__ = True
        self._trace, self._armed = None, None
        self._failed = True
        if isinstance(exc, ValueError) and _HOST_SYNC in str(exc):
            message = self._host_sync_message(record, exc)
            raise diagnosis(record, HostSyncError, "host_sync", message) from None

    def finish(self, run: VariantRun) -> None:
        self._trace = None

    def graph_is_stale(self, record: FunctionRecord) -> bool:
        """Whether a value ``record``'s graph froze at its last trace has changed since."""
        return any(c.change(self._mx.array) for c in self._captured.get(record, ()))

    # inside the trace ----------------------------------------------------------------------
    def trace_started(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if record is not self._armed:
            return  # a nested call, or one under mx.grad/vmap: the outermost trace covers it
        self._armed = None
        mx = self._mx
        array = mx.array
        tracers = holders.array_leaves((args, kwargs), array, [])
        for tree in (record.fn.inputs, record.fn.outputs):
            if tree is not None:
                tracers += holders.array_leaves(tree, array, [])  # MLX swapped in tracers
        skip = self._exclusions(record, tracers)
        self._call = ((), {})
        captured = _guarded(lambda: _captures(record.fn.fun, array, skip), record, "stale-capture")
        self._trace = _Trace(
            record=record,
            number=record.traces,
            key_before=_mlx.random_key_list()[0],
            # strong references: an array freed during the trace could hand its id to a leak
            before=[o for o in gc.get_objects() if type(o) is array],
            tracer_inputs=tracers,
            captured=captured,
        )

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        trace = self._trace
        if trace is None or trace.record is not record:
            return
        array = self._mx.array
        if _mlx.random_key_list()[0] is not trace.key_before and not _random_captured(
            record.fn.inputs, record.fn.outputs, self._mx.random.state
        ):
            trace.random_advanced = True
        # Outputs stay candidates: the caller gets new objects, so a returned tracer that is
        # also stored somewhere (``globals()["last"] = y; return y``) is a leak too.
        known = {id(o) for o in trace.before}
        trace.candidates = [o for o in gc.get_objects() if type(o) is array and id(o) not in known]
        trace.before = []

    # leaks ---------------------------------------------------------------------------------
    def _leaks(self, trace: _Trace) -> list[tuple[str, Any, bool]]:
        """``(holder, placeholder, declared)`` for each escaped placeholder someone holds."""
        fn = trace.record.fn
        array = self._mx.array
        found: list[tuple[str, Any, bool]] = []
        # Declared state first, checked leaf by leaf: with inputs= but no outputs=, MLX puts
        # fresh placeholder objects back into the containers after the call, which no sweep
        # during the trace could have seen (probe §12).
        for label, tree in (("inputs", fn.inputs), ("outputs", fn.outputs)):
            if tree is not None:
                root = Path(f"declared {label}=", label)
                for slot in holders.tree_slots(root, tree, array):
                    if _mlx.is_placeholder(slot.value):
                        found.append((str(slot.path), slot.value, True))
        pool = {id(a): a for a in (*trace.candidates, *trace.tracer_inputs)}
        trace.candidates, trace.tracer_inputs = [], []
        placeholders = {key: a for key, a in pool.items() if _mlx.is_placeholder(a)}
        pool.clear()
        for _, leaked, _ in found:
            placeholders.pop(id(leaked), None)
        if not placeholders:
            return found
        slots = _guarded(
            lambda: list(holders.reachable(fn.fun, array, {id(fn)})), trace.record, "leak"
        )
        for slot in slots:
            if id(slot.value) in placeholders:
                found.append((str(slot.path), placeholders.pop(id(slot.value)), False))
        if placeholders:
            rest = list(placeholders.values())
            placeholders.clear()  # so that our own dict is not among the referrers
            found += [(h, a, False) for h, a in _referrer_holders(rest)]
        return found

    def _leak_message(self, trace: _Trace, leaks: list[tuple[str, Any, bool]]) -> str:
        record = trace.record
        fn = record.fn
        declared_only = all(declared for _, _, declared in leaks)
        lines = [
            f"{fn.name} [{self.mode}] trace {trace.number} (call {record.calls}) leaked "
            f"{len({id(a) for _, a, _ in leaks})} placeholder array(s) into {leaks[0][0]}",
            *(f"  holder: {holder} — {_describe_array(a)}" for holder, a, _ in leaks),
            f"  where: {fn.name} defined at {fn.where}",
        ]
        if declared_only:
            lines.append(
                f"  why: {fn.name} updates state it declares in inputs= but not outputs=; MLX "
                "leaves the traced values in those containers, and they have no value: any use "
                "raises '[eval] Attempting to eval an array without a primitive'"
            )
        else:
            lines.append(
                "  why: the array was computed inside the compiled function and stored outside "
                "it while mx.compile traced it; after the trace it has no value, and any use "
                "raises '[eval] Attempting to eval an array without a primitive'"
            )
        if declared_only:
            lines.append(
                "  fix: the function updates state it declares only in inputs=; declare the "
                "same containers in outputs= too (mx.compile(fn, inputs=state, outputs=state)) "
                "so MLX writes the new values back"
            )
        else:
            lines.append(
                f"  fix: return the array from {fn.name} and store the returned value outside, "
                "or declare its holder as state: mx.compile(fn, inputs=state, outputs=state)"
            )
        return "\n".join(lines)

    # stale captures ------------------------------------------------------------------------
    def _freeze(self, trace: _Trace) -> None:
        """Finish the trace-time record outside the trace, where evaluating is allowed."""
        array = self._mx.array
        stop_gradient = self._mx.stop_gradient
        kept: list[Captured] = []
        for captured in trace.captured:
            value = captured.slot.value
            if isinstance(value, array):
                if _mlx.is_placeholder(value):
                    continue  # reported as a leak, or set during the trace: not a capture
                captured.alias = stop_gradient(value)
                address = buffer_address(value)
                # A device whose DLPack export copies would show a new address on every read:
                # then only identity is compared, never a false "updated in place".
                captured.address = address if address == buffer_address(value) else None
            kept.append(captured)
        self._captured[trace.record] = kept

    def _stale_message(self, record: FunctionRecord, trace: _Trace | None = None) -> str:
        fn = record.fn
        first = self._changes[0].split(": ", 1)[0]
        if trace is None:
            headline = (
                f"{fn.name} [{self.mode}] call {record.calls} reused a graph traced with "
                f"{first} frozen in, and it has changed since"
            )
            reuse = "this call reused the graph"
        else:
            headline = (
                f"{fn.name} [{self.mode}] trace {trace.number} (call {record.calls}) changed "
                f"{first} while tracing; the graph froze the value it read, so every later "
                "call would use it again"
            )
            reuse = "this call traced"
        return "\n".join(
            [
                headline,
                *(f"  {change}" for change in self._changes),
                f"  where: {fn.name} defined at {fn.where}; traced {record.traces} time(s), "
                + reuse,
                "  why: mx.compile bakes arrays and Python values that are neither arguments "
                "nor declared state into the graph when it traces; later calls keep the old "
                "value while eager code reads the new one",
                f"  fix: pass it to {fn.name} as an argument, or declare it: "
                f"mx.compile({_short(fn.name)}, inputs=state) (and outputs=state if it updates "
                "it); for a Python number, pass it as an argument (a new value retraces) or "
                "keep it in an mx.array",
            ]
        )

    # random state --------------------------------------------------------------------------
    def _random_message(self, trace: _Trace) -> str:
        record = trace.record
        fn = record.fn
        state = self._mx.random.state
        ins = _random_captured(fn.inputs, None, state, either=True)
        outs = _random_captured(fn.outputs, None, state, either=True)
        poisoned = _mlx.is_placeholder(_mlx.random_key_list()[0])
        lines = [
            f"{fn.name} [{self.mode}] trace {trace.number} (call {record.calls}) drew random "
            "numbers but mx.random.state is not captured in both inputs= and outputs= "
            f"(inputs=: {'yes' if ins else 'no'}, outputs=: {'yes' if outs else 'no'})",
            f"  where: {fn.name} defined at {fn.where}",
        ]
        if poisoned:
            lines.append(
                "  why: with inputs= but not outputs=, the trace left a placeholder in the "
                "global key, so every later random call would raise; pytest-mlxcompile "
                "restores the key after this test so later tests are not affected"
            )
        else:
            lines.append(
                "  why: the random key is baked into the graph at trace time, so every later "
                "call repeats the same random numbers (the same dropout mask, the same noise)"
            )
        lines.append(
            f"  fix: mx.compile({_short(fn.name)}, inputs=state, outputs=state) with "
            "mx.random.state "
            "in state (e.g. state = [model.state, optimizer.state, mx.random.state]), or pass "
            "a key argument and use mx.random.*(..., key=key)"
        )
        return "\n".join(lines)

    # host syncs ----------------------------------------------------------------------------
    def _host_sync_message(self, record: FunctionRecord, exc: Exception) -> str:
        fn = record.fn
        where, line = _user_line(exc.__traceback__)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        lines = [
            f"{fn.name} [{self.mode}] call {record.calls}: {where} needs an array's value "
            f"while mx.compile traces {fn.name}",
        ]
        if line:
            lines.append(f"  line: {line}")
        lines += [
            f"  MLX says: {first}",
            "  why: inside a compile trace arrays are symbolic; print(), .item(), float(), "
            "np.array() or an if/while on an array need a value that only exists when the "
            "compiled graph runs",
            "  fix: keep the decision in the graph (mx.where(cond, a, b) instead of if/else), "
            "compute Python values outside and pass them in as arguments, and return what you "
            "want to inspect instead of printing it",
        ]
        return "\n".join(lines)


def _guarded(walk: Callable[[], list[_T]], record: FunctionRecord, check: str) -> list[_T]:
    """Run a walk over user objects; one we cannot walk must not break the user's call."""
    try:
        return walk()
    except Exception as exc:
        warnings.warn(
            pytest.PytestWarning(
                f"pytest-mlxcompile: the {check} check could not walk what {record.fn.name} "
                f"({record.fn.where}) reaches and skipped part of it: {exc!r}"
            ),
            stacklevel=2,
        )
        return []


def _short(name: str) -> str:
    """``make.<locals>.f`` -> ``f``: the name as code that compiles it would spell it."""
    return name.rsplit(".", 1)[-1]


def _random_captured(
    inputs: object, outputs: object, state: object, *, either: bool = False
) -> bool:
    """Whether ``mx.random.state`` (the sentinel or its key list) is in the declared trees."""
    targets = {id(state), id(_mlx.random_key_list())}

    def contains(tree: object, depth: int = 0) -> bool:
        if id(tree) in targets:
            return True
        if depth > 4 or not isinstance(tree, (list, tuple, dict)):
            return False
        items = tree.values() if isinstance(tree, dict) else tree
        return any(contains(item, depth + 1) for item in items)

    if either:
        return contains(inputs)
    return contains(inputs) and contains(outputs)


def _user_line(tb: types.TracebackType | None) -> tuple[str, str]:
    """``file:line`` and source of the last traceback frame in the user's code."""
    best: tuple[str, int] | None = None
    mlx_dir = os.sep + "mlx" + os.sep
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(_PACKAGE_DIR) and mlx_dir not in filename:
            best = (filename, tb.tb_lineno)
        tb = tb.tb_next
    if best is None:
        return "a line of the compiled function", ""
    filename, lineno = best
    return f"{locations.relative(filename)}:{lineno}", linecache.getline(filename, lineno).strip()


def _referrer_holders(targets: list[Any]) -> list[tuple[str, Any]]:
    """Name holders the walk did not reach, from ``gc.get_referrers`` (one heap pass)."""
    by_id = {id(t): t for t in targets}
    ignore = {id(targets), id(by_id), id(sys._getframe())}
    found: list[tuple[str, Any]] = []
    for holder in gc.get_referrers(*targets):
        if id(holder) in ignore or isinstance(holder, types.FrameType):
            continue
        if isinstance(holder, dict):
            items: list[tuple[Any, Any]] = list(holder.items())
        elif isinstance(holder, (list, tuple)):
            items = list(enumerate(holder))
        else:
            continue
        # every holder of every placeholder: each one needs fixing
        found += [(_name_container(holder, k), by_id[id(v)]) for k, v in items if id(v) in by_id]
    return found


def _name_container(holder: Any, key: Any) -> str:
    if isinstance(holder, dict) and "__name__" in holder and "__builtins__" in holder:
        where = locations.relative(str(holder.get("__file__") or holder["__name__"]))
        return f"global {key!r} in {where}"
    step = f"key {key!r}" if isinstance(holder, dict) else f"item [{key}]"
    for owner in gc.get_referrers(holder):
        if isinstance(owner, dict) and "__name__" in owner and "__builtins__" in owner:
            for name, value in owner.items():
                if value is holder:
                    where = locations.relative(str(owner.get("__file__") or owner["__name__"]))
                    return f"global {name!r} in {where}, {step}"
        if getattr(owner, "__dict__", None) is holder:
            return f"attribute {key!r} of {type(owner).__name__}"
    return f"{type(holder).__name__} {step}"
