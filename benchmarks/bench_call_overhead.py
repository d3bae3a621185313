"""Per-call cost of the instrumented mx.compile, as ratios to plain mx.compile in one run.

    python benchmarks/bench_call_overhead.py

Rows: plain ``mx.compile`` (the patch not installed); the instrumented function outside a test
(pass-through); inside a test variant with parity off (dispatch + trace bookkeeping); with parity
on (an eager shadow and a comparison on every call, by design the expensive mode). Small inputs
make the Python overhead visible; every call is evaluated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from pytest_mlxcompile import instrument
from pytest_mlxcompile.modes import Mode


def gelu(x: Any) -> Any:
    return x * (1 + mx.erf(x / 2**0.5)) / 2


def per_call_us(fn: Callable[[Any], Any], x: Any, calls: int = 2000, repeats: int = 7) -> float:
    for _ in range(50):
        mx.eval(fn(x))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            mx.eval(fn(x))
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    x = mx.random.normal((64,))
    plain = mx.compile(gelu)
    instrument.install(mx)
    try:
        instrumented = mx.compile(gelu)
        rows = [("plain mx.compile", per_call_us(plain, x))]
        rows.append(("instrumented, outside a test", per_call_us(instrumented, x)))
        for parity in ("off", "all"):
            run = instrument.VariantRun(Mode.COMPILED, label="bench", parity=parity)
            run.start()
            try:
                rows.append(
                    (f"in a [compiled] test, parity {parity}", per_call_us(instrumented, x))
                )
            finally:
                run.stop()
    finally:
        instrument.uninstall()
    base = rows[0][1]
    print(f"{'path':40} {'per call':>10} {'ratio':>7}")
    for name, us in rows:
        print(f"{name:40} {us:8.2f}us {us / base:6.2f}x")


if __name__ == "__main__":
    main()
