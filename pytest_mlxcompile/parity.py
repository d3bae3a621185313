"""Tree-aware comparison of compiled results against eager, with per-dtype tolerances.

Defaults follow ``torch.testing.assert_close`` (reference/anchors-torch-bench.md §2b): they are
the tolerances users of compiled-code testing already know, and MLX's fused kernels stay well
inside them (compiled GELU/softmax/SiLU were bit-identical to eager in f32/f16/bf16, probe §8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from pytest_mlxcompile import _mlx
from pytest_mlxcompile.state import capture, leaves, structure

__all__ = [
    "DEFAULT_TOLERANCES",
    "Mismatch",
    "Tolerance",
    "Unevaluable",
    "compare",
    "compare_call",
    "first_unevaluable",
]

#: dtype name -> (rtol, atol); dtypes not listed (ints, bool) compare exactly.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "complex64": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}


class Tolerance(NamedTuple):
    """User overrides; ``None`` means the dtype's default."""

    rtol: float | None = None
    atol: float | None = None
    #: the ``pytest_mlxcompile_tolerance`` hook: (function, where, dtype, default) -> answer
    hook: Callable[[str, str, str, tuple[float, float]], tuple[float, float] | None] | None = None
    function: str = ""
    where: str = ""

    def bind(self, function: str, where: str) -> Tolerance:
        """This tolerance for one function, so the hook knows whose results it judges."""
        if self.hook is None:
            return self
        return self._replace(function=function, where=where)

    def for_dtype(self, dtype_name: str) -> tuple[float, float, str]:
        default = DEFAULT_TOLERANCES.get(dtype_name, (0.0, 0.0))
        rtol = default[0] if self.rtol is None else self.rtol
        atol = default[1] if self.atol is None else self.atol
        if self.hook is not None:
            answer = self.hook(self.function, self.where, dtype_name, (rtol, atol))
            if answer is not None and tuple(answer) != (rtol, atol):
                return (
                    float(answer[0]),
                    float(answer[1]),
                    "from the pytest_mlxcompile_tolerance hook",
                )
        if self.rtol is None and self.atol is None:
            origin = f"{dtype_name} defaults" if dtype_name in DEFAULT_TOLERANCES else "exact"
        elif self.rtol is not None and self.atol is not None:
            origin = "set by the test"
        else:
            origin = f"partly set by the test, rest {dtype_name} defaults"
        return rtol, atol, origin


class Mismatch(NamedTuple):
    path: str
    summary: str
    details: tuple[str, ...] = ()


class Unevaluable(NamedTuple):
    """An array MLX refused to evaluate: where (``out[0]``) and what MLX said."""

    path: str
    error: Exception

    @property
    def placeholder(self) -> bool:
        return "without a primitive" in str(self.error)

    @property
    def said(self) -> str:
        text = str(self.error).strip()
        return text.splitlines()[0] if text else type(self.error).__name__


def first_unevaluable(snap: object, path: str) -> Unevaluable | None:
    """Evaluate the arrays of a captured tree; the first one MLX refuses, or None.

    One ``mx.eval`` for the whole tree; only when it fails, one per array to name the culprit.
    Comparing evaluates anyway: doing it here first turns MLX's error into a diagnosis.
    """
    mx = _mlx.core()
    arrays = [(p, leaf) for p, leaf in leaves(snap, path) if isinstance(leaf, mx.array)]
    if not arrays:
        return None
    try:
        mx.eval([a for _, a in arrays])
        return None
    except Exception as exc:
        whole = exc
    for leaf_path, array in arrays:
        try:
            mx.eval(array)
        except Exception as exc:
            return Unevaluable(leaf_path, exc)
    return Unevaluable(path, whole)


def dtype_name(dtype: object) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _fmt_index(index: tuple[Any, ...]) -> str:
    return str(tuple(int(i) for i in index))


def _fmt_value(value: Any) -> str:
    return f"{complex(value):.6g}" if isinstance(value, complex) else f"{float(value):.6g}"


#: Elements compared per evaluation: ``array_equal`` materialises a bool array of the whole
#: size, which for a 1 GiB float32 output is 256 MiB more than the test itself uses.
_CHUNK = 2**22


