"""Checks usable outside pytest: ``assert_compile_parity``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pytest_mlxcompile import _mlx, instrument
from pytest_mlxcompile.errors import ParityError, ShapelessError
from pytest_mlxcompile.modes import Mode, parse_modes
from pytest_mlxcompile.parity import Tolerance, compare_call
from pytest_mlxcompile.state import capture, restore

__all__ = ["assert_compile_parity"]


def assert_compile_parity(
    fn: Callable[..., Any],
    *args: Any,
    modes: Iterable[Mode | str] = (Mode.COMPILED, Mode.SHAPELESS),
    rtol: float | None = None,
    atol: float | None = None,
    **kwargs: Any,
) -> None:
    """Run ``fn(*args, **kwargs)`` eagerly, then compiled in each mode, and compare.

    ``fn`` may be a plain function or one returned by ``mx.compile`` (its declared ``inputs=``,
    ``outputs=`` and ``shapeless`` are honoured). Declared state and ``mx.random.state`` are reset
    before every run so all see the same state; afterwards they hold what the eager run left.
    Raises :class:`ParityError` at the first difference, :class:`ShapelessError` when MLX cannot
    compile ``fn`` shapeless.
    """
    __tracebackhide__ = True
    mx = _mlx.core()
    chosen = [m for m in parse_modes(list(map(str, modes)), source="modes") if m.compiles]
    if isinstance(fn, instrument.InstrumentedFunction):
        fun, inputs, outputs, declared = fn.fun, fn.inputs, fn.outputs, fn.shapeless
        name, where = fn.name, fn.where
    else:
        fun, inputs, outputs, declared = fn, None, None, False
        name, where = instrument.describe(fn)
    patches = instrument.installed()
    real_compile = patches.compile if patches is not None else mx.compile
    roots = [("inputs", inputs), ("outputs", outputs), ("mx.random.state", _mlx.random_key_list())]
    roots = [(label, tree) for label, tree in roots if tree is not None]
    tol = Tolerance(rtol, atol)

    before = [capture(tree) for _, tree in roots]
    expected = capture(fun(*args, **kwargs))
    eager_after = [capture(tree) for _, tree in roots]
    try:
        for mode in chosen:
            for snap in before:
                restore(snap)
            shapeless = declared or mode is Mode.SHAPELESS
            compiled = real_compile(lambda *a, **k: fun(*a, **k), inputs, outputs, shapeless)
            try:
                out = compiled(*args, **kwargs)
            except ValueError as exc:
                if mode is Mode.SHAPELESS and _mlx.refuses_shapeless(exc):
                    raise ShapelessError(
                        f"{name} ({where}) cannot be compiled shapeless: {exc}\n"
                        "  fix: check only modes=['compiled'], or avoid the op MLX names"
                    ) from exc
                raise
            got_after = [capture(tree) for _, tree in roots]
            state = zip([label for label, _ in roots], eager_after, got_after, strict=True)
            mismatch = compare_call(expected, capture(out), state, tol)
            if mismatch is not None:
                raise ParityError(
                    "\n".join(
                        [
                            f"{name} [{mode}] differs from eager at {mismatch.path}",
                            f"  {mismatch.summary}",
                            *(f"  {d}" for d in mismatch.details),
                            f"  where: {name} defined at {where}",
                        ]
                    )
                )
    finally:
        for snap in eager_after:
            restore(snap)
