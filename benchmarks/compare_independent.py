"""Check the plugin's speedup against an independent timing of the same function, in one run.

    python benchmarks/compare_independent.py [--size N] [--budget SECONDS] [--repeats K]

An elementwise chain (eager: one kernel per op; compiled: one fused kernel) is timed K times by
this script, with its own plain loop that shares no code with the plugin, alternating with K
pytest runs that time it with ``--mlx-timings`` (one test, its JSON report read back). Both sides
report the median of their speedups (eager median / compiled median), and the script prints
both and their relative difference. Exit status 1 when they differ by more than 10%.
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

CHAIN = textwrap.dedent(
    """
    import mlx.core as mx

    def chain(x):
        # memory-bound: eager writes and reads the whole array once per op
        for _ in range(6):
            x = x * 1.5 + 0.25
            x = mx.abs(x - 0.5) * 0.5
        return x
    """
)

TEST = textwrap.dedent(
    """
    import mlx.core as mx
    import pytest
    from chain import chain

    SIZE = {size}
    fused = mx.compile(chain)

    @pytest.mark.compiled(timings=True, modes=["compiled"], parity="off")
    def test_chain():
        fused(mx.random.uniform(shape=(SIZE,)))
    """
)


def independent_speedup(size: int, seconds: float) -> tuple[float, float, float]:
    """(eager median, compiled median, speedup) from interleaved rounds of a plain loop."""
    import mlx.core as mx

    namespace: dict[str, object] = {}
    exec(CHAIN, namespace)
    chain = namespace["chain"]
    compiled = mx.compile(chain)  # type: ignore[arg-type]
    x = mx.random.uniform(shape=(size,))
    mx.eval(x)

    def one_round(fn: object, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            mx.eval(fn(x))  # type: ignore[operator]
        mx.synchronize()
        return (time.perf_counter() - start) / n

    for fn in (chain, compiled, chain, compiled):  # warm-up and JIT
        one_round(fn, 2)
    n = max(1, int(2e-4 / one_round(compiled, 1)))
    eager: list[float] = []
    fused: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(eager) < 5:
        eager.append(one_round(chain, n))
        fused.append(one_round(compiled, n))
    e, c = statistics.median(eager), statistics.median(fused)
    return e, c, e / c


def plugin_speedup(size: int, budget: float, folder: Path) -> tuple[float, float, float]:
    (folder / "chain.py").write_text(CHAIN)
    (folder / "test_chain.py").write_text(TEST.format(size=size))
    report = folder / "report.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "pytest_mlxcompile.plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        f"--mlx-timings-budget={budget}",
        f"--mlx-report-json={report}",
        str(folder / "test_chain.py"),
    ]
    # Load the plugin by module name so this also runs where it is on PYTHONPATH, not installed.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    subprocess.run(command, cwd=folder, check=True, capture_output=True, env=env)
    (test,) = json.loads(report.read_text())["tests"]
    (timing,) = test["timings"]
    e = timing["modes"]["eager"]["stats"]["median"]
    c = timing["modes"]["compiled"]["stats"]["median"]
    return e, c, timing["speedup"]["compiled"]["value"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    mine, plugin = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.repeats):
            mine.append(independent_speedup(options.size, options.budget))
            plugin.append(plugin_speedup(options.size, options.budget, Path(tmp)))
    for label, rows in (("independent", mine), ("plugin", plugin)):
        for e, c, s in rows:
            print(f"{label:12} eager {e * 1e3:8.3f} ms  compiled {c * 1e3:8.3f} ms  {s:.3f}x")
    ours = statistics.median(s for _, _, s in mine)
    theirs = statistics.median(s for _, _, s in plugin)
    difference = abs(theirs - ours) / ours
    print(
        f"speedup: independent {ours:.3f}x, plugin {theirs:.3f}x, "
        f"difference {difference:.1%} (size {options.size} float32, {options.repeats} repeats)"
    )
    return 0 if difference <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
