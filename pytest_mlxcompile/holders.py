"""What a compiled function can reach besides its arguments, named the way its author writes it.

The roots are the ones MLX bakes into a graph at trace time (reference/mlx-compile-probe.md §4):
globals the code names (``co_names`` of the function and its nested code objects, intersected
with ``__globals__``), closure cells, the bound ``self`` of a method or a callable object such as
an ``nn.Module``, and arguments bound by ``functools.partial``. Helper functions reached from
those roots are followed too, a few levels deep. Each value found comes as a :class:`Slot`: where
it lives (a :class:`Path` like ``global 'cache' in mylib/model.py, item [0]``) and how to read it
again later.
"""

from __future__ import annotations

import dis
import functools
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pytest_mlxcompile import locations

__all__ = [
    "Path",
    "Slot",
    "array_leaves",
    "code_names",
    "containers",
    "missing",
    "reachable",
    "state_slots",
    "tree_slots",
    "unwrap",
]

#: How deep the walk follows containers and attributes, and how many values it visits at most:
#: the walk runs only while tracing, but a huge object graph must not make that slow.
MAX_DEPTH = 8
MAX_VALUES = 20_000
#: Modules whose functions and globals are not the user's state (their constants never change).
_FOREIGN_PREFIXES = ("mlx.", "numpy.", "pytest_mlxcompile.", "_pytest.", "pytest.", "pluggy.")
_MISSING = object()


@dataclass(frozen=True)
class Path:
    """A holder, twice: ``text`` for people (``global 'W' in m.py, item [0]``), ``expr`` as code."""

    text: str
    expr: str

    def _step(self, text: str, expr: str) -> Path:
        return Path(f"{self.text}, {text}" if self.text else text, self.expr + expr)

    def item(self, index: int) -> Path:
        return self._step(f"item [{index}]", f"[{index}]")

    def key(self, key: object) -> Path:
        return self._step(f"key {key!r}", f"[{key!r}]")

    def attribute(self, name: str, owner: object) -> Path:
        return self._step(f"attribute {name!r} of {type(owner).__name__}", f".{name}")

    def __str__(self) -> str:
        return self.text if self.text.endswith(f"({self.expr})") else f"{self.text} ({self.expr})"


@dataclass(frozen=True)
class Slot:
    """A value found by the walk and the place it sits in: ``holder[key]`` or ``holder.key``."""

    path: Path
    holder: Any
    key: Any
    is_attribute: bool
    value: Any
    #: the code reads this name directly (a global, a closure cell, an attribute it names):
    #: Python scalars only matter there, not inside containers the code never indexes by name
    named: bool

    def current(self) -> Any:
        """The value in the slot now, or ``_MISSING`` when the slot is gone."""
        try:
            if self.is_attribute:
                return getattr(self.holder, self.key)
            return self.holder[self.key]
        except (AttributeError, LookupError, TypeError, ValueError):
            return _MISSING


def missing(value: object) -> bool:
    return value is _MISSING


_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR"})


@functools.lru_cache(maxsize=1024)
def code_names(code: types.CodeType, *, reads_only: bool = False) -> frozenset[str]:
    """Names a code object uses (globals and attributes), including nested code objects.

    ``reads_only`` keeps the names it loads: ``self.n = 3`` stores ``n`` without reading it,
    so no graph can have frozen it; ``cache.offset += 1`` both loads and stores ``offset``.
    """
    if reads_only:
        names = {str(ins.argval) for ins in dis.get_instructions(code) if ins.opname in _LOADS}
    else:
        names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= code_names(const, reads_only=reads_only)
    return frozenset(names)


def instrumented(value: object) -> bool:
    """Whether ``value`` is what the patched ``mx.compile`` returned (without importing it)."""
    return getattr(type(value), "_mlxcompile_instrumented", False) is True


