"""Cache-hit call overhead of the compile sanitizer: on vs off, in one run (ratios, not asserts).

Run: ``python benchmarks/bench_sanitize_overhead.py [--calls 500] [--repeats 5]``

Every timed call hits the cache of an already-traced compiled function: the path the sanitizer
promises to keep cheap (no heap walk; per captured array an identity check and a buffer-address
read). Parity is off in the first rows so that the eager shadow, which dominates when on, does
not hide the difference; the last row shows it on for scale. Off and on are interleaved repeat by
repeat (the host is shared) and the minimum is kept; microseconds per call, without and with
``mx.eval`` of the result.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from pytest_mlxcompile import instrument
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.sanitize import Sanitizer

W = mx.random.normal((64, 64))


def gelu(x: Any) -> Any:
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


def uses_global(x: Any) -> Any:
    return gelu(x @ W)


def mlp(depth: int) -> nn.Module:
    return nn.Sequential(*[nn.Linear(64, 64) for _ in range(depth)])


def per_call_us(call: Callable[[], Any], calls: int, evaluate: bool) -> float:
    start = time.perf_counter()
    if evaluate:
        for _ in range(calls):
            mx.eval(call())
    else:
        for _ in range(calls):
            call()
    return (time.perf_counter() - start) / calls * 1e6


def one_repeat(
    fun: Callable[..., Any], x: Any, sanitize: bool, parity: str, calls: int
) -> tuple[float, float]:
    """A fresh variant (as in a test), traced once, then ``calls`` cache hits timed."""
    compiled = mx.compile(fun)  # the patched compile: an InstrumentedFunction
    observers = [Sanitizer(Mode.COMPILED)] if sanitize else []
    run = instrument.VariantRun(Mode.COMPILED, label="bench", parity=parity, observers=observers)
    run.start()
    try:
        mx.eval(compiled(x))
        lazy = per_call_us(lambda: compiled(x), calls, evaluate=False)
        evaluated = per_call_us(lambda: compiled(x), calls, evaluate=True)
        assert run.records[compiled].traces == 1, "a timed call retraced"
    finally:
        run.stop()
    return lazy, evaluated


def measure(
    fun: Callable[..., Any], x: Any, parity: str, args: argparse.Namespace
) -> dict[bool, tuple[float, float]]:
    samples: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for sanitize in (False, True):
            samples[sanitize].append(one_repeat(fun, x, sanitize, parity, args.calls))
    return {
        key: (min(s[0] for s in runs), min(s[1] for s in runs)) for key, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Cache-hit overhead of the compile sanitizer")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    instrument.install(mx)
    x = mx.random.normal((8, 64))
    cases: list[tuple[str, Callable[..., Any], str]] = [
        ("gelu, no captures", gelu, "off"),
        ("x @ W global, 1 captured array", uses_global, "off"),
        ("nn.Module, 8 Linear = 16 captured arrays", mlp(8), "off"),
        ("nn.Module, 32 Linear = 64 captured arrays", mlp(32), "off"),
        ("gelu, parity=all (eager shadow each call)", gelu, "all"),
    ]
    print(f"mlx {mx.__version__}; {mx.default_device()}; {args.calls} calls, min of {args.repeats}")
    print(
        f"{'case (us per cache-hit call)':44} {'off':>7} {'on':>7} {'added':>6} {'ratio':>6}"
        f" | {'+eval off':>9} {'on':>7} {'ratio':>6}"
    )
    for name, fun, parity in cases:
        result = measure(fun, x, parity, args)
        (off, off_eval), (on, on_eval) = result[False], result[True]
        print(
            f"{name:44} {off:7.2f} {on:7.2f} {on - off:6.2f} {on / off:6.2f}"
            f" | {off_eval:9.2f} {on_eval:7.2f} {on_eval / off_eval:6.2f}"
        )


if __name__ == "__main__":
    main()
