"""The timings table as a user sees it (issue 12 §4), the roofline column (issue 9 §2), and the
fast per-call path's bookkeeping (issue 9 §3).

The layout tests pin the figures: a conftest replaces the measurement with fixed timings, so the
table's lines can be compared exactly at 80 and 200 columns and under -q/-v/NO_COLOR.
"""

from __future__ import annotations

import json

import pytest

FIXED = """
import pytest
from pytest_mlxcompile import timing
from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.timing import FunctionTiming, ModeTiming, Stats

def _stats(median):
    return Stats(median * 0.9, median, median * 0.95, median * 1.05, 20, 8)

def _fixed(fn, args, kwargs, modes, budget, *, source="auto", contended=False):
    size = int(args[0].size)
    if fn.name == "slow":  # compiled slower than eager, beyond noise
        eager, compiled, first, kind = 20e-6, 40e-6, 40e-6, "memory"
    elif fn.name == "project":
        eager, compiled, first, kind = 1.5e-3, 1.4e-3, 2.5e-3, "compute"
    else:  # memory-bound GELU: 4 bytes in and 4 out per element, at 2.5 TB/s when large
        eager, compiled, first, kind = 1e-5 + size * 1.6e-11, 5e-6 + size * 8 / 2.5e12, 0.04, "memory"
    return FunctionTiming(
        fn.name, fn.where,
        {
            Mode.EAGER: ModeTiming(stats=_stats(eager), peak_memory=100, nodes=8, kernels=8),
            Mode.COMPILED: ModeTiming(
                stats=_stats(compiled), first_call=first, peak_memory=100, nodes=1, kernels=1,
                paired_ratio=(eager / compiled * 0.97, eager / compiled * 1.03),
            ),
        },
        bytes_in=size * 4, bytes_out=size * 4, source=source, contended=contended,
        roofline=2.8e12, bound=kind,
    )

timing.measure = _fixed
"""

TESTS = """
import mlx.core as mx
import pytest

@mx.compile
def gelu(x):
    return x * (1 + mx.erf(x / 2**0.5)) / 2

@mx.compile
def slow(x):
    return x + 1

@mx.compile
def project(x):
    return x @ x.T

@pytest.mark.parametrize("n", [512, 64, 8_388_608])
@pytest.mark.compiled(timings=True)
def test_gelu_is_zero_at_zero_and_odd_around_the_identity_for_every_size(n):
    gelu(mx.ones((n,)))

@pytest.mark.compiled(timings=True)
def test_slow():
    slow(mx.ones((4,)))

@pytest.mark.compiled(timings=True)
def test_projection_matches_a_plain_matmul():
    project(mx.ones((4, 4)))
"""


def _table(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if " mlx timings " in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("=="))
    return [line.rstrip() for line in lines[start + 1 : end]]


@pytest.fixture
def fixed(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FIXED)
    pytester.makepyfile(test_sizes=TESTS)


#: What a user sees at 80 columns: ids shortened in the test's name (sizes stay apart), one unit
#: per time column, sizes sorted by value, flags under their rows, the roofline column kept.
AT_80 = [
    "test::function                    eager us  compiled us  speedup  achieved",
    "test_gelu_is_zero_a...[64]::gelu  10.0      5.00         2.00x    102 MB/s <1%",
    "    flags: pays off after >1000 calls",
    "test_gelu_is_zero_...[512]::gelu  10.0      5.00         2.00x    819 MB/s <1%",
    "    flags: pays off after >1000 calls",
    "test_gelu_is_z...[8388608]::gelu  144       31.8         4.53x    2.11 TB/s 75%",
    "    flags: memory-bound, at the roofline",
    "test_projection_matc...::project  1500      1400         1.07x    compute-bound",
    "test_slow::slow                   20.0      40.0         0.50x    800 kB/s <1%",
    "    flags: slower than eager",
    "",
    "eager/compiled/shapeless: median per call, outputs evaluated (n/a: the mode",
    "  cannot run it, see the JSON report)",
    "speedup: eager / compiled median [quartiles of eager / compiled over paired",
    "  rounds]",
    "achieved: bytes in + out per compiled call / median, and % of this device's",
    "  copy bandwidth",
]

