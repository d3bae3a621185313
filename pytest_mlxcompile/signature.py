"""A call signature mirroring what MLX keys its compile cache on, and diffs of two in words.

MLX's key (reference/mlx-compile-probe.md §1, re-checked on mlx 0.32.4): the thread and the
default stream; per flattened input array its ndim, dtype and, unless shapeless, shape; and a
vector of constants: list/dict/None markers, int values, float bits, string hashes, dict keys in
order, kwarg names in order. ``True`` hashes like ``1`` and a tuple like a list, so those pairs
silently share a graph. A :class:`Signature` records the exact values (so ``True`` and ``1``
differ here) and :meth:`Signature.cache_key` folds them the way MLX does.

Signatures are built only when a trace happens (the arguments are then tracers: shape and dtype
are readable, values are not, so nothing here evaluates) or when explicitly asked.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_mlxcompile import _mlx

__all__ = [
    "Entry",
    "Reason",
    "Signature",
    "closest_diff",
    "diff",
    "parameter_names",
    "signature_of",
]

#: Kinds whose values MLX bakes into the graph.
CONSTANTS = frozenset({"int", "bool", "float", "str"})
#: Kinds MLX cannot tell apart in its cache key: bool is hashed as int, tuple as list.
_MLX_KIND = {"bool": "int", "tuple": "list"}


@dataclass(frozen=True)
class Entry:
    """One node of the flattened arguments: an array, a constant, or a container."""

    kind: str  # array | int | bool | float | str | None | list | tuple | dict | <type name>
    value: object = None  # constants: the value; list/tuple: length; dict: keys in order
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def mlx_key(self, shapeless: bool) -> tuple[object, ...]:
        kind = _MLX_KIND.get(self.kind, self.kind)
        if kind == "array":
            return (kind, len(self.shape), self.dtype, None if shapeless else self.shape)
        value = int(self.value) if self.kind == "bool" else self.value  # type: ignore[call-overload]
        return (kind, value)

    def exact_key(self) -> tuple[object, ...]:
        return (self.kind, self.value, self.shape, self.dtype)

    @property
    def ambiguous(self) -> bool:
        """MLX gives this the same key as another kind (int/bool, list/tuple)."""
        return self.kind in ("int", "bool", "list", "tuple")

    def describe(self) -> str:
        """``array (4, 16) float32``, ``int 7``, ``None``, ``list of 2``."""
        if self.kind == "array":
            return f"array {self.shape} {self.dtype}"
        if self.kind in CONSTANTS:
            return f"{self.kind} {_value(self.value)}"
        if self.kind in ("list", "tuple"):
            return f"{self.kind} of {self.value}"
        if self.kind == "dict":
            return f"dict with keys {list(self.value)}"  # type: ignore[call-overload]
        return self.kind


@dataclass(frozen=True)
class Signature:
    """What one traced call looked like to MLX's cache, path by path."""

    entries: tuple[tuple[str, Entry], ...]
    kwarg_order: tuple[str, ...]
    thread: int
    stream: str
    shapeless: bool

    def cache_key(self) -> tuple[object, ...]:
        """Equal exactly when MLX would reuse one graph for both calls."""
        return (
            tuple((path, entry.mlx_key(self.shapeless)) for path, entry in self.entries),
            self.kwarg_order,
            self.thread,
            self.stream,
        )

    def exact_key(self) -> tuple[object, ...]:
        return (
            tuple((path, entry.exact_key()) for path, entry in self.entries),
            self.kwarg_order,
            self.thread,
            self.stream,
        )

    def top_level(self) -> list[tuple[str, Entry]]:
        """The arguments themselves, without what is nested inside them."""
        roots: list[str] = []
        for path, _ in self.entries:
            if not _under(path, roots):
                roots.append(path)
        return [(path, entry) for path, entry in self.entries if path in roots]

    @property
    def ambiguous(self) -> bool:
        """An argument MLX could confuse with another kind (``True``/``1``, tuple/list).

        Only top-level arguments: checking every cache hit of a function that takes a model
        (lists of layers, int settings nested inside) would cost a full flatten per call.
        """
        return any(entry.ambiguous for _, entry in self.top_level())

    def describe(self) -> str:
        """A one-line view of the top-level arguments, for the history table."""
        top = [f"{path} {entry.describe()}" for path, entry in self.top_level()]
        return ", ".join(top) if top else "no arguments"


