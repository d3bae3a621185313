"""Snapshots of declared state trees (``inputs=``/``outputs=`` containers, ``mx.random.state``).

Compiled functions update state by writing leaves into the containers the user declared, the way
MLX's own ``tree_fill`` does: lists and dicts (``nn.Module`` and optimizer state are dicts) are
updated in place, tuples are walked into. A snapshot keeps each container object with its
contents, so ``restore`` can put back exactly what was there, including keys a call added (an
optimizer's lazily created moments) or placeholders a failed trace left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["Node", "capture", "leaves", "restore"]


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
