"""The compile sanitizer: placeholder leaks, stale captures, uncaptured RNG and host syncs, each
turned into its own error class with what/where/why/fix (the shapeless probe is
:mod:`pytest_mlxcompile.shapeless_probe`).

Mechanisms are the measured ones in reference/mlx-compile-probe.md ("Detection recipes"):

- the reachable state (:func:`holders.state_slots`): what the function reaches through its
  globals, closures, defaults, ``self``, ``functools.partial`` arguments, the declared
  ``inputs=``/``outputs=`` trees and the RNG key. It is walked when a trace starts and again when
  its call returns (traces only, never cache hits), and the two pictures are diffed path by path
  (:func:`_diff`): an array rebound or changed in place that is not declared in ``outputs=`` is
  an undeclared output, a placeholder leak when its graph reaches a tracer of this trace; a Python
  number on an object that changed is frozen state. A trace that raised is diffed before declared
  state is put back. No heap scan: the cost follows what the function reaches.
- placeholders (:func:`_mlx.placeholders`): read from the graph (``mx.export_to_dot``), never by
  evaluating an array a trace created; that corrupts MLX's compile cache (a segfault).
- stale captures (§4): at trace time, the arrays and named Python scalars the function reads
  that are not arguments nor declared state; before later calls, identity AND data-buffer address
  (an alias, ``mx.stop_gradient(W)``, holds the old buffer so donation cannot reuse the address).
- RNG (§5): the global key (``mx.random.state[0]``) is another object after the body ran.
- host syncs (§3): MLX's ``ValueError ... during function transformations``, last frame = the
  user's line.

A cache-hit call costs an identity check and a buffer-address read per captured array (see
benchmarks/bench_sanitize_overhead.py); a trace, two walks of the reachable state (see
benchmarks/bench_reachable_walk.py).
"""

from __future__ import annotations

import ctypes
import linecache
import os
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
            if by_address and (
                buffer_address(now) != self.address
                if self.address is not None
                else self.alias is not None and not _mlx.same_node(now, self.alias)
            ):
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


# the reachable state -------------------------------------------------------------------------
def _frozen_number(slot: Slot, old: object, new: object) -> bool:
    """A Python number in an object's attribute that the trace changed (``cache.offset``).

    Left out, each as a class:
    - booleans and strings: they flip once in lazy initialisation (``Optimizer._initialized``:
      False -> True on the first update) and the next eager call would set the same value again;
    - module globals, closure cells, and dict/list items: where code keeps trace counters
      (``nonlocal traces; traces += 1``, ``RUNS["f"] += 1``), which count exactly what they
      mean to; state a model reads back (an offset, a step) lives on an object.
    """
    if not slot.is_attribute or isinstance(slot.holder, (types.CellType, types.ModuleType, type)):
        return False
    numbers = (int, float, complex)
    if isinstance(old, bool) or isinstance(new, bool):
        return False
    if not isinstance(old, numbers) or not isinstance(new, numbers):
        return False
    return old is not new and (type(old) is not type(new) or old != new)


@dataclass
class _Entry:
    slot: Slot
    #: "outputs" (declared in outputs=: MLX writes it back), "inputs" (declared in inputs=
    #: only), or "" (not declared)
    origin: str
    #: for an array, what it was (``_mlx.Graph.fingerprint``): identity alone misses ``a[i] = v``
    fingerprint: str = ""
    #: for an array, its name in the snapshot's graph (one per array object, however many paths)
    name: str = ""


