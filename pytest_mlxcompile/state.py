"""Snapshots of declared state trees (``inputs=``/``outputs=`` containers, ``mx.random.state``),
and the private copies the eager shadow runs on.

Compiled functions update state by writing leaves into the containers the user declared, the way
MLX's own ``tree_fill`` does: lists and dicts (``nn.Module`` and optimizer state are dicts) are
updated in place, tuples are walked into. A snapshot keeps each container object with its
contents, so ``restore`` can put back exactly what was there, including keys a call added (an
optimizer's lazily created moments) or placeholders a failed trace left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["InPlaceSpy", "Node", "capture", "isolate", "leaves", "restore", "swap_leaves"]

#: ``mx.array`` methods that change an array object in place (``a[i] = v``, ``a += b``): the
#: object keeps its identity and gets a new value, which is how eager code writes through to
#: its caller and compiled code (which sees tracers) does not.
IN_PLACE_METHODS = (
    "__setitem__",
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__ifloordiv__",
    "__imod__",
    "__ipow__",
    "__imatmul__",
    "__iand__",
    "__ior__",
    "__ixor__",
    "__ilshift__",
    "__irshift__",
)


class Node:
    """A container and its captured children; anything else in a snapshot is a leaf value."""

    __slots__ = ("items", "obj")

    def __init__(self, obj: Any, items: list[tuple[Any, object]]) -> None:
        self.obj = obj
        self.items = items


def capture(tree: object) -> object:
    if isinstance(tree, dict):
        return Node(tree, [(k, capture(v)) for k, v in tree.items()])
    if isinstance(tree, (list, tuple)):
        return Node(tree, [(i, capture(v)) for i, v in enumerate(tree)])
    return tree


def _value(snap: object) -> object:
    return snap.obj if isinstance(snap, Node) else snap


def restore(snap: object) -> None:
    """Make every container in ``snap`` hold what it held when captured."""
    if not isinstance(snap, Node):
        return
    obj = snap.obj
    if isinstance(obj, dict):
        keys = [k for k, _ in snap.items]
        if list(obj.keys()) != keys:
            obj.clear()
        for key, child in snap.items:
            value = _value(child)
            if key not in obj or obj[key] is not value:
                obj[key] = value
    elif isinstance(obj, list):
        obj[:] = [_value(child) for _, child in snap.items]
    for _, child in snap.items:
        restore(child)


def leaves(snap: object, path: str) -> Iterator[tuple[str, object]]:
    """``(path, leaf)`` pairs in order, paths written the way a user indexes the tree."""
    if not isinstance(snap, Node):
        yield path, snap
        return
    for key, child in snap.items:
        yield from leaves(child, f"{path}[{key!r}]")


def structure(snap: object) -> object:
    """The shape of the tree without its leaves, for comparing structures."""
    if not isinstance(snap, Node):
        return None
    kind = "dict" if isinstance(snap.obj, dict) else "sequence"
    return (kind, tuple((k, structure(c)) for k, c in snap.items))


def isolate(
    tree: object, array_type: type, copy: Callable[[Any], Any], copies: dict[int, Any]
) -> object:
    """``tree`` with its lists, tuples and dicts rebuilt and every array replaced by ``copy(a)``.

    What ``mx.compile`` does to arguments (the trace gets new containers and tracers), so the
    eager shadow cannot write through to the test's objects either. ``copies`` maps the id of
    each original array to its copy; an array passed twice gets one copy, keeping the alias.
    Namedtuples keep their type. Other objects (dict subclasses such as ``nn.Module``, user
    objects) are shared.
    """
    if isinstance(tree, array_type):
        twin = copies.get(id(tree))
        if twin is None:
            twin = copies[id(tree)] = copy(tree)
        return twin
    kind = type(tree)
    if kind is list:
        return [isolate(item, array_type, copy, copies) for item in tree]  # type: ignore[attr-defined]
    if kind is tuple:
        return tuple(isolate(item, array_type, copy, copies) for item in tree)  # type: ignore[attr-defined]
    if kind is dict:
        return {k: isolate(v, array_type, copy, copies) for k, v in tree.items()}  # type: ignore[attr-defined]
    if isinstance(tree, tuple) and hasattr(kind, "_make"):  # a namedtuple keeps its type
        return kind._make(isolate(item, array_type, copy, copies) for item in tree)
    return tree


def swap_leaves(snap: object, array_type: type, copy: Callable[[Any], Any]) -> None:
    """Put ``copy(a)`` in place of every array leaf of the captured (mutable) containers.

    After ``restore(snap)`` the containers hold the original arrays; swapping them for copies
    lets the eager shadow update declared state in place (``state[0][i] = v``) without touching
    the arrays the test holds. ``restore(snap)`` puts the originals back.
    """
    if not isinstance(snap, Node):
        return
    obj = snap.obj
    for key, child in snap.items:
        if isinstance(child, array_type) and isinstance(obj, (list, dict)):
            obj[key] = copy(child)
        else:
            swap_leaves(child, array_type, copy)


class InPlaceSpy:
    """Records which arrays are updated in place while active (``with spy:``).

    Wraps the in-place methods of the array type for the duration of the block only (the eager
    shadow): ``written`` holds the ids of the arrays written. Nothing else changes: each wrapper
    calls the original method.
    """

    def __init__(self, array_type: type) -> None:
        self.array_type = array_type
        self.written: set[int] = set()
        self._originals: dict[str, Any] = {
            name: vars(array_type)[name] for name in IN_PLACE_METHODS if name in vars(array_type)
        }

    def _spy(self, name: str, original: Any) -> Callable[..., Any]:
        written = self.written

        def spy(array: Any, *args: Any) -> Any:
            written.add(id(array))
            return original(array, *args)

        spy.__name__ = name
        return spy

    def __enter__(self) -> InPlaceSpy:
        for name, original in self._originals.items():
            setattr(self.array_type, name, self._spy(name, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            setattr(self.array_type, name, original)
