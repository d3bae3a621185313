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


STALE_CLASS = """
import mlx.core as mx
import unittest

W = [mx.array(1.0)]

def scale(x):
    return x * W[0]

class TestStep(unittest.TestCase):
    def test_step(self):
        step = mx.compile(scale)
        W[0] = mx.array(1.0)
        step(mx.array(2.0))
        W[0] = mx.array(3.0)
        step(mx.array(2.0))
"""


def test_a_conftest_collection_wrapper_can_mark_a_testcase_for_the_matrix(pytester, run):
    # the plugin's own collection wrapper stays inside a conftest's: what the conftest does to
    # pytest's TestCase collector is what the plugin's variants start from
    pytester.makeconftest(
        """
        import unittest
        import pytest

        @pytest.hookimpl(wrapper=True)
        def pytest_pycollect_makeitem(collector, name, obj):
            result = yield
            if isinstance(obj, type) and issubclass(obj, unittest.TestCase):
                result.add_marker(pytest.mark.compiled(modes=["eager", "compiled"]))
            return result
        """
    )
    pytester.makepyfile(test_tc=STALE_CLASS)
    result = run("-v", "--mlx-compile-matrix")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::TestStep::test_step[[]eager[]] PASSED*",
            "*::TestStep::test_step[[]compiled[]] FAILED*",
        ]
    )


def test_a_class_marked_in_collection_modifyitems_is_checked(pytester, run):
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(config, items):
            for item in items:
                cls = item.getparent(pytest.Class)
                if cls is not None and cls.name.startswith("TestCompiled"):
                    cls.add_marker(pytest.mark.compiled)
        """
    )
    pytester.makepyfile(
        """
        import mlx.core as mx

        W = [mx.array(1.0)]

        @mx.compile
        def scale(x):
            return x * W[0]

        class TestCompiledStep:
            def test_stale(self):
                W[0] = mx.array(1.0)
                scale(mx.array(2.0))
                W[0] = mx.array(3.0)
                scale(mx.array(2.0))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *StaleCaptureError: scale [[]compiled[]] call 2 *global 'W'*"])


def test_a_test_that_parametrizes_mlx_mode_itself_runs_in_those_modes(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest
        from pytest_mlxcompile import Mode, instrument

        @pytest.mark.parametrize("mlx_mode", [Mode.EAGER, Mode.SHAPELESS])
        def test_self_parametrized(mlx_mode):
            mx.compile(lambda x: x + 1)(mx.array(1.0))
            print("param", mlx_mode, "ran", instrument.active_run().mode)
        """
    )
    result = run("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*param eager ran eager*", "*param shapeless ran shapeless*"])


def test_the_mode_comes_after_a_conftests_trylast_parametrize_in_test_ids(pytester, run):
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(trylast=True)
        def pytest_generate_tests(metafunc):
            if "seed" in metafunc.fixturenames:
                metafunc.parametrize("seed", [0, 1])
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(modes=["eager", "compiled"])
        def test_x(seed):
            pass
        """
    )
    result = run("--co", "-q", "--mlx-compile-matrix")
    result.stdout.fnmatch_lines(
        [
            "*::test_x[[]eager-0[]]",
            "*::test_x[[]eager-1[]]",
            "*::test_x[[]compiled-0[]]",
            "*::test_x[[]compiled-1[]]",
        ]
    )


def test_a_plugin_blocked_by_a_conftest_after_its_configure_makes_no_variants(pytester, run):
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            config.pluginmanager.set_blocked("mlxcompile")
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled
        def test_x():
            pass
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::test_x PASSED*"])
    result.stdout.no_fnmatch_line("*test_x[[]*")
