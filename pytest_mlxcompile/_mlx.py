"""The one place that imports MLX, lazily; and a hook that runs code when ``mlx.core`` loads.

Importing the plugin must not import MLX: suites that never touch MLX pay nothing, and library
code decorated with ``@mx.compile`` at import time must see our patched ``mx.compile``. So the
patch is applied by an import hook the moment ``mlx.core`` finishes loading, or at once if it is
already loaded.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "MLX_CORE",
    "Graph",
    "core",
    "is_loaded",
    "is_placeholder",
    "known_tracers",
    "on_load",
    "placeholders",
]

MLX_CORE = "mlx.core"


def is_loaded() -> bool:
    return MLX_CORE in sys.modules


def core() -> Any:
    """``mlx.core``, imported on first use. Typed ``Any``: MLX's stubs are not mypy-strict clean."""
    return sys.modules.get(MLX_CORE) or _import_core()


def _import_core() -> Any:
    import mlx.core

    return mlx.core


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, finder: _Finder) -> None:
        self._inner = inner
        self._finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps the real loader, not this one, and the hook goes once it has run:
        # neither may hold our code past its use. At interpreter exit an extension module
        # (mlx.core) and sys.meta_path outlive the first garbage collection; through them our
        # functions, their modules and (pytest rewrites a plugin's modules, whose __loader__
        # holds the config) the whole session would wait for a second full collection, ~0.2 s
        # for a 5,000-test suite (benchmarks/run.py, P4).
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        # every hook that waits for mlx.core runs now, not only the one that found it first
        waiting = [f for f in sys.meta_path if isinstance(f, _Finder)]
        if self._finder not in waiting:
            waiting.append(self._finder)
        for finder in waiting:
            finder.remove()
        errors: list[BaseException] = []
        for finder in waiting:  # one that fails does not keep the others from running
            try:
                finder.then(module)
            except BaseException as exc:  # raised below, after the others ran
                errors.append(exc)
        if errors:
            raise errors[0]


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``mlx.core`` so ``then`` runs right after the module executes; then
    leaves ``sys.meta_path`` (a module loads once)."""

    def __init__(self, then: Callable[[ModuleType], None]) -> None:
        self.then = then
        self._busy = False

    def remove(self) -> None:
        with contextlib.suppress(ValueError):  # gone already: undone, or another copy ran
            sys.meta_path.remove(self)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != MLX_CORE or self._busy:
            return None
        self._busy = True  # find the real spec through the rest of sys.meta_path
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, self)
        return spec


#: Whether mlx.core was already loaded when the first hook was asked for: then functions compiled
#: before that moment got the real mx.compile.
loaded_before_hook: bool | None = None


def on_load(then: Callable[[ModuleType], None]) -> Callable[[], None]:
    """Call ``then(mlx.core)`` now if loaded, else right after it loads. Returns an undo."""
    global loaded_before_hook
    if loaded_before_hook is None:
        loaded_before_hook = is_loaded()
    if is_loaded():
        then(sys.modules[MLX_CORE])
        return lambda: None
    finder = _Finder(then)
    sys.meta_path.insert(0, finder)
    return finder.remove


def random_key_list() -> list[Any]:
    """The calling thread's RNG key list, ``[key]``, behind the ``mx.random.state`` sentinel.

    Since mlx 0.32, ``mx.random.state`` is a read-only sentinel; compile's tree code resolves it
    to the thread's key list. Iterating it iterates that list, and a list iterator's
    ``__reduce__`` hands back the list, which is how we snapshot and restore the key exactly.
    MLX makes a thread's list once and keeps it until the thread ends (python/src/random.cpp,
    a thread_local ``PyKeySequence``), so the main thread's is looked up once.
    """
    global _main_keys
    main = threading.get_ident() == _MAIN_THREAD
    if main and _main_keys is not None and sys.modules.get(MLX_CORE) is _main_keys[0]:
        return _main_keys[1]
    mx = core()
    state = mx.random.state
    if isinstance(state, list):  # before mlx 0.32: a module attribute code may replace
        return state
    reduced = iter(state).__reduce__()
    keys = reduced[1][0] if isinstance(reduced, tuple) and len(reduced) > 1 else None
    if not isinstance(keys, list):  # pragma: no cover - a future MLX layout
        raise RuntimeError(
            "pytest-mlxcompile cannot reach the key list behind mx.random.state in this MLX "
            f"version ({mx.__version__}); please report it"
        )
    if main:
        _main_keys = (mx, keys)
    return keys


_MAIN_THREAD = threading.main_thread().ident
#: (mlx.core, its main thread's key list): the list belongs to that module object
_main_keys: tuple[Any, list[Any]] | None = None


#: MLX's errors for a custom kernel whose backend this build lacks, and what the test needs (probe
#: §11): both constructors exist in every build, but a call raises where the backend is absent.
_MISSING_BACKEND = {
    "[metal_kernel] No Metal back-end": "MLX's Metal backend for a custom kernel, which this "
    "build lacks",
    "[cuda_kernel] No CUDA back-end": "MLX's CUDA backend for a custom kernel, which this "
    "build lacks",
}
#: A CUDA build's error for a custom kernel on a CPU stream (mlx/backend/cuda/custom_kernel.cpp).
#: With the CPU as the default device, that is where the run was told to compute; with a GPU as
#: the default, the code asked for the CPU itself, a mistake on every machine. (Metal's kernel
#: raises it only for an explicit CPU stream: it sends an unspecified one to the GPU.)
_ON_THE_CPU = "[custom_kernel] Only supports the GPU"


def kernel_cannot_run(exc: BaseException, default_device: str) -> str | None:
    """What a custom kernel that raised ``exc`` needs and this run lacks, else None.

    ``default_device`` is ``"cpu"`` or ``"gpu"``: MLX's default device type when it raised."""
    text = str(exc)
    if isinstance(exc, RuntimeError):
        for prefix, needs in _MISSING_BACKEND.items():
            if text.startswith(prefix):
                return needs
    elif isinstance(exc, ValueError) and default_device == "cpu" and text.startswith(_ON_THE_CPU):
        return "a GPU for a custom kernel, and this run's default device is the CPU"
    return None