#: At 200 columns: full ids, compile cost (``~0``, never ``0ns``), break-even, memory.
AT_200 = [
    "test::function                                                                       eager us  compiled us  speedup [range]    compile ms  break-even  mem    achieved",
    "test_gelu_is_zero_at_zero_and_odd_around_the_identity_for_every_size[64]::gelu       10.0      5.00         2.00x [1.94-2.06]  40.0        7998 calls  1.00x  102 MB/s <1%",
    "    flags: pays off after >1000 calls",
    "test_gelu_is_zero_at_zero_and_odd_around_the_identity_for_every_size[512]::gelu      10.0      5.00         2.00x [1.94-2.06]  40.0        7989 calls  1.00x  819 MB/s <1%",
    "    flags: pays off after >1000 calls",
    "test_gelu_is_zero_at_zero_and_odd_around_the_identity_for_every_size[8388608]::gelu  144       31.8         4.53x [4.39-4.66]  40.0        356 calls   1.00x  2.11 TB/s 75%",
    "    flags: memory-bound, at the roofline",
    "test_projection_matches_a_plain_matmul::project                                      1500      1400         1.07x [1.04-1.10]  1.10        11 calls    1.00x  compute-bound",
    "test_slow::slow                                                                      20.0      40.0         0.50x [0.48-0.52]  ~0          never       1.00x  800 kB/s <1%",
    "    flags: slower than eager",
    "",
    "eager/compiled/shapeless: median per call, outputs evaluated (n/a: the mode cannot run it, see the JSON report)",
    "speedup: eager / compiled median [quartiles of eager / compiled over paired rounds]",
    "achieved: bytes in + out per compiled call / median, and % of this device's copy bandwidth",
]


