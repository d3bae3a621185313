"""Peak RSS of a suite of big tests, plugin on vs off, in one run (ratios, not asserts).

Run: ``python benchmarks/bench_memory.py [--size-mib 512] [--tests 4] [--probe-mib 32]``

Each case is a small test file run by ``pytest`` once with the plugin off (``-p no:mlxcompile``)
and once with it on (default settings). Each pytest runs in a fresh child of a small measuring
process, which reports ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak RSS of that
one pytest (and of its own children, such as the compiler MLX runs), never of an earlier case.

Cases:

- ``N x SIZE`` (issue 11, Memory): N tests each allocate a SIZE argument and call a compiled
  function once. Goal: on/off <= 1.1x plus one output's worth (the eager shadow's result lives
  while it is compared), i.e. on <= 1.1 * off + SIZE, and flat in N. The issue's figure is
  4 x 1 GiB; the default here is 4 x 512 MiB because this machine is shared (``--size-mib 1024``
  for the issue's case).
- ``probe``: one ``[shapeless]`` test of a 3-D input, the end-of-test shapeless probe's case
  (issue 11: it replays at doubled sizes). Reported as measured; the probe's cap is another change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

BIG_TESTS = """
import mlx.core as mx
import pytest

N = {elements}

@mx.compile
def big(x):
    return x * 2 + 1

@pytest.mark.compiled
@pytest.mark.parametrize("i", range({tests}))
def test_big(i):
    x = mx.ones((N,))
    y = big(x)
    mx.eval(y)
    assert y[0].item() == 3.0
"""

PROBE = """
import mlx.core as mx
import pytest

@mx.compile
def scale(x):
    return x * 2 + 1

@pytest.mark.compiled(modes=["shapeless"])
def test_3d():
    x = mx.ones(({d0}, 256, 256))
    assert scale(x)[0, 0, 0].item() == 3.0
"""

#: Runs pytest in a grandchild and prints its peak RSS (bytes), so each measurement is its own.
MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": proc.returncode, "peak": peak, "tail": proc.stdout[-300:]}))
"""


def peak_rss(test_file: str, plugin: bool, extra: list[str]) -> tuple[int, int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    command += ["-p", "mlxcompile", *extra] if plugin else ["-p", "no:mlxcompile"]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    return int(result["peak"]), int(result["rc"]), str(result["tail"])


def case(name: str, source: str, budget: int, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "test_case.py")
        with open(path, "w") as handle:
            handle.write(textwrap.dedent(source))
        off, off_rc, _ = peak_rss(path, False, extra)
        on, on_rc, tail = peak_rss(path, True, extra)
    goal = 1.1 * off + budget
    verdict = "within goal" if on <= goal else "OVER goal"
    print(
        f"{name:<22} off {off / 2**30:6.2f} GiB  on {on / 2**30:6.2f} GiB  "
        f"ratio {on / off:5.2f}x  goal <= {goal / 2**30:5.2f} GiB ({verdict})"
        + ("" if off_rc == on_rc == 0 else f"  [rc off {off_rc} on {on_rc}: {tail!r}]")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="argument size per test")
    parser.add_argument("--tests", type=int, default=4, help="how many such tests")
    parser.add_argument("--probe-mib", type=int, default=32, help="3-D input of the probe case")
    args = parser.parse_args()
    size = args.size_mib * 2**20
    for tests in sorted({1, args.tests}):
        source = BIG_TESTS.format(elements=size // 4, tests=tests)
        case(f"{tests} x {args.size_mib} MiB", source, size, [])
    probe = PROBE.format(d0=max(args.probe_mib * 2**20 // (4 * 256 * 256), 1))
    case(f"probe 3-D {args.probe_mib} MiB", probe, args.probe_mib * 2**20, ["--mlx-compile-matrix"])


if __name__ == "__main__":
    main()
