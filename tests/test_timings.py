from __future__ import annotations

import math
from pathlib import Path

import pytest

from pytest_mlxcompile.modes import Mode
from pytest_mlxcompile.timing import PAYOFF_CALLS, FunctionTiming, ModeTiming, Stats

# Tiny arrays and a 50 ms budget per test keep these fast; no assertion depends on a timing.
FAST = "--mlx-timings-budget=0.05"

GELU = """
import math
from pathlib import Path

import mlx.core as mx
import pytest

@mx.compile
def gelu(x):
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2
"""


#: eager, compiled, shapeless medians, speedup [range], compile cost, break-even, memory ratio,
#: achieved bandwidth and roofline fraction
ROW_AFTER_NAME = (
    r"\S+ +\S+ +\S+ +\d+\.\d\dx \[\d+\.\d\d-\d+\.\d\d\] +\S+ +(\d+ calls|1 call|never) +\d+\.\d\dx"
    r" +[\d.]+ [kMGT]B/s (<1|\d+)%"
)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read whole rows: a terminal wide enough that no column is dropped."""
    monkeypatch.setenv("COLUMNS", "250")


def test_mlx_timings_prints_a_row_with_speedup_compile_cost_and_ops_to_kernels(pytester, run):
    pytester.makepyfile(
        GELU
        + """
@pytest.mark.compiled
def test_x():
    gelu(mx.ones((4, 8)))
"""
    )
    result = run("--mlx-timings", FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= mlx timings =*",
            "test::function*eager us*compiled us*shapeless us*speedup [[]range[]]*compile *s"
            "*break-even*mem*achieved*ops -> kernels*flags",
            "speedup: eager / compiled median*",
        ]
    )
    # break-even is "N calls" or "never": which one depends on the machine's load
    result.stdout.re_match_lines([rf"test_x::gelu +{ROW_AFTER_NAME} +8 -> 1"])


def test_without_timings_no_table_is_printed(pytester, run):
    pytester.makepyfile(GELU + "\n@pytest.mark.compiled\ndef test_x():\n    gelu(mx.ones(3))\n")
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*mlx timings*")


def test_the_timings_marker_times_a_test_without_the_option(pytester, run):
    pytester.makepyfile(
        GELU + "\n@pytest.mark.compiled(timings=True)\ndef test_x():\n    gelu(mx.ones(3))\n"
    )
    result = run(FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= mlx timings =*", "test_x::gelu *"])


def test_timings_false_in_the_marker_opts_a_test_out_of_mlx_timings(pytester, run):
    pytester.makepyfile(
        GELU + "\n@pytest.mark.compiled(timings=False)\ndef test_x():\n    gelu(mx.ones(3))\n"
    )
    result = run("--mlx-timings", FAST)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*mlx timings*")


def test_under_the_matrix_a_test_is_timed_once_in_its_compiled_variant(pytester, run):
    pytester.makepyfile(GELU + "\n@pytest.mark.compiled\ndef test_x():\n    gelu(mx.ones(3))\n")
    result = run("--mlx-compile-matrix", "--mlx-timings", FAST)
    result.assert_outcomes(passed=3)
    rows = [line for line in result.stdout.lines if "::gelu " in line]
    assert [row.split()[0] for row in rows] == ["test_x::gelu"]


def test_a_failed_test_is_not_timed(pytester, run):
    pytester.makepyfile(
        GELU + "\n@pytest.mark.compiled\ndef test_x():\n    gelu(mx.ones(3))\n    assert False\n"
    )
    result = run("--mlx-timings", FAST)
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*mlx timings*")


def test_a_mode_that_cannot_run_the_function_shows_n_a_and_the_test_passes(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def first_half(x):
            return x[: x.shape[0] // 2]

        @pytest.mark.compiled
        def test_x():
            first_half(mx.ones(8))
        """
    )
    result = run("--mlx-timings", FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_x::first_half * * *n/a *"])


def test_mlx_benchmark_returns_medians_and_a_speedup_with_a_range(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        def axpy(a, x, y):
            return a * x + y

        def test_x(mlx_benchmark):
            x = mx.ones((16,))
            result = mlx_benchmark(axpy, 2.0, x, x, modes=["compiled", "shapeless"])
            speedup = result.speedup("compiled")
            assert speedup.low <= speedup.value <= speedup.high
            assert result["eager"].stats.rounds >= 1
            assert result["shapeless"].first_call > 0
            print("speedup", speedup)
        """
    )
    result = run("-s", FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*speedup *.??x [[]*-*[]]*", "test_x::axpy *"])


def test_mlx_benchmark_names_a_bad_mode(pytester, run):
    pytester.makepyfile(
        """
        def test_x(mlx_benchmark):
            mlx_benchmark(lambda x: x, 1.0, modes=["jit"])
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*mlx_benchmark(modes=...): unknown mode 'jit'*"])


def test_timing_a_stateful_function_leaves_its_declared_state_as_the_test_left_it(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial

        import mlx.core as mx
        import pytest

        state = [mx.array(0.0)]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x):
            state[0] = state[0] + x
            return state[0]

        @pytest.mark.compiled(timings=True, parity="off")
        def test_a():
            step(mx.array(1.0))
            step(mx.array(1.0))

        def test_b():
            assert state[0].item() == 2.0
        """
    )
    result = run(FAST)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_a::step *"])


def test_a_mode_that_fails_midway_leaves_no_placeholders_in_declared_state(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial

        import mlx.core as mx
        import pytest

        state = [mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def noisy(x):
            return x + mx.random.uniform(shape=x.shape)

        @pytest.mark.compiled(timings=True)
        def test_a():
            noisy(mx.ones(4))

        def test_b():
            assert mx.random.uniform(shape=(2,)).shape == (2,)
        """
    )
    result = run(FAST)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_a::noisy * * *n/a *"])


def test_timings_options_reject_a_non_positive_budget(pytester, run):
    pytester.makepyfile("def test_x(): pass")
    result = run("--mlx-timings-budget=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-mlxcompile: --mlx-timings-budget: '0' must be more than 0 seconds"]
    )