@dataclass
class _Snapshot:
    """The state a compiled function can reach, at one moment (the start or end of a trace)."""

    entries: dict[Path, _Entry]
    #: module namespaces the walk read globals from, with the names they held
    scopes: dict[int, tuple[dict[str, Any], frozenset[str]]]
    #: strong references: an array freed during the trace could hand its id to a new one
    arrays: list[Any]

    @classmethod
    def take(
        cls,
        record: FunctionRecord,
        array_type: type,
        extra: list[tuple[Slot, str]] | None = None,
        key_origin: str | None = None,
    ) -> _Snapshot:
        fn = record.fn
        declared: list[tuple[str, Path, object]] = []
        if fn.outputs is not None:
            declared.append(("outputs", Path("declared outputs=", "outputs"), fn.outputs))
        if fn.inputs is not None:
            declared.append(("inputs", Path("declared inputs=", "inputs"), fn.inputs))
        if key_origin is None:
            key_origin = _random_origin(fn.inputs, fn.outputs)
        keys = _mlx.random_key_list()
        declared.append((key_origin, Path("mx.random.state", "mx.random.state"), keys))
        slots, scopes = holders.state_slots(fn.fun, declared, array_type)
        slots += extra or []
        entries: dict[Path, _Entry] = {}
        arrays: list[Any] = []
        names: dict[int, str] = {}
        for slot, origin in slots:
            key = slot.path
            if key in entries:
                continue
            entry = entries[key] = _Entry(slot, origin)
            # Only undeclared arrays are compared by fingerprint; a declared one after the call
            # is the compiled graph's output, whose graph text would be the whole computation.
            if not origin and isinstance(slot.value, array_type):
                name = names.get(id(slot.value))
                if name is None:
                    name = names[id(slot.value)] = f"a{len(arrays)}"
                    arrays.append(slot.value)
                entry.name = name
        graph = _mlx.Graph({f"a{index}": a for index, a in enumerate(arrays)})
        for entry in entries.values():
            if entry.name:
                entry.fingerprint = graph.fingerprint(entry.name)
        return cls(entries, {k: (v, frozenset(v)) for k, v in scopes.items()}, arrays)

    def added_globals(self, array_type: type) -> list[tuple[Slot, str]]:
        """Arrays stored under global names that appeared since (``globals()["last"] = y``)."""
        found: list[tuple[Slot, str]] = []
        for scope, names in self.scopes.values():
            where = locations.relative(str(scope.get("__file__") or scope.get("__name__", "?")))
            for name in [n for n in list(scope) if n not in names]:
                path = Path(f"global {name!r} in {where}", name)
                value = scope.get(name)
                if isinstance(value, array_type):
                    found.append((Slot(path, scope, name, False, value, True), ""))
                elif isinstance(value, (list, tuple, dict)):
                    found += [
                        (slot, "")
                        for slot in holders.tree_slots(path, value, array_type)
                        if isinstance(slot.value, array_type)
                    ]
        return found


@dataclass
class _Finding:
    """One thing a trace left in the reachable state that it should not have."""

    kind: str  # "placeholder" | "constant" | "python"
    path: str
    origin: str
    value: Any = None
    old: Any = None


def _diff(
    before: _Snapshot,
    after: _Snapshot,
    tracers: list[Any],
    known: set[int],
    *,
    raised: bool = False,
) -> list[_Finding]:
    """What the trace wrote into the reachable state, judged without evaluating anything unsafe.

    After a trace that raised, MLX wrote nothing back, not even into declared ``outputs=``.
    """
    array_type = _mlx.core().array
    found: list[_Finding] = []
    candidates: list[tuple[Path, _Entry, str, _Entry | None]] = []
    for key, entry in after.entries.items():
        now = entry.slot.value
        old = before.entries.get(key)
        if not isinstance(now, array_type):
            if old is not None and _frozen_number(entry.slot, old.slot.value, now):
                found.append(_Finding("python", str(key), entry.origin, now, old.slot.value))
            continue
        fingerprint = entry.fingerprint
        if entry.origin == "outputs" and not raised:
            continue  # MLX wrote the traced value back: declared state done right
        if (
            entry.origin == ""
            and old is not None
            and old.slot.value is now
            and old.fingerprint == fingerprint != "?"
        ):
            continue  # untouched
        candidates.append((key, entry, fingerprint, old))
    verdicts = _mlx.placeholders([entry.slot.value for _, entry, _, _ in candidates], tracers)
    for (key, entry, fingerprint, old), verdict in zip(candidates, verdicts, strict=True):
        now = entry.slot.value
        if verdict == "placeholder":
            found.append(_Finding("placeholder", str(key), entry.origin, now))
        elif (
            entry.origin == ""
            and fingerprint not in ("leaf", "?")
            and (id(now) not in known or (old is not None and old.fingerprint != fingerprint))
        ):
            # Computed while tracing from no traced input (a constant of the graph), or an
            # array updated in place: the graph does it only while tracing.
            found.append(_Finding("constant", str(key), entry.origin, now))
    return found


