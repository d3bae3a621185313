"""Recompile budgets: each compiled function's traces with reasons, the budgets that fail a test
on unexpected retraces (the ``auto`` policy's verdicts are in :mod:`pytest_mlxcompile.storms`),
and the summary.

A "function" is one piece of code compiled for one owner: every function object compiled from the
same code (same ``__code__``, same bound ``self``, same captured non-array values, same ``self``
of the method that called ``mx.compile``) counts as one,
so ``mx.compile(lambda ...)`` inside a loop shows up as one function retracing on every call
instead of many functions tracing once. Budgets count retraces after the first trace, per function,
per test variant (never process-wide: chex's global counter fails parametrized tests that each
compile a fresh function once).

Signatures are computed only when a trace happens (inside the trace, from the tracers' shapes and
dtypes), so cache hits cost nothing here, except for the cheap check for MLX's silent cache reuse
(``True`` served by the graph traced for ``1``, a tuple by a list's): that runs on cache hits only
for functions traced with an int, bool, list or tuple as a top-level argument.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from pytest_mlxcompile import _mlx, instrument, locations
from pytest_mlxcompile.errors import MLXCompileError, RecompileError
from pytest_mlxcompile.instrument import FunctionRecord, InstrumentedFunction, Observer, VariantRun
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.signature import (
    CONSTANTS,
    Entry,
    Reason,
    Signature,
    closest_diff,
    parameter_names,
    signature_of,
)
from pytest_mlxcompile.storms import Verdict, auto_violation

if TYPE_CHECKING:
    from pytest_mlxcompile.markers import CompiledMarker

__all__ = [
    "WHY_AND_FIX",
    "FunctionTraces",
    "RecompileCounter",
    "RecompileObserver",
    "Rule",
    "TraceEvent",
    "budget_rule",
    "check_budget",
    "function_key",
    "observer_of",
    "summary_lines",
]

#: The input shapes of one trace: (argument path, shape, or rank when shapeless) per array.
ShapeSet = tuple[tuple[str, "tuple[int, ...] | int"], ...]
#: Distinct input shapes (and values of one Python argument) a function may trace per test
#: variant under auto (torch's recompile limit is 8 per frame too).
DEFAULT_MAX_SHAPES = 8
#: How many rows of trace history an error or the summary shows.
TABLE_ROWS = 12
SUMMARY_FUNCTIONS = 10
SUMMARY_REASONS = 6

WHY_AND_FIX: dict[str, tuple[str, str]] = {
    "function": (
        "every mx.compile(...) call makes a new compiled function with an empty cache (and "
        "deleting the old one erases the shared entry), so each new object traces again",
        "hoist mx.compile out of the loop or function: compile once (at module level, in "
        "__init__, or before the loop) and call the compiled function",
    ),
    "constant": (
        "MLX bakes Python int/float/str arguments into the graph as constants, so every new "
        "value compiles a new graph",
        "pass the value as an mx.array (e.g. mx.array(offset)): arrays are graph inputs, so one "
        "graph serves every value",
    ),
    "shape": (
        "the graph is specialised to its input shapes, so every new shape compiles a new graph",
        "compile with shapeless=True if the function is shape-agnostic (the [shapeless] variant "
        "checks it), or pad inputs to a few bucket sizes",
    ),
    "ndim": (
        "a graph, shapeless or not, depends on each input's number of dimensions",
        "keep each argument's ndim fixed (reshape or expand_dims before the call), or pad inputs "
        "to a few bucket shapes",
    ),
    "dtype": (
        "the graph depends on the dtype of every input",
        "cast inputs to one dtype before the call",
    ),
    "structure": (
        "the graph depends on the argument structure: list lengths, dict keys and their order, "
        "keyword names and their order, None versus an array",
        "call with the same structure every time (pad lists to a fixed length, always pass the "
        "same keyword arguments in the same order)",
    ),
    "thread": (
        "MLX keeps one compile cache per thread",
        "call the compiled function from one thread",
    ),
    "stream": (
        "MLX keys its compile cache on the default stream",
        "call the compiled function under one default stream",
    ),
    "transform": (
        "MLX runs a compiled function's Python body again on every call made under a "
        "transformation (mx.grad, mx.value_and_grad, mx.vmap, ...)",
        "compile the transformed function instead, e.g. mx.compile(mx.grad(loss)), which "
        "traces once",
    ),
    "unknown": (
        "MLX traced again although the arguments it keys on look unchanged: an earlier trace "
        "raised, or another wrapper of the same function was deleted, which erases the shared "
        "cache entry",
        "make sure earlier calls succeeded and keep compiled functions alive",
    ),
}
#: Which reason explains a retrace best when several changed at once.
_PRIORITY = (
    "function",
    "constant",
    "ndim",
    "shape",
    "dtype",
    "structure",
    "thread",
    "stream",
    "transform",
)


# history -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceEvent:
    """One trace of a function: its number, the call that caused it, why, and the signature."""

    trace: int
    #: the outermost call of the test that traced; None under a transformation (mx.grad), whose
    #: calls are not counted
    call: int | None
    reasons: tuple[Reason, ...]
    signature: Signature
    #: the transformation the call ran under ("grad"), "" outside any
    transform: str = ""
    #: where the transformed call came from (the user's file:line), under a transformation
    transform_site: str = ""
    #: traces so far with this signature, under this transformation, from this line: MLX
    #: traces such calls every time, so a loop shows up as a count that keeps growing
    transform_repeats: int = 0
    #: the array shapes of this trace were never seen before in the variant
    new_shapes: bool = False
    #: argument paths whose Python value was never seen before in the variant
    new_values: tuple[str, ...] = ()

    def only(self, kind: str) -> bool:
        return bool(self.reasons) and all(reason.kind == kind for reason in self.reasons)

    @property
    def reason_texts(self) -> list[str]:
        if not self.reasons:
            return [f"first trace: {self.signature.describe()}"]
        return [reason.text for reason in self.reasons]

    @property
    def kind(self) -> str:
        kinds = {reason.kind for reason in self.reasons}
        return next((k for k in _PRIORITY if k in kinds), "unknown")

    def as_dict(self, traces: FunctionTraces) -> dict[str, Any]:
        """Plain data for ``FunctionRecord.extra["recompiles"]`` and JSON reports."""
        return {
            "function": traces.name,
            "where": traces.where,
            "trace": self.trace,
            "call": self.call,
            "reasons": self.reason_texts,
            "kinds": [reason.kind for reason in self.reasons],
        }


class FunctionTraces:
    """The traces of one function (all objects compiled from its code) in one variant."""

    def __init__(self, name: str, where: str, names: tuple[tuple[str, ...], str | None]) -> None:
        self.name = name
        self.where = where
        self.names = names
        self.events: list[TraceEvent] = []
        self.records: list[FunctionRecord] = []
        self._signatures: dict[int, list[Signature]] = {}  # id(record) -> its traced signatures
        self.ambiguous = False
        #: MLX cache keys traced (one graph each); traces under a transformation, counted by
        #: (cache key, transformation, call site)
        self.keys: set[tuple[object, ...]] = set()
        self.transform_keys: dict[tuple[object, ...], int] = {}
        #: the array shapes of each trace, all arguments together (ranks when shapeless), and
        #: the Python values seen per argument path: what the storm limit counts
        self.shape_sets: set[ShapeSet] = set()
        self.values: dict[str, set[tuple[str, object]]] = {}
        #: shapes of the array outputs of each trace, by trace number
        self.out_shapes: dict[int, tuple[tuple[int, ...], ...]] = {}
        #: where the test called into the library that compiles this function (library code)
        self.called_from: str | None = None

    @property
    def retraces(self) -> int:
        return max(len(self.events) - 1, 0)

    def add(
        self,
        signature: Signature,
        call: int | None,
        owner: object,
        new_object_at: str | None,
        transform: str = "",
        transform_site: str = "",
    ) -> TraceEvent:
        """Record a trace; ``new_object_at`` is where a new object of this code was compiled,
        ``transform`` the transformation the call ran under, called from ``transform_site``."""
        key = signature.cache_key()
        if not self.events:
            reasons: tuple[Reason, ...] = ()
        elif new_object_at is not None and key in self.keys:
            # Only a waste when an earlier object's cache would have served this call: a new
            # object per dtype (or per configuration) traces exactly as often as a hoisted one.
            text = (
                f"new function object compiled from the same code at {new_object_at} "
                "(mx.compile called inside a loop or a function?)"
            )
            reasons = (Reason("function", text),)
        else:
            earlier = [event.signature for event in self.events]
            found = closest_diff(signature, earlier)
            if not found and transform:
                text = f"called under mx.{transform}, which traces compiled functions every call"
                found = [Reason("transform", text)]
            unknown = Reason("unknown", "no change in the arguments MLX keys its cache on")
            reasons = tuple(found) or (unknown,)
        shapes = _shape_set(signature)
        new_shapes = shapes not in self.shape_sets
        self.shape_sets.add(shapes)
        new_values = []
        for path, entry in signature.entries:
            if entry.kind in CONSTANTS:
                seen = self.values.setdefault(path, set())
                if (entry.kind, entry.value) not in seen:
                    seen.add((entry.kind, entry.value))
                    new_values.append(path)
        repeats = 0
        if transform:
            where = (key, transform, transform_site)
            repeats = self.transform_keys[where] = self.transform_keys.get(where, 0) + 1
        number = len(self.events) + 1
        event = TraceEvent(
            number,
            call,
            reasons,
            signature,
            transform,
            transform_site,
            repeats,
            new_shapes=new_shapes,
            new_values=tuple(new_values),
        )
        self.events.append(event)
        self.keys.add(key)
        self._signatures.setdefault(id(owner), []).append(signature)
        self.ambiguous = self.ambiguous or signature.ambiguous
        return event

    @property
    def distinct(self) -> int:
        """How many graphs MLX keeps for this function: one per distinct signature."""
        return len(self.keys)

    def new_value_traces(self) -> int:
        """Traces for a Python value never seen before (the first trace included)."""
        return sum(1 for event in self.events if event.new_values)

    def signatures_of(self, owner: object) -> list[Signature]:
        return self._signatures.get(id(owner), [])

    def table(self, indent: str = "  ") -> list[str]:
        """The trace history as rows: trace #, call #, reason."""
        rows = [f"{indent}trace  call  reason"]
        events = self.events
        if len(events) > TABLE_ROWS:
            hidden = len(events) - TABLE_ROWS
            events = [*events[:1], *events[-(TABLE_ROWS - 1) :]]
        for index, event in enumerate(events):
            if len(self.events) > TABLE_ROWS and index == 1:
                rows.append(f"{indent}  ...  ({hidden} more traces)")
            rows.append(
                f"{indent}{event.trace:>5}  {_call(event.call):>4}  {'; '.join(event.reason_texts)}"
            )
        return rows


