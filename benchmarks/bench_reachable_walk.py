"""Cost of the sanitizer's reachable-state walk per trace, and what cache hits pay: one run.

Run: ``python benchmarks/bench_reachable_walk.py [--layers 100] [--calls 200] [--repeats 5]``

The model is an ``nn.Sequential`` of ``--layers`` Linear layers (two parameter arrays each: 200
arrays by default) with an Adam optimizer, compiled as a training step with its state declared
(``inputs=state, outputs=state``) — the shape of real code. Printed, in milliseconds:

- one walk: ``_Snapshot.take`` alone for the training step (declared arrays are not compared:
  MLX writes them back), and for ``mx.compile(model)`` with nothing declared (each of the 200
  arrays is compared: the walk plus ``mx.export_to_dot`` of every array);
- a traced call (a fresh variant's first call: trace + compile + both walks) with the sanitizer
  off and on, and the difference, which is the per-trace cost of the checks;
- a cache-hit call, off and on: the walk never runs there, so the ratio stays near 1.

Off and on are interleaved repeat by repeat (the host is shared); the minimum is kept.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from pytest_mlxcompile import instrument
from pytest_mlxcompile.instrument import FunctionRecord
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.sanitize import Sanitizer, _Snapshot


def build(layers: int) -> tuple[Callable[[Any], Any], list[Any]]:
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])
    optimizer = optim.Adam(learning_rate=1e-3)
    mx.eval(model.parameters())
    state = [model.state, optimizer.state]
    loss_and_grad = nn.value_and_grad(model, lambda m, x: (m(x) ** 2).mean())

    def step(x: Any) -> Any:
        loss, grads = loss_and_grad(model, x)
        optimizer.update(model, grads)
        return loss

    compiled = partial(mx.compile, inputs=state, outputs=state)(step)
    mx.eval(compiled(mx.ones((4, 16))))  # the optimizer's state exists from here on
    return compiled, state


def forward_walk(layers: int, repeats: int) -> float:
    """One walk of ``mx.compile(model)`` with nothing declared: every array is fingerprinted."""
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])
    mx.eval(model.parameters())
    compiled = mx.compile(model)
    run = instrument.VariantRun(Mode.COMPILED, label="bench", parity="off", observers=[])
    run.start()
    try:
        mx.eval(compiled(mx.ones((4, 16))))
        record: FunctionRecord = run.records[next(iter(run.records))]
        return min(timed(lambda: _Snapshot.take(record, mx.array)) for _ in range(repeats))
    finally:
        run.stop()


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def one_repeat(
    compiled: Any, state: list[Any], sanitize: bool, calls: int
) -> tuple[float, float, float]:
    """A fresh variant: (first call s, cache-hit s per call, one walk s or 0)."""
    observers = [Sanitizer(Mode.COMPILED)] if sanitize else []
    run = instrument.VariantRun(Mode.COMPILED, label="bench", parity="off", observers=observers)
    run.start()
    x = mx.ones((4, 16))
    try:
        first = timed(lambda: mx.eval(compiled(x), state))
        start = time.perf_counter()
        for _ in range(calls):
            mx.eval(compiled(x), state)
        hit = (time.perf_counter() - start) / calls
        record: FunctionRecord = run.records[next(iter(run.records))]
        assert record.traces == 1, "a timed call retraced"
        walk = timed(lambda: _Snapshot.take(record, mx.array)) if sanitize else 0.0
    finally:
        run.stop()
    return first, hit, walk


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of the reachable-state walk per trace")
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    instrument.install(mx)
    compiled, state = build(args.layers)
    arrays = sum(1 for _, v in tree_flatten(state[0]) if isinstance(v, mx.array))
    samples: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for sanitize in (False, True):
            samples[sanitize].append(one_repeat(compiled, state, sanitize, args.calls))
    off = [min(s[i] for s in samples[False]) for i in range(3)]
    on = [min(s[i] for s in samples[True]) for i in range(3)]
    ms = 1e3
    print(
        f"mlx {mx.__version__}; {mx.default_device()}; {args.layers} Linear layers = {arrays} "
        f"parameter arrays + Adam state; {args.calls} cache hits; min of {args.repeats}"
    )
    print(f"one reachable-state walk (snapshot):      {on[2] * ms:8.2f} ms")
    forward = forward_walk(args.layers, args.repeats)
    print(f"one walk, mx.compile(model), undeclared:  {forward * ms:8.2f} ms (arrays compared)")
    print(
        f"traced call  off {off[0] * ms:8.2f} ms   on {on[0] * ms:8.2f} ms   "
        f"added {(on[0] - off[0]) * ms:7.2f} ms per trace"
    )
    print(
        f"cache hit    off {off[1] * ms:8.3f} ms   on {on[1] * ms:8.3f} ms   "
        f"ratio {on[1] / off[1]:5.2f} (the walk never runs on a cache hit)"
    )


if __name__ == "__main__":
    main()