def _timing(eager: float, compiled: float, spread: float, first_call: float) -> FunctionTiming:
    def stats(median: float) -> Stats:
        return Stats(
            median * (1 - spread), median, median * (1 - spread), median * (1 + spread), 5, 1
        )

    return FunctionTiming(
        "f",
        "f.py:1",
        {
            Mode.EAGER: ModeTiming(stats=stats(eager)),
            Mode.COMPILED: ModeTiming(stats=stats(compiled), first_call=first_call),
        },
    )


@pytest.mark.parametrize(
    ("eager", "compiled", "spread", "first_call", "flags"),
    [
        (1.0, 2.0, 0.1, 2.0, ["slower than eager"]),
        (1.0, 0.95, 0.2, 1.0, ["no gain beyond noise"]),
        (1.0, 0.5, 0.1, 0.5 + 0.5 * (PAYOFF_CALLS + 1), [f"pays off after >{PAYOFF_CALLS} calls"]),
        (1.0, 0.5, 0.1, 1.0, []),
    ],
    ids=["slower", "no-gain", "no-payoff", "clean"],
)
def test_rows_are_flagged_when_compiling_does_not_pay(eager, compiled, spread, first_call, flags):
    assert _timing(eager, compiled, spread, first_call).flags() == flags


def test_break_even_is_compile_cost_over_time_saved_and_never_when_nothing_is_saved():
    assert _timing(1.0, 0.5, 0.1, 5.5).break_even() == pytest.approx(10.0)
    assert math.isinf(_timing(1.0, 1.5, 0.1, 5.5).break_even())


def test_the_ini_file_turns_timings_on_with_its_own_budget(pytester, run):
    pytester.makeini("[pytest]\nmlx_timings = true\nmlx_timings_budget = 0.05\n")
    pytester.makepyfile(GELU + "\n@pytest.mark.compiled\ndef test_x():\n    gelu(mx.ones(3))\n")
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= mlx timings =*", "test_x::gelu *"])


def test_the_examples_under_timings_show_gelu_fused_and_the_matmul_with_nothing_to_fuse(
    pytester, run
):
    examples = Path(__file__).resolve().parent.parent / "examples"
    for path in examples.glob("*.py"):
        pytester.makepyfile(**{path.stem: path.read_text()})
    result = run("--mlx-compile-matrix", "--mlx-timings", FAST)
    result.stdout.re_match_lines(
        [
            r"test_gelu_\S*\[float32\]::gelu +"
            rf"{ROW_AFTER_NAME} +8 -> 1"
        ]
    )
    result.stdout.fnmatch_lines_random(
        [
            "test_projection_matches_a_plain_matmul::project *compute-bound *1 -> 1*",
            "test_a_compiled_training_step_lowers_the_loss::make_step.step *n/a *",
        ]
    )