def _equal(mx: Any, expected: Any, actual: Any) -> bool:
    """``mx.array_equal(expected, actual, equal_nan=True)``, in slices along the longest axis."""
    size = int(expected.size)
    if size <= _CHUNK or expected.ndim == 0:
        return bool(mx.array_equal(expected, actual, equal_nan=True).item())
    shape = tuple(expected.shape)
    axis = max(range(len(shape)), key=lambda i: shape[i])
    step = max(_CHUNK * shape[axis] // size, 1)
    lead = (slice(None),) * axis
    for start in range(0, shape[axis], step):
        part = (*lead, slice(start, start + step))
        if not mx.array_equal(expected[part], actual[part], equal_nan=True).item():
            return False
    return True


def _compare_arrays(path: str, expected: Any, actual: Any, tol: Tolerance) -> Mismatch | None:
    mx = _mlx.core()
    if not isinstance(actual, mx.array):
        return Mismatch(path, f"eager gave an array, compiled gave {type(actual).__name__}")
    if expected.dtype != actual.dtype:
        return Mismatch(
            path,
            f"dtype differs: eager {dtype_name(expected.dtype)}, "
            f"compiled {dtype_name(actual.dtype)}",
        )
    if tuple(expected.shape) != tuple(actual.shape):
        return Mismatch(
            path, f"shape differs: eager {tuple(expected.shape)}, compiled {tuple(actual.shape)}"
        )
    if _equal(mx, expected, actual):
        return None
    name = dtype_name(expected.dtype)
    rtol, atol, origin = tol.for_dtype(name)
    import numpy as np

    def host(a: Any) -> Any:
        if name == "bfloat16":
            a = a.astype(mx.float32)
        return np.asarray(a).astype(np.complex128 if "complex" in name else np.float64)

    want, got = host(expected), host(actual)
    # torch.testing.assert_close's rule, |got - want| <= atol + rtol * |want|, NaN equal to NaN
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    count = int(bad.sum())
    if count == 0:
        return None
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    diff = np.where(bad, np.nan_to_num(diff, nan=np.inf), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(want))
    abs_at = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    rel_at = np.unravel_index(int(np.argmax(rel)), rel.shape) if rel.ndim else ()
    size = int(bad.size)
    shape = tuple(int(d) for d in expected.shape)
    return Mismatch(
        path,
        f"shape {shape} {name}; mismatched {count} / {size} ({100.0 * count / size:.1f}%); "
        f"greatest abs diff {float(diff[abs_at]):.1e} at {_fmt_index(abs_at)};",
        (
            f"greatest rel diff {float(rel[rel_at]):.1e} at {_fmt_index(rel_at)}; "
            f"rtol {rtol:.1e} atol {atol:.0e} ({origin})",
            f"at {_fmt_index(abs_at)}: eager {_fmt_value(want[abs_at])}, "
            f"compiled {_fmt_value(got[abs_at])}",
        ),
    )


def compare(expected: object, actual: object, path: str, tol: Tolerance) -> Mismatch | None:
    """The first difference between two result trees, or None when they agree."""
    return compare_snapshots(capture(expected), capture(actual), path, tol)


def compare_snapshots(
    expected: object, actual: object, path: str, tol: Tolerance
) -> Mismatch | None:
    want_structure, got_structure = structure(expected), structure(actual)
    if want_structure != got_structure:
        return Mismatch(
            path,
            "tree structure differs",
            (f"eager {_describe(expected)}", f"compiled {_describe(actual)}"),
        )
    mx = _mlx.core()
    for (leaf_path, want), (_, got) in zip(
        leaves(expected, path), leaves(actual, path), strict=True
    ):
        if isinstance(want, mx.array):
            mismatch = _compare_arrays(leaf_path, want, got, tol)
        elif isinstance(got, mx.array):
            mismatch = Mismatch(
                leaf_path, f"eager gave {type(want).__name__} {want!r}, compiled gave an array"
            )
        elif not _same_value(want, got):
            mismatch = Mismatch(leaf_path, f"value differs: eager {want!r}, compiled {got!r}")
        else:
            mismatch = None
        if mismatch is not None:
            return mismatch
    return None


def compare_call(
    expected: object,
    actual: object,
    state: Iterable[tuple[str, object, object]],
    tol: Tolerance,
) -> Mismatch | None:
    """The first difference between an eager and a compiled call: the outputs, then each root of
    declared state, as ``(label, eager snapshot, compiled snapshot)``. Snapshots come from
    ``state.capture``."""
    mismatch = compare_snapshots(expected, actual, "out", tol)
    for label, want, got in state:
        if mismatch is not None:
            break
        mismatch = compare_snapshots(want, got, label, tol)
    return mismatch


def _same_value(a: object, b: object) -> bool:
    try:
        return bool(a == b) or (a != a and b != b)  # NaN equals NaN here
    except Exception:
        return a is b


def _describe(snap: object) -> str:
    from pytest_mlxcompile.state import Node

    if not isinstance(snap, Node):
        return type(snap).__name__
    kind = type(snap.obj).__name__
    if isinstance(snap.obj, dict):
        return f"{kind} with keys {[k for k, _ in snap.items]!r}"
    return f"{kind} of {len(snap.items)}"