def unwrap(fun: object) -> tuple[Any, object | None, tuple[Any, ...]]:
    """``(python function, bound self or None, partial args)`` behind a callable."""
    partial_args: tuple[Any, ...] = ()
    for _ in range(8):
        if instrumented(fun):
            fun = fun.fun  # type: ignore[attr-defined]
        elif isinstance(fun, functools.partial):
            partial_args = (*fun.args, *fun.keywords.values(), *partial_args)
            fun = fun.func
        else:
            break
    if isinstance(fun, types.MethodType):
        return fun.__func__, fun.__self__, partial_args
    if isinstance(fun, types.FunctionType):
        return fun, None, partial_args
    call = getattr(type(fun), "__call__", None)  # noqa: B004 - the class's, not the instance's
    if isinstance(call, types.FunctionType):
        return call, fun, partial_args
    return None, None, partial_args


def _foreign(module_name: object) -> bool:
    name = f"{module_name}."
    return name.startswith(_FOREIGN_PREFIXES) or name.split(".", 1)[0] in sys.stdlib_module_names


#: MLX's own classes whose instances hold user state (an optimizer's ``.state``, a module)
_MLX_STATEFUL = ("mlx.optimizers.", "mlx.nn.")


def _stateful(module_name: object) -> bool:
    """Whether instances of a class from this module hold state worth walking."""
    return not _foreign(module_name) or f"{module_name}.".startswith(_MLX_STATEFUL)


def _public_name(owner: object, name: str) -> str:
    """``_state`` behind a ``state`` property (an optimizer's): the name its users write."""
    if name.startswith("_") and not name.startswith("__"):
        public = name[1:]
        if isinstance(getattr(type(owner), public, None), property):
            return public
    return name


def _is_module_tree(value: object) -> bool:
    """An ``mlx.nn.Module``: a dict whose entries users read as attributes."""
    return isinstance(value, dict) and any(
        klass.__name__ == "Module" and klass.__module__.startswith("mlx.nn")
        for klass in type(value).__mro__
    )