@dataclass(frozen=True)
class Reason:
    """One difference between two signatures; ``kind`` picks the policy and the fix."""

    kind: str  # constant | shape | ndim | dtype | structure | thread | stream | function | unknown
    text: str


def parameter_names(fun: Callable[..., Any]) -> tuple[tuple[str, ...], str | None]:
    """Names of the positional parameters and of ``*args``; empty when unknowable (builtins)."""
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return (), None
    generic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not inspect.isfunction(inspect.unwrap(fun)) and all(p.kind in generic for p in params):
        # a builtin's stand-in signature, (*args, **kwargs) (nanobind on Python 3.13): no names
        return (), None
    positional = tuple(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    varargs = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return positional, varargs


def signature_of(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    names: tuple[tuple[str, ...], str | None] = ((), None),
    inputs: object = None,
    shapeless: bool = False,
) -> Signature:
    """The signature of one call. ``names`` comes from :func:`parameter_names` (cache it)."""
    array_type = _mlx.core().array
    positional, varargs = names
    entries: list[tuple[str, Entry]] = []
    for index, arg in enumerate(args):
        if index < len(positional):
            root = f"arg {index} {positional[index]!r}"
        elif varargs is not None:
            root = f"arg {index} (*{varargs})"
        else:
            root = f"arg {index}"
        entries.extend(_flatten(root, arg, array_type))
    for name, value in kwargs.items():
        entries.extend(_flatten(f"kwarg {name!r}", value, array_type))
    if inputs is not None:
        entries.extend(_flatten("captured inputs", inputs, array_type))
    mx = _mlx.core()
    return Signature(
        entries=tuple(entries),
        kwarg_order=tuple(kwargs),
        thread=threading.get_ident(),
        stream=str(mx.default_stream(mx.default_device())),
        shapeless=shapeless,
    )


def _flatten(path: str, obj: object, array_type: type) -> Iterator[tuple[str, Entry]]:
    if isinstance(obj, array_type):
        yield path, Entry("array", None, tuple(obj.shape), _dtype_name(obj.dtype))  # type: ignore[attr-defined]
    elif obj is None:
        yield path, Entry("None")
    elif isinstance(obj, bool):
        yield path, Entry("bool", obj)
    elif isinstance(obj, int):
        yield path, Entry("int", int(obj))
    elif isinstance(obj, float):
        yield path, Entry("float", float(obj))
    elif isinstance(obj, str):
        yield path, Entry("str", str(obj))
    elif isinstance(obj, (list, tuple)):
        yield path, Entry("list" if isinstance(obj, list) else "tuple", len(obj))
        for index, item in enumerate(obj):
            yield from _flatten(f"{path}[{index}]", item, array_type)
    elif isinstance(obj, dict):
        yield path, Entry("dict", tuple(obj))
        for key, item in obj.items():
            yield from _flatten(f"{path}[{key!r}]", item, array_type)
    else:
        yield path, Entry(type(obj).__name__, None)


def diff(old: Signature, new: Signature) -> list[Reason]:
    """Why MLX would not reuse ``old``'s graph for ``new``, in words; empty when it would."""
    reasons: list[Reason] = []
    if new.thread != old.thread:
        reasons.append(Reason("thread", "called from another thread"))
    elif new.stream != old.stream:  # each thread has its own default stream: say it once
        reasons.append(Reason("stream", f"default stream {old.stream} -> {new.stream}"))
    before = dict(old.entries)
    after = dict(new.entries)
    changed: list[str] = []  # containers whose shape changed: their children are not listed
    for path, entry in new.entries:
        if _under(path, changed):
            continue
        was = before.get(path)
        if was is None:
            reasons.append(Reason("structure", f"{path} added ({entry.describe()})"))
            changed.append(path)
            continue
        found = _entry_reasons(path, was, entry, new.shapeless)
        if found and found[0].kind == "structure":
            changed.append(path)
        reasons.extend(found)
    for path, entry in old.entries:
        if path not in after and not _under(path, changed):
            reasons.append(Reason("structure", f"{path} removed (was {entry.describe()})"))
            changed.append(path)
    if not reasons and new.kwarg_order != old.kwarg_order:
        order = ", ".join(new.kwarg_order)
        was_order = ", ".join(old.kwarg_order)
        reasons.append(Reason("structure", f"keyword argument order ({was_order}) -> ({order})"))
    return reasons


def closest_diff(new: Signature, earlier: Sequence[Signature]) -> list[Reason]:
    """The reasons against the earlier signature that differs least (the latest on a tie)."""
    best: list[Reason] | None = None
    for old in reversed(earlier):
        reasons = diff(old, new)
        if best is None or len(reasons) < len(best):
            best = reasons
    return best or []


def _entry_reasons(path: str, old: Entry, new: Entry, shapeless: bool) -> list[Reason]:
    old_kind = _MLX_KIND.get(old.kind, old.kind)
    new_kind = _MLX_KIND.get(new.kind, new.kind)
    if old_kind != new_kind:
        both_constants = old.kind in CONSTANTS and new.kind in CONSTANTS
        return [
            Reason(
                "constant" if both_constants else "structure",
                f"{path} {_short(old)} -> {_short(new)}",
            )
        ]
    if new_kind == "array":
        return _array_reasons(path, old, new, shapeless)
    if old.mlx_key(shapeless) == new.mlx_key(shapeless):
        return []
    if new.kind in CONSTANTS:
        if old.kind != new.kind:  # int 1 -> bool True is one key to MLX; int 7 -> True is not
            return [Reason("constant", f"{path} {old.describe()} -> {new.describe()}")]
        text = f"{path} ({new.kind}) {_value(old.value)} -> {_value(new.value)}"
        return [Reason("constant", text)]
    if new_kind == "list":
        return [Reason("structure", f"{path} {old.describe()} -> {new.describe()}")]
    if new.kind == "dict":
        keys = list(new.value)  # type: ignore[call-overload]
        old_keys = list(old.value)  # type: ignore[call-overload]
        what = (
            "dict key order"
            if sorted(map(repr, keys)) == sorted(map(repr, old_keys))
            else "dict keys"
        )
        return [Reason("structure", f"{path} {what} {old_keys} -> {keys}")]
    return [Reason("structure", f"{path} {old.describe()} -> {new.describe()}")]


def _array_reasons(path: str, old: Entry, new: Entry, shapeless: bool) -> list[Reason]:
    reasons: list[Reason] = []
    if len(old.shape) != len(new.shape):
        reasons.append(
            Reason(
                "ndim",
                f"{path} ndim {len(old.shape)} -> {len(new.shape)}: "
                f"shape {old.shape} -> {new.shape}",
            )
        )
    elif not shapeless and old.shape != new.shape:
        reasons.append(Reason("shape", f"{path} shape {old.shape} -> {new.shape}"))
    if old.dtype != new.dtype:
        reasons.append(Reason("dtype", f"{path} dtype {old.dtype} -> {new.dtype}"))
    return reasons


def _short(entry: Entry) -> str:
    """``None``, ``array``, ``int 7``: enough to see what kind of thing arrived."""
    if entry.kind in ("array", "None"):
        return entry.kind
    return entry.describe()


def _value(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _under(path: str, parents: Sequence[str]) -> bool:
    return any(path.startswith(parent + "[") for parent in parents)


def _dtype_name(dtype: object) -> str:
    return str(dtype).rsplit(".", 1)[-1]