def _call(call: int | None) -> str:
    return "-" if call is None else str(call)


def _call_text(event: TraceEvent) -> str:
    return f"trace {event.trace}" if event.call is None else f"call {event.call}"


def function_key(fn: InstrumentedFunction) -> Hashable:
    """One key per piece of code and owner: new objects of the same code share it."""
    target: Any = fn.fun
    bound: list[Hashable] = []
    while isinstance(target, functools.partial) and not isinstance(target, InstrumentedFunction):
        bound.extend(_identity(value) for value in (*target.args, *target.keywords.values()))
        target = target.func
    owner = getattr(target, "__self__", None)
    if owner is not None and getattr(target, "__func__", None) is not None:
        target = target.__func__
    code = getattr(target, "__code__", None)
    if code is None:  # a callable object (an nn.Module): the object is the function
        return ("object", id(target), tuple(bound))
    cells: list[Hashable] = []
    for cell in getattr(target, "__closure__", None) or ():
        try:
            cells.append(_identity(cell.cell_contents))
        except ValueError:  # an empty cell
            cells.append("empty")
    # Compiled inside a method: one function per object (a model compiling its helper in
    # __init__). The weak reference is the same object for one referent while it lives, and
    # the record keeps it, so its id is never reused for another object within the test.
    compiled_by = None if fn.compiled_by is None else id(fn.compiled_by)
    return (code, id(owner), tuple(bound), tuple(cells), compiled_by)


