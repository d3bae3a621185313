"""The eager shadow: the plain function run on private copies of everything it can write.

``mx.compile`` hands the traced body new containers and tracers for its arguments, so a compiled
call never writes through to the caller's arguments, while the plain function does
(``cache[:, pos] = k`` on an argument updates the caller's array). The shadow therefore runs on
copies (reference/mlx-compile-probe.md §4: an in-place update keeps the Python object and
replaces the array inside it):

- arguments: lists, tuples and dicts rebuilt, each array replaced by ``mx.stop_gradient(a)``,
  which shares the data buffer (no memory) but is its own object, so an in-place update of the
  copy leaves the original alone;
- declared state (``inputs=``/``outputs=``, ``mx.random.state``): put back to what it held before
  the call, its arrays swapped for copies, and after the shadow put back to what the compiled call
  left;
- arrays and Python values the function reaches (globals, closure cells, ``self``, partial
  arguments: :func:`pytest_mlxcompile.holders.reachable`): swapped for copies during the shadow,
  and every slot the shadow rebound is put back.

So the test's world after the call is exactly what the compiled call left (Python numbers in
named slots and in the lists and dicts the function reaches included). Python side effects other
than those (printing, appending to a list the function reaches, files) happen in the shadow as they
would eagerly: docs/how-it-works.md says so.

While the shadow runs, the in-place methods of ``mx.array`` record which arrays they write
(:class:`~pytest_mlxcompile.state.InPlaceSpy`): an argument the eager run updated in place and did
not return is a difference the compiled call cannot reproduce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_mlxcompile import _mlx, holders
from pytest_mlxcompile.state import InPlaceSpy, Node, capture, isolate, restore, swap_leaves

__all__ = ["ArgumentChange", "Shadow", "argument_label"]

_SLOTS = "_shadow_slots"


@dataclass(frozen=True)
class ArgumentChange:
    """An argument the eager run changed in place: ``where`` as a user reads it, and how."""

    index: int | str
    subpath: str
    #: "updated" (an array), "changed" (a container), "replaced" (a container's item)
    verb: str
    detail: str = ""


@dataclass
class _SavedSlot:
    slot: holders.Slot
    value: Any
    #: the attribute lived on the instance (else it was read from the class: delete, not set)
    own: bool


@dataclass
class Shadow:
    """One eager shadow run: build the copies, run, put everything back (``restore_world``)."""

    fun: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    mx: Any = field(default_factory=_mlx.core)
    #: argument copies the run got, and their snapshots before it ran
    eager_args: tuple[Any, ...] = ()
    eager_kwargs: dict[str, Any] = field(default_factory=dict)
    _arg_snaps: list[tuple[int | str, object]] = field(default_factory=list)
    _saved: list[_SavedSlot] = field(default_factory=list)
    _spy: InPlaceSpy | None = None

    def prepare(self, slots: list[holders.Slot], declared: list[object]) -> None:
        """Copies of the arguments; copies in declared state (after ``restore(before)``) and in
        reachable slots. Call ``restore_world`` afterwards, whatever happens."""
        array, copy = self.mx.array, self.mx.stop_gradient
        copies: dict[int, Any] = {}
        self.eager_args = isolate(self.args, array, copy, copies)  # type: ignore[assignment]
        self.eager_kwargs = isolate(self.kwargs, array, copy, copies)  # type: ignore[assignment]
        self._arg_snaps = [
            *((i, capture(a)) for i, a in enumerate(self.eager_args)),
            *((k, capture(v)) for k, v in self.eager_kwargs.items()),
        ]
        for snap in declared:
            swap_leaves(snap, array, copy)
        for slot in slots:
            now = slot.current()
            if holders.missing(now):
                continue
            own = not slot.is_attribute or _own_attribute(slot.holder, slot.key)
            self._saved.append(_SavedSlot(slot, now, own))
            if isinstance(now, array):
                _set(slot, copies.get(id(now)) or copy(now))
        self._spy = InPlaceSpy(array)

    def run(self) -> Any:
        __tracebackhide__ = True  # an error of the eager run points at the user's code
        assert self._spy is not None
        with self._spy:
            return self.fun(*self.eager_args, **self.eager_kwargs)

    def restore_world(self) -> None:
        """Put every reachable slot back to what it held before the shadow."""
        saved, self._saved = self._saved, []
        for entry in reversed(saved):
            now = entry.slot.current()
            if entry.own:
                if now is not entry.value:
                    _set(entry.slot, entry.value)
            elif not holders.missing(now) and _own_attribute(entry.slot.holder, entry.slot.key):
                # the shadow shadowed a class attribute (``self.n += 1``): remove it
                with contextlib.suppress(AttributeError):
                    delattr(entry.slot.holder, entry.slot.key)

    def argument_changes(self, expected: object) -> list[ArgumentChange]:
        """Arguments the eager run updated in place and did not return."""
        assert self._spy is not None
        written = self._spy.written
        returned = _ids(expected)
        changes: list[ArgumentChange] = []
        current = dict(
            [
                *((i, a) for i, a in enumerate(self.eager_args)),
                *self.eager_kwargs.items(),
            ]
        )
        for index, snap in self._arg_snaps:
            for subpath, verb, detail in _changes(snap, current[index], "", written, returned):
                changes.append(ArgumentChange(index, subpath, verb, detail))
        return changes


def reachable_slots(record: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The slots the function reaches, walked after each trace and reused on cache hits."""
    slots: list[holders.Slot] | None = record.extra.get(_SLOTS)
    if slots is not None:
        return slots
    mx = _mlx.core()
    fn = record.fn
    skip = {id(a) for a in holders.array_leaves((args, kwargs), mx.array, [])}
    holders.containers((args, kwargs), skip)
    for tree in (fn.inputs, fn.outputs):
        if tree is not None:
            holders.containers(tree, skip)
    skip.update((id(_mlx.random_key_list()), id(mx.random.state), id(fn)))
    try:
        found = list(holders.reachable(fn.fun, mx.array, skip))
    except Exception:
        found = []  # a holder we cannot walk: the shadow then shares it, as before
    # Kept without the value found: the slots are read again on every shadow, and a value kept
    # here would hold an array the test has since replaced. Python scalars count where the code
    # names them, and as items of a list or dict it reaches (``counter[0] += 1``,
    # ``stats["calls"] += 1``): the shadow's bump is put back like any other slot.
    slots = [
        dataclasses.replace(s, value=None)
        for s in found
        if not isinstance(s.holder, tuple)
        and s.holder is not None
        and (isinstance(s.value, mx.array) or s.named or isinstance(s.holder, (list, dict)))
    ]
    record.extra[_SLOTS] = slots
    return slots