_SCALARS = (bool, int, float, complex, str)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _Walk:
    def __init__(
        self,
        array_type: type,
        skip: set[int],
        reads_only: bool = False,
        *,
        everything: bool = False,
        budget: int = MAX_VALUES,
    ) -> None:
        self.array_type = array_type
        self.skip = skip
        self.reads_only = reads_only
        #: the state walk: every Python scalar attribute, not only those the code names (a
        #: method call such as ``cache.update(k)`` writes ``offset`` in a frame we never read)
        self.everything = everything
        #: the module namespaces whose globals the walk read: a trace can add a name to them
        self.scopes: dict[int, dict[str, Any]] = {}
        self.seen: set[int] = set()
        self.seen_code: set[types.CodeType] = set()
        self.budget = budget

    def value(
        self,
        path: Path,
        holder: Any,
        key: Any,
        attr: bool,
        value: Any,
        names: frozenset[str],
        named: bool,
        depth: int,
    ) -> Iterator[Slot]:
        if self.budget <= 0 or id(value) in self.skip:
            return
        self.budget -= 1
        if isinstance(value, (self.array_type, *_SCALARS)):
            yield Slot(path, holder, key, attr, value, named)
            return
        if depth >= MAX_DEPTH or id(value) in self.seen or isinstance(value, _OPAQUE):
            if isinstance(value, types.FunctionType) and depth < MAX_DEPTH:
                yield from self.function(value, None, depth + 1)
            return
        self.seen.add(id(value))
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                yield from self.value(
                    path.item(index), value, index, False, item, names, False, depth + 1
                )
        elif isinstance(value, dict):
            module = _is_module_tree(value)
            for k, item in list(value.items()):
                child = path.attribute(k, value) if module and isinstance(k, str) else path.key(k)
                yield from self.value(
                    child, value, k, False, item, names, module and k in names, depth + 1
                )
            if module:
                yield from self.attributes(path, value, names, depth)
        elif instrumented(value):
            yield from self.function(value, None, depth + 1)
        elif hasattr(value, "__dict__") and _stateful(type(value).__module__):
            yield from self.attributes(path, value, names, depth)

    def attributes(
        self, path: Path, owner: Any, names: frozenset[str], depth: int
    ) -> Iterator[Slot]:
        try:
            items = list(vars(owner).items())
        except TypeError:
            return
        for name, item in items:
            if isinstance(item, _SCALARS) and name not in names and not self.everything:
                continue  # a Python attribute the code never names cannot be baked in
            yield from self.value(
                path.attribute(_public_name(owner, name), owner),
                owner,
                name,
                True,
                item,
                names,
                name in names,
                depth + 1,
            )
        yield from self.class_scalars(path, owner, names, {name for name, _ in items})

    def class_scalars(
        self, path: Path, owner: Any, names: frozenset[str], shadowed: set[str]
    ) -> Iterator[Slot]:
        """``class Cache: offset = 0`` read as ``cache.offset``: a class-level Python scalar.

        Never a descriptor: reading a property would run user code.
        """
        klasses = type(owner).__mro__[:-1]  # not object
        for name in sorted(names - shadowed):
            for klass in klasses:
                value = vars(klass).get(name, _MISSING)
                if value is not _MISSING:
                    if isinstance(value, _SCALARS) and not name.startswith("__"):
                        yield Slot(path.attribute(name, owner), owner, name, True, value, True)
                    break

    def function(self, fun: object, self_path: Path | None, depth: int) -> Iterator[Slot]:
        func, bound, partial_args = unwrap(fun)
        for index, arg in enumerate(partial_args):
            path = Path(f"argument {index} bound by functools.partial", f"partial.args[{index}]")
            yield from self.value(path, partial_args, index, False, arg, frozenset(), False, depth)
        if func is None or func.__code__ in self.seen_code or depth >= MAX_DEPTH:
            return
        if depth > 0 and _foreign(func.__module__):
            return
        self.seen_code.add(func.__code__)
        names = code_names(func.__code__, reads_only=self.reads_only)
        if bound is not None and id(bound) not in self.skip:
            # ``mx.compile(model)``: the module's entries and attributes are what the graph reads
            yield from self.value(
                self_path or Path("", "self"), None, None, False, bound, names, False, depth
            )
        yield from self.cells(func, names, depth)
        if self.everything:
            yield from self.defaults(func, names, depth)
        yield from self.globals(func, names, depth)

    def defaults(
        self, func: types.FunctionType, names: frozenset[str], depth: int
    ) -> Iterator[Slot]:
        """``def f(x, _memo={})``: a default value lives as long as the function."""
        code = func.__code__
        positional = code.co_varnames[: code.co_argcount]
        for name, value in zip(positional[::-1], (func.__defaults__ or ())[::-1], strict=False):
            path = Path(f"default of argument {name!r} of {func.__qualname__}", name)
            yield from self.value(path, None, None, False, value, names, False, depth)
        for name, value in (func.__kwdefaults__ or {}).items():
            path = Path(f"default of argument {name!r} of {func.__qualname__}", name)
            yield from self.value(path, None, None, False, value, names, False, depth)

    def cells(self, func: types.FunctionType, names: frozenset[str], depth: int) -> Iterator[Slot]:
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
            try:
                content = cell.cell_contents
            except ValueError:  # not assigned yet
                continue
            path = Path(f"closure variable {name!r} of {func.__qualname__}", name)
            yield from self.value(path, cell, "cell_contents", True, content, names, True, depth)

    def globals(
        self, func: types.FunctionType, names: frozenset[str], depth: int
    ) -> Iterator[Slot]:
        scope = func.__globals__
        self.scopes[id(scope)] = scope
        where = locations.relative(str(scope.get("__file__") or scope.get("__name__", "?")))
        for name in sorted(names):
            content = scope.get(name, _MISSING)
            if content is _MISSING:
                continue
            path = Path(f"global {name!r} in {where}", name)
            if isinstance(content, (types.ModuleType, type)):
                yield from self.namespace(path, content, names, depth)
            else:
                yield from self.value(path, scope, name, False, content, names, True, depth)

    def namespace(
        self, path: Path, space: types.ModuleType | type, names: frozenset[str], depth: int
    ) -> Iterator[Slot]:
        """``config.W`` or ``Config.SCALE``: what the code reads from a user's module or class."""
        if _foreign(space.__module__ if isinstance(space, type) else space.__name__):
            return
        if id(space) in self.seen:
            return
        self.seen.add(id(space))
        for name in sorted(names):
            content = vars(space).get(name, _MISSING)
            if content is _MISSING or isinstance(content, (types.ModuleType, type)):
                continue
            if name.startswith("__"):
                continue
            step = Path(f"{path.text}, attribute {name!r}", f"{path.expr}.{name}")
            yield from self.value(step, space, name, True, content, names, True, depth + 1)