def _identity(value: object) -> Hashable:
    # A captured array is data, not a different function: a lambda compiled per call that closes
    # over that call's array is the storm to catch. Other captured values name distinct functions
    # (a factory's closures over different layers or settings).
    if isinstance(value, _mlx.core().array):
        return "array"
    return id(value)


def _shape_set(signature: Signature) -> ShapeSet:
    """The input shapes of one trace (ranks only when shapeless: MLX keys on ndim there)."""
    return tuple(
        (path, len(entry.shape) if signature.shapeless else entry.shape)
        for path, entry in signature.entries
        if entry.kind == "array"
    )


# budgets -----------------------------------------------------------------------------------------
@dataclass
class Rule:
    """A budget and where it came from: ``limit`` is retraces allowed, or "auto"."""

    limit: int | str
    source: str
    #: for scoped budgets: retraces counted inside the scope, per function
    counts: dict[Hashable, int] = field(default_factory=dict)
    #: for scoped budgets: only this function (as the user named it), or every function
    target: object = None
    #: under auto: distinct input shapes, and values of one Python argument, allowed per
    #: function (0 = no limit), and where the limit came from
    max_shapes: int = DEFAULT_MAX_SHAPES
    max_shapes_source: str = f"--mlx-max-shapes={DEFAULT_MAX_SHAPES}"

    def applies(self, key: Hashable) -> bool:
        return self.target is None or _key_matches(key, self.target)

    def describe(self) -> str:
        if self.limit == "auto":
            return f"auto ({self.source})"
        return f"{self.limit} retrace(s) after the first trace ({self.source})"


