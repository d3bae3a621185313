"""How many bytes a check would touch if it evaluated a call, from shapes and dtypes alone.

The checks (the eager shadow of parity, the shapeless probe) evaluate arrays the test may never
evaluate: a test that builds a full-size model lazily and checks only shapes computes nothing
without the plugin. ``--mlx-max-check-bytes`` bounds what a check may evaluate; this module
estimates it without evaluating anything (``nbytes`` is ``size * itemsize``, known lazily).

The estimate counts the arrays the call touches directly. The lazy graph *behind* an argument
(weights a test built but never evaluated) has no size MLX exposes without evaluating, so it is
not counted: see docs/how-it-works.md.
"""

from __future__ import annotations

from pytest_mlxcompile import _mlx

__all__ = ["estimate_bytes", "format_bytes"]

#: How deep containers are followed; argument and state trees are shallow in practice.
_MAX_DEPTH = 32


def estimate_bytes(*trees: object) -> int:
    """Total ``nbytes`` of the distinct arrays in ``trees`` (lists, tuples, dicts, nn.Modules).

    An array that appears twice (an argument also returned, a weight shared by two layers)
    counts once. Never evaluates.
    """
    array = _mlx.core().array
    seen: set[int] = set()
    total = 0
    stack: list[tuple[object, int]] = [(tree, 0) for tree in trees]
    while stack:
        tree, depth = stack.pop()
        if id(tree) in seen:
            continue
        if isinstance(tree, array):
            seen.add(id(tree))
            total += int(tree.nbytes)
        elif depth < _MAX_DEPTH and isinstance(tree, (list, tuple, dict)):
            seen.add(id(tree))
            items = tree.values() if isinstance(tree, dict) else tree
            stack.extend((item, depth + 1) for item in items)
    return total


def format_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, as the option accepts them."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
