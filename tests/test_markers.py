from __future__ import annotations

import textwrap

import pytest


def test_the_marker_is_listed_with_its_full_signature(pytester, run):
    result = run("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.compiled(*, modes=None, rtol=None, atol=None, max_recompiles=None, "
            "parity=None, timings=None, max_shapes=None): run the test with every mx.compile "
            "instrumented*"
        ]
    )


def test_a_typo_in_a_marker_keyword_is_a_collection_error_naming_test_and_keyword(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(max_recompile=1)
        def test_typo():
            pass
        """
    )
    result = run("--mlx-compile-matrix")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.compiled on test_*.py::test_typo: unknown keyword 'max_recompile'; "
            "did you mean 'max_recompiles'? (accepted: modes, rtol, atol, max_recompiles, "
            "parity, timings, max_shapes)"
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*During handling*")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("'eager'", "takes keyword arguments only, got positional ('eager',)*"),
        ("modes=['jit']", "modes: unknown mode 'jit'; choose from eager, compiled, shapeless"),
        ("rtol='tight'", "rtol: 'tight' is not a finite number >= 0"),
        ("parity='some'", "parity='some' is not one of 'all', 'first', 'off'"),
        ("timings=1", "timings=1 must be True or False"),
        ("max_recompiles=-1", "max_recompiles=-1 must be an int >= 0, 'auto', or a dict*"),
        ("max_recompiles={'jit': 1}", "max_recompiles key: unknown mode 'jit'*"),
    ],
)
def test_bad_marker_values_are_collection_errors_naming_the_argument(
    pytester, run, arguments, message
):
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.compiled({arguments})
        def test_bad():
            pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"@pytest.mark.compiled on test_*.py::test_bad*: {message}"])


@pytest.mark.parametrize("matrix", [[], ["--mlx-compile-matrix"]], ids=["plain", "matrix"])
@pytest.mark.parametrize(
    ("source", "test"),
    [
        (
            """
            @pytest.mark.compiled(rtol="tight")
            @pytest.mark.parametrize("n", [1, 2])
            def test_bad(n):
                pass
            """,
            "test_bad",
        ),
        (
            """
            @pytest.mark.compiled(rtol="tight")
            class TestBad:
                def test_method(self):
                    pass
            """,
            "TestBad::test_method",
        ),
        (
            """
            pytestmark = pytest.mark.compiled(rtol="tight")

            def test_in_module():
                pass
            """,
            "test_in_module",
        ),
    ],
    ids=["parametrized", "class", "module"],
)
def test_a_bad_class_module_or_parametrized_marker_is_a_collection_error_with_or_without_the_matrix(
    pytester, run, matrix, source, test
):
    pytester.makepyfile("import pytest\n" + textwrap.dedent(source))
    pytester.makeconftest(
        """
        def pytest_collection_finish(session):
            hook = session.config.pluginmanager.get_plugin("mlxcompile-parametrize")
            print("parametrize hook registered:", hook is not None)
        """
    )
    result = run("-s", *matrix)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            # the function, not one of its cases: its marker is the function's
            f"@pytest.mark.compiled on test_*.py::{test}: rtol: 'tight' is not a finite number "
            ">= 0",
            "*Interrupted: 1 error during collection*",
        ]
    )
    # pytest calls a parametrize hook for every test function: without the matrix there is none
    result.stdout.fnmatch_lines([f"parametrize hook registered: {bool(matrix)}"])


def test_marker_modes_narrow_the_matrix(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(modes=["eager", "compiled"])
        def test_x():
            pass
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_x[[]eager[]] PASSED*", "*test_x[[]compiled[]] PASSED*"])


def test_the_modes_option_narrows_the_matrix_and_combines_with_parametrize(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled
        @pytest.mark.parametrize("n", [1, 2])
        def test_x(n):
            pass
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=shapeless,eager", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*test_x[[]1-eager[]] PASSED*", "*test_x[[]2-shapeless[]] PASSED*"]
    )


def test_no_mode_left_after_narrowing_skips_with_the_reason(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(modes=["shapeless"])
        def test_x():
            pass
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=eager", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED*none of the marker's modes (shapeless) is among --mlx-modes (eager)"]
    )


def test_ini_options_apply_and_the_command_line_wins(pytester, run):
    pytester.makeini(
        """
        [pytest]
        mlx_compile_matrix = true
        mlx_modes = eager,compiled
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
    run("-v").assert_outcomes(passed=2)
    run("-v", "--mlx-modes=eager").assert_outcomes(passed=1)


def test_a_bad_ini_value_is_a_usage_error_naming_the_ini_key(pytester, run):
    pytester.makeini(
        """
        [pytest]
        mlx_parity = most
        """
    )
    pytester.makepyfile("def test_x(): pass")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-mlxcompile: mlx_parity = most (ini file): 'most' is not one of all, first, off"
        ]
    )


def test_scope_all_puts_unmarked_tests_in_the_matrix(pytester, run):
    pytester.makepyfile("def test_x(): pass")
    result = run("--mlx-compile-matrix", "--mlx-matrix-scope=all")
    result.assert_outcomes(passed=3)