def budget_rule(
    marker: CompiledMarker, mode: Mode, setting: int | str, max_shapes: int = DEFAULT_MAX_SHAPES
) -> Rule:
    """The budget for a variant: marker (per mode) > --mlx-max-recompiles > auto; under auto,
    the distinct-signature limit: marker ``max_shapes`` > --mlx-max-shapes."""
    rule = _budget(marker, mode, setting)
    if marker.max_shapes is not None:
        rule.max_shapes = marker.max_shapes
        rule.max_shapes_source = f"@pytest.mark.compiled(max_shapes={marker.max_shapes})"
    else:
        rule.max_shapes, rule.max_shapes_source = max_shapes, f"--mlx-max-shapes={max_shapes}"
    return rule


def _budget(marker: CompiledMarker, mode: Mode, setting: int | str) -> Rule:
    marked = marker.max_recompiles
    if isinstance(marked, dict):
        per_mode = {str(m): n for m, n in marked.items()}
        if mode in marked:
            return Rule(marked[mode], f"@pytest.mark.compiled(max_recompiles={per_mode!r})")
    elif marked is not None:
        return Rule(marked, f"@pytest.mark.compiled(max_recompiles={marked!r})")
    if setting == "auto":
        return Rule("auto", "the default, --mlx-max-recompiles=auto")
    return Rule(setting, f"--mlx-max-recompiles={setting}")


# the observer ------------------------------------------------------------------------------------
class _Tracing(threading.local):
    #: records whose body is running for a trace, outermost first
    stack: list[FunctionRecord]

    def __init__(self) -> None:
        self.stack = []


