"""Peak memory of the shapeless probe: plugin on vs off, as ratios in one run (issue 11).

Run: ``python benchmarks/bench_probe_memory.py [--mib 128]``

Each row runs one small pytest file in a fresh subprocess (peak RSS is per process) and prints
its peak RSS (``ru_maxrss``) and wall time. The test calls a compiled function once on a large
input in the ``[shapeless]`` variant only; the probe then replays it at other sizes after the test
body passed. Rows:

- ``off``: ``-p no:mlxcompile`` (the reference);
- ``probe only``: the plugin with ``--mlx-parity=off``, so the probe is the only check that
  evaluates anything (goal: <= 1.1x of ``off``);
- ``sanitize off``: the plugin without the sanitizer and probe, parity off (the plugin's own
  cost, for scale);
- ``default``: the plugin's defaults, the parity shadow included (goal: <= 1.1x of ``off`` plus
  one output's worth, the shadow's eager output).

Before the cap the probe doubled every dimension > 1 of every argument: the 128 MiB 3-D case took
3.58 GB of peak RSS and 6.2 s of teardown (issue 11).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import textwrap

TEST = """
import mlx.core as mx
import pytest

@mx.compile
def scale(x):
    return x * 2 + 1

@pytest.mark.compiled(modes=["shapeless"])
def test_big():
    x = mx.ones({shape})
    assert scale(x)[{index}].item() == 3.0
"""

RUNNER = (
    "import resource, sys, time, pytest\n"
    "start = time.perf_counter()\n"
    "code = pytest.main(sys.argv[1:])\n"
    "print('BENCH', int(code), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " time.perf_counter() - start)\n"
)

ROWS = (
    ("off", ["-p", "no:mlxcompile"]),
    ("probe only", ["--mlx-compile-matrix", "--mlx-parity=off"]),
    ("sanitize off", ["--mlx-compile-matrix", "--mlx-parity=off", "--mlx-sanitize=off"]),
    ("default", ["--mlx-compile-matrix"]),
)


def run_row(folder: str, args: list[str]) -> tuple[int, float, float]:
    """(exit code, peak RSS in MiB, seconds) of one pytest run in a fresh process."""
    command = [sys.executable, "-c", RUNNER, "-q", "-p", "no:cacheprovider", *args, folder]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"no result from {' '.join(args)}:\n{done.stdout}\n{done.stderr}")
    _, code, kib, seconds = line.split()
    return int(code), int(kib) / 1024, float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="input size in MiB (float32)")
    options = parser.parse_args()
    elements = options.mib * 2**20 // 4
    side = round((elements / 2) ** (1 / 3))
    cases = {
        "3-D": ((2 * side, side, side), "0, 0, 0"),
        "1-D": ((elements,), "0"),
    }
    print(f"input {options.mib} MiB float32, one output of the same size; peak RSS per process")
    for name, (shape, index) in cases.items():
        mib = 4 * math.prod(shape) / 2**20
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "test_big.py")
            with open(path, "w") as file:
                file.write(textwrap.dedent(TEST.format(shape=shape, index=index)))
            results = {row: run_row(folder, args) for row, args in ROWS}
        reference = results["off"][1]
        print(f"\n{name} input {shape} ({mib:.0f} MiB)")
        print(f"  {'row':<14}{'exit':>5}{'peak RSS MiB':>14}{'ratio':>8}{'seconds':>9}")
        for row, (code, peak, seconds) in results.items():
            ratio = peak / reference
            print(f"  {row:<14}{code:>5}{peak:>14.0f}{ratio:>7.2f}x{seconds:>9.2f}")
        default = results["default"][1]
        print(
            f"  probe only / off = {results['probe only'][1] / reference:.3f}x (goal <= 1.1x); "
            f"default / (off + one output) = {default / (reference + mib):.3f}x (goal <= 1.1x)"
        )


if __name__ == "__main__":
    main()
