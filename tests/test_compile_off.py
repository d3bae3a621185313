"""A run where mx.compile silently compiles nothing must never be green."""

from __future__ import annotations

import pytest

MARKED = """
    import mlx.core as mx
    import pytest

    @pytest.mark.compiled
    def test_x():
        mx.compile(lambda x: x * 2)(mx.ones(2))
"""


def test_mlx_disable_compile_in_the_environment_errors_the_compiled_variants(
    pytester, run, monkeypatch
):
    monkeypatch.setenv("MLX_DISABLE_COMPILE", "0")
    pytester.makepyfile(MARKED)
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "E *CompileDisabledError: mx.compile is switched off, so the [[]compiled[]] variant "
            "would run eagerly and prove nothing: the environment variable MLX_DISABLE_COMPILE "
            "is set (to '0'; MLX treats any value, even 0, as off). Fix: unset it, or run only "
            "--mlx-modes=eager",
        ]
    )


def test_the_eager_mode_alone_still_runs_when_compile_is_off(pytester, run, monkeypatch):
    monkeypatch.setenv("MLX_DISABLE_COMPILE", "1")
    pytester.makepyfile(MARKED)
    run("--mlx-compile-matrix", "--mlx-modes=eager").assert_outcomes(passed=1)


def test_no_gxx_on_path_errors_the_compiled_variants_on_the_cpu_backend(
    pytester, run, monkeypatch, tmp_path
):
    mx = pytest.importorskip("mlx.core")
    if mx.default_device() != mx.cpu:
        pytest.skip("only the CPU backend needs g++")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    pytester.makepyfile(MARKED)
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "E *CompileDisabledError: *the CPU backend JIT-compiles fused kernels with g++ and "
            "there is no g++ on PATH, so MLX skips compilation. Fix: install g++*",
        ]
    )


def test_compile_switched_off_behind_mx_is_caught_at_the_next_trace(pytester, run):
    # The check at the start of a variant runs once per session while nobody flips the switch
    # through mx; a flip that bypasses mx (a reference to MLX's own function) shows at the next
    # trace, and with compile off every call runs the body.
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest
        from pytest_mlxcompile import instrument

        REAL = instrument.installed().originals

        @pytest.mark.compiled(parity="off")
        def test_first():
            mx.compile(lambda x: x + 1)(mx.ones(2))

        @pytest.mark.compiled(parity="off")
        def test_switched_off_behind_mx():
            f = mx.compile(lambda x: x * 2)
            f(mx.ones(2))
            REAL["disable_compile"]()
            try:
                f(mx.ones(2))
            finally:
                REAL["enable_compile"]()
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_first PASSED*",
            "E *CompileDisabledError: *<lambda> [[]compiled[]] call 2: mx.compile is switched "
            "off, so this call runs eagerly: mx.disable_compile() is in effect*",
        ]
    )


def test_compile_switched_off_behind_mx_by_an_earlier_test_is_caught_at_the_first_trace(
    pytester, run
):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest
        from pytest_mlxcompile import instrument

        REAL = instrument.installed().originals

        @mx.compile
        def f(x):
            return x * 2 + 1

        @pytest.mark.compiled
        def test_a_switches_compile_off():
            mx.eval(f(mx.ones((2,))))
            REAL["disable_compile"]()  # a reference kept from before the plugin loaded

        @pytest.mark.compiled
        def test_b_calls_once():
            try:
                mx.eval(f(mx.ones((2,))))
            finally:
                REAL["enable_compile"]()
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_a_switches_compile_off PASSED*",
            "E *CompileDisabledError: f [[]compiled[]] call 1: mx.compile is switched off, so "
            "this call runs eagerly*",
        ]
    )


def test_a_retrace_on_another_stream_is_not_mistaken_for_compile_switched_off(pytester, run):
    # MLX keeps a compiled function's graphs per stream: the plugin's own probe is asked on
    # the stream it was traced on
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def f(x):
            return x * 2 + 1

        @pytest.mark.compiled
        def test_first():
            mx.eval(f(mx.ones((2,))))

        @pytest.mark.compiled
        def test_on_a_new_stream():
            with mx.stream(mx.new_stream(mx.cpu)):
                mx.eval(f(mx.ones((2,))))
                mx.eval(f(mx.ones((3,))))
        """
    )
    result = run("-v", "--mlx-compile-matrix")
    result.assert_outcomes(passed=6)
    result.stdout.no_fnmatch_line("*CompileDisabledError*")
