"""Does the sanitizer's cost grow with the suite? 500 trivial marked tests, three ways, one run.

Run: ``python benchmarks/bench_suite_scale_sanitizer.py [--tests 500] [--repeats 1]``

Writes ``--tests`` trivial ``@pytest.mark.compiled`` tests (each compiles and calls a small
function, so every test traces once) into a temporary directory, with a conftest that times each
test's call phase, and runs pytest on them in a subprocess:

- plugin off (``-p no:mlxcompile``): the tests run eagerly, the floor;
- ``--mlx-sanitize=off``: the plugin with every check but the sanitizer;
- all checks on (the default).

Printed: wall time of each run, the ratio of all-checks-on to plugin-off (goal <= 3x), and the
per-test cost of the first and last 10% of tests with all checks on (goal: flat; the old
sanitizer scanned the whole heap with ``gc.get_objects()`` twice per trace, so each test cost
more than the one before). The runs are interleaved repeat by repeat; the minimum wall time is
kept, and each test's call time is its minimum over the repeats; the first/last figures are
medians, so that a burst of load on a shared host does not pass for growth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CONFTEST = """
import json, os, time
import pytest

_times = []

@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        _times.append(time.perf_counter() - start)

def pytest_sessionfinish(session):
    with open(os.environ["BENCH_TIMES"], "w") as fh:
        json.dump(_times, fh)
"""

TEST = """
import mlx.core as mx
import pytest

W = mx.ones((8, 8))

@pytest.mark.compiled
def test_{n}():
    @mx.compile
    def f(x):
        return mx.tanh(x @ W) + 1

    assert f(mx.ones((2, 8))).shape == (2, 8)
"""


def write_suite(root: Path, tests: int) -> None:
    (root / "conftest.py").write_text(CONFTEST)
    per_file = 50
    for first in range(0, tests, per_file):
        body = "\n".join(
            textwrap.dedent(TEST).format(n=n) for n in range(first, min(first + per_file, tests))
        )
        # the same body everywhere: MLX builds its CPU kernel once (a disk cache), not per test
        (root / f"test_suite_{first:05d}.py").write_text(body)


def run(root: Path, flags: list[str]) -> tuple[float, list[float]]:
    times = root / "times.json"
    env = {**os.environ, "BENCH_TIMES": str(times)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags, str(root)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(flags) or 'default'} failed:\n{done.stdout[-3000:]}")
    return wall, json.loads(times.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="Sanitizer cost as the suite grows")
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    configs = {
        "plugin off": ["-p", "no:mlxcompile"],
        "--mlx-sanitize=off": ["-p", "mlxcompile", "--mlx-sanitize=off"],
        "all checks on": ["-p", "mlxcompile"],
    }
    best: dict[str, tuple[float, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_suite(root, args.tests)
        for _ in range(args.repeats):
            for name, flags in configs.items():
                wall, times = run(root, flags)
                if name in best:
                    times = [min(a, b) for a, b in zip(best[name][1], times, strict=True)]
                    wall = min(wall, best[name][0])
                best[name] = (wall, times)
    print(f"{args.tests} trivial @pytest.mark.compiled tests, min of {args.repeats} run(s)")
    tenth = max(args.tests // 10, 1)
    print(f"  {'':20} {'wall':>9}   {'median/test':>11}   first {tenth}   last {tenth}")
    for name, (wall, times) in best.items():
        middle = statistics.median(times) * 1e3
        first = statistics.median(times[:tenth]) * 1e3
        last = statistics.median(times[-tenth:]) * 1e3
        print(f"  {name:20} {wall:7.2f} s   {middle:8.2f} ms   {first:6.2f} ms   {last:6.2f} ms")
    ratio = best["all checks on"][0] / best["plugin off"][0]
    print(f"all checks on / plugin off: {ratio:.2f}x (goal <= 3x)")
    times = best["all checks on"][1]
    first = statistics.median(times[:tenth]) * 1e3
    last = statistics.median(times[-tenth:]) * 1e3
    print(
        f"per-test cost, all checks on: first {tenth} tests {first:.2f} ms, last {tenth} tests "
        f"{last:.2f} ms ({last / first:.2f}x; goal: flat)"
    )


if __name__ == "__main__":
    main()
