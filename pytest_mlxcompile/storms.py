"""The ``auto`` budget's verdicts: which retraces are storms, and the why and fix for each.

Allowed by design: a few shapes, dtypes and structures, and a few Python settings each reused
(top-k's ``k``). Storms: a compile per call whose predecessor's cache would have served the call,
a trace on every call under a transformation, more than ``max_shapes`` input shapes or values of
one Python argument (MLX keeps every graph: mlx#4464), and a Python value new on nearly every
call. Everything here reads a function's trace history; nothing runs on a cache hit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_mlxcompile.signature import Signature

if TYPE_CHECKING:
    from pytest_mlxcompile.recompiles import FunctionTraces, Rule, TraceEvent

__all__ = ["STORM_CALLS", "TRANSFORM_REPEATS", "Verdict", "auto_violation"]


@dataclass(frozen=True)
class Verdict:
    """Why a budget rejects a retrace: the budget line, and the why/fix when they differ from
    the reason's usual ones (:data:`WHY_AND_FIX`)."""

    budget: str
    why: str = ""
    fix: str = ""
    details: tuple[str, ...] = ()


def auto_violation(
    rule: Rule, traces: FunctionTraces, event: TraceEvent, shapeless: bool, calls: int
) -> Verdict | None:
    """Why the auto policy rejects this retrace, or None when it is expected.

    Allowed: a few shapes, dtypes and structures, and a few Python constant values each reused
    (settings such as top_k's k). Storms fail: a new object per call whose predecessor's cache
    would have served it, a trace on every call under a transformation, more than
    ``rule.max_shapes`` distinct input shapes or values of one Python argument, and a Python
    value new on nearly every call.
    """
    head = f"{rule.describe()}: "
    name = traces.name
    if event.kind == "function":
        return Verdict(
            head + "the same code compiled again through a new function object, whose cache "
            "would have served this call, fails",
            "every mx.compile(...) call makes a new compiled function with an empty cache, so "
            "each new object traces again a signature an earlier one had already traced",
        )
    if event.transform_repeats >= TRANSFORM_REPEATS:
        transform = event.transform
        return Verdict(
            head + f"tracing on every call under mx.{transform} fails: {event.transform_repeats} "
            f"traces with this signature from {event.transform_site}",
            f"MLX runs a compiled function's Python body again on every call made under "
            f"mx.{transform} (the cache is not used inside transformations), so {name} is "
            "compiled from scratch on every step",
            f"compile the transformed function instead, e.g. "
            f"mx.compile(mx.value_and_grad({name})) or mx.compile(mx.{transform}({name})), or "
            "compile the whole step that calls it: it traces once and is reused",
        )
    kinds = {reason.kind for reason in event.reasons}
    # A rank change retraces shapeless graphs too (MLX keys on ndim), so only same-rank shape
    # changes are unexpected there.
    if shapeless and kinds == {"shape"}:
        return Verdict(head + "a retrace caused only by shapes in [shapeless] fails")
    limit = rule.max_shapes
    if limit and event.new_shapes and len(traces.shape_sets) > limit:
        return _shape_storm(rule, traces, head)
    many = [path for path in event.new_values if len(traces.values[path]) > limit]
    if limit and many:
        return _value_storm(rule, traces, event, head, many[0])
    if event.new_values and event.reasons and kinds <= {"constant", "shape", "ndim", "dtype"}:
        new = traces.new_value_traces()
        if calls >= STORM_CALLS and new * 4 > calls * 3:
            return _constant_storm(traces, event, head, new, calls)
    return None


#: The constant policy: a storm is a Python value new on more than 3/4 of at least this many
#: calls. A test that sweeps a few settings once each (top_p in 0.3, 0.95, 0.4, 0.6, 0.5: mlx-lm's
#: test_sample_utils) looks the same as a counter for as many calls as it has settings, so the
#: evidence has to be longer than such sweeps; torch's recompile limit is 8 too.
STORM_CALLS = 8
#: Traces with one signature under one transformation from one line that make a storm: a loop.
#: Two different transformations (vjp then jvp), or one per line, are a test of each.
TRANSFORM_REPEATS = 3


