"""The Python API works outside pytest, and importing the plugin never imports MLX."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_and_plugin_does_not_import_mlx():
    code = (
        "import sys, pytest_mlxcompile, pytest_mlxcompile.plugin; "
        "print(sorted(m for m in sys.modules if m == 'mlx' or m.startswith('mlx.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_the_plugin_leaves_the_checks_timings_and_reports_unimported_until_used():
    # a suite that never calls a compiled function pays only for what runs every test
    code = (
        "import sys, pytest_mlxcompile, pytest_mlxcompile.plugin, mlx.core; "
        "print(sorted(m for m in sys.modules if m.startswith('pytest_mlxcompile.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(eval(out.stdout))
    assert "pytest_mlxcompile.instrument" in loaded  # mx.compile is patched as MLX loads
    lazy = {"report", "timing", "recompiles", "sanitize", "shapeless_probe", "budget", "api"}
    assert loaded.isdisjoint(f"pytest_mlxcompile.{name}" for name in lazy), sorted(loaded)


def test_the_lazily_imported_public_names_resolve():
    import pytest_mlxcompile

    assert callable(pytest_mlxcompile.max_recompiles)
    assert callable(pytest_mlxcompile.assert_compile_parity)
    assert "max_recompiles" in pytest_mlxcompile.__all__


def test_mode_is_a_string_enum():
    from pytest_mlxcompile import Mode

    assert Mode.EAGER == "eager"
    assert str(Mode.SHAPELESS) == "shapeless"
    assert Mode("compiled") is Mode.COMPILED


def test_every_error_is_an_mlx_compile_error_and_an_assertion_error():
    import pytest_mlxcompile as api

    for name in (
        "ParityError",
        "RecompileError",
        "PlaceholderLeakError",
        "StaleCaptureError",
        "UncapturedRandomStateError",
        "ShapelessError",
        "CompileDisabledError",
    ):
        error = getattr(api, name)
        assert issubclass(error, api.MLXCompileError)
        assert issubclass(error, AssertionError)


def test_assert_compile_parity_passes_for_a_pure_function_and_names_a_stale_one(pytester):
    pytester.makepyfile(
        script="""
        import mlx.core as mx
        from pytest_mlxcompile import ParityError, ShapelessError, assert_compile_parity

        def gelu(x):
            return x * (1 + mx.erf(x / 2 ** 0.5)) / 2

        assert_compile_parity(gelu, mx.random.normal((4, 8)))
        print("gelu ok")

        def head(x):
            return x[: x.shape[0] // 2]

        assert_compile_parity(head, mx.ones(4), modes=["compiled"])
        try:
            assert_compile_parity(head, mx.ones(4))
        except ShapelessError as exc:
            print("shapeless:", str(exc).splitlines()[0])

        """
    )
    result = pytester.runpython(pytester.path / "script.py")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "gelu ok",
            "shapeless: head (script.py:*) cannot be compiled shapeless: "
            "[[]Primitive::output_shapes[]] Slice cannot infer output shapes.*",
        ]
    )


def test_assert_compile_parity_raises_parity_error_naming_mode_path_and_values(pytester):
    pytester.makepyfile(
        script="""
        import mlx.core as mx
        from pytest_mlxcompile import ParityError, assert_compile_parity

        calls = [0]

        def counted(x):
            calls[0] += 1  # Python state: eager sees 1, the compiled trace sees 2
            return x * calls[0]

        try:
            assert_compile_parity(counted, mx.ones(3), modes=["compiled"])
        except ParityError as exc:
            print(exc)
        """
    )
    result = pytester.runpython(pytester.path / "script.py")
    result.stdout.fnmatch_lines(
        [
            "counted [[]compiled[]] differs from eager at out",
            "  shape (3,) float32; mismatched 3 / 3 (100.0%); greatest abs diff 1.0e+00 at (0,);",
            "  greatest rel diff 1.0e+00 at (0,); rtol 1.3e-06 atol 1e-05 (float32 defaults)",
            "  at (0,): eager 1, compiled 2",
            "  where: counted defined at script.py:6",
        ]
    )
