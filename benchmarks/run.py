"""What pytest-mlxcompile costs, and how true its timings are: one command, one markdown table.

    python benchmarks/run.py [--only P1,P2] [--repeats N] [--out DIR] [--device cpu|gpu]

Rows, each measured side by side in this one run (ratios, never absolute thresholds):

P1  hot path: the per-call cost of an instrumented compiled call of a tiny lazy function,
    paired in blocks with the same function under the real ``mx.compile`` in the same pytest
    process: in a ``[compiled]`` test with parity and the sanitizer off (goal <= 1.25x), outside
    member tests (goal <= 1.05x), and what each check adds per call.
P2  timing fidelity: ``--mlx-timings`` against an independent reference loop (warm-up,
    ``mx.eval`` per call, median of 7 blocks of 50 calls, one ``mx.synchronize`` per block) run in
    the same pytest process just before and just after the plugin times the same call (their
    mean); eager median, compiled median and speedup within 5%, medians over at least 9
    repeats on a GPU and 31 on a CPU, whose noise needs them.
P3  suite cost: ``examples/`` under ``--mlx-compile-matrix`` with every check on, against checks
    off (``--mlx-parity=off --mlx-sanitize=off``), kernels warm (goal <= 1.5x).
P4  scale: 5,000 trivial tests, half marked ``compiled``, plugin loaded against
    ``-p no:mlxcompile`` (goal <= 1.05x): the pytest process's CPU time (wall time also shown),
    median ratio of at least 21 alternated pairs (7 with ``--quick``). Where valgrind is
    installed, P4i also counts the instructions of each side: a figure the load of a shared
    machine does not move. One
    count moves by up to ~0.4% with the process's memory layout (the size of its environment
    shifts its stack, and with it what hashes by address), so each side is counted in three
    layouts (one with ``--quick``) and the means are compared.

Child processes keep compiled modules (``__pycache__``) as Python does by default and as a pip
install leaves a package, even where ``PYTHONDONTWRITEBYTECODE`` is set.

Figures are medians over ``--repeats`` alternated repetitions; P2 and P4 print an interval for
each median they judge by (sign-test order statistics, see ``median_interval``). A machine under
load (the load average above 3/4 of its cores) is labelled "contended": read those ratios with
that in mind.
``--out DIR`` also writes ``benchmarks.md`` and ``benchmarks.json`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

Row = dict[str, str]


# the environment --------------------------------------------------------------------------
def plugin_installed() -> bool:
    """Whether pytest loads the plugin by its entry point (else we pass ``-p`` ourselves)."""
    return any(ep.name == "mlxcompile" for ep in metadata.entry_points(group="pytest11"))


def plugin_args(on: bool) -> list[str]:
    if plugin_installed():
        return [] if on else ["-p", "no:mlxcompile"]
    return ["-p", "pytest_mlxcompile.plugin"] if on else []


#: ``--device``: MLX's default device in this process and, by ``benchmarks/_device.py``, in
#: every pytest process the parts start; empty for MLX's own default (a GPU where there is one)
DEVICE = ""


def device_args() -> list[str]:
    return ["-p", "benchmarks._device"] if DEVICE else []


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if DEVICE:
        env["MLXCOMPILE_BENCH_DEVICE"] = DEVICE
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTEST_ADDOPTS", None)
    # Python keeps compiled modules (__pycache__) as it does by default and as a pip install
    # leaves an installed package: with PYTHONDONTWRITEBYTECODE set (some CI images and
    # sandboxes) an editable checkout's modules would be compiled again in every process,
    # a cost that pytest's and MLX's compiled site-packages never pay.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["NO_COLOR"] = "1"
    return env


def pytest_timed(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """Run pytest in a fresh process; (wall seconds, CPU seconds, output). Raises when it fails.

    CPU time is the process's user + system time: on a shared machine wall time also counts
    the time other processes held the cores."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *device_args(), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env={**child_env(), **(env or {})}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stdout[-3000:]}{proc.stderr}"
        )
    return wall, cpu, proc.stdout