class RecompileObserver(Observer):
    """Watches one variant's traces: history and reasons, budgets, silent-reuse warnings."""

    def __init__(
        self,
        mode: Mode,
        rule: Rule | None,
        *,
        label: str = "",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.mode = mode
        self.rule = rule
        self.label = label
        self.functions: dict[Hashable, FunctionTraces] = {}
        self.function_rules: dict[Hashable, Rule] = {}
        self.scopes: list[Rule] = []
        self._warn = warn or _warn_runtime
        self._of_record: dict[int, tuple[Hashable, FunctionTraces]] = {}
        self._warned: set[int] = set()
        #: (id(record), argument types) seen at traces: a cache hit with the same top-level types
        #: cannot be a True-for-1 or tuple-for-list reuse, so it skips the signature (~1 us)
        self._traced_types: set[tuple[int, Hashable]] = set()
        self._tracing = _Tracing()
        #: the outermost call's trace, judged when the call returns
        self._pending: _Pending | None = None
        #: id(fun) -> (fun, its reporting body) for MLX's own compiles in this variant
        self._library: dict[int, tuple[Callable[..., Any], Callable[..., Any]]] = {}
        #: >0 inside ``mlx_recompiles.allow()``: the variant's budget does not fail
        self.allowing = 0
        #: the variant is over: library bodies compiled during it stop reporting
        self._done = False
        self._thread = threading.get_ident()

    # lookups ---------------------------------------------------------------------------------
    def traces_of(self, record: FunctionRecord) -> tuple[Hashable, FunctionTraces]:
        found = self._of_record.get(id(record))
        if found is None:
            key = function_key(record.fn)
            traces = self.functions.get(key)
            if traces is None:
                names = parameter_names(record.fn.fun)
                traces = self.functions[key] = FunctionTraces(
                    record.fn.name, record.fn.where, names
                )
            traces.records.append(record)
            found = self._of_record[id(record)] = (key, traces)
        return found

    def find(self, fn: object) -> tuple[Hashable, FunctionTraces | None]:
        """The function a user handed us: an mx.compile'd function, or its Python function."""
        fn = _unwrap_budgeted(fn)
        if isinstance(fn, InstrumentedFunction):
            key = function_key(fn)
            return key, self.functions.get(key)
        if type(fn).__module__ == "mlx.core":
            raise TypeError(
                f"{fn!r} was compiled by MLX before pytest-mlxcompile patched mx.compile, so its "
                "traces cannot be seen. Fix: import pytest_mlxcompile (or run under pytest with "
                "the plugin) before compiling it"
            )
        if not callable(fn):
            raise TypeError(f"expected a compiled function or its Python function, got {fn!r}")
        for key, traces in self.functions.items():
            if any(record.fn.fun is fn for record in traces.records):
                return key, traces
        return None, None

    def shapeless(self, record: FunctionRecord) -> bool:
        return record.fn.shapeless or self.mode is Mode.SHAPELESS

    # Observer --------------------------------------------------------------------------------
    def trace_started(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        __tracebackhide__ = True
        stack = self._tracing.stack
        stack.append(record)
        if len(stack) > 1:
            # Inlined into an outer function's trace: MLX runs an inner compiled body on every
            # outer trace, so this is the outer function's retrace, not this one's.
            return
        key, traces = self.traces_of(record)
        shapeless = self.shapeless(record)
        signature = signature_of(
            args, kwargs, names=traces.names, inputs=record.fn.inputs, shapeless=shapeless
        )
        new_object = bool(traces.events) and not traces.signatures_of(record)
        transform = instrument.current_transform()
        call = None if transform else sum(r.calls for r in traces.records)
        new_object_at = _compiled_at(record.fn) if new_object else None
        site = _user_call_site() if transform else ""
        event = traces.add(signature, call, record, new_object_at, transform, site)
        if _in_library(record.fn):
            traces.called_from = _user_call_site()
        data = event.as_dict(traces)
        record.extra.setdefault("recompiles", []).append(data)
        self._traced_types.add((id(record), _argument_types(args, kwargs)))
        pending = _Pending(key, traces, event, data, shapeless, call or len(traces.events))
        if call is not None:
            # Judged when the call returns: the body runs first, so the user's own exception
            # (a validation error on the new value) is the one the test sees.
            self._pending = pending
            return
        message = self._judge(pending)
        if message is not None:
            stack.clear()
            raise RecompileError(message)

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        stack = self._tracing.stack
        if len(stack) == 1:
            found = self._of_record.get(id(record))
            if found is not None and found[1].events:
                traces = found[1]
                traces.out_shapes[traces.events[-1].trace] = _array_shapes(out)
        if stack:
            stack.pop()

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        # A trace that raised never popped: the next outermost call starts with nothing traced.
        self._tracing.stack.clear()
        pending, self._pending = self._pending, None
        if pending is None or isinstance(exc, MLXCompileError):
            return
        message = self._judge(pending)
        if message is not None and hasattr(exc, "add_note"):  # Python >= 3.11
            first = message.splitlines()[0]
            exc.add_note(
                f"pytest-mlxcompile: this call also retraced over budget ({first}); the "
                "RecompileError is not raised because the call failed first"
            )

    def watches_hits(self, record: FunctionRecord) -> bool:
        # Cache hits matter only to the silent-reuse warning, for functions whose arguments
        # can be reused ambiguously; the others' hits cost nothing (instrument's fast path).
        found = self._of_record.get(id(record))
        return found is not None and found[1].ambiguous and id(record) not in self._warned

    def after_call(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        __tracebackhide__ = True
        pending, self._pending = self._pending, None
        if pending is not None:
            message = self._judge(pending)
            if message is not None:
                raise RecompileError(message)
        if traced or id(record) in self._warned:
            return
        found = self._of_record.get(id(record))
        if found is None or not found[1].ambiguous:
            return
        if (id(record), _argument_types(args, kwargs)) in self._traced_types:
            return
        traces = found[1]
        signature = signature_of(
            args,
            kwargs,
            names=traces.names,
            inputs=record.fn.inputs,
            shapeless=self.shapeless(record),
        )
        message = _silent_reuse(record, traces, signature, self.mode)
        if message is not None:
            self._warned.add(id(record))
            self._warn(message)

    def finish(self, run: VariantRun) -> None:
        self._done = True
        self._library.clear()

    # MLX's own compiles ----------------------------------------------------------------------
    def library_compile(
        self, fun: Callable[..., Any], shapeless: bool, site: tuple[str, int]
    ) -> Callable[..., Any]:
        """The callable to compile for a ``mx.compile(fun)`` made by MLX's own code during this
        variant: ``fun`` behind a body that reports its traces (never mode-switched).

        The same ``fun`` gets the same body, so compiles that MLX's cache shares stay shared.
        """
        found = self._library.get(id(fun))
        if found is not None and found[0] is fun:
            return found[1]
        observer = self

        def library_body(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            observer._library_trace(library_body, fun, shapeless, site, args, kwargs)
            return fun(*args, **kwargs)

        self._library[id(fun)] = (fun, library_body)
        return library_body

    def _library_trace(
        self,
        body: object,
        fun: Callable[..., Any],
        shapeless: bool,
        site: tuple[str, int],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        __tracebackhide__ = True
        if (
            self._done
            or self._tracing.stack
            or instrument.running_eagerly()
            or threading.get_ident() != self._thread
        ):
            # a later test, a trace of the user's own function (MLX inlines it), the eager
            # shadow, or another thread (a data loader): not the test's own calls
            return
        key = ("library", _code_key(fun))
        traces = self.functions.get(key)
        if traces is None:
            name, where = instrument.describe(fun)
            names = parameter_names(fun)
            traces = self.functions[key] = FunctionTraces(name, _short_path(where), names)
        signature = signature_of(args, kwargs, names=traces.names, shapeless=shapeless)
        new_object = bool(traces.events) and not traces.signatures_of(body)
        new_object_at = f"{_short_path(site[0])}:{site[1]}" if new_object else None
        transform = instrument.current_transform()
        caller = _user_call_site()
        event = traces.add(
            signature, None, body, new_object_at, transform, caller if transform else ""
        )
        traces.called_from = caller
        message = self._judge(_Pending(key, traces, event, {}, shapeless, len(traces.events)))
        if message is not None:
            raise RecompileError(message)

    # budgets ---------------------------------------------------------------------------------
    def _judge(self, pending: _Pending) -> str | None:
        message = self._violation(
            pending.key, pending.traces, pending.event, pending.shapeless, pending.calls
        )
        if message is not None:
            pending.data["failed"] = True
        return message

    def _violation(
        self,
        key: Hashable,
        traces: FunctionTraces,
        event: TraceEvent,
        shapeless: bool,
        calls: int,
    ) -> str | None:
        if event.trace == 1:
            return None
        rules: list[tuple[Rule, int]] = []
        if self.rule is not None and not self.allowing:
            rules.append((self.rule, traces.retraces))
        if key in self.function_rules:
            rules.append((self.function_rules[key], traces.retraces))
        for scope in self.scopes:
            if scope.applies(key):
                scope.counts[key] = scope.counts.get(key, 0) + 1
                rules.append((scope, scope.counts[key]))
        for rule, used in rules:
            if rule.limit == "auto":
                verdict = auto_violation(rule, traces, event, shapeless, calls)
                if verdict is not None:
                    return self._message(traces, event, verdict)
            elif isinstance(rule.limit, int) and used > rule.limit:
                over = f"{rule.describe()}: this is retrace {used}"
                return self._message(traces, event, Verdict(over))
        return None

    def _message(self, traces: FunctionTraces, event: TraceEvent, verdict: Verdict) -> str:
        mode = f" [{self.mode}]" if self.label != "standalone" else ""
        why, fix = WHY_AND_FIX[event.kind]
        if traces.called_from is not None:
            where = (
                f"  where: {traces.name} defined at {traces.where} (library code), called "
                f"from {traces.called_from}"
            )
            fix = (
                "the mx.compile is in library code: if you cannot change it, accept its "
                "retraces in the test with `with mlx_recompiles.allow(): ...` "
                f"(docs/recompiles.md); if you can: {verdict.fix or fix}"
            )
        else:
            record = traces.records[-1]
            where = (
                f"  where: {traces.name} defined at {traces.where}, "
                f"compiled at {_compiled_at(record.fn)}"
            )
            fix = verdict.fix or fix
        lines = [
            f"{traces.name}{mode} {_call_text(event)} retraced: {'; '.join(event.reason_texts)}",
            where,
            f"  budget: {verdict.budget}",
            *(f"  {detail}" for detail in verdict.details),
            *traces.table(),
            f"  why: {verdict.why or why}",
            f"  fix: {fix}",
        ]
        return "\n".join(lines)


@dataclass
class _Pending:
    """A trace whose verdict waits for its call to return."""

    key: Hashable
    traces: FunctionTraces
    event: TraceEvent
    #: the event's entry in ``FunctionRecord.extra["recompiles"]``: marked ``failed``
    data: dict[str, Any]
    shapeless: bool
    calls: int


def _array_shapes(out: object) -> tuple[tuple[int, ...], ...]:
    """Shapes of the arrays in a traced call's output (tracers: shapes only, no evaluation)."""
    array_type = _mlx.core().array
    shapes: list[tuple[int, ...]] = []
    stack = [out]
    while stack and len(shapes) < 64:
        item = stack.pop()
        if isinstance(item, array_type):
            shapes.append(tuple(item.shape))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return tuple(shapes)


def _in_library(fn: InstrumentedFunction) -> bool:
    """Compiled by an installed package (mlx-lm), not by the code under test."""
    return fn.compiled_at is not None and any(part in fn.compiled_at[0] for part in _SKIPPED_PARTS)


def _code_key(fun: object) -> Hashable:
    code = getattr(fun, "__code__", None)
    return code if code is not None else ("object", id(fun))


_SKIPPED_PARTS = ("site-packages", "dist-packages")


def _user_call_site() -> str:
    """``file:line`` of the innermost frame in the user's code (not MLX, not a library, not us)."""
    here = os.path.dirname(__file__) + os.sep
    mlx_dir = os.path.dirname(str(_mlx.core().__file__)) + os.sep
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (
            filename.startswith((here, mlx_dir))
            or filename.startswith("<")
            or any(part in filename for part in _SKIPPED_PARTS)
        ):
            return f"{locations.relative(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def _short_path(where: str) -> str:
    """``mlx/nn/layers/upsample.py:174`` for a file inside site-packages."""
    for part in ("site-packages", "dist-packages"):
        marker = f"{part}{os.sep}"
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def _argument_types(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return (tuple(map(type, args)), tuple((name, type(value)) for name, value in kwargs.items()))


def _compiled_at(fn: InstrumentedFunction) -> str:
    if fn.compiled_at is None:
        return fn.where
    filename, line = fn.compiled_at
    return f"{locations.relative(filename)}:{line}"


def _silent_reuse(
    record: FunctionRecord, traces: FunctionTraces, signature: Signature, mode: Mode
) -> str | None:
    """A warning when a cache hit ran a graph traced for a value MLX only considers equal."""
    mine = traces.signatures_of(record)
    exact = signature.exact_key()
    if any(old.exact_key() == exact for old in mine):
        return None
    key = signature.cache_key()
    served = next((old for old in mine if old.cache_key() == key), None)
    if served is None:
        return None
    before = dict(served.entries)
    changes = [
        f"{path} {before[path].describe()} -> {entry.describe()}"
        for path, entry in signature.entries
        if path in before and _differs_exactly(before[path], entry)
    ]
    if not changes:
        return None
    return (
        f"pytest-mlxcompile: {traces.name} [{mode}] call {record.calls} reused a graph traced "
        f"for other argument values: {'; '.join(changes)}. MLX's compile cache keys True like "
        "1 and a tuple like a list, so the graph traced for one silently served the other. "
        f"Fix: pass the same types every time ({traces.name} is defined at {traces.where})"
    )


def _differs_exactly(old: Entry, new: Entry) -> bool:
    return old.kind != new.kind or old.value != new.value


def _warn_runtime(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=6)  # the user's call


# summary -----------------------------------------------------------------------------------------
def summary_entries(records: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per test and function that retraced, its modes grouped, from the run's records.

    Built from the records the controller holds (``report.Collector``), so the section is the
    same under pytest-xdist as in a serial run. Each entry: ``test`` (the node id without the
    mode), ``function``, ``where``, and ``modes``: mode -> ``{"traces", "reasons", "failed"}``.
    """
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for nodeid, record in records:
        mode = str(record.get("mode") or "")
        test = _without_mode(nodeid, mode)
        if test == nodeid:
            mode = ""  # not a matrix variant: the test's only run, its mode implied
        for function in record.get("functions", ()):
            events = function.get("recompiles") or []
            if len(events) < 2:
                continue
            key = (test, function["function"], function["where"])
            entry = grouped.setdefault(
                key,
                {"test": test, "function": key[1], "where": key[2], "modes": {}},
            )
            entry["modes"][mode] = {
                "traces": len(events),
                "reasons": [_event_text(event) for event in events[1:]],
                "failed": any(event.get("failed") for event in events),
            }
    return list(grouped.values())


def _without_mode(nodeid: str, mode: str) -> str:
    """``test_x.py::test_a`` for ``test_x.py::test_a[compiled]``, ``test_b[1]`` for
    ``test_b[1-compiled]``: the mode is the last id part (variants.parametrize)."""
    if mode and nodeid.endswith(f"[{mode}]"):
        return nodeid[: -len(mode) - 2]
    if mode and nodeid.endswith(f"-{mode}]"):
        return nodeid[: -len(mode) - 2] + "]"
    return nodeid


def _event_text(event: dict[str, Any]) -> str:
    call = "" if event.get("call") is None else f" (call {event['call']})"
    return f"trace {event['trace']}{call}: {'; '.join(event['reasons'])}"


def summary_lines(entries: Sequence[dict[str, Any]], verbosity: int = 1) -> list[str]:
    """The "recompiles" section, most traces first: at ``verbosity`` 0 or less (pytest's
    default, ``-q``) the retraces that failed a budget; at 1 (``-v``, and the default here, for a
    report of a saved run) every function that retraced; at 2 (``-vv``) with no limit on how
    many."""
    shown = []
    for entry in entries:
        modes = {
            mode: data for mode, data in entry["modes"].items() if verbosity > 0 or data["failed"]
        }
        if modes:
            shown.append({**entry, "modes": modes})
    shown.sort(key=lambda entry: -max(int(m["traces"]) for m in entry["modes"].values()))
    limit = len(shown) if verbosity > 1 else SUMMARY_FUNCTIONS
    lines: list[str] = []
    for entry in shown[:limit]:
        lines.extend(_entry_lines(entry))
    rest = shown[limit:]
    if rest:
        functions = len({(entry["function"], entry["where"]) for entry in rest})
        tests = len({entry["test"] for entry in rest})
        lines.append(
            f"... and {len(rest)} more: {functions} function(s) in {tests} test(s) (-vv shows all)"
        )
    return lines


def _entry_lines(entry: dict[str, Any]) -> list[str]:
    modes: dict[str, dict[str, Any]] = entry["modes"]
    counts = []
    for index, (mode, data) in enumerate(modes.items()):
        times = f"{data['traces']} times" if index == 0 else str(data["traces"])
        over = " (over budget)" if data["failed"] else ""
        counts.append(f"{times} in [{mode}]{over}" if mode else f"{times}{over}")
    lines = [f"{entry['test']}: {entry['function']} ({entry['where']}) traced {', '.join(counts)}"]
    same = len({tuple(data["reasons"]) for data in modes.values()}) == 1
    for mode, data in modes.items():
        prefix = "" if same or not mode else f"[{mode}] "
        reasons = list(data["reasons"])
        lines.extend(f"  {prefix}{reason}" for reason in reasons[:SUMMARY_REASONS])
        if len(reasons) > SUMMARY_REASONS:
            lines.append(f"  {prefix}... {len(reasons) - SUMMARY_REASONS} more")
        if same:
            break
    return lines


# the mlx_recompiles fixture ----------------------------------------------------------------------
def observer_of(run: VariantRun | None) -> RecompileObserver | None:
    if run is None:
        return None
    return next((o for o in run.observers if isinstance(o, RecompileObserver)), None)


class RecompileCounter:
    """The ``mlx_recompiles`` fixture: trace counts, histories and scoped budgets for a test."""

    def __init__(self, run: VariantRun | None) -> None:
        self._observer = observer_of(run)

    def count(self, fn: object) -> int:
        """How many times ``fn`` traced in this test variant (0 in [eager]: nothing compiles)."""
        return len(self.history(fn))

    def history(self, fn: object) -> list[TraceEvent]:
        """``fn``'s traces in this variant: number, call, reasons and signature of each."""
        if self._observer is None:
            return []
        _, traces = self._observer.find(fn)
        return list(traces.events) if traces is not None else []

    @contextmanager
    def budget(self, n: int, fn: object = None) -> Iterator[None]:
        """Allow at most ``n`` retraces inside the block (of ``fn``, or of each function)."""
        check_budget(n, "mlx_recompiles.budget(n)")
        observer = self._observer
        if observer is None:
            yield
            return
        if fn is not None:
            observer.find(fn)  # a function it cannot see is an error now, not a silent no-op
        scope = Rule(n, f"mlx_recompiles.budget({n})", target=fn)
        observer.scopes.append(scope)
        try:
            yield
        finally:
            observer.scopes.remove(scope)

    @contextmanager
    def allow(self) -> Iterator[None]:
        """Accept every retrace inside the block: recorded and listed with ``-v``, never failed
        by the variant's budget (``mlx_recompiles.budget`` and ``max_recompiles`` still count).

        For code the test cannot change: a library that compiles a new function on every call.
        """
        observer = self._observer
        if observer is None:
            yield
            return
        observer.allowing += 1
        try:
            yield
        finally:
            observer.allowing -= 1


def _unwrap_budgeted(fn: object) -> object:
    """The compiled function behind ``@max_recompiles(n)``, else ``fn``."""
    inner = getattr(fn, "__wrapped__", None)
    return inner if isinstance(inner, InstrumentedFunction) else fn


def _key_matches(key: Hashable, fn: object) -> bool:
    """Whether the function the user named (compiled or plain) is the one behind ``key``."""
    fn = _unwrap_budgeted(fn)
    if isinstance(fn, InstrumentedFunction):
        return bool(function_key(fn) == key)
    code = getattr(fn, "__code__", None)
    return code is not None and isinstance(key, tuple) and key[0] is code


def check_budget(n: object, source: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{source}: {n!r} must be an int >= 0")
