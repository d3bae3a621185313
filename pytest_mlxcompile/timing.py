"""Timing engine: one function on fixed inputs in each mode, with statistics, memory and fusion.

MLX is lazy and asynchronous, so every timed call is followed by ``mx.eval`` of its outputs (and of
declared state) and every round ends with ``mx.synchronize()``, inside the timed region: without
them we would time graph construction only. Rounds of the modes are interleaved, so a change in
machine load (other processes share the cores) hits every mode alike and the speedup stays honest.

The first call of each compiled mode goes to a wrapper compiled just now: MLX keys its compile
cache by the identity of the function object, so only a fresh object pays for trace, fusion and
kernel build (or kernel load: the CPU backend keeps built kernels in-process and on disk under
``$TMPDIR/mlx``, so "compile cost" after the test's own calls or an earlier run is the warm cost).
"""

from __future__ import annotations

import math
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from pytest_mlxcompile import _mlx, instrument
from pytest_mlxcompile.modes import Mode, parse_modes
from pytest_mlxcompile.state import capture, restore

__all__ = [
    "AT_ROOFLINE",
    "PAYOFF_CALLS",
    "ROOFLINE_METHOD",
    "Benchmark",
    "Budget",
    "FunctionTiming",
    "LastCalls",
    "ModeTiming",
    "Roofline",
    "Speedup",
    "Stats",
    "Target",
    "auto_modes",
    "bound_of",
    "graph_labels",
    "measure",
    "measured_roofline",
    "roofline",
    "round_overhead",
]

#: A compile that needs more calls than this to pay for itself is flagged: most functions in a
#: test suite, and many in a program, are not called that often with one signature.
PAYOFF_CALLS = 1000

#: Primitives that make a view, not a kernel launch (reference/mlx-compile-probe.md §7).
_VIEWS = frozenset(
    {"Broadcast", "BroadcastAxes", "Reshape", "Squeeze", "ExpandDims", "Transpose", "AsStrided"}
)
_LABEL = re.compile(r'label\s*="([^"]*)"')
#: Primitives whose work grows faster than the bytes they move (matrix products, convolutions):
#: a graph with one of them is called compute-bound and gets no roofline percentage.
_COMPUTE_OPS = frozenset(
    {
        "Matmul",
        "AddMM",
        "BlockMaskedMM",
        "GatherMM",
        "SegmentedMM",
        "QuantizedMatmul",
        "GatherQMM",
        "Convolution",
        "ScaledDotProductAttention",
    }
)
#: A memory-bound call at this fraction of the copy roofline or above has nothing left to gain
#: from fusion; below ``_FAR_BELOW`` something other than streaming memory dominates it.
AT_ROOFLINE = 0.7
_FAR_BELOW = 0.25
#: Calls moving fewer bytes than this are never flagged far below the roofline
_STREAMING_BYTES = 16 * 2**20
#: Each round lasts at least this many times the cost of timing and synchronizing it (1%).
_OVERHEAD_FACTOR = 100


@dataclass(frozen=True)
class Budget:
    #: steady-state seconds for all modes of one function together
    max_time: float = 1.0
    #: a round lasts at least this long, and at least 100x what timing and synchronizing an idle
    #: device costs (:func:`round_overhead`), so that fixed cost stays below 1% of the median
    min_round: float = 5e-3
    #: ... but holds at most this many calls. Measured on an H200 (docs/performance.md): rounds
    #: of one call charge the end-of-round queue drain to every call (a 0.4 ms compiled GELU read
    #: 10% slow), and rounds of hundreds of calls let freed buffers pile up until the sync (a
    #: 55 us one read 17% slow); 50 calls, like an independent loop's blocks, read true.
    max_iterations: int = 50
    min_rounds: int = 3
    max_rounds: int = 1000
    warmup: int = 2