#: names per ``mx.export_to_dot`` call: nanobind refuses more than 1024 keyword arguments
_NAMES_PER_EXPORT = 900


class Graph:
    """The unevaluated graph behind some arrays, read from ``mx.export_to_dot`` (no evaluation).

    ``mx.export_to_dot`` is the one MLX API that shows an array's structure without evaluating
    it: every array that has a primitive appears as the output of a numbered primitive node,
    every array without one (evaluated data, or a compile tracer) as a source node. Arrays
    passed by keyword keep their names in the text (use lowercase names: MLX names the others
    A, B, ...); MLX names nodes by the C++ array, so two Python objects sharing one array (MLX
    hands out fresh wrappers) get one name, the last given. More names than one call takes are
    exported in chunks, each chunk's unnamed nodes kept apart.
    """

    def __init__(self, named: dict[str, Any]) -> None:
        #: node name -> id of the primitive that produces it (arrays with a primitive only)
        self.producer: dict[str, str] = {}
        #: primitive id -> names of its input nodes
        self.inputs: dict[str, list[str]] = {}
        #: every node name in the text
        self.nodes: set[str] = set()
        items = list(named.items())
        for chunk in range(0, max(len(items), 1), _NAMES_PER_EXPORT):
            self._read(dict(items[chunk : chunk + _NAMES_PER_EXPORT]), f"{chunk}:")

    def _read(self, named: dict[str, Any], scope: str) -> None:
        import io

        buffer = io.StringIO()
        core().export_to_dot(buffer, **named)

        def node(name: str) -> str:
            return name if name in named else scope + name

        for line in buffer.getvalue().splitlines():
            if line.startswith('"'):  # "A" -> 1234: an input of primitive 1234
                name, _, primitive = line[1:].partition('" -> ')
                self.inputs.setdefault(primitive, []).append(node(name))
                self.nodes.add(node(name))
            elif line[:1].isdigit():  # 1234 -> "B": primitive 1234 produces B
                primitive, _, name = line.partition(' -> "')
                self.producer[node(name[:-1])] = primitive
                self.nodes.add(node(name[:-1]))
            elif line.startswith("{") and '"' in line:  # { rank=source; "A"; }
                self.nodes.add(node(line.split('"')[1]))

    def fingerprint(self, name: str) -> str:
        """What an array is now: the primitive producing it, ``leaf``, or ``?`` (renamed)."""
        if name in self.producer:
            return self.producer[name]
        return "leaf" if name in self.nodes else "?"

    def reaches(self, name: str, prefix: str) -> bool:
        """Whether the graph of node ``name`` contains a node whose name starts with ``prefix``."""
        stack, seen = [name], set()
        while stack:
            node = stack.pop()
            if node.startswith(prefix):
                return True
            primitive = self.producer.get(node)
            if primitive is None or node in seen:
                continue
            seen.add(node)
            stack += self.inputs.get(primitive, ())
        return False