def _constant_storm(
    traces: FunctionTraces, event: TraceEvent, head: str, new: int, calls: int
) -> Verdict:
    budget = (
        head + f"a Python constant new on {new} of {calls} calls (a counter, a per-call value) "
        "fails; a few values each reused pass"
    )
    why = (
        "MLX bakes Python int/float/str arguments into the graph as constants, so every new "
        "value compiles a new graph, and MLX keeps each one (no eviction, mlx#4464)"
    )
    paths = list(event.new_values)
    feeds = _feeds_shape(traces, event)
    if feeds is not None:
        return Verdict(
            budget,
            why + f"; {', '.join(paths)} sets a shape ({feeds}), so it must stay a Python "
            "value: an mx.array cannot",
            "call with a few values, each reused (round up to buckets such as "
            f"{_buckets(_constant_values(traces, paths))}), or accept the retraces with "
            "@pytest.mark.compiled(max_recompiles=N)",
        )
    values = [reason for reason in event.reasons if "(str)" in reason.text]
    if values:
        fix = (
            "keep strings out of the compiled function's arguments: work out what the graph "
            "needs from the string before the call and pass that as an mx.array"
        )
    else:
        fix = (
            "pass the value as an mx.array (e.g. mx.array(offset)): arrays are graph inputs, so "
            "one graph serves every value; if it must stay Python (a slice bound, an axis), "
            "call with a few values each reused"
        )
    return Verdict(budget, why, fix)


def _feeds_shape(traces: FunctionTraces, event: TraceEvent) -> str | None:
    """``output shape (1,) -> (2,)`` when traces that differ only in constants returned
    different shapes: the constant decides a shape (a slice bound, top-k's k)."""
    if event.trace not in traces.out_shapes:
        return None
    arrays = _array_part(event.signature)
    mine = traces.out_shapes[event.trace]
    for other in reversed(traces.events[: event.trace - 1]):
        theirs = traces.out_shapes.get(other.trace)
        if theirs is None or _array_part(other.signature) != arrays:
            continue
        if theirs != mine:
            return f"output shape {_shapes_text(theirs)} -> {_shapes_text(mine)}"
    return None


def _array_part(signature: Signature) -> tuple[object, ...]:
    return tuple((p, e.shape, e.dtype) for p, e in signature.entries if e.kind == "array")


def _shapes_text(shapes: tuple[tuple[int, ...], ...]) -> str:
    return ", ".join(map(str, shapes)) if len(shapes) != 1 else str(shapes[0])


def _constant_values(traces: FunctionTraces, paths: Sequence[str]) -> list[int]:
    values = set()
    for event in traces.events:
        for path, entry in event.signature.entries:
            if path in paths and entry.kind == "int":
                values.add(int(entry.value))  # type: ignore[call-overload]
    return sorted(values)


def _buckets(values: Sequence[int]) -> str:
    if not values or min(values) < 1:
        return "[1, 2, 4, 8]"
    return str(sorted({_bucket(v) for v in values}))


def _bucket(size: int) -> int:
    """The power of two at or above ``size``: padding to it wastes less than half."""
    return 1 << max(size - 1, 0).bit_length()


def _shape_storm(rule: Rule, traces: FunctionTraces, head: str) -> Verdict:
    count = len(traces.shape_sets)
    budget = (
        head + f"more than {rule.max_shapes} distinct input shapes ({rule.max_shapes_source}) "
        f"fails: this is shape {count}"
    )
    why = (
        "MLX keeps one graph per distinct signature and never evicts one (mlx#4464): every new "
        "shape compiles a new graph and keeps it for the life of the process"
    )
    axes = _varying_axes(traces)
    paths = dict.fromkeys(path for event in traces.events for path in _array_paths(event))
    details: list[str] = []
    for path in paths:
        shapes = list(dict.fromkeys(_shapes_of(traces, path)))
        if len(shapes) > 1:
            shown = ", ".join(map(str, shapes[:10]))
            more = f", ... ({len(shapes) - 10} more)" if len(shapes) > 10 else ""
            details.append(f"shapes seen for {path}: {shown}{more}")
    for (path, axis), sizes in axes.items():
        ordered = sorted(sizes)
        details.append(f"{path} axis {axis}: {len(ordered)} sizes {_sizes_text(ordered)}")
    raise_limit = (
        "or, if this many graphs is intended, raise the limit: "
        "@pytest.mark.compiled(max_shapes=N) or --mlx-max-shapes"
    )
    bucketed = _bucketed_count(traces, axes) if axes else count
    if bucketed < count:
        plans = "; ".join(
            f"pad {path} axis {axis} to {sorted({_bucket(s) for s in sizes})}"
            for (path, axis), sizes in axes.items()
        )
        fix = (
            f"{plans} -> {bucketed} traces; or compile with shapeless=True if the function is "
            f"shape-agnostic (the [shapeless] variant checks it); {raise_limit}"
        )
    else:
        fix = (
            "call with fewer distinct shapes (pad to a few sizes), or compile with "
            f"shapeless=True if the function is shape-agnostic; {raise_limit}"
        )
    return Verdict(budget, why, fix, tuple(details))