def test_at_80_columns_the_table_fits_sorts_sizes_by_value_and_keeps_the_roofline_column(
    pytester, run, fixed, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    result = run("--mlx-parity=off")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*= mlx timings =*"])
    assert _table(result) == AT_80
    assert max(map(len, AT_80)) <= 80


def test_at_200_columns_more_columns_show_with_one_unit_each_and_no_zero_compile_cost(
    pytester, run, fixed, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")
    result = run("--mlx-parity=off")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*= mlx timings =*"])
    assert _table(result) == AT_200
    assert max(map(len, AT_200)) <= 200


def test_quiet_prints_the_table_without_its_legend_and_verbose_adds_the_full_legend(
    pytester, run, fixed, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    quiet = run("-q", "--mlx-parity=off")
    quiet.assert_outcomes(passed=5)
    lines = quiet.stdout.lines
    start = next(i for i, line in enumerate(lines) if " mlx timings " in line)
    # the table as at 80 columns, no legend, then pytest's own summary line
    assert lines[start + 1 : start + 1 + 10] == AT_80[:10]
    assert lines[start + 11].startswith("5 passed in ")
    verbose = run("-v", "--mlx-parity=off")
    verbose.assert_outcomes(passed=5)
    verbose.stdout.fnmatch_lines(
        [
            "speedup: eager / compiled median [[]quartiles of eager / compiled over paired",
            "*flags: 'slower than eager'*",
        ]
    )
    # -v keeps every column, whatever the width
    assert "ops -> kernels" in _table(verbose)[0]


def test_a_row_slower_than_eager_is_red_unless_no_color_is_set(pytester, run, fixed, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("PY_COLORS", raising=False)  # pytester sets it to 0; it beats the rest
    monkeypatch.setenv("FORCE_COLOR", "1")
    coloured = run("--mlx-parity=off")
    coloured.assert_outcomes(passed=5)
    assert any(line.startswith("\x1b[31mtest_slow::slow") for line in coloured.stdout.lines), (
        coloured.stdout.lines
    )
    monkeypatch.setenv("NO_COLOR", "1")
    plain = run("--mlx-parity=off")
    plain.assert_outcomes(passed=5)
    plain.stdout.fnmatch_lines(["test_slow::slow *800 kB/s <1%", "    flags: slower than eager"])
    assert not any("\x1b[" in line for line in plain.stdout.lines)


def test_a_memory_bound_function_shows_its_bandwidth_and_roofline_fraction_and_a_matmul_does_not(
    pytester, run, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def scale(x):
            return x * 2 + 1

        @mx.compile
        def project(a, b):
            return a @ b

        @pytest.mark.compiled(timings=True)
        def test_scale():
            scale(mx.ones((1 << 20,)))

        @pytest.mark.compiled(timings=True)
        def test_project():
            project(mx.ones((64, 64)), mx.ones((64, 64)))
        """
    )
    result = run("--mlx-timings-budget=0.1", "--mlx-report-json=report.json")
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines(
        [
            r"test_project::project +.* compute-bound( |$)",
            r"test_scale::scale +.* \d+(\.\d+)? [kMGT]B/s (<1|\d+)%( |$)",
        ]
    )
    doc = json.loads((pytester.path / "report.json").read_text())
    assert doc["version"] == 2
    assert doc["run"]["roofline"]["bandwidth"] > 0
    assert doc["run"]["roofline"]["method"].startswith("compiled x + 1 over 64 MiB float32")
    achieved = {t["function"]: t["achieved"] for test in doc["tests"] for t in test["timings"]}
    assert achieved["scale"]["bound"] == "memory"
    assert achieved["scale"]["bytes"] == 2 * 4 << 20
    assert achieved["scale"]["fraction"] == pytest.approx(
        achieved["scale"]["bandwidth"] / achieved["scale"]["roofline"]
    )
    assert achieved["project"]["bound"] == "compute"
    assert achieved["project"]["fraction"] is None


def test_rounds_are_calibrated_to_many_calls_for_a_fast_function(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def tiny(x):
            return x + 1

        @pytest.mark.compiled(timings=True)
        def test_tiny():
            tiny(mx.ones((4,)))
        """
    )
    result = run("--mlx-timings-budget=0.3", "--mlx-report-json=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_tiny::tiny *"])
    timing = json.loads((pytester.path / "report.json").read_text())["tests"][0]["timings"][0]
    for mode in ("eager", "compiled"):
        stats = timing["modes"][mode]["stats"]
        # a round lasts ~10 ms here (budget / 30): far more than one call of a few microseconds
        assert stats["iterations"] > 10, stats
        assert stats["rounds"] >= 3, stats


def test_mlx_benchmark_given_something_not_callable_fails_with_a_type_error(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        def test_typo(mlx_benchmark):
            mlx_benchmark(42, mx.ones((4,)))
        """
    )
    result = run("--mlx-timings-budget=0.05")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">       mlx_benchmark(42, mx.ones((4,)))",
            "E       TypeError: mlx_benchmark: fn must be callable, got int 42",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_mlxcompile*timing.py*")
    result.stdout.no_fnmatch_line("*= mlx timings =*")


FAST_PATH = """
import json
import mlx.core as mx
import pytest

@mx.compile
def inner(x):
    return x * 2

@mx.compile
def outer(x):
    return inner(x) + 1

@pytest.mark.compiled
def test_calls(mlx_recompiles):
    for _ in range(5):
        outer(mx.ones((3,)))
    outer(mx.ones((4,)))   # a retrace after cache hits
    outer(mx.ones((4,)))
    print("COUNTS", json.dumps(
        {"outer": mlx_recompiles.count(outer), "inner": mlx_recompiles.count(inner)}
    ))
"""


def test_cache_hits_are_counted_and_a_retrace_after_them_is_still_seen(pytester, run):
    pytester.makepyfile(FAST_PATH)
    # -v: the recompiles section lists allowed retraces too
    result = run("--mlx-parity=off", "--mlx-sanitize=off", "-s", "-v", "--mlx-report-json=r.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            '*COUNTS {"outer": 2, "inner": 0}',
            "*::test_calls: outer (*.py:9) traced 2 times",
            "  trace 2 (call 6): arg 0 'x' shape (3,) -> (4,)",
        ]
    )
    functions = {
        f["function"]: f
        for f in json.loads((pytester.path / "r.json").read_text())["tests"][0]["functions"]
    }
    assert functions["outer"]["calls"] == 7
    assert functions["outer"]["traces"] == 2
    # inlined into outer's traces: nested calls are not the test's calls
    assert functions["inner"]["calls"] == 0
    events = functions["outer"]["recompiles"]
    assert [e["call"] for e in events] == [1, 6]


def test_switching_compile_off_after_cache_hits_fails_the_next_call(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        f = mx.compile(lambda x: x + 1)

        @pytest.mark.compiled
        def test_turns_compile_off():
            f(mx.ones(2))
            f(mx.ones(2))
            mx.disable_compile()
            f(mx.ones(2))
        """
    )
    result = run("--mlx-parity=off", "--mlx-sanitize=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *CompileDisabledError: <lambda> [[]compiled[]] call 3: mx.compile was switched off"
            " by mx.disable_compile() at test_*.py:10, so this call ran eagerly. Fix: call"
            " mx.enable_compile() again before calling compiled code"
        ]
    )