@dataclass(frozen=True)
class Stats:
    """Seconds per call over rounds; each round is ``iterations`` calls, timed together."""

    min: float
    median: float
    q1: float
    q3: float
    rounds: int
    iterations: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def from_samples(cls, samples: list[float], iterations: int) -> Stats:
        ordered = sorted(samples)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(ordered[0], statistics.median(ordered), q1, q3, len(ordered), iterations)

    def to_json(self) -> dict[str, Any]:
        return {
            "min": self.min,
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "iqr": self.iqr,
            "rounds": self.rounds,
            "iterations": self.iterations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        return cls(
            data["min"], data["median"], data["q1"], data["q3"], data["rounds"], data["iterations"]
        )


@dataclass
class ModeTiming:
    stats: Stats | None = None
    #: seconds of the first call of a fresh wrapper: trace + fusion + kernel build/load + run
    first_call: float | None = None
    #: bytes allocated above the live baseline while computing one call
    peak_memory: int | None = None
    #: primitive nodes in the unevaluated output graph, all of them / those that are not views
    nodes: int | None = None
    kernels: int | None = None
    #: why this mode has no timing (e.g. not shapeless-capable)
    error: str | None = None
    #: quartiles of eager round / this mode's round, over rounds run back to back: pairing
    #: cancels the machine's load drift, so this is the speedup's spread
    paired_ratio: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stats": None if self.stats is None else self.stats.to_json(),
            "first_call": self.first_call,
            "peak_memory": self.peak_memory,
            "nodes": self.nodes,
            "kernels": self.kernels,
            "error": self.error,
            "paired_ratio": None
            if self.paired_ratio is None
            else {"q1": self.paired_ratio[0], "q3": self.paired_ratio[1]},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModeTiming:
        stats, paired = data.get("stats"), data.get("paired_ratio")
        return cls(
            stats=None if stats is None else Stats.from_json(stats),
            first_call=data.get("first_call"),
            peak_memory=data.get("peak_memory"),
            nodes=data.get("nodes"),
            kernels=data.get("kernels"),
            error=data.get("error"),
            paired_ratio=None if paired is None else (paired["q1"], paired["q3"]),
        )


@dataclass(frozen=True)
class Speedup:
    """Eager median / mode median, with a range: the quartiles of the paired round ratios."""

    value: float
    low: float
    high: float

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:.2f}x [{self.low:.2f}-{self.high:.2f}]"

    @property
    def beyond_noise(self) -> bool:
        """True when the whole range is on one side of 1x."""
        return self.low > 1 or self.high < 1

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class FunctionTiming:
    """What ``mlx_benchmark`` returns and the table shows: one function, every mode timed."""

    function: str
    where: str
    modes: dict[Mode, ModeTiming]
    bytes_in: int = 0
    bytes_out: int = 0
    #: "auto" (--mlx-timings / timings=True replayed the test's last call) or "benchmark"
    source: str = "auto"
    #: timed while other pytest-xdist workers ran on the same machine
    contended: bool = False
    #: bytes/s of a compiled copy on this device (:func:`roofline`); None when not measured
    roofline: float | None = None
    #: "memory", "compute" (the graph has a matrix product or convolution) or "unknown"
    bound: str = "unknown"

    def __getitem__(self, mode: Mode | str) -> ModeTiming:
        return self.modes[Mode(mode)]

    def median(self, mode: Mode | str) -> float | None:
        timing = self.modes.get(Mode(mode))
        return None if timing is None or timing.stats is None else timing.stats.median

    def speedup(self, mode: Mode | str = Mode.COMPILED) -> Speedup | None:
        """Eager median / ``mode`` median; None when either was not timed."""
        eager, other = self.modes.get(Mode.EAGER), self.modes.get(Mode(mode))
        if eager is None or other is None or eager.stats is None or other.stats is None:
            return None
        e, o = eager.stats, other.stats
        value = e.median / o.median
        low, high = other.paired_ratio or (e.q1 / o.q3, e.q3 / o.q1)
        return Speedup(value, min(low, value), max(high, value))

    def compile_cost(self, mode: Mode | str = Mode.COMPILED) -> float | None:
        """Seconds the first call took beyond a steady-state call."""
        timing = self.modes.get(Mode(mode))
        if timing is None or timing.first_call is None or timing.stats is None:
            return None
        return max(timing.first_call - timing.stats.median, 0.0)

    def break_even(self, mode: Mode | str = Mode.COMPILED) -> float | None:
        """Calls until the compile cost is recovered; ``inf`` when a call saves nothing."""
        cost, eager, other = self.compile_cost(mode), self.median(Mode.EAGER), self.median(mode)
        if cost is None or eager is None or other is None:
            return None
        saved = eager - other
        return math.inf if saved <= 0 else cost / saved

    def memory_ratio(self, mode: Mode | str = Mode.COMPILED) -> float | None:
        eager, other = self.modes.get(Mode.EAGER), self.modes.get(Mode(mode))
        if eager is None or other is None or not eager.peak_memory or other.peak_memory is None:
            return None
        return other.peak_memory / eager.peak_memory

    def bandwidth(self, mode: Mode | str = Mode.COMPILED) -> float | None:
        """Bytes in + out per second of a steady-state call."""
        median = self.median(mode)
        return None if not median else (self.bytes_in + self.bytes_out) / median

    def roofline_fraction(self) -> float | None:
        """Compiled bandwidth / the device's copy bandwidth; None unless memory-bound."""
        achieved = self.bandwidth(Mode.COMPILED)
        if self.bound != "memory" or achieved is None or not self.roofline:
            return None
        return achieved / self.roofline

    def achieved(self) -> dict[str, Any]:
        """The JSON report's ``achieved`` entry: compiled bandwidth against the roofline."""
        return {
            "bytes": self.bytes_in + self.bytes_out,
            "bandwidth": self.bandwidth(Mode.COMPILED),
            "roofline": self.roofline,
            "fraction": self.roofline_fraction(),
            "bound": self.bound,
        }

    def flags(self) -> list[str]:
        """What a reader should look at: compiled slower than eager beyond noise, or no payoff;
        and where a memory-bound call stands against the device's copy bandwidth."""
        speedup, calls = self.speedup(Mode.COMPILED), self.break_even(Mode.COMPILED)
        flags: list[str] = []
        if speedup is not None:
            if speedup.high < 1:
                flags.append("slower than eager")
            elif speedup.low <= 1:
                flags.append("no gain beyond noise")
            elif calls is not None and calls > PAYOFF_CALLS:
                flags.append(f"pays off after >{PAYOFF_CALLS} calls")
        fraction = self.roofline_fraction()
        if fraction is not None and fraction >= AT_ROOFLINE:
            flags.append("memory-bound, at the roofline")
        elif (
            fraction is not None
            and fraction < _FAR_BELOW
            and self.bytes_in + self.bytes_out >= _STREAMING_BYTES
        ):
            # a call this size should stream memory; smaller ones are all per-call overhead,
            # which the column's percentage shows without a flag
            flags.append("far below the roofline")
        return flags

    def to_json(self) -> dict[str, Any]:
        compiled_modes = [m for m in self.modes if m.compiles]
        return {
            "function": self.function,
            "where": self.where,
            "source": self.source,
            "contended": self.contended,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "modes": {str(m): t.to_json() for m, t in self.modes.items()},
            "speedup": {
                str(m): s.to_json() for m in compiled_modes if (s := self.speedup(m)) is not None
            },
            "compile_cost": {str(m): self.compile_cost(m) for m in compiled_modes},
            "break_even_calls": {str(m): _finite(self.break_even(m)) for m in compiled_modes},
            "bandwidth": {str(m): self.bandwidth(m) for m in self.modes},
            "achieved": self.achieved(),
            "flags": self.flags(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionTiming:
        return cls(
            function=data["function"],
            where=data["where"],
            modes={Mode(m): ModeTiming.from_json(t) for m, t in data["modes"].items()},
            bytes_in=data.get("bytes_in", 0),
            bytes_out=data.get("bytes_out", 0),
            source=data.get("source", "auto"),
            contended=data.get("contended", False),
            roofline=(data.get("achieved") or {}).get("roofline"),
            bound=(data.get("achieved") or {}).get("bound", "unknown"),
        )


def _finite(value: float | None) -> float | None:
    # JSON has no infinity: "never pays off" is null with the flag saying why.
    return None if value is None or math.isinf(value) else value


@dataclass(frozen=True)
class Target:
    """A function as ``mx.compile`` saw it: its declared state and shapelessness."""

    fun: Callable[..., Any]
    name: str
    where: str
    inputs: object | None = None
    outputs: object | None = None
    shapeless: bool = False

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Target:
        if isinstance(fn, instrument.InstrumentedFunction):
            return cls(fn.fun, fn.name, fn.where, fn.inputs, fn.outputs, fn.shapeless)
        name, where = instrument.describe(fn)
        return cls(fn, name, where)

    def state_roots(self) -> list[object]:
        roots = [r for r in (self.inputs, self.outputs) if r is not None]
        return [*roots, _mlx.random_key_list()]


def _arrays(tree: object) -> Iterator[Any]:
    mx = _mlx.core()
    if isinstance(tree, mx.array):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _arrays(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _arrays(value)


def _nbytes(tree: object) -> int:
    return sum(int(a.nbytes) for a in _arrays(tree))


def graph_labels(outputs: Iterable[Any]) -> list[str]:
    """The primitive of every node in the graph of unevaluated ``outputs`` (``"Add"``, ...)."""
    import io

    mx = _mlx.core()
    arrays = list(outputs)
    if not arrays:
        return []
    buffer = io.StringIO()
    mx.export_to_dot(buffer, *arrays)
    return _LABEL.findall(buffer.getvalue())


def count_nodes(outputs: Iterable[Any]) -> tuple[int, int]:
    """(primitive nodes, nodes that are not views) in the graph of unevaluated ``outputs``."""
    labels = graph_labels(outputs)
    return len(labels), sum(1 for label in labels if label not in _VIEWS)


def bound_of(labels: Iterable[str]) -> str:
    """ "compute" for a graph with a matrix product or convolution, else "memory"."""
    labels = list(labels)
    if not labels:
        return "unknown"
    return "compute" if any(label in _COMPUTE_OPS for label in labels) else "memory"


_overhead: dict[str, float] = {}


def round_overhead() -> float:
    """Seconds one round costs beyond its calls (the clock and ``mx.synchronize``), measured
    once per process and device: rounds are calibrated to last 100 times longer."""
    mx = _mlx.core()
    key = str(mx.default_device())
    if key not in _overhead:
        samples = []
        for _ in range(25):
            start = time.perf_counter()
            mx.synchronize()
            samples.append(time.perf_counter() - start)
        _overhead[key] = statistics.median(samples)
    return _overhead[key]


@dataclass(frozen=True)
class Roofline:
    """The device's streaming bandwidth: what a compiled copy of a large array achieves."""

    bandwidth: float | None
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "method": self.method}


_rooflines: dict[str, Roofline] = {}
ROOFLINE_METHOD = "compiled x + 1 over {mib} MiB float32 (read + write), median of rounds"


def measured_roofline() -> Roofline | None:
    """The roofline this process measured on the default device, if it has (no measuring)."""
    if not _mlx.is_loaded():
        return None
    return _rooflines.get(str(_mlx.core().default_device()))


def roofline() -> Roofline:
    """Measured once per process and device, when the first function is timed."""
    mx = _mlx.core()
    device = mx.default_device()
    key = str(device)
    if key not in _rooflines:
        _rooflines[key] = _measure_roofline(mx, device.type == mx.gpu)
    return _rooflines[key]


def _measure_roofline(mx: Any, gpu: bool) -> Roofline:
    # Large enough to stream from memory, not cache (an H200's L2 is 50 MB), small enough to be
    # quick and to fit beside a test's own arrays.
    mib = 512 if gpu else 64
    elements = mib * 2**20 // 4
    patches = instrument.installed()
    real_compile = patches.compile if patches is not None else mx.compile
    copy = real_compile(lambda a: a + 1)
    method = ROOFLINE_METHOD.format(mib=mib)
    try:
        x = mx.zeros((elements,), dtype=mx.float32)
        mx.eval(x)
        for _ in range(2):
            mx.eval(copy(x))
        mx.synchronize()
        start = time.perf_counter()
        mx.eval(copy(x))
        mx.synchronize()
        per_call = time.perf_counter() - start
        n = max(1, math.ceil(_OVERHEAD_FACTOR * round_overhead() / max(per_call, 1e-9)))
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(n):
                mx.eval(copy(x))
            mx.synchronize()
            samples.append((time.perf_counter() - start) / n)
        del x
        return Roofline(2 * elements * 4 / statistics.median(samples), method)
    except Exception as exc:  # no memory for it: the column says "-", the report says why
        return Roofline(None, f"{method}: failed: {type(exc).__name__}: {exc}")
    finally:
        mx.clear_cache()


class _Mode:
    """One mode's callable and its measurements while :func:`measure` runs."""

    def __init__(self, mode: Mode, target: Target, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.mode = mode
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.timing = ModeTiming()
        self.samples: list[float] = []
        self.iterations = 1
        self.labels: list[str] = []
        self.call: Callable[[], Any] = self._fresh()

    def _fresh(self) -> Callable[[], Any]:
        target, args, kwargs = self.target, self.args, self.kwargs
        if self.mode is Mode.EAGER:
            fun = target.fun
        else:
            patches = instrument.installed()
            real_compile = patches.compile if patches is not None else _mlx.core().compile
            # A new function object: a new MLX cache entry, so the first call really compiles.
            fun = real_compile(
                lambda *a, **k: target.fun(*a, **k),
                target.inputs,
                target.outputs,
                target.shapeless or self.mode is Mode.SHAPELESS,
            )
        return lambda: fun(*args, **kwargs)

    def evaluated(self) -> Any:
        """One call, its outputs and declared state evaluated: what a user's program waits for."""
        mx = _mlx.core()
        with instrument.detached(self.mode):
            out = self.call()
        mx.eval(out, self.target.state_roots())
        return out


def _round(mode: _Mode) -> float:
    mx = _mlx.core()
    state = mode.target.state_roots()
    call, n = mode.call, mode.iterations
    with instrument.detached(mode.mode):
        start = time.perf_counter()
        for _ in range(n):
            mx.eval(call(), state)
        mx.synchronize()
        return (time.perf_counter() - start) / n


def _timed_call(mode: _Mode) -> tuple[Any, float]:
    mx = _mlx.core()
    mx.synchronize()
    start = time.perf_counter()
    out = mode.evaluated()
    mx.synchronize()
    return out, time.perf_counter() - start


def _prepare(mode: _Mode, budget: Budget, snapshot: list[object]) -> Any:
    """First call, warm-up, graph size, peak memory and calibration; returns one call's output."""
    for snap in snapshot:
        restore(snap)
    out, per_call = _timed_call(mode)
    if mode.mode.compiles:
        mode.timing.first_call = per_call
    for _ in range(budget.warmup):
        if per_call > budget.max_time / 20:
            break  # a slow function is warm after one call; more would eat the budget
        out, per_call = _timed_call(mode)
    del out
    # This call is never evaluated: put back the state it wrote, or the next call evaluates it.
    saved = [capture(root) for root in mode.target.state_roots()]
    with instrument.detached(mode.mode):
        lazy = mode.call()
    mode.labels = graph_labels(_arrays(lazy))
    mode.timing.nodes = len(mode.labels)
    mode.timing.kernels = sum(1 for label in mode.labels if label not in _VIEWS)
    del lazy
    for snap in saved:
        restore(snap)
    mode.timing.peak_memory, out = _peak_memory(mode)
    _calibrate(mode, budget, per_call)
    return out


def _calibrate(mode: _Mode, budget: Budget, per_call: float) -> None:
    """Iterations per round, so that a round lasts ``target`` seconds (pytest-benchmark style).

    The clock and ``mx.synchronize`` are paid once per round: a round 100x longer than they take
    keeps them below 1% of the median. Each call is still evaluated on its own. The first guess
    comes from a lone call (which pays that cost in full), then real rounds correct it.
    """
    target = max(budget.min_round, _OVERHEAD_FACTOR * round_overhead())
    # a round must leave room for several rounds of every mode within the budget
    target = min(target, budget.max_time / 30)
    cap = budget.max_iterations
    mode.iterations = min(max(1, math.ceil(target / max(per_call, 1e-9))), cap)
    for _ in range(4):
        took = _round(mode) * mode.iterations
        if took >= target * 0.8 or mode.iterations >= cap:
            break
        mode.iterations = min(
            max(mode.iterations + 1, math.ceil(mode.iterations * target / max(took, 1e-9))), cap
        )


def _peak_memory(mode: _Mode) -> tuple[int, Any]:
    """reference/mlx-compile-probe.md §9: clear the cache, reset the peak, run, read the peak."""
    mx = _mlx.core()
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    baseline = mx.get_active_memory()
    out = mode.evaluated()
    mx.synchronize()
    return max(int(mx.get_peak_memory() - baseline), 0), out


def _why_not(mode: Mode, target: Target, exc: Exception) -> str:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if mode is Mode.SHAPELESS and _mlx.refuses_shapeless(exc):
        return f"not shapeless-capable: {message}"
    return f"{type(exc).__name__}: {message}"


def measure(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    modes: Iterable[Mode],
    budget: Budget,
    *,
    source: str = "auto",
    contended: bool = False,
) -> FunctionTiming:
    """Time ``fn(*args, **kwargs)`` in each mode; declared state is put back afterwards."""
    mx = _mlx.core()
    target = Target.of(fn)
    mx.eval(list(_arrays((args, kwargs))))  # time the function, not the making of its inputs
    snapshot = [capture(root) for root in target.state_roots()]
    result = FunctionTiming(target.name, target.where, {}, source=source, contended=contended)
    ready: list[_Mode] = []
    try:
        for mode in dict.fromkeys((Mode.EAGER, *modes)):
            timer = _Mode(mode, target, args, kwargs)
            result.modes[mode] = timer.timing
            try:
                out = _prepare(timer, budget, snapshot)
            except Exception as exc:  # a mode that cannot run is reported, not raised
                _give_up(timer, exc, snapshot)
                continue
            result.bytes_in = _nbytes((args, kwargs))
            result.bytes_out = _nbytes(out)
            if mode is Mode.EAGER:
                result.bound = bound_of(timer.labels)
            ready.append(timer)
        _interleave(ready, budget, snapshot)
    finally:
        for snap in snapshot:
            restore(snap)
    for timer in ready:
        if timer.samples:
            timer.timing.stats = Stats.from_samples(timer.samples, timer.iterations)
    _pair(ready)
    if result.median(Mode.COMPILED):
        result.roofline = roofline().bandwidth
    return result


def _pair(timers: list[_Mode]) -> None:
    eager = next((t for t in timers if t.mode is Mode.EAGER and t.samples), None)
    for timer in timers:
        if eager is None or timer is eager or not timer.samples:
            continue
        ratios = sorted(e / o for e, o in zip(eager.samples, timer.samples, strict=False))
        stats = Stats.from_samples(ratios, 1)
        timer.timing.paired_ratio = (stats.q1, stats.q3)


def _give_up(timer: _Mode, exc: Exception, snapshot: list[object]) -> None:
    timer.timing.error = _why_not(timer.mode, timer.target, exc)
    timer.samples.clear()
    # A failed trace leaves placeholders in declared state; the other modes need real arrays.
    for snap in snapshot:
        restore(snap)


def _interleave(timers: list[_Mode], budget: Budget, snapshot: list[object]) -> None:
    """Rounds in turn until the budget is spent; at least ``min_rounds`` unless far over it."""
    start = time.perf_counter()
    while timers:
        elapsed = time.perf_counter() - start
        rounds = min(len(t.samples) for t in timers)
        if rounds >= budget.max_rounds or elapsed > 3 * budget.max_time:
            break
        if elapsed > budget.max_time and rounds >= budget.min_rounds:
            break
        for timer in list(timers):
            try:
                timer.samples.append(_round(timer))
            except Exception as exc:
                _give_up(timer, exc, snapshot)
                timers.remove(timer)


class LastCalls(instrument.Observer):
    """Remembers each function's last outermost call in a test variant, to replay it for timing."""

    def __init__(self, modes: Iterable[Mode], budget: Budget) -> None:
        self.modes = tuple(modes)
        self.budget = budget
        self.calls: dict[instrument.InstrumentedFunction, tuple[tuple[Any, ...], dict[str, Any]]]
        self.calls = {}

    def after_call(
        self,
        record: instrument.FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        self.calls[record.fn] = (args, dict(kwargs))

    def measure(self, *, contended: bool) -> list[FunctionTiming]:
        """Replay every function's last call in each mode; the test's budget is shared."""
        if not self.calls:
            return []
        share = replace(self.budget, max_time=self.budget.max_time / len(self.calls))
        timings = []
        for fn, (args, kwargs) in self.calls.items():
            try:
                timings.append(measure(fn, args, kwargs, self.modes, share, contended=contended))
            except Exception as exc:  # timing is a report: it must not fail the user's test
                warnings.warn(
                    pytest.PytestWarning(
                        f"pytest-mlxcompile could not time {fn.name} ({fn.where}): "
                        f"{type(exc).__name__}: {exc}"
                    ),
                    stacklevel=1,
                )
        return timings


def auto_modes(
    mode: Mode,
    marker_timings: bool | None,
    marker_modes: tuple[Mode, ...] | None,
    settings_modes: tuple[Mode, ...],
    *,
    timings_on: bool,
    in_matrix: bool,
) -> tuple[Mode, ...] | None:
    """The modes to time after this test variant, or None when this variant times nothing.

    A test is timed once, whatever the matrix: in its [compiled] variant, or in its [shapeless]
    one when compiled is not among its modes. Eager variants call no observer, and timing every
    variant would time the same function three times.
    """
    wanted = marker_timings if marker_timings is not None else timings_on
    if not wanted or not mode.compiles:
        return None
    modes = tuple(m for m in settings_modes if marker_modes is None or m in marker_modes)
    if in_matrix and mode is Mode.SHAPELESS and Mode.COMPILED in modes:
        return None
    return tuple(m for m in (Mode.EAGER, Mode.COMPILED, Mode.SHAPELESS) if m in {*modes, mode})


class Benchmark:
    """The ``mlx_benchmark`` fixture: ``result = mlx_benchmark(fn, *args, modes=..., **kwargs)``."""

    def __init__(self, budget: Budget, *, contended: bool, sink: list[FunctionTiming]) -> None:
        self._budget = budget
        self._contended = contended
        self._sink = sink

    def __call__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        modes: Iterable[Mode | str] = (Mode.EAGER, Mode.COMPILED),
        **kwargs: Any,
    ) -> FunctionTiming:
        """Time ``fn(*args, **kwargs)`` eagerly and in each of ``modes`` on the same inputs.

        ``fn`` may be plain or returned by ``mx.compile`` (its declared state and shapeless flag
        are honoured). The result is also shown in the timings table and the JSON report.
        """
        __tracebackhide__ = True  # the error is the caller's: point at their line
        if not callable(fn):
            raise TypeError(
                f"mlx_benchmark: fn must be callable, got {type(fn).__name__} {_short(fn)}"
            )
        chosen = parse_modes(list(map(str, modes)), source="mlx_benchmark(modes=...)")
        result = measure(
            fn, args, kwargs, chosen, self._budget, source="benchmark", contended=self._contended
        )
        self._sink.append(result)
        return result


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