def pytest(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run pytest in a fresh process; (wall seconds, output). Raises when it fails."""
    wall, _, out = pytest_timed(args, cwd, env)
    return wall, out


def load() -> tuple[float, int]:
    return os.getloadavg()[0], os.cpu_count() or 1


def contended_note() -> str:
    avg, cores = load()
    return f"contended (load {avg:.1f} on {cores} cores)" if avg > cores * 0.75 else ""


def machine() -> dict[str, str]:
    import mlx.core as mx

    info: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        info = dict(mx.device_info())
    return {
        "mlx": str(mx.__version__),
        "device": f"{mx.default_device()} ({info.get('device_name') or os.uname().machine})",
        "python": sys.version.split()[0],
        "cores": str(os.cpu_count()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python "
        + " ".join(
            [
                os.path.relpath(sys.argv[0], Path.cwd()) if sys.argv else "benchmarks/run.py",
                *sys.argv[1:],
            ]
        ),
    }


def gpu() -> bool:
    import mlx.core as mx

    return bool(mx.default_device().type == mx.gpu)


def verdict(value: float, goal: float, *, at_most: bool = True) -> str:
    ok = value <= goal if at_most else value >= goal
    return "pass" if ok else "MISS"


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of ``values``: the order
    statistics ``x(k)`` and ``x(n+1-k)`` with the largest ``k`` that keeps the confidence at or
    above 95% (at least ``k = 1``: the smallest and largest value), and that confidence, ``1 -
    2 P(B <= k-1)`` for B ~ Binomial(n, 1/2). On a shared machine it says whether a median ratio
    has settled, assuming only that the values are independent and alike, not how the noise is
    distributed."""
    ordered = sorted(values)
    n = len(ordered)

    def confidence(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / (1 << n)

    k = 1
    while k + 1 <= (n + 1) // 2 and confidence(k + 1) >= 0.95:
        k += 1
    return ordered[k - 1], ordered[n - k], confidence(k)


def interval_text(values: list[float], *, percent: bool = False) -> str:
    low, high, level = median_interval(values)
    shown = (f"{low:+.1%}", f"{high:+.1%}") if percent else (f"{low:.3f}x", f"{high:.3f}x")
    return f"{level:.0%} interval {shown[0]} to {shown[1]}"


# P1: hot path -----------------------------------------------------------------------------
P1_TEST = textwrap.dedent(
    """
    import json, os, time
    import mlx.core as mx
    import pytest
    from pytest_mlxcompile import instrument

    def body(x):
        return x * 2 + 1

    tiny = mx.compile(body)                   # instrumented: the plugin patched mx.compile
    plain = instrument.installed().compile(body)  # the real mx.compile, same function
    x = mx.ones((4,))
    mx.eval(plain(x), tiny(x))

    def block(f, n=200):
        start = time.perf_counter()
        for _ in range(n):
            f(x)
        return (time.perf_counter() - start) / n

    def paired(blocks):
        # alternate short blocks: a change of load hits both; the 10th percentile of each is
        # its cost without interruptions
        a, b = [], []
        for _ in range(blocks):
            a.append(block(plain))
            b.append(block(tiny))
        a.sort(); b.sort()
        k = len(a) // 10
        return {"plain": a[k], "instrumented": b[k]}

    def save(name, blocks):
        tiny(x)  # the first call of a variant traces; the rest are cache hits
        with open(os.environ["P1_OUT"], "a") as f:
            f.write(json.dumps({name: paired(blocks)}) + "\\n")

    @pytest.mark.compiled
    def test_member():
        save("member", int(os.environ["P1_BLOCKS"]))

    def test_outside():
        save("outside", int(os.environ["P1_BLOCKS"]))
    """
)


def p1(repeats: int, quick: bool) -> list[Row]:
    runs = {
        "off": ["--mlx-parity=off", "--mlx-sanitize=off"],
        "parity": ["--mlx-parity=all", "--mlx-sanitize=off"],
        "sanitizer": ["--mlx-parity=off", "--mlx-sanitize=on"],
    }
    found: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_p1.py").write_text(P1_TEST)
        out = Path(tmp, "out.jsonl")
        for _ in range(repeats):
            for key, args in runs.items():
                out.unlink(missing_ok=True)
                blocks = "60" if quick or key != "off" else "300"
                pytest(
                    ["-q", *plugin_args(True), *args, "test_p1.py"],
                    Path(tmp),
                    {"P1_OUT": str(out), "P1_BLOCKS": blocks},
                )
                merged: dict[str, dict[str, float]] = {}
                for line in out.read_text().splitlines():
                    merged.update(json.loads(line))
                found[key].append(merged)

    def ratio(key: str, test: str) -> tuple[float, float, float]:
        plain = statistics.median(r[test]["plain"] for r in found[key])
        inst = statistics.median(r[test]["instrumented"] for r in found[key])
        each = statistics.median(r[test]["instrumented"] / r[test]["plain"] for r in found[key])
        return plain, inst, each

    rows = []
    plain, inst, value = ratio("off", "member")
    rows.append(
        {
            "id": "P1a",
            "what": "instrumented compiled call in a [compiled] test, parity + sanitizer off",
            "measured": f"{value:.2f}x ({inst * 1e6:.2f} us vs {plain * 1e6:.2f} us plain)",
            "goal": "<= 1.25x",
            "verdict": verdict(value, 1.25),
        }
    )
    plain, inst, value = ratio("off", "outside")
    rows.append(
        {
            "id": "P1b",
            "what": "instrumented compiled call outside member tests",
            "measured": f"{value:.2f}x ({inst * 1e6:.2f} us vs {plain * 1e6:.2f} us plain)",
            "goal": "<= 1.05x",
            "verdict": verdict(value, 1.05),
        }
    )
    for key, what in (
        ("parity", "parity shadow (eager rerun + compare)"),
        ("sanitizer", "sanitizer"),
    ):
        plain, inst, value = ratio(key, "member")
        rows.append(
            {
                "id": "P1c" if key == "parity" else "P1d",
                "what": f"cost of the {what} per call, same tiny function",
                "measured": f"+{(inst - plain) * 1e6:.1f} us per call ({value:.1f}x)",
                "goal": "report",
                "verdict": "-",
            }
        )
    return rows


# P2: timing fidelity ----------------------------------------------------------------------
P2_FUNCTIONS = textwrap.dedent(
    """
    import math
    import statistics
    import time

    import mlx.core as mx

    def gelu(x):
        return x * (1 + mx.erf(x / math.sqrt(2))) / 2

    def reference(fn, x, blocks=7, calls=50):
        # the independent loop: warm-up, eval per call, median of blocks, a sync per block
        for _ in range(5):
            mx.eval(fn(x))
        mx.synchronize()
        samples = []
        for _ in range(blocks):
            start = time.perf_counter()
            for _ in range(calls):
                mx.eval(fn(x))
            mx.synchronize()
            samples.append((time.perf_counter() - start) / calls)
        return statistics.median(samples)
    """
)
P2_TEST = textwrap.dedent(
    """
    import json, os
    import mlx.core as mx
    import pytest
    from pytest_mlxcompile import instrument
    from p2_functions import gelu, reference

    fused = mx.compile(gelu)

    def measure(name, x):
        # eager gelu, and gelu under the real mx.compile
        plain = instrument.installed().compile(gelu)
        ref = [reference(gelu, x), reference(plain, x)]
        with open(os.environ["P2_OUT"], "a") as f:
            f.write(json.dumps({name: ref}) + "\\n")

    @pytest.fixture
    def after(request):
        yield
        # again once the plugin has timed the call (its call phase): a drift of the machine
        # between the two hits the reference as much as the plugin
        measure(*request.node.funcargs["after_args"])

    @pytest.fixture
    def after_args(name):
        shape = tuple(int(n) for n in os.environ["P2_" + name.upper()].split(","))
        x = mx.random.normal(shape, key=mx.random.key(0))
        mx.eval(x)
        return name, x

    @pytest.mark.parametrize("name", ["large", "small"])
    @pytest.mark.compiled(timings=True, modes=["compiled"], parity="off")
    def test_gelu(after_args, after):
        name, x = after_args
        measure(name, x)  # the reference loop in this process, just before the plugin's timing
        fused(x)
    """
)


def p2(repeats: int, quick: bool) -> list[Row]:
    on_gpu = gpu()
    # GPU: the size from issue 9; CPU: eager ~1-5 ms (erf dominates MLX's CPU GELU); small ~50 us
    shapes = (
        {"large": (32, 1000, 4096), "small": (1000, 4096)}
        if on_gpu
        else {"large": (64, 1024), "small": (2, 128)}
    )
    env = {f"P2_{k.upper()}": ",".join(map(str, v)) for k, v in shapes.items()}
    # On a shared CPU the reference loop disagrees with itself by 15-40% between two runs
    # seconds apart in one process (docs/performance.md): the median over repeats needs more
    # of them there to settle within the 5% goal. With 15, one run read the small GELU's eager
    # median +7.6% (96% interval -4.1% to +18.4%); the next, with 31, read -0.0% (97% interval
    # -3.2% to +3.9%), though its compiled interval was no narrower (-9.3% to +6.1%).
    if not quick:
        repeats = max(repeats, 9 if on_gpu else 31)
    ref: dict[str, list[tuple[float, float]]] = {k: [] for k in shapes}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "p2_functions.py").write_text(P2_FUNCTIONS)
        Path(tmp, "test_p2.py").write_text(P2_TEST)
        report, out = Path(tmp, "report.json"), Path(tmp, "reference.jsonl")
        env["P2_OUT"] = str(out)
        for _ in range(repeats):
            out.unlink(missing_ok=True)
            pytest(
                ["-q", *plugin_args(True), "--mlx-timings", f"--mlx-report-json={report}"],
                Path(tmp),
                env,
            )
            # two reference figures per size, before and after the plugin's: their mean
            seen: dict[str, list[list[float]]] = {}
            for line in out.read_text().splitlines():
                for name, figures in json.loads(line).items():
                    seen.setdefault(name, []).append(figures)
            for name, runs in seen.items():
                ref[name].append(
                    (statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs))
                )
            for test in json.loads(report.read_text())["tests"]:
                name = "large" if "large" in test["nodeid"] else "small"
                modes = test["timings"][0]["modes"]
                got[name].append(
                    (modes["eager"]["stats"]["median"], modes["compiled"]["stats"]["median"])
                )
    rows = []
    for name, shape in shapes.items():
        pairs = list(zip(ref[name], got[name], strict=True))
        deviations = {
            "eager": [g[0] / r[0] - 1 for r, g in pairs],
            "compiled": [g[1] / r[1] - 1 for r, g in pairs],
            "speedup": [(g[0] / g[1]) / (r[0] / r[1]) - 1 for r, g in pairs],
        }
        e, c, s = (statistics.median(v) for v in deviations.values())
        r_e = statistics.median(r[0] for r, _ in pairs)
        r_c = statistics.median(r[1] for r, _ in pairs)
        g_e = statistics.median(g[0] for _, g in pairs)
        g_c = statistics.median(g[1] for _, g in pairs)
        worst = max(abs(e), abs(c), abs(s))
        rows.append(
            {
                "id": "P2" + ("a" if name == "large" else "b"),
                "what": f"--mlx-timings vs reference loop (same process), GELU {shape} float32",
                "measured": (
                    f"eager {fmt(g_e)} vs {fmt(r_e)} ({e:+.1%}), compiled {fmt(g_c)} vs "
                    f"{fmt(r_c)} ({c:+.1%}), speedup {g_e / g_c:.2f}x vs {r_e / r_c:.2f}x "
                    f"({s:+.1%}); "
                    + "; ".join(
                        f"{k} {interval_text(v, percent=True)}" for k, v in deviations.items()
                    )
                ),
                "goal": "each within 5%",
                "verdict": "pass" if worst <= 0.05 else "MISS",
            }
        )
    return rows


def fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


# P3: suite cost ---------------------------------------------------------------------------
def p3(repeats: int, quick: bool) -> list[Row]:
    examples = ROOT / "examples"
    # test_pitfalls.py fails on purpose when the checks are on, and passes with them off
    base = [
        "-q",
        *plugin_args(True),
        "--mlx-compile-matrix",
        f"--ignore={examples / 'test_pitfalls.py'}",
        str(examples),
    ]
    sides = {"all checks": base, "checks off": [*base, "--mlx-parity=off", "--mlx-sanitize=off"]}
    for args in sides.values():
        pytest(args, ROOT)  # warm the kernel cache
    walls: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for key, args in sides.items():
            walls[key].append(pytest(args, ROOT)[0])
    on, off = (statistics.median(walls[k]) for k in sides)
    value = statistics.median(
        a / b for a, b in zip(walls["all checks"], walls["checks off"], strict=False)
    )
    return [
        {
            "id": "P3",
            "what": "examples/ under --mlx-compile-matrix, all checks vs checks off (warm)",
            "measured": f"{value:.2f}x ({on:.1f} s vs {off:.1f} s)",
            "goal": "<= 1.5x",
            "verdict": verdict(value, 1.5),
        }
    ]


# P4: scale --------------------------------------------------------------------------------
def p4(repeats: int, quick: bool) -> list[Row]:
    count = 1000 if quick else 5000
    per_file = 100
    # each run is short, and one pair reads +-10% on a shared CPU (docs/performance.md): at
    # least 21 pairs, whose interval is about +-3%
    pairs = max(repeats, 7 if quick else 21)
    runs: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        # the marker is registered for the plugin-off side, where nothing else declares it
        Path(tmp, "pytest.ini").write_text("[pytest]\nmarkers =\n    compiled: mlx\n")
        for f in range(count // per_file):
            lines = ["import mlx.core as mx", "import pytest", ""]
            for i in range(per_file):
                if i % 2 == 0:
                    lines.append("@pytest.mark.compiled")
                lines += [f"def test_{i}():", "    pass", ""]
            Path(tmp, f"test_s{f:03d}.py").write_text("\n".join(lines))
        sides = {"on": plugin_args(True), "off": plugin_args(False)}
        for args in sides.values():  # warm: compiled modules written, files cached
            pytest(["-q", *args], Path(tmp))
        for index in range(pairs):
            # alternate which side runs first: a drift in load hits both
            order = list(sides.items()) if index % 2 == 0 else list(sides.items())[::-1]
            for key, args in order:
                wall, cpu, _ = pytest_timed(["-q", *args], Path(tmp))
                runs[key].append((wall, cpu))
        try:
            counted = instructions(
                {k: ["-q", *a] for k, a in sides.items()}, Path(tmp), layouts=1 if quick else 3
            )
        except RuntimeError as exc:  # P4i is extra: its failure does not cost P4's row
            counted, failure = None, str(exc).splitlines()[0]
        else:
            failure = ""

    def ratios(k: int) -> list[float]:
        return [on[k] / off[k] for on, off in zip(runs["on"], runs["off"], strict=True)]

    def ratio(k: int) -> float:
        return statistics.median(ratios(k))

    def median(key: str, k: int) -> float:
        return statistics.median(r[k] for r in runs[key])

    value = ratio(1)
    rows = []
    if failure:
        rows.append(
            {
                "id": "P4i",
                "what": "instructions (valgrind)",
                "measured": failure,
                "goal": "<= 1.05x",
                "verdict": "-",
            }
        )
    if counted is not None:
        on, off = (statistics.mean(counted[k]) for k in ("on", "off"))
        layouts = len(counted["on"])
        per_layout = [a / b for a, b in zip(counted["on"], counted["off"], strict=True)]
        spread = (
            f"; per layout {min(per_layout):.3f}x-{max(per_layout):.3f}x" if layouts > 1 else ""
        )
        rows.append(
            {
                "id": "P4i",
                "what": f"the same {count} tests: instructions the pytest process executes "
                f"(valgrind cachegrind, PYTHONHASHSEED=0; mean of {layouts} memory "
                f"layout{'s' if layouts > 1 else ''} per side), plugin loaded vs -p no:mlxcompile",
                "measured": f"{on / off:.3f}x ({on / 1e6:,.0f} M vs {off / 1e6:,.0f} M{spread})",
                "goal": "<= 1.05x",
                "verdict": verdict(on / off, 1.05),
            }
        )
    return [
        {
            "id": "P4",
            "what": f"{count} trivial tests, half marked: plugin loaded vs -p no:mlxcompile "
            f"(CPU time of the pytest process, median of {pairs} alternated pairs)",
            "measured": f"{value:.3f}x ({median('on', 1):.2f} s vs {median('off', 1):.2f} s CPU,"
            f" {interval_text(ratios(1))}; wall {ratio(0):.3f}x, {median('on', 0):.2f} s vs "
            f"{median('off', 0):.2f} s)",
            "goal": "<= 1.05x",
            "verdict": verdict(value, 1.05),
        },
        *rows,
    ]


def instructions(
    sides: dict[str, list[str]], cwd: Path, layouts: int = 3
) -> dict[str, list[int]] | None:
    """Instructions each side's pytest process executes in each of ``layouts`` memory layouts,
    counted by valgrind (one run after the other: two at once would mark the machine
    contended), or None where valgrind is not installed. A count does not move with the load
    of a shared machine, where a time ratio cannot settle within 5% (docs/performance.md).

    It moves with the layout: the same code counted with environments of different sizes
    differs by up to ~50 M of ~12,500 M (dicts and sets of objects hashed by address collide
    differently), so each layout pads the environment by another length and both sides are
    counted in each."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    counts: dict[str, list[int]] = {key: [] for key in sides}
    # the sides' arguments differ in length, and so would their stacks: the environment
    # evens them out, then moves both by another ~1 KiB in each layout
    longest = max(len(" ".join(args)) for args in sides.values())
    for layout, (key, args) in itertools.product(range(layouts), sides.items()):
        pad = "x" * (longest - len(" ".join(args)) + 1024 * layout)
        env = {**child_env(), "PYTHONHASHSEED": "0", "MLXCOMPILE_BENCH_LAYOUT": pad}
        proc = subprocess.run(
            [
                valgrind,
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                *device_args(),
                *args,
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        match = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"valgrind on the {key} side failed:\n{proc.stderr[-3000:]}")
        counts[key].append(int(match.group(1).replace(",", "")))
    return counts


# the table --------------------------------------------------------------------------------
PARTS: dict[str, Callable[[int, bool], list[Row]]] = {"P1": p1, "P2": p2, "P3": p3, "P4": p4}


def table(rows: list[Row]) -> list[str]:
    lines = ["| id | what | measured | goal | verdict |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['id']} | {r['what']} | {r['measured']} | {r['goal']} | {r['verdict']} |"
        for r in rows
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="P1,P2,P3,P4", help="comma-separated parts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer blocks and tests (smoke)")
    parser.add_argument("--out", type=Path, help="also write benchmarks.md/.json here")
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        help="MLX's default device for every part (default: MLX's own, a GPU where there is "
        "one); --device cpu measures the CPU rows on a GPU machine's idle cores",
    )
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device or ""
    if DEVICE:
        import mlx.core as mx

        mx.set_default_device(getattr(mx, DEVICE))  # mx.cpu / mx.gpu
    info = machine()
    rows: list[Row] = []
    for part in args.only.split(","):
        before = contended_note()
        part_rows = PARTS[part.strip().upper()](args.repeats, args.quick)
        note = contended_note() or before
        for row in part_rows:
            if note:
                row["measured"] += f"; {note}"
        rows += part_rows
        print("\n".join(table(part_rows)[2:]), file=sys.stderr, flush=True)
    head = [
        f"device: {info['device']}; mlx {info['mlx']}; python {info['python']}; "
        f"{info['cores']} cores; {info['date']}",
        f"command: `{info['command']}`",
        "",
    ]
    text = "\n".join([*head, *table(rows)])
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "benchmarks.md").write_text(text + "\n")
        (args.out / "benchmarks.json").write_text(
            json.dumps({"machine": info, "rows": rows}, indent=1)
        )
    return 0 if all(r["verdict"] != "MISS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