def forget_slots(record: Any) -> None:
    """After a trace the function may reach other state: walk again on the next shadow."""
    record.extra.pop(_SLOTS, None)


def argument_label(fun: Any, index: int | str) -> str:
    """``argument 0 'cache'``: the position and the parameter name, where we can find it."""
    if isinstance(index, str):
        return f"argument {index!r}"
    func, bound, _ = holders.unwrap(fun)
    try:
        params = list(inspect.signature(func or fun).parameters.values())
    except (TypeError, ValueError):
        params = []
    if bound is not None and func is not None and params and params[0].name == "self":
        params = params[1:]
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if index < len(positional):
        return f"argument {index} {positional[index]!r}"
    return f"argument {index}"


def _own_attribute(holder: Any, key: Any) -> bool:
    try:
        return key in vars(holder)
    except TypeError:
        return True  # no __dict__ (slots, cells): set and get are all there is


def _set(slot: holders.Slot, value: Any) -> None:
    try:
        if slot.is_attribute:
            setattr(slot.holder, slot.key, value)
        else:
            slot.holder[slot.key] = value
    except Exception:
        pass  # a read-only holder (a property, a frozen dataclass): the shadow shares it


def _ids(tree: object, depth: int = 0) -> set[int]:
    """Ids of the arrays and containers in a result tree (what the function returned)."""
    found = {id(tree)}
    if depth < 32 and isinstance(tree, (list, tuple, dict)):
        for item in tree.values() if isinstance(tree, dict) else tree:
            found |= _ids(item, depth + 1)
    return found


def _changes(
    snap: object, now: object, path: str, written: set[int], returned: set[int]
) -> Iterator[tuple[str, str, str]]:
    if not isinstance(snap, Node):
        if id(snap) in written and id(snap) not in returned:
            yield path, "updated", ""
        return
    if now is not snap.obj:
        return  # rebuilt by the shadow itself: cannot happen, nothing to say
    obj: Any = snap.obj
    before_keys = [k for k, _ in snap.items]
    now_keys = list(obj.keys()) if isinstance(obj, dict) else list(range(len(obj)))
    kind = type(obj).__name__
    if before_keys != now_keys and id(obj) not in returned:
        added = [k for k in now_keys if k not in before_keys]
        removed = [k for k in before_keys if k not in now_keys]
        parts = [f"{'key' if isinstance(obj, dict) else 'item'} {k!r} added" for k in added]
        parts += [f"{'key' if isinstance(obj, dict) else 'item'} {k!r} removed" for k in removed]
        yield path, "changed", f" ({kind}: {', '.join(parts) or 'reordered'})"
        return
    for key, child in snap.items:
        item = obj[key]
        step = f"{path}[{key!r}]"
        value = child.obj if isinstance(child, Node) else child
        if item is not value:
            if id(obj) not in returned:
                yield step, "replaced", f" ({kind} item assigned)"
            continue
        yield from _changes(child, item, step, written, returned)


def declared_snapshots(before: list[tuple[str, object]]) -> list[object]:
    """Restore the pre-call declared state and return its snapshots, for ``Shadow.prepare``."""
    snaps = [snap for _, snap in before]
    for snap in snaps:
        restore(snap)
    return snaps
