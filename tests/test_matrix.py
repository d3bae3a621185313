from __future__ import annotations

import pytest


def test_a_marked_test_runs_once_per_mode_under_the_matrix(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled
        def test_x():
            assert mx.compile(lambda x: x + 1)(mx.ones(2)).tolist() == [2.0, 2.0]
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*::test_x[[]eager[]] PASSED*",
            "*::test_x[[]compiled[]] PASSED*",
            "*::test_x[[]shapeless[]] PASSED*",
        ]
    )


def test_a_module_level_compiled_function_traces_once_per_compiled_variant(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        BODY_RUNS = []

        @mx.compile
        def double(x):
            BODY_RUNS.append(1)
            return x * 2

        @pytest.mark.compiled
        def test_x(mlx_mode):
            BODY_RUNS.clear()
            for _ in range(3):
                double(mx.ones((2, 3)))
            print(f"{mlx_mode}: body ran {len(BODY_RUNS)} times")
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-parity=off", "-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*eager: body ran 3 times*",
            "*compiled: body ran 1 times*",
            "*shapeless: body ran 1 times*",
        ]
    )


def test_unmarked_tests_run_once_and_untouched(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        def test_plain():
            assert mx.compile(lambda x: x * 3)(mx.ones(1)).item() == 3.0
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::test_plain PASSED*"])


def test_without_the_flag_a_marked_test_runs_once_compiled(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled
        def test_x(mlx_mode):
            print("mode is", mlx_mode)
        """
    )
    result = run("-v", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::test_x mode is compiled", "PASSED*"])


def test_the_plugin_can_be_switched_off_with_no_mlxcompile(pytester):
    pytester.makepyfile(
        """
        import mlx.core as mx

        def test_x():
            assert type(mx.compile(lambda x: x)).__name__ != "InstrumentedFunction"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:mlxcompile", "--strict-markers")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--mlx-parity=sometimes", "*--mlx-parity: 'sometimes' is not one of all, first, off*"),
        ("--mlx-modes=eager,jit", "*--mlx-modes: unknown mode 'jit'; choose from eager*"),
        ("--mlx-rtol=-1", "*--mlx-rtol: '-1' is not a finite number >= 0*"),
    ],
)
def test_a_bad_option_value_is_a_usage_error_naming_it(pytester, run, option, message):
    pytester.makepyfile("def test_x(): pass")
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-mlxcompile: {message.lstrip('*')}"])


def test_every_test_variant_starts_with_a_fresh_compile_cache(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        TRACES = []

        @mx.compile
        def double(x):
            TRACES.append(1)
            return x * 2

        @pytest.mark.compiled
        @pytest.mark.parametrize("case", ["first", "second"])
        def test_x(case):
            TRACES.clear()
            double(mx.ones(2)); double(mx.ones(2))
            print(case, "traced", len(TRACES))
        """
    )
    result = run("--mlx-parity=off", "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*first traced 1*", "*second traced 1*"])