# the observer ------------------------------------------------------------------------------------
@dataclass
class _Trace:
    """What one outermost trace looked like, from its start to the end of its call."""

    record: FunctionRecord
    number: int
    key_before: Any
    tracers: list[Any]
    captured: list[Captured]
    snapshot: _Snapshot | None = None
    #: where mx.random.state is declared (see _random_origin), looked up once per trace
    key_origin: str = ""
    #: mx.random.state is declared in both inputs= and outputs=
    random_captured: bool = False
    #: ids of arrays that existed before the trace (the snapshot's and the call's arguments)
    known: set[int] = field(default_factory=set)
    random_advanced: bool = False
    #: nested traces of the same function (recursion) running inside this one
    depth: int = 0


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
        #: a diagnosis of what a trace that raised left behind, raised from call_failed
        self._aborted: MLXCompileError | None = None
        _mlx.known_tracers.clear()  # the previous test's traces are not this one's

    # outside the trace ---------------------------------------------------------------------
    def before_call(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._armed = record
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
                raise diagnosis(
                    record, StaleCaptureError, "stale_capture", self._stale_message(record)
                )
            return
        if trace.random_advanced:
            raise diagnosis(
                record,
                UncapturedRandomStateError,
                "uncaptured_random_state",
                self._random_message(trace),
            )
        findings = self._findings(trace)
        if findings:
            raise self._diagnose(trace, findings)
        self._freeze(trace)

    def call_aborted(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        """A call raised; declared state is not put back yet: judge what its trace left."""
        trace = self._trace
        self._aborted = None
        if trace is None or trace.record is not record:
            return
        findings = [f for f in self._findings(trace, raised=True) if f.kind == "placeholder"]
        if findings:
            self._aborted = self._diagnose(trace, findings, raised=exc)

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        __tracebackhide__ = True
        trace, self._trace, self._armed = self._trace, None, None
        aborted, self._aborted = self._aborted, None
        if aborted is None and trace is not None and trace.record is record:
            # no call_aborted (an older instrument): judge now, after declared state came back
            findings = [f for f in self._findings(trace, raised=True) if f.kind == "placeholder"]
            aborted = self._diagnose(trace, findings, raised=exc) if findings else None
        if aborted is not None:
            raise aborted from exc
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
        trace = self._trace
        if trace is not None and trace.record is record:
            trace.depth += 1  # the function calls itself: the outermost trace covers it
            return
        if record is not self._armed:
            return  # a nested call, or one under mx.grad/vmap: the outermost trace covers it
        self._armed = None
        mx = self._mx
        array = mx.array
        tracers = holders.array_leaves((args, kwargs), array, [])
        if record.fn.inputs is not None:  # MLX swapped tracers into what inputs= declares
            tracers += holders.array_leaves(record.fn.inputs, array, [])
        declared = list(tracers)
        if record.fn.outputs is not None:  # real arrays, written back after the call
            declared += holders.array_leaves(record.fn.outputs, array, [])
        keys = _mlx.random_key_list()
        random_in = _random_captured(record.fn.inputs, None, mx.random.state, either=True)
        random_out = _random_captured(record.fn.outputs, None, mx.random.state, either=True)
        if random_in:
            tracers.append(keys[0])
        _mlx.known_tracers.extend(tracers)
        known = {id(a) for a in holders.array_leaves(self._call, array, [])}
        skip = self._exclusions(record, declared)
        self._call = ((), {})
        captured = _guarded(lambda: _captures(record.fn.fun, array, skip), record, "stale-capture")
        trace = self._trace = _Trace(
            record=record,
            number=record.traces,
            key_before=keys[0],
            tracers=tracers,
            captured=captured,
        )
        trace.random_captured = random_in and random_out
        trace.key_origin = "outputs" if random_out else "inputs" if random_in else ""
        snapshot = _guarded_one(
            lambda: _Snapshot.take(record, array, key_origin=trace.key_origin), record, "leak"
        )
        if snapshot is not None:
            trace.snapshot = snapshot
            trace.known = known | {id(a) for a in snapshot.arrays}

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        trace = self._trace
        if trace is None or trace.record is not record:
            return
        if trace.depth:
            trace.depth -= 1  # a recursive call's trace ended; the outermost is still running
            return
        if _mlx.random_key_list()[0] is not trace.key_before and not trace.random_captured:
            trace.random_advanced = True

    # leaks ---------------------------------------------------------------------------------
    def _findings(self, trace: _Trace, *, raised: bool = False) -> list[_Finding]:
        """Diff the reachable state against the trace's start (traces only, never cache hits)."""
        before = trace.snapshot
        if before is None:
            return []
        trace.snapshot = None  # once: the strong references go with it
        array = self._mx.array
        record = trace.record

        def after() -> list[_Finding]:
            extra = before.added_globals(array)
            snapshot = _Snapshot.take(record, array, extra, trace.key_origin)
            return _diff(before, snapshot, trace.tracers, trace.known, raised=raised)

        return _guarded(after, record, "leak")

    def _diagnose(
        self, trace: _Trace, findings: list[_Finding], raised: Exception | None = None
    ) -> MLXCompileError:
        record = trace.record
        leaks = [
            (f.path, f.value, f.origin == "inputs") for f in findings if f.kind == "placeholder"
        ]
        if leaks:
            message = self._leak_message(trace, leaks, raised)
            return diagnosis(record, PlaceholderLeakError, "placeholder_leak", message)
        message = self._written_message(trace, findings)
        return diagnosis(record, StaleCaptureError, "stale_capture", message)

    def _leak_message(
        self,
        trace: _Trace,
        leaks: list[tuple[str, Any, bool]],
        raised: Exception | None = None,
    ) -> str:
        record = trace.record
        fn = record.fn
        declared_only = all(declared for _, _, declared in leaks)
        lines = [
            f"{fn.name} [{self.mode}] trace {trace.number} (call {record.calls}) leaked "
            f"{len({id(a) for _, a, _ in leaks})} placeholder array(s) into {leaks[0][0]}",
            *(f"  holder: {holder} — {_describe_array(a)}" for holder, a, _ in leaks),
            f"  where: {fn.name} defined at {fn.where}",
        ]
        if raised is not None:
            first = str(raised).splitlines()[0] if str(raised) else ""
            lines.append(
                f"  the trace raised {type(raised).__name__}: {first}; MLX never put the traced"
                " values back, so every later use of the holder raises '[eval] Attempting to "
                "eval an array without a primitive' (for mx.random.state: every later random "
                "call in the process)"
            )
            restored = (
                "pytest-mlxcompile repairs mx.random.state after this test"
                if any(holder.startswith("mx.random.state") for holder, _, _ in leaks)
                else "the holder keeps the placeholder"
            )
            lines.append(
                "  fix: check arguments before calling the compiled function (outside the "
                "trace) and keep state the function updates in inputs=/outputs= or return it; "
                "after catching the error, reset the holder (mx.random.seed(...) for the random "
                f"key); {restored}"
            )
            return "\n".join(lines)
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

    def _written_message(self, trace: _Trace, findings: list[_Finding]) -> str:
        """Python state changed, or arrays computed from no traced input, while tracing."""
        record = trace.record
        fn = record.fn
        python = [f for f in findings if f.kind == "python"]
        constants = [f for f in findings if f.kind == "constant"]
        first = (python or constants)[0].path
        lines = [
            f"{fn.name} [{self.mode}] trace {trace.number} (call {record.calls}) changed "
            f"{first} while tracing; the graph does not run Python, so later calls never "
            "change it again",
        ]
        lines += [f"  {f.path}: {f.old!r} -> {f.value!r}" for f in python]
        lines += [
            f"  {f.path}: set while tracing to a value computed from no traced input "
            f"({_describe_array(f.value)}), an output the function did not declare"
            for f in constants
        ]
        lines.append(f"  where: {fn.name} defined at {fn.where}; this call traced")
        if python:
            lines += [
                "  why: a Python number changes only while mx.compile traces "
                "the function; the compiled graph froze the value it read, and inputs=/outputs="
                " carry arrays only, so declaring its holder does not help",
                "  fix: keep it in an mx.array (e.g. self.offset = mx.array(0)) and declare its"
                f" holder in both inputs= and outputs= of {_short(fn.name)}'s mx.compile, or "
                "update it outside the compiled function and pass it in as an argument",
            ]
        if constants:
            lines += [
                "  why: an array written outside the function while tracing is an undeclared "
                "output: the graph writes it only while tracing, never on later calls (and "
                "evaluating it detaches a node of the cached graph)",
                f"  fix: return it from {fn.name} and store the returned value outside, or "
                f"declare its holder: mx.compile({_short(fn.name)}, inputs=state, "
                "outputs=state) (e.g. inputs=[model.state, optimizer.state])",
            ]
        return "\n".join(lines)

    # stale captures ------------------------------------------------------------------------
    def _freeze(self, trace: _Trace) -> None:
        """Finish the trace-time record outside the trace, where evaluating is allowed."""
        array = self._mx.array
        stop_gradient = self._mx.stop_gradient
        kept: list[Captured] = []
        values = [c.slot.value for c in trace.captured if isinstance(c.slot.value, array)]
        verdicts = iter(_mlx.placeholders(values, trace.tracers))
        for captured in trace.captured:
            value = captured.slot.value
            if isinstance(value, array):
                verdict = next(verdicts)
                if verdict == "placeholder":
                    continue  # reported as a leak, or set during the trace: not a capture
                captured.alias = stop_gradient(value)
                if verdict == "lazy":
                    kept.append(captured)  # evaluating it is the test's business, not ours
                    continue
                address = buffer_address(value)
                # A device whose DLPack export copies would show a new address on every read:
                # then only identity is compared, never a false "updated in place".
                captured.address = address if address == buffer_address(value) else None
            else:
                # What the trace itself wrote (a trace counter) is judged by the state diff;
                # from here on, a change is one made after the graph was built.
                now = captured.slot.current()
                if not holders.missing(now):
                    captured.slot = replace(captured.slot, value=now)
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
        poisoned = _mlx.is_placeholder(_mlx.random_key_list()[0], trace.tracers)
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


def _guarded_one(walk: Callable[[], _T], record: FunctionRecord, check: str) -> _T | None:
    """:func:`_guarded` for a walk that gives one value."""
    found = _guarded(lambda: [walk()], record, check)
    return found[0] if found else None


def _short(name: str) -> str:
    """``make.<locals>.f`` -> ``f``: the name as code that compiles it would spell it."""
    return name.rsplit(".", 1)[-1]


def _random_origin(inputs: object, outputs: object) -> str:
    """Where ``mx.random.state`` is declared: "outputs", "inputs" (only), or ""."""
    state = _mlx.core().random.state
    if _random_captured(outputs, None, state, either=True):
        return "outputs"
    if _random_captured(inputs, None, state, either=True):
        return "inputs"
    return ""


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
