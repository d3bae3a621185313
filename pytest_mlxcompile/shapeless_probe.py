"""The shapeless probe: after a test passed, replay each shapeless graph's last call at other sizes.

A shapeless graph bakes in every number the trace computed from ``.shape``/``.size``; tested at one
shape it looks fine, and at the next shape it silently returns the wrong shape or values
(reference/mlx-compile-probe.md §6). The probe changes every dimension of the arguments the same
way wherever it has the same size (``x`` (B, T) and ``mask`` (B, T) stay compatible), keeps
size-1 dimensions (they broadcast), and skips a replay eager refuses. The ``.shape``/``.size``
spy (§6, ``q6b``: both are plain properties) records where the trace read shapes, as a hint.

Verdicts follow each function's own declaration: one declared ``shapeless=True`` that is wrong at
another size fails the test (:class:`ShapelessError`); one that only the ``[shapeless]`` variant
compiles shapeless is *not shapeless-safe*, which is a fact about it, not a bug: that variant is
skipped with a note. Only what can be replayed faithfully is replayed: not a function whose
closure variables or globals were rebound since its trace, and not more bytes than the test's
own call and ``--mlx-max-check-bytes`` allow (both a note instead).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_mlxcompile import _mlx, holders, instrument, locations, shadow
from pytest_mlxcompile.errors import ShapelessError
from pytest_mlxcompile.instrument import FunctionRecord, Observer, VariantRun
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.parity import Tolerance, compare_call
from pytest_mlxcompile.sanitize import diagnosis
from pytest_mlxcompile.state import capture, restore

__all__ = [
    "NOTE_KINDS",
    "NOT_SHAPELESS_SAFE",
    "PROBE_SKIPPED",
    "ShapeSpy",
    "ShapelessProbe",
    "check",
    "notes_of",
    "summary_lines",
]

#: ``FunctionRecord.extra["notes"]`` kinds this module writes (the report's "shapeless" list)
NOT_SHAPELESS_SAFE = "not_shapeless_safe"
PROBE_SKIPPED = "shapeless_probe_skipped"
NOTE_KINDS = (NOT_SHAPELESS_SAFE, PROBE_SKIPPED)
#: Replays whose new arrays stay below this may grow the arguments whatever the test's own size;
#: above it they stay within the bytes of the test's own arguments (issue 11: peak memory).
SMALL_REPLAY = 4 * 2**20

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MLX_DIR = os.sep + "mlx" + os.sep
_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _user_file(filename: str) -> bool:
    return not filename.startswith(_PACKAGE_DIR) and _MLX_DIR not in filename


class ShapeSpy:
    """Swaps ``mx.array.shape``/``.size`` for logging properties while a shapeless trace runs."""

    def __init__(self, array_type: type) -> None:
        self._type = array_type
        self._originals = {name: vars(array_type)[name] for name in ("shape", "size")}
        self._reads: list[str] = []
        self._installed = False

    def _spying(self, name: str, original: Any) -> property:
        reads = self._reads

        def get(array: Any) -> Any:
            frame = sys._getframe(1)
            filename = frame.f_code.co_filename
            if _user_file(filename):
                read = f".{name} at {locations.relative(filename)}:{frame.f_lineno}"
                if read not in reads:
                    reads.append(read)
            return original.__get__(array, type(array))

        return property(get)

    def start(self) -> None:
        self._reads.clear()
        if not self._installed:
            for name, original in self._originals.items():
                setattr(self._type, name, self._spying(name, original))
            self._installed = True

    def stop(self) -> None:
        """Put the real properties back (idempotent)."""
        if self._installed:
            for name, original in self._originals.items():
                setattr(self._type, name, original)
            self._installed = False

    def reads(self) -> list[str]:
        return list(self._reads)


@dataclass(frozen=True)
class Note:
    kind: str
    message: str


class ShapelessProbe(Observer):
    """Keeps what a probe needs (the last call, the trace's shape reads and bindings) and probes.

    ``stale(record)`` says whether the graph froze a value that changed since (the sanitizer's
    stale-capture check): such a graph is wrong for another reason, and a probe would blame shapes.
    """

    def __init__(
        self,
        mode: Mode,
        tolerance: Tolerance,
        *,
        max_check_bytes: int = 0,
        stale: Callable[[FunctionRecord], bool] = lambda record: False,
    ) -> None:
        self.mode = mode
        self.tolerance = tolerance
        self.max_check_bytes = max_check_bytes
        self._stale = stale
        self._mx = _mlx.core()
        self._spy = ShapeSpy(self._mx.array)
        #: the record whose outermost call is running and has not started a trace yet
        self._armed: FunctionRecord | None = None
        self._tracing: FunctionRecord | None = None
        self._last_call: dict[FunctionRecord, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._shape_reads: dict[FunctionRecord, list[str]] = {}
        #: closure variables and globals the function read, as they were at its last trace
        self._bindings: dict[FunctionRecord, dict[str, object]] = {}
        self._failed = False
        #: True between before_call and after_call: a call that never got to after_call
        #: failed (parity, a sanitizer diagnosis or an exception), and the test with it
        self._open = False

    def probed(self, record: FunctionRecord) -> bool:
        return record.fn.shapeless or self.mode is Mode.SHAPELESS

    # Observer --------------------------------------------------------------------------------
    def before_call(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._open = True
        self._armed = record

    def trace_started(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if record is not self._armed:
            return  # a nested call, or one under mx.grad/vmap: the outermost trace covers it
        self._armed = None
        if not self.probed(record):
            return
        self._tracing = record
        self._bindings[record] = _bindings(record.fn.fun)
        self._spy.start()

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        if record is self._tracing:
            self._spy.stop()
            self._tracing = None
            self._shape_reads[record] = self._spy.reads()

    def call_returned(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        self._armed = None
        if self.probed(record):
            self._last_call[record] = (args, kwargs)

    def after_call(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        self._open = False

    def call_interrupted(self, record: FunctionRecord, exc: BaseException) -> None:
        self._end_trace()
        self._failed = True

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        __tracebackhide__ = True
        cache_hit = self._armed is record  # armed until a trace starts
        self._end_trace()
        self._failed = True
        traced_with = self._last_call.get(record)
        shapeless = self.probed(record)
        if cache_hit and shapeless and traced_with is not None and isinstance(exc, ValueError):
            # A graph traced at other sizes rejects these ones ([reshape], [broadcast_shapes]):
            # the shapeless bug itself, met by the test before the probe could.
            message = call_failure_message(
                record, traced_with, args, kwargs, exc, self._shape_reads.get(record, [])
            )
            error = _diagnosis(record, message)
            if record.fn.shapeless:
                # Declared shapeless=True: plain MLX raises this ValueError too, and a test may
                # expect it (MLX's test_shapeless_compile_with_reshape does): explain it without
                # changing what `pytest.raises(ValueError)` / `assertRaises` catch.
                error.__class__ = _ShapelessValueError
            # from None: the message quotes MLX's error, and the chained original would add a
            # traceback whose locals (tracers) fail to print
            raise error from None
        if record.fn.shapeless and _mlx.refuses_shapeless(exc):
            first = str(exc).splitlines()[0]
            message = (
                f"{record.fn.name} [{self.mode}] call {record.calls}: it is declared "
                f"shapeless=True, but MLX cannot compile it shapeless: {first}\n"
                f"  where: {record.fn.name} defined at {record.fn.where}\n"
                "  why: some operations (slicing with computed bounds, pad, split, random "
                "numbers, fft on CPU) need concrete shapes to build the graph\n"
                f"  fix: drop shapeless=True from {_short(record.fn.name)}'s mx.compile, or "
                "replace the operation MLX names"
            )
            raise _diagnosis(record, message) from None

    def finish(self, run: VariantRun) -> None:
        """Drop every reference to the test's arrays: nothing of the test outlives it here."""
        self._end_trace()
        self._last_call.clear()
        self._shape_reads.clear()
        self._bindings.clear()

    def _end_trace(self) -> None:
        self._spy.stop()
        self._armed = self._tracing = None

    # the probe -------------------------------------------------------------------------------
    def probe(self, run: VariantRun) -> None:
        """Probe every shapeless graph the passed test called; fail, or skip with notes."""
        __tracebackhide__ = True
        self._end_trace()
        if self._failed or self._open:
            return  # the test already failed on a call: a probe would only add noise
        unsafe: list[str] = []
        for record in list(run.records.values()):
            last = self._last_call.get(record)
            if last is None or record.compiled is None or not self.probed(record):
                continue
            if self._stale(record):
                continue  # its graph is stale anyway: a probe would blame the wrong thing
            try:
                note = self._probe_record(record, *last)
            except Exception as exc:  # arguments the replay cannot rebuild: never a crash
                note = Note(
                    PROBE_SKIPPED,
                    f"{record.fn.name} ({record.fn.where}) [{self.mode}]: shapeless probe "
                    f"skipped: its arguments could not be replayed at other sizes: {exc!r}",
                )
            if note is None:
                continue
            if note.kind == NOT_SHAPELESS_SAFE and record.fn.shapeless:
                raise _diagnosis(record, note.message)
            _add_note(record, note)
            if note.kind == NOT_SHAPELESS_SAFE:
                unsafe.append(note.message.split("\n", 1)[0])
        if unsafe:
            # The test's own item location, as for a skip mark: the note is about the variant.
            raise pytest.skip.Exception("; ".join(unsafe), _use_item_location=True)

    def _probe_record(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Note | None:
        fn = record.fn
        rebound = _rebound(self._bindings.get(record, {}), _bindings(fn.fun))
        if rebound:
            return Note(
                PROBE_SKIPPED,
                f"{fn.name} ({fn.where}) [{self.mode}]: shapeless probe skipped: what it reads "
                f"was rebound after its graph was traced: {'; '.join(rebound)}; a replay would "
                "compare different code, not shapes (a closure over a loop variable, a "
                "reassigned global)",
            )
        array_type = self._mx.array
        names = _argument_names(record, len(args))
        arrays = holders.array_leaves((args, kwargs), array_type, [])
        plan = _plan(
            arrays,
            resident=_resident_bytes(record, arrays, array_type),
            limit=self.max_check_bytes,
        )
        if isinstance(plan, str):
            return Note(
                PROBE_SKIPPED,
                f"{fn.name} ({fn.where}) [{self.mode}]: shapeless probe skipped: {plan}",
            )
        for sizes in plan:
            changed: list[str] = []
            new_args = tuple(
                _remap(a, sizes, array_type, changed, name)
                for a, name in zip(args, names, strict=True)
            )
            new_kwargs = {k: _remap(v, sizes, array_type, changed, k) for k, v in kwargs.items()}
            if not changed:
                continue
            problem = self._replay(record, new_args, new_kwargs)
            if problem is None:
                continue
            reads = self._shape_reads.get(record, [])
            if fn.shapeless:
                return Note(NOT_SHAPELESS_SAFE, _message(record, changed, problem, reads))
            return Note(NOT_SHAPELESS_SAFE, _unsafe_message(record, changed, problem, reads))
        return None

    def _replay(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[str] | None:
        """How the shapeless graph differs from eager on these arguments, or None."""
        compiled = record.compiled
        assert compiled is not None
        roots = record.fn.state_roots()
        before = [capture(tree) for _, tree in roots]
        # Eager as in the parity shadow, on copies, and with what it bumps put back (a counter,
        # an appended list): nothing the replay does may be visible to the test.
        eager = shadow.Shadow(record.fn.fun, args, kwargs)
        try:
            eager.prepare(shadow.reachable_slots(record, args, kwargs), before)
            # nested compiled helpers run their Python too
            with instrument.detached(Mode.EAGER):
                expected, refused = _run(eager.run, (), {})
            if refused is not None:
                return None  # eager rejects these shapes: they are not a valid probe
            eager_after = [capture(tree) for _, tree in roots]
        finally:
            eager.restore_world()
            for snap in before:
                restore(snap)
        try:
            traces = record.traces
            with instrument.detached(self.mode):
                got, error = _run(compiled, args, kwargs)
            if record.traces != traces:
                # A new trace at these sizes is not the graph under test (and is not the
                # test's retrace): nothing to conclude.
                record.traces = traces
                return None
            if error is not None:
                if _mlx.refuses_shapeless(error):
                    return None  # MLX refuses this function shapeless: a skip, never a probe
                return [f"the shapeless graph raised {type(error).__name__}: {error}"]
            got_after = [capture(tree) for _, tree in roots]
            state = zip([label for label, _ in roots], eager_after, got_after, strict=True)
            mismatch = compare_call(capture(expected), capture(got), state, self.tolerance)
            if mismatch is None:
                return None
            return [f"differs from eager at {mismatch.path}: {mismatch.summary}", *mismatch.details]
        finally:
            for snap in before:
                restore(snap)


def check(run: VariantRun) -> None:
    """Run the probe of ``run``, if it has one: after the test body passed, in its call phase."""
    __tracebackhide__ = True
    for observer in run.built_observers:  # none built: no instrumented call to probe
        if isinstance(observer, ShapelessProbe):
            observer.probe(run)


class _ShapelessValueError(ShapelessError, ValueError):
    """A ShapelessError that is also the ValueError MLX raised (a graph declared shapeless that
    rejects new sizes): shown, named and reported as a ShapelessError."""


_ShapelessValueError.__name__ = _ShapelessValueError.__qualname__ = ShapelessError.__name__
_ShapelessValueError.__module__ = ShapelessError.__module__


def _diagnosis(record: FunctionRecord, message: str) -> ShapelessError:
    error = diagnosis(record, ShapelessError, "shapeless", message)
    assert isinstance(error, ShapelessError)
    return error


def _add_note(record: FunctionRecord, note: Note) -> None:
    record.extra.setdefault("notes", []).append(
        {
            "kind": note.kind,
            "function": record.fn.name,
            "where": record.fn.where,
            "mode": str(record.run.mode),
            "message": note.message,
        }
    )


# what the function reads besides its arguments ----------------------------------------------------
def _bindings(fun: object) -> dict[str, object]:
    """Closure variables and globals the function's code reads, by a name for people."""
    try:
        func, _, _ = holders.unwrap(fun)
        code = getattr(func, "__code__", None)
        if func is None or code is None:
            return {}
        if func.__globals__.get("__name__") == instrument.__name__:
            # mx.grad(f) and friends call the plugin's wrapper (instrument._marking_transform),
            # whose own globals change at every call: what counts is what ``f`` reads, which
            # the wrapper names as its ``__wrapped__``
            inner = getattr(func, "__wrapped__", None)
            return _bindings(inner) if inner is not None else {}
        found: dict[str, object] = {}
        for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=False):
            try:
                found[f"closure variable {name!r}"] = cell.cell_contents
            except ValueError:
                continue  # not assigned yet
        namespace = func.__globals__
        for name in sorted(holders.code_names(code, reads_only=True)):
            if name in namespace:
                found[f"global {name!r}"] = namespace[name]
        return found
    except Exception:
        return {}  # an exotic callable: nothing to compare, the probe runs as before


def _rebound(then: dict[str, object], now: dict[str, object]) -> list[str]:
    changed = []
    for name, old in then.items():
        new = now.get(name, old)
        if new is old or (type(new) is type(old) and isinstance(new, _SCALARS) and new == old):
            continue
        changed.append(f"{name} ({_short_repr(old)} then, {_short_repr(new)} now)")
    return changed


def _short_repr(value: object) -> str:
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if isinstance(name, str) and callable(value):
        return name
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# sizes and bytes ---------------------------------------------------------------------------------
def _nbytes(shape: Iterable[int], itemsize: int) -> int:
    return math.prod(shape) * itemsize


def _resident_bytes(record: FunctionRecord, arrays: list[Any], array_type: type) -> int:
    """Bytes a replay evaluates whatever its size: the arguments it resizes, declared state,
    and arrays the function reaches (a model's weights)."""
    seen: set[int] = set()
    total = 0

    def add(array: Any) -> None:
        nonlocal total
        if id(array) not in seen:
            seen.add(id(array))
            total += int(array.nbytes)

    for array in arrays:
        add(array)
    for _, tree in record.fn.state_roots():
        for array in holders.array_leaves(tree, array_type, []):
            add(array)
    try:
        for slot in holders.reachable(record.fn.fun, array_type, set(seen)):
            if isinstance(slot.value, array_type):
                add(slot.value)
    except Exception:
        pass  # a walk over exotic user objects: the arguments and state still count
    return total


def _plan(arrays: list[Any], *, resident: int, limit: int) -> list[dict[int, int]] | str:
    """The size maps to replay at, cheapest detection first; a reason when none fits.

    A replay allocates its new arguments and two outputs (eager and compiled), estimated as three
    times the new arguments. Doubling every size and taking one off each run when that stays
    below :data:`SMALL_REPLAY` or the test's own argument bytes; else the sizes are halved as
    often as needed to fit. ``limit`` (``--mlx-max-check-bytes``) bounds everything evaluated.
    """
    shapes = [(tuple(int(d) for d in a.shape), int(a.itemsize)) for a in arrays]
    sizes = sorted({d for shape, _ in shapes for d in shape if d > 1})
    if not sizes:
        return []
    own = sum(_nbytes(shape, item) for shape, item in shapes)
    room = max(own, SMALL_REPLAY)

    def replay_bytes(sizes_map: dict[int, int]) -> int:
        return 3 * sum(_nbytes((sizes_map.get(d, d) for d in s), i) for s, i in shapes)

    def fits(sizes_map: dict[int, int]) -> bool:
        needed = replay_bytes(sizes_map)
        return needed <= room and (not limit or resident + needed <= limit)

    larger = {d: 2 * d for d in sizes}
    smaller = {d: d - 1 for d in sizes if d > 2}
    chosen = [m for m in (larger, smaller) if m and fits(m)]
    shift = 1
    while not chosen and shift < 63:
        halved = {d: max(2, d >> shift) for d in sizes if d > 2}
        if not halved:
            break
        if fits(halved):
            chosen = [halved]
        elif all(v == 2 for v in halved.values()):
            break
        shift += 1
    if chosen:
        return chosen
    smallest = {d: 2 for d in sizes if d > 2} or larger
    needed = resident + replay_bytes(smallest)
    if limit and needed > limit:
        shown, cap = _size(needed), _size(limit)
        if shown == cap:
            shown, cap = f"{needed} bytes", f"{limit} bytes"
        return (
            f"its smallest replay would evaluate ~{shown} (arguments, captured arrays, "
            f"declared state, outputs), above --mlx-max-check-bytes={cap}; raise it, "
            "or pass 0 for no limit, to probe it"
        )
    return (
        f"even its smallest replay would allocate ~{_size(replay_bytes(smallest))}, more than "
        f"the test's own arguments ({_size(own)})"
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _resized(array: Any, shape: tuple[int, ...]) -> Any:
    """``array``'s values repeated or cut into ``shape``, axis by axis: same dtype, indices stay
    in range, and no index array larger than one axis."""
    mx = _mlx.core()
    for axis, (old, new) in enumerate(zip(array.shape, shape, strict=True)):
        if new != old:
            array = mx.take(array, mx.arange(new) % old, axis=axis)
    return array


def _remap(
    tree: Any, sizes: dict[int, int], array_type: type, changed: list[str], path: str
) -> Any:
    if isinstance(tree, array_type):
        array: Any = tree
        old = tuple(int(d) for d in array.shape)
        new = tuple(sizes.get(d, d) for d in old)
        if new == old or array.size == 0:
            return array
        changed.append(f"{path} {old} -> {new}")
        return _resized(array, new)
    if isinstance(tree, (list, tuple)):
        items = [_remap(v, sizes, array_type, changed, f"{path}[{i}]") for i, v in enumerate(tree)]
        return type(tree)(items) if isinstance(tree, list) else tuple(items)
    if isinstance(tree, dict):
        return {k: _remap(v, sizes, array_type, changed, f"{path}[{k!r}]") for k, v in tree.items()}
    return tree


def _argument_names(record: FunctionRecord, count: int) -> list[str]:
    func, bound, _ = holders.unwrap(record.fn.fun)
    code = getattr(func, "__code__", None)
    names = list(code.co_varnames[: code.co_argcount]) if code is not None else []
    if bound is not None and names:
        names = names[1:]
    return [names[i] if i < len(names) else f"args[{i}]" for i in range(count)]


def _run(
    call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, BaseException | None]:
    try:
        out = call(*args, **kwargs)
        _mlx.core().eval(out)
    except Exception as exc:
        return None, exc
    return out, None


# messages --------------------------------------------------------------------------------------
def _message(
    record: FunctionRecord, changed: list[str], problem: list[str], reads: list[str]
) -> str:
    fn = record.fn
    headline = (
        f"{fn.name} [{record.run.mode}] compiled shapeless is wrong at another input shape: "
        f"replayed with {', '.join(changed)}, " + problem[0]
    )
    where = (
        f"the test's {record.calls} call(s) agreed with eager, but none of them used these sizes"
    )
    return _explain(record, [headline, *problem[1:]], where, reads)


def _unsafe_message(
    record: FunctionRecord, changed: list[str], problem: list[str], reads: list[str]
) -> str:
    fn = record.fn
    read = f" (the trace read {', '.join(reads[:3])})" if reads else ""
    return "\n".join(
        [
            f"{fn.name} ({fn.where}) is not shapeless-safe: compiled shapeless it is wrong at "
            f"sizes the test did not use{read}. It is not declared shapeless=True, so MLX never "
            "compiles it shapeless outside this variant",
            f"  replayed with {', '.join(changed)}: {problem[0]}",
            *(f"  {line}" for line in problem[1:]),
            "  fix (only to make it shapeless-safe): use shape-free operations (x.flatten(0, 1) "
            "or x.reshape(-1, n) with constant n, mx.mean instead of mx.sum(x) / x.size)",
        ]
    )


def call_failure_message(
    record: FunctionRecord,
    traced_with: tuple[tuple[Any, ...], dict[str, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: BaseException,
    reads: list[str],
) -> str:
    """The test itself called a shapeless graph at new sizes (a cache hit) and MLX raised."""
    fn = record.fn
    before, now = _shapes(record, *traced_with), _shapes(record, args, kwargs)
    changed = [
        f"{name} {before[name]} -> {shape}"
        for name, shape in now.items()
        if before.get(name, shape) != shape
    ]
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    headline = (
        f"{fn.name} [{record.run.mode}] call {record.calls}: the shapeless graph fails at new "
        f"input sizes ({', '.join(changed) or 'see the arguments'}): {first}"
    )
    where = f"traced {record.traces} time(s); this call reused a graph traced at other sizes"
    return _explain(record, [headline], where, reads)


def _shapes(
    record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    array_type = _mlx.core().array
    names = _argument_names(record, len(args))
    found: dict[str, Any] = {}
    for name, value in [*zip(names, args, strict=True), *kwargs.items()]:
        for index, leaf in enumerate(holders.array_leaves(value, array_type, [])):
            found[name if index == 0 else f"{name}[{index}]"] = tuple(leaf.shape)
    return found


def _explain(record: FunctionRecord, head: list[str], where: str, reads: list[str]) -> str:
    fn = record.fn
    lines = [
        head[0],
        *(f"  {line}" for line in head[1:]),
        f"  where: {fn.name} defined at {fn.where}; {where}",
    ]
    if reads:
        lines.append(f"  hint: the shapeless trace read {', '.join(reads[:6])}")
    lines.append(
        "  why: a shapeless graph keeps every number the trace computed from .shape or .size "
        "(reshape targets, divisors, constants) and reuses it at every later shape"
    )
    fix = (
        "  fix: use shape-free operations (x.flatten(0, 1) or x.reshape(-1, n) with constant "
        "n, mx.mean instead of mx.sum(x) / x.size, reductions over axes)"
    )
    if fn.shapeless:
        fix += f", or drop shapeless=True from {_short(fn.name)}'s mx.compile"
    else:
        fix += (
            f"; {fn.name} is not declared shapeless=True, so if you never compile it shapeless "
            "leave this variant out: @pytest.mark.compiled(modes=['eager', 'compiled'])"
        )
    lines.append(fix)
    return "\n".join(lines)


def _short(name: str) -> str:
    """``make.<locals>.f`` -> ``f``: the name as code that compiles it would spell it."""
    return name.rsplit(".", 1)[-1]


# the report --------------------------------------------------------------------------------------
def notes_of(tests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probe's notes in a run's JSON test records, each with the test's node id."""
    found = []
    for test in tests:
        for function in test.get("functions", ()):
            for note in function.get("notes", ()) or ():
                if isinstance(note, dict) and note.get("kind") in NOTE_KINDS:
                    found.append({"nodeid": test.get("nodeid"), **note})
    return found


def summary_lines(tests: Iterable[dict[str, Any]]) -> list[str]:
    """The "shapeless" terminal section: one line per note, the test first."""
    return [f"{note['nodeid']}: {str(note['message']).splitlines()[0]}" for note in notes_of(tests)]