def _value_storm(
    rule: Rule, traces: FunctionTraces, event: TraceEvent, head: str, path: str
) -> Verdict:
    values = sorted(traces.values[path], key=repr)
    shown = ", ".join(repr(value) for _, value in values[:10])
    more = f", ... ({len(values) - 10} more)" if len(values) > 10 else ""
    feeds = _feeds_shape(traces, event)
    fix = (
        "call with a few values, each reused (round up to buckets)"
        if feeds is not None
        else "pass the value as an mx.array: arrays are graph inputs, so one graph serves every "
        "value; if it must stay Python (a slice bound, an axis), call with a few values"
    )
    return Verdict(
        head + f"more than {rule.max_shapes} distinct values of {path} "
        f"({rule.max_shapes_source}) fails: this is value {len(values)}",
        "MLX bakes Python int/float/str arguments into the graph as constants and keeps one "
        "graph per value, never evicting one (mlx#4464)"
        + ("" if feeds is None else f"; {path} sets a shape ({feeds})"),
        fix + "; or, if this many graphs is intended, raise the limit: "
        "@pytest.mark.compiled(max_shapes=N) or --mlx-max-shapes",
        (f"values seen for {path}: {shown}{more}",),
    )


def _array_paths(event: TraceEvent) -> list[str]:
    return [path for path, entry in event.signature.entries if entry.kind == "array"]


def _shapes_of(traces: FunctionTraces, path: str) -> Iterator[tuple[int, ...]]:
    for event in traces.events:
        for where, entry in event.signature.entries:
            if where == path and entry.kind == "array":
                yield entry.shape


def _varying_axes(traces: FunctionTraces) -> dict[tuple[str, int], set[int]]:
    """Array axes whose size differs between traces: (argument path, axis) -> sizes seen."""
    shapes: dict[str, set[tuple[int, ...]]] = {}
    for event in traces.events:
        for path, entry in event.signature.entries:
            if entry.kind == "array":
                shapes.setdefault(path, set()).add(entry.shape)
    axes: dict[tuple[str, int], set[int]] = {}
    for path, seen in shapes.items():
        if len({len(shape) for shape in seen}) != 1:
            continue  # ranks differ: no padding plan fits
        for axis in range(len(next(iter(seen)))):
            sizes = {shape[axis] for shape in seen}
            if len(sizes) > 1:
                axes[(path, axis)] = sizes
    return axes


def _bucketed_count(traces: FunctionTraces, axes: dict[tuple[str, int], set[int]]) -> int:
    """How many input shapes the traces seen would have with each varying axis padded."""
    padded = set()
    for shapes in traces.shape_sets:
        padded.add(
            tuple(
                (path, _pad(path, shape, axes) if isinstance(shape, tuple) else shape)
                for path, shape in shapes
            )
        )
    return len(padded)


def _pad(
    path: str, shape: tuple[int, ...], axes: dict[tuple[str, int], set[int]]
) -> tuple[int, ...]:
    return tuple(_bucket(size) if (path, axis) in axes else size for axis, size in enumerate(shape))


def _sizes_text(sizes: Sequence[int]) -> str:
    if sizes == list(range(sizes[0], sizes[-1] + 1)):
        return f"{sizes[0]}..{sizes[-1]}"
    shown = ", ".join(map(str, sizes[:8]))
    return f"{shown}, ..." if len(sizes) > 8 else shown