def reachable(
    fun: object, array_type: type, skip: set[int], *, reads_only: bool = False
) -> Iterator[Slot]:
    """Arrays, Python scalars and their holders that ``fun`` can reach without arguments.

    ``skip`` holds ids of objects to leave out with everything below them: arguments, declared
    ``inputs=``/``outputs=`` containers and leaves, the RNG key list. ``reads_only`` follows only
    the names the code loads (what a graph can freeze), else every name it uses (where it can
    store a leak).
    """
    return _Walk(array_type, skip, reads_only).function(fun, None, 0)


def state_slots(
    fun: object,
    declared: list[tuple[str, Path, object]],
    array_type: type,
    *,
    budget: int = MAX_VALUES,
) -> tuple[list[tuple[Slot, str]], dict[int, dict[str, Any]]]:
    """The state a compiled function can reach, as ``(slot, origin)`` pairs, and its globals.

    ``declared`` holds ``(origin, root path, tree)`` for the declared ``inputs=``/``outputs=``
    trees and the RNG key list; their slots come first, tagged with their origin, so that what
    the function reaches again through them keeps that tag. Everything else (globals and
    attributes the code names, closures, defaults, ``self``, ``functools.partial`` arguments, and
    what helper functions reach) is tagged ``""``. Every Python scalar attribute is included: a
    method called on a reachable object can change any of them. Bounded by ``budget`` values and
    :data:`MAX_DEPTH`; cycles are visited once.
    """
    walk = _Walk(array_type, set(), everything=True, budget=budget)
    found: list[tuple[Slot, str]] = []
    for origin, path, tree in declared:
        found += [
            (slot, origin)
            for slot in walk.value(path, None, None, False, tree, frozenset(), False, 0)
        ]
    found += [(slot, "") for slot in walk.function(fun, None, 0)]
    return found, walk.scopes


def tree_slots(path: Path, tree: object, array_type: type) -> Iterator[Slot]:
    """Every array in a declared state tree (lists, tuples, dicts, ``nn.Module``), with paths."""
    return _Walk(array_type, set()).value(path, None, None, False, tree, frozenset(), False, 0)


def array_leaves(tree: object, array_type: type, into: list[Any]) -> list[Any]:
    """Arrays in a tree of lists, tuples and dicts (arguments, declared state), in order.

    The walk MLX's compile does over its arguments and declared state: ``mlx.utils.tree_flatten``.
    """
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(tree)  # MLX's stub types the pairs loosely
    into += [leaf for _, leaf in flat if isinstance(leaf, array_type)]
    return into


def containers(tree: object, into: set[int], depth: int = 0) -> set[int]:
    """Ids of the lists, tuples and dicts making up a declared state tree."""
    if isinstance(tree, (list, tuple, dict)) and depth < MAX_DEPTH * 4:
        into.add(id(tree))
        for item in tree.values() if isinstance(tree, dict) else tree:
            containers(item, into, depth + 1)
    return into
