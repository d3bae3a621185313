"""The shapeless probe: replay a shapeless function's last call at other sizes, compare with eager.

A shapeless graph bakes in every number the trace computed from ``.shape``/``.size``; tested at one
shape it looks fine, and at the next shape it silently returns the wrong shape or values
(reference/mlx-compile-probe.md §6). The probe changes every dimension of the arguments the same
way wherever it has the same size (``x`` (B, T) and ``mask`` (B, T) stay compatible), keeps
size-1 dimensions (they broadcast), tries a larger and a smaller size, and skips a probe eager
refuses. The ``.shape``/``.size`` spy (§6, ``q6b``: both are plain properties) records where the
trace read shapes, as a hint in the failure.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

from pytest_mlxcompile import _mlx, holders, locations
from pytest_mlxcompile.instrument import FunctionRecord
from pytest_mlxcompile.parity import Tolerance, compare_call
from pytest_mlxcompile.state import capture, restore

__all__ = ["ShapeSpy", "call_failure_message", "probe_record"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MLX_DIR = os.sep + "mlx" + os.sep


def _user_file(filename: str) -> bool:
    return not filename.startswith(_PACKAGE_DIR) and _MLX_DIR not in filename


class ShapeSpy:
    """Swaps ``mx.array.shape``/``.size`` for logging properties while a shapeless trace runs."""

    def __init__(self, array_type: type) -> None:
        self._type = array_type
        self._originals = {name: vars(array_type)[name] for name in ("shape", "size")}
        self._reads: list[str] = []
        self._installed = False
        self._recording = False

    def _spying(self, name: str, original: Any) -> property:
        reads = self._reads
        spy = self

        def get(array: Any) -> Any:
            if spy._recording:
                frame = sys._getframe(1)
                filename = frame.f_code.co_filename
                if _user_file(filename):
                    read = f".{name} at {locations.relative(filename)}:{frame.f_lineno}"
                    if read not in reads:
                        reads.append(read)
            return original.__get__(array, type(array))

        return property(get)

    def start(self) -> None:
        if not self._installed:
            for name, original in self._originals.items():
                setattr(self._type, name, self._spying(name, original))
            self._installed = True
        self._recording = True

    def pause(self) -> None:
        self._recording = False

    def stop(self) -> None:
        """Put the real properties back (idempotent; also after a trace that raised)."""
        self._recording = False
        if self._installed:
            for name, original in self._originals.items():
                setattr(self._type, name, original)
            self._installed = False

    def reads(self, *, reset: bool = False) -> list[str]:
        found = list(self._reads)
        if reset:
            self._reads.clear()
        return found


def _size_maps(arrays: list[Any]) -> list[dict[int, int]]:
    """A larger and a smaller size for every dimension size > 1 the arguments use."""
    sizes = sorted({int(d) for a in arrays for d in a.shape if int(d) > 1})
    larger = {d: 2 * d for d in sizes}
    smaller = {d: d - 1 for d in sizes if d > 2}
    return [m for m in (larger, smaller) if m]


def _resized(array: Any, shape: tuple[int, ...]) -> Any:
    """``array``'s values repeated into ``shape``: same dtype, and indices stay in range."""
    mx = _mlx.core()
    flat = array.reshape(-1)
    index = mx.arange(math.prod(shape)) % flat.size
    return mx.take(flat, index).reshape(shape)


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


def probe_record(
    record: FunctionRecord,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tolerance: Tolerance,
    shape_reads: list[str] | None,
) -> str | None:
    """A ShapelessError message when the shapeless graph is wrong at another size, else None."""
    compiled = record.compiled
    assert compiled is not None
    array_type = _mlx.core().array
    names = _argument_names(record, len(args))
    arrays = holders.array_leaves((args, kwargs), array_type, [])
    for sizes in _size_maps(arrays):
        changed: list[str] = []
        new_args = tuple(
            _remap(a, sizes, array_type, changed, name) for a, name in zip(args, names, strict=True)
        )
        new_kwargs = {k: _remap(v, sizes, array_type, changed, k) for k, v in kwargs.items()}
        if not changed:
            continue
        roots = record.fn.state_roots()
        before = [capture(tree) for _, tree in roots]
        try:
            expected, refused = _run(record.fn.fun, new_args, new_kwargs)
            if refused is not None:
                continue  # eager rejects these shapes: they are not a valid probe
            eager_after = [capture(tree) for _, tree in roots]
            for snap in before:
                restore(snap)
            got, error = _run(compiled, new_args, new_kwargs)
            if error is not None:
                if _mlx.refuses_shapeless(error):
                    return None  # MLX refuses this function shapeless: a skip, never a probe
                problem = [f"the shapeless graph raised {type(error).__name__}: {error}"]
            else:
                got_after = [capture(tree) for _, tree in roots]
                state = zip([label for label, _ in roots], eager_after, got_after, strict=True)
                mismatch = compare_call(capture(expected), capture(got), state, tolerance)
                if mismatch is None:
                    continue
                problem = [
                    f"differs from eager at {mismatch.path}: {mismatch.summary}",
                    *mismatch.details,
                ]
        finally:
            for snap in before:
                restore(snap)
        return _message(record, changed, problem, shape_reads or [])
    return None


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
        fix += f", or drop shapeless=True from {fn.name}'s mx.compile"
    else:
        fix += (
            f"; {fn.name} is not declared shapeless=True, so if you never compile it shapeless "
            "leave this variant out: @pytest.mark.compiled(modes=['eager', 'compiled'])"
        )
    lines.append(fix)
    return "\n".join(lines)