def same_node(array: Any, alias: Any) -> bool:
    """Whether ``array`` still holds the array ``alias = mx.stop_gradient(array)`` was made from.

    For an array captured lazily (no buffer address to compare): ``a[i] = v`` or ``a += 1``
    swaps the array inside the Python object, which the alias's input shows without evaluating
    anything; an evaluation keeps the same array, so it is no change.
    """
    graph = Graph({"w": array, "s": alias})
    primitive = graph.producer.get("s")
    return primitive is not None and "w" in graph.inputs.get(primitive, [])


#: Tracers of the compile traces the sanitizer watched in the current test: an array whose graph
#: reaches one of them is a placeholder. Cleared at the start of every test variant.
known_tracers: list[Any] = []

_TRACER = "tracer_"


def _leaf_placeholder(array: Any) -> bool:
    """For an array without a primitive: evaluating it computes nothing, so it is safe."""
    try:
        core().eval(array)
    except RuntimeError as exc:
        return "without a primitive" in str(exc)
    except ValueError:  # a tracer evaluated inside its own transformation: not escaped
        return False
    return False


def placeholders(arrays: Sequence[Any], tracers: Sequence[Any] = ()) -> list[str]:
    """For each array ``"placeholder"``, ``"lazy"`` (it has a primitive) or ``"data"``.

    Never evaluates an array with a primitive.

    A placeholder's graph reaches a compile tracer: an array that has no primitive and no data.
    Probe §2 used ``mx.eval`` in try/except as the test, but that is only safe for an array
    without a primitive: evaluating an array that a trace created computes it and detaches it
    from the compiled graph MLX keeps, and the next call of that graph dereferences the detached
    node (a segmentation fault; repros/mlx_escaped_tracer_eval_segfault.py). So:

    - an array without a primitive (``mx.export_to_dot`` shows a source node): ``mx.eval``
      computes nothing, and its error "without a primitive" says it has no data;
    - an array with a primitive: a placeholder when its graph reaches one of ``tracers`` (or of
      :data:`known_tracers`) or is one of them, read from ``mx.export_to_dot``, never evaluated.
    """
    result = ["data"] * len(arrays)
    if not arrays:
        return result
    shape = Graph({f"a{i}": a for i, a in enumerate(arrays)})
    lazy: list[int] = []
    for index, array in enumerate(arrays):
        if shape.fingerprint(f"a{index}") == "leaf":
            if _leaf_placeholder(array):
                result[index] = "placeholder"
        else:
            result[index] = "lazy"
            lazy.append(index)
    every = [*tracers, *known_tracers]
    if not lazy or not every:
        return result
    half = _NAMES_PER_EXPORT // 2
    for start in range(0, len(lazy), half):
        group = lazy[start : start + half]
        for first in range(0, len(every), half):
            named = {f"a{i}": arrays[i] for i in group}
            named.update({f"{_TRACER}{j}": t for j, t in enumerate(every[first : first + half])})
            graph = Graph(named)
            for i in group:
                name = f"a{i}"
                # not in the text: it is a tracer, named by its later name
                if name not in graph.nodes or graph.reaches(name, _TRACER):
                    result[i] = "placeholder"
    return result


def is_placeholder(array: Any, tracers: Sequence[Any] = (), *, evaluate_lazy: bool = False) -> bool:
    """True for an array from a compile trace that escaped it; see :func:`placeholders`.

    ``evaluate_lazy`` is for an array the program evaluates next anyway (the RNG key: the next
    random call consumes it): then ``mx.eval`` answers for a lazy array too, as in probe §2.
    """
    kind = placeholders([array], tracers)[0]
    if kind == "lazy" and evaluate_lazy:
        return _leaf_placeholder(array)
    return kind == "placeholder"


def refuses_shapeless(exc: BaseException) -> bool:
    """MLX's error for an op whose output shape it cannot infer in a shapeless graph (probe §6)."""
    return isinstance(exc, ValueError) and "cannot infer output shapes" in str(exc)
