from __future__ import annotations

import json
from pathlib import Path

import pytest
from schema_check import validate

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "pytest_mlxcompile" / "report.schema.json").read_text()
)


def test_a_function_mlx_cannot_compile_shapeless_skips_its_shapeless_variant_with_the_reason(
    pytester, run
):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def first_half(x):
            return x[: x.shape[0] // 2]

        @pytest.mark.compiled
        def test_half():
            assert first_half(mx.arange(4.0)).tolist() == [0.0, 1.0]
        """
    )
    result = run("--mlx-compile-matrix", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_*.py:10: first_half (test_*.py:4) is not shapeless-capable: "
            "[[]Primitive::output_shapes[]] Slice cannot infer output shapes.*"
        ]
    )


def test_a_function_declared_shapeless_that_mlx_refuses_fails(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        @partial(mx.compile, shapeless=True)
        def first_half(x):
            return x[: x.shape[0] // 2]

        @pytest.mark.compiled
        def test_half():
            first_half(mx.arange(4.0))
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: first_half [[]compiled[]] call 1: it is declared shapeless=True, "
            "but MLX cannot compile it shapeless: [[]Primitive::output_shapes[]] Slice cannot "
            "infer output shapes."
        ]
    )


def test_a_refused_shapeless_trace_leaves_no_placeholder_in_declared_state(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        state = {"w": mx.ones(4)}

        @partial(mx.compile, inputs=state, outputs=state)
        def head(x):
            state["w"] = state["w"] * 2
            return x[: x.shape[0] // 2] * state["w"][0]

        @pytest.mark.compiled(modes=["shapeless"])
        def test_refused():
            head(mx.arange(4.0))

        def test_state_is_still_usable():
            assert state["w"].tolist() == [1.0, 1.0, 1.0, 1.0]
        """
    )
    result = run("--mlx-compile-matrix", "-p", "no:randomly")
    result.assert_outcomes(passed=1, skipped=1)


KERNEL_TEST = """
    import mlx.core as mx
    import pytest

    def call_metal_kernel():
        kernel = mx.fast.metal_kernel(
            name="copy", input_names=["a"], output_names=["b"],
            source="uint i = thread_position_in_grid.x; b[i] = a[i];",
        )
        return kernel(inputs=[mx.ones(4)], grid=(4, 1, 1), threadgroup=(4, 1, 1),
                      output_shapes=[(4,)], output_dtypes=[mx.float32])

    {marker}
    def test_kernel():
        call_metal_kernel()
"""


def test_a_marked_test_whose_custom_kernel_backend_is_missing_skips_with_the_reason(pytester, run):
    mx = pytest.importorskip("mlx.core")
    if mx.metal.is_available():
        pytest.skip("Metal is present: the kernel runs")
    pytester.makepyfile(KERNEL_TEST.format(marker="@pytest.mark.compiled"))
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_*.py:9: needs MLX's Metal backend for a custom kernel, which "
            "this build lacks (default device: Device(*)): [[]metal_kernel[]] No Metal back-end."
        ]
    )


def test_an_unmarked_test_whose_kernel_backend_is_missing_still_fails(pytester, run):
    mx = pytest.importorskip("mlx.core")
    if mx.metal.is_available():
        pytest.skip("Metal is present: the kernel runs")
    pytester.makepyfile(KERNEL_TEST.format(marker=""))
    run().assert_outcomes(failed=1)


GPU_STREAM_TEST = """
import mlx.core as mx
import pytest

@mx.compile
def launch(x):
    # what a CUDA build raises for a custom kernel on a CPU stream
    # (mlx/backend/cuda/custom_kernel.cpp); a CPU-only build cannot raise it itself
    raise ValueError("{message}")

{marker}
def test_kernel():
    launch(mx.ones(4))
"""


def test_a_marked_test_whose_custom_kernel_ran_on_the_default_cpu_skips_with_the_reason(
    pytester, run
):
    mx = pytest.importorskip("mlx.core")
    if mx.default_device() != mx.cpu:
        pytest.skip("the CPU is not the default device here")
    pytester.makepyfile(
        GPU_STREAM_TEST.format(
            message="[custom_kernel] Only supports the GPU.", marker="@pytest.mark.compiled"
        )
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_*.py:8: needs a GPU for a custom kernel, and this run's default "
            "device is the CPU (default device: Device(cpu, 0)): "
            "[[]custom_kernel[]] Only supports the GPU."
        ]
    )


@pytest.mark.parametrize(
    ("message", "marker"),
    [
        ("[custom_kernel] Only supports the GPU.", ""),
        ("[custom_kernel] Expected `output_dtypes` to have size 1", "@pytest.mark.compiled"),
        # Metal sends a kernel without a stream to the GPU: this one asked for the CPU itself
        ("[metal_kernel] Only supports the GPU.", "@pytest.mark.compiled"),
    ],
    ids=["unmarked", "another kernel error", "metal given a cpu stream"],
)
def test_other_kernel_value_errors_and_unmarked_tests_still_fail(pytester, run, message, marker):
    pytest.importorskip("mlx.core")
    pytester.makepyfile(GPU_STREAM_TEST.format(message=message, marker=marker))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*ValueError: [[]{message[1:].split(']')[0]}[]]*"])


def test_a_custom_kernel_on_a_cpu_stream_is_skipped_only_where_the_cpu_is_the_default():
    from pytest_mlxcompile._mlx import kernel_cannot_run

    on_cpu = ValueError("[custom_kernel] Only supports the GPU.")
    assert kernel_cannot_run(on_cpu, "cpu") == (
        "a GPU for a custom kernel, and this run's default device is the CPU"
    )
    # with a GPU as the default, the code asked for the CPU: a mistake on every machine
    assert kernel_cannot_run(on_cpu, "gpu") is None
    assert kernel_cannot_run(ValueError("[metal_kernel] Only supports the GPU."), "cpu") is None
    absent = RuntimeError("[cuda_kernel] No CUDA back-end.")
    assert kernel_cannot_run(absent, "gpu") == (
        "MLX's CUDA backend for a custom kernel, which this build lacks"
    )
    assert kernel_cannot_run(ValueError("[cuda_kernel] No CUDA back-end."), "cpu") is None


SHAPELESS = """
from functools import partial
import mlx.core as mx
import pytest

@partial(mx.compile, shapeless=True)
def f(x):
    return {expr}

@pytest.mark.compiled
def test_x():
    f(mx.arange(12.0).reshape(2, 3, 2))
"""
UNDECLARED = SHAPELESS.replace("@partial(mx.compile, shapeless=True)", "@mx.compile")
RESHAPE = "x.reshape(x.shape[0] * x.shape[1], -1)"


def test_a_shapeless_reshape_from_shapes_tested_at_one_shape_fails_the_tests_call_phase(
    pytester, run
):
    pytester.makepyfile(SHAPELESS.format(expr=RESHAPE))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_x _*",
            "E *ShapelessError: f [[]compiled[]] compiled shapeless is wrong at another input"
            " shape: replayed with x (2, 3, 2) -> (4, 6, 4), differs from eager at out: shape"
            " differs: eager (24, 4), compiled (6, 16)",
            "*where: f defined at test_a_shapeless_reshape*.py:5; the test's 1 call(s) agreed"
            " with eager, but none of them used these sizes",
            "*hint: the shapeless trace read .shape at test_a_shapeless_reshape*.py:7",
            "*fix: use shape-free operations (x.flatten(0, 1)*, or drop shapeless=True from f's"
            " mx.compile",
            "All traceback entries are hidden.*",
            "FAILED test_*.py::test_x*",  # CI=true: pytest prints the message too
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_a_shapeless_sum_over_size_tested_at_one_shape_fails_the_probe(pytester, run):
    pytester.makepyfile(SHAPELESS.format(expr="mx.sum(x) / x.size"))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: f [[]compiled[]] * differs from eager at out: shape () float32;*",
            "*hint: the shapeless trace read .size at *.py:7",
        ]
    )


@pytest.mark.parametrize("expr", ["x.flatten(0, 1)", "mx.mean(x)"])
def test_shape_free_shapeless_functions_pass_the_probe_without_a_note(pytester, run, expr):
    pytester.makepyfile(SHAPELESS.format(expr=expr))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*= shapeless =*")


@pytest.mark.parametrize("expr", ["x.flatten(0, 1)", "mx.mean(x)"])
def test_shape_free_undeclared_functions_pass_the_shapeless_variant(pytester, run, expr):
    pytester.makepyfile(UNDECLARED.format(expr=expr))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*= shapeless =*")


def test_a_shapeless_graph_that_raises_at_the_tests_second_shape_is_a_shapeless_error(
    pytester, run
):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        @partial(mx.compile, shapeless=True)
        def f(x):
            return x.reshape(x.shape[0] * x.shape[1])

        @pytest.mark.compiled
        def test_x():
            f(mx.ones((2, 4)))
            f(mx.ones((3, 6)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: f [[]compiled[]] call 2: the shapeless graph fails at new input"
            " sizes (x (2, 4) -> (3, 6)): [[]reshape[]] Cannot reshape array of size 18 into"
            " shape (8).",
            "E *hint: the shapeless trace read .shape at *.py:7",
        ]
    )


def test_a_declared_shapeless_graph_that_rejects_new_sizes_still_raises_the_valueerror_a_test_expects(
    pytester, run
):
    # MLX's test_shapeless_compile_with_reshape expects this ValueError; the diagnosis used to
    # replace it with a plain ShapelessError, which assertRaises(ValueError) did not catch.
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        @partial(mx.compile, shapeless=True)
        def f(x):
            return x.reshape(x.shape[0] * x.shape[1])

        @pytest.mark.compiled
        def test_expects_it():
            f(mx.ones((2, 4)))
            with pytest.raises(ValueError, match="Cannot reshape"):
                f(mx.ones((3, 6)))

        @pytest.mark.compiled
        def test_does_not():
            f(mx.ones((2, 4)))
            f(mx.ones((3, 6)))
        """
    )
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *pytest_mlxcompile.errors.ShapelessError: f [[]compiled[]] call 2: the shapeless"
            " graph fails at new input sizes (x (2, 4) -> (3, 6)): *",
            "FAILED *::test_does_not*",
        ]
    )


def test_an_undeclared_function_wrong_at_the_tests_own_second_shape_still_fails(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def f(x):
            return x.reshape(x.shape[0] * x.shape[1])

        @pytest.mark.compiled(modes=["shapeless"])
        def test_x():
            f(mx.ones((2, 4)))
            f(mx.ones((3, 6)))
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: f [[]shapeless[]] call 2: the shapeless graph fails at new input"
            " sizes (x (2, 4) -> (3, 6)): *",
            "E *fix: *; f is not declared shapeless=True, so if you never compile it shapeless"
            " leave this variant out: @pytest.mark.compiled(modes=[[]'eager', 'compiled'[]])",
        ]
    )


def test_a_function_declared_shapeless_that_mlx_cannot_compile_shapeless_is_a_shapeless_error(
    pytester, run
):
    pytester.makepyfile(SHAPELESS.format(expr="x[1:]"))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: f [[]compiled[]] call 1: it is declared shapeless=True, but MLX"
            " cannot compile it shapeless: [[]Primitive::output_shapes[]] Slice cannot infer"
            " output shapes.",
            "E *fix: drop shapeless=True from f's mx.compile, or replace the operation MLX names",
        ]
    )


def test_an_undeclared_function_wrong_only_at_invented_sizes_skips_its_shapeless_variant_with_a_note(
    pytester, run
):
    pytester.makepyfile(UNDECLARED.format(expr=RESHAPE))
    result = run("--mlx-compile-matrix", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*= shapeless =*",
            "test_*.py::test_x[[]shapeless[]]: f (test_*.py:5) is not shapeless-safe: compiled"
            " shapeless it is wrong at sizes the test did not use (the trace read .shape at"
            " test_*.py:7). *",
            "SKIPPED [[]1[]] test_*.py:9: f (test_*.py:5) is not shapeless-safe: compiled"
            " shapeless it is wrong at sizes the test did not use (the trace read .shape at"
            " test_*.py:7). It is not declared shapeless=True, so MLX never compiles it"
            " shapeless outside this variant",
            "*2 passed, 1 skipped*",
        ]
    )


def test_the_json_report_lists_what_is_not_shapeless_safe(pytester, run):
    pytester.makepyfile(UNDECLARED.format(expr=RESHAPE))
    run("--mlx-compile-matrix", "--mlx-report-json=report.json").assert_outcomes(
        passed=2, skipped=1
    )
    doc = json.loads((pytester.path / "report.json").read_text())
    assert validate(doc, SCHEMA) == []
    [note] = doc["shapeless"]
    assert note["nodeid"].endswith("::test_x[shapeless]")
    assert (note["kind"], note["function"], note["mode"]) == (
        "not_shapeless_safe",
        "f",
        "shapeless",
    )
    assert note["message"].splitlines()[1] == (
        "  replayed with x (2, 3, 2) -> (4, 6, 4): differs from eager at out: shape differs: "
        "eager (24, 4), compiled (6, 16)"
    )
    assert note["where"] == "test_the_json_report_lists_what_is_not_shapeless_safe.py:5"
    outcomes = {t["nodeid"].rsplit("[", 1)[1]: t["outcome"] for t in doc["tests"]}
    assert outcomes == {"eager]": "passed", "compiled]": "passed", "shapeless]": "skipped"}


UNFLATTEN = """
from functools import partial
import mlx.core as mx
import pytest

def fun(x):
    return mx.unflatten(x, -1, (4, -1))

declared = mx.compile(fun, shapeless=True)
undeclared = mx.compile(fun)

@pytest.mark.compiled
def test_declared():
    assert declared(mx.zeros((1, 1, 128))).shape == (1, 1, 4, 32)

@pytest.mark.compiled
def test_undeclared():
    assert undeclared(mx.zeros((1, 1, 128))).shape == (1, 1, 4, 32)
"""


def test_mlx_unflatten_baking_its_minus_one_fails_when_declared_and_is_a_note_when_not(
    pytester, run
):
    pytester.makepyfile(UNFLATTEN)
    result = run("--mlx-compile-matrix", "-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: fun [[]compiled[]] compiled shapeless is wrong at another input"
            " shape: replayed with x (1, 1, 128) -> (1, 1, 256), differs from eager at out:"
            " shape differs: eager (1, 1, 4, 64), compiled (1, 1, 4, 32)",
            "*= shapeless =*",
            "test_*.py::test_undeclared[[]shapeless[]]: fun (test_*.py:5) is not"
            " shapeless-safe: compiled shapeless it is wrong at sizes the test did not use. *",
            "FAILED test_*.py::test_declared[[]compiled[]]*",
            "FAILED test_*.py::test_declared[[]shapeless[]]*",
        ]
    )


def test_a_nested_helper_follows_its_own_declaration(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        @partial(mx.compile, shapeless=True)
        def pairs(x):
            return x.reshape(x.shape[0] * x.shape[1], -1)

        @mx.compile
        def model(x):
            return pairs(x) * 2

        @pytest.mark.compiled
        def test_model():
            model(mx.ones((2, 3, 2)))

        @pytest.mark.compiled
        def test_pairs():
            pairs(mx.ones((2, 3, 2)))
        """
    )
    result = run("--mlx-compile-matrix", "-p", "no:randomly", "-rfs")
    # model: the [compiled] graph retraces pairs with it at every shape, so only the forced
    # [shapeless] variant is wrong, a note; pairs, called directly, fails as it is declared.
    result.assert_outcomes(passed=3, failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_*.py::test_pairs[[]compiled[]]*",
            "FAILED test_*.py::test_pairs[[]shapeless[]]*",
            "SKIPPED [[]1[]] test_*.py:13: model (test_*.py:9) is not shapeless-safe: *",
        ]
    )


def test_a_closure_over_a_loop_variable_is_not_replayed_after_the_variable_moved_on(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled
        def test_loop_of_shapeless_functions():
            x = mx.array([1.0, 2.0, 3.0])
            for reduction in (mx.sum, mx.argmax):

                def fun(x):
                    return reduction(x)

                cfun = mx.compile(fun, shapeless=True)
                assert mx.array_equal(cfun(x), fun(x))
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*= shapeless =*",
            "test_*.py::test_loop_of_shapeless_functions[[]compiled[]]:"
            " test_loop_of_shapeless_functions.<locals>.fun (test_*.py:9) [[]compiled[]]:"
            " shapeless probe skipped: what it reads was rebound after its graph was traced:"
            " closure variable 'reduction' (sum then, argmax now); a replay would compare"
            " different code, not shapes (a closure over a loop variable, a reassigned global)",
            "test_*.py::test_loop_of_shapeless_functions[[]shapeless[]]: *shapeless probe skipped*",
        ]
    )


def test_a_base_exception_escaping_a_shapeless_trace_leaves_no_shape_spy_behind(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        ORIG = mx.array.__dict__["shape"]

        class Stop(BaseException):
            pass

        @mx.compile
        def stops(x):
            n = x.shape[0]
            raise Stop()

        @pytest.mark.compiled(modes=["shapeless"])
        def test_spy_removed():
            with pytest.raises(Stop):
                stops(mx.ones((2,)))
            assert mx.array.__dict__["shape"] is ORIG, "the shape spy is still installed"
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=1)


def test_the_probe_replays_a_large_argument_at_smaller_sizes_not_larger_ones(pytester, run):
    # 4 MiB of arguments: doubling every size would replay with 32 MiB (and two outputs).
    pytester.makepyfile(
        SHAPELESS.format(expr=RESHAPE).replace(
            "mx.arange(12.0).reshape(2, 3, 2)", "mx.zeros((64, 128, 128))"
        )
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ShapelessError: f [[]compiled[]] compiled shapeless is wrong at another input"
            " shape: replayed with x (64, 128, 128) -> (32, 64, 64), differs from eager at out:"
            " shape differs: eager (2048, 64), compiled (8192, 16)",
        ]
    )


def test_a_replay_above_the_byte_budget_is_skipped_with_a_note_and_evaluates_nothing(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def double(x):
            return x * 2

        @pytest.mark.compiled(modes=["shapeless"])
        def test_shape_only():
            mx.reset_peak_memory()
            w = mx.random.normal((1024, 1024))  # 4 MiB, never evaluated by the test
            assert double(w).shape == (1024, 1024)

        def test_nothing_was_evaluated():
            assert mx.get_peak_memory() < 2**20
        """
    )
    result = run(
        "--mlx-compile-matrix",
        "--mlx-parity=off",
        "--mlx-max-check-bytes=1MiB",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= shapeless =*",
            "test_*.py::test_shape_only[[]shapeless[]]: double (test_*.py:4) [[]shapeless[]]:"
            " shapeless probe skipped: its smallest replay would evaluate ~4.0 MiB (arguments,"
            " captured arrays, declared state, outputs), above --mlx-max-check-bytes=1.0 MiB;"
            " raise it, or pass 0 for no limit, to probe it",
        ]
    )


def test_a_replay_counts_the_arrays_the_function_reaches_toward_the_byte_budget(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        W = mx.zeros((512, 1024))  # 2 MiB of weights the function reads

        @mx.compile
        def project(x):
            return x @ W

        @pytest.mark.compiled(modes=["shapeless"])
        def test_project():
            project(mx.ones((2, 512)))
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-max-check-bytes=1MiB")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*shapeless probe skipped: its smallest replay would evaluate ~2.0 MiB*"]
    )


def test_the_probe_does_not_run_after_the_test_failed(pytester, run):
    pytester.makepyfile(
        SHAPELESS.format(expr=RESHAPE).replace(
            "f(mx.arange(12.0).reshape(2, 3, 2))",
            "f(mx.arange(12.0).reshape(2, 3, 2))\n    assert False, 'the test itself'",
        )
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *AssertionError: the test itself"])
    result.stdout.no_fnmatch_line("*ShapelessError*")


@pytest.mark.parametrize("value", ["lots", "-1", "2XB"])
def test_a_bad_max_check_bytes_is_a_usage_error_naming_the_value(pytester, run, value):
    pytester.makepyfile("def test_x(): pass")
    result = run(f"--mlx-max-check-bytes={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-mlxcompile: --mlx-max-check-bytes: '{value}' is not a size: give"
            " bytes as an int or a number with a unit (512MiB, 2GB); 0 means no limit"
        ]
    )


def test_the_shapeless_probe_of_a_function_with_declared_state_finds_nothing_when_it_is_clean(
    pytester, run
):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        totals = {"sum": mx.array(0.0)}

        @partial(mx.compile, inputs=totals, outputs=totals, shapeless=True)
        def accumulate(x):
            totals["sum"] = totals["sum"] + x.sum()
            return x * 2

        @pytest.mark.compiled(modes=["shapeless"])
        def test_accumulate():
            accumulate(mx.ones((2, 3)))
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=1)


def test_a_graph_made_stale_after_the_last_call_is_not_probed(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        W = mx.ones((3,))

        @partial(mx.compile, shapeless=True)
        def scale(x):
            return x * W[0]

        @pytest.mark.compiled(modes=["compiled"])
        def test_scale():
            global W
            scale(mx.ones((2, 3)))
            W[0] = 5.0  # the graph froze the old W: a replay would differ, but not by shape
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*= shapeless =*")


def test_arguments_the_probe_cannot_rebuild_are_a_note_not_a_crash(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        class Odd(list):  # a list whose constructor the replay cannot call
            def __init__(self, a, b):
                super().__init__([a, b])

        @partial(mx.compile, shapeless=True)
        def add(pair):
            return pair[0] + pair[1]

        @pytest.mark.compiled(modes=["compiled"])
        def test_add():
            add(Odd(mx.ones((2, 3)), mx.ones((2, 3))))
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= shapeless =*",
            "test_*.py::test_add[[]compiled[]]: add (test_*.py:9) [[]compiled[]]: shapeless probe"
            " skipped: its arguments could not be replayed at other sizes: *",
        ]
    )


def test_the_ini_twin_sets_the_byte_budget_of_the_probe(pytester, run):
    pytester.makeini("[pytest]\nmlx_max_check_bytes = 1KiB\n")
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        @partial(mx.compile, shapeless=True)
        def double(x):
            return x * 2

        @pytest.mark.compiled
        def test_double():
            double(mx.ones((16, 16)))
        """
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*shapeless probe skipped: its smallest replay would evaluate ~1.1 KiB (*), above"
            " --mlx-max-check-bytes=1.0 KiB;*"
        ]
    )


def test_the_probe_s_eager_replays_put_back_the_numbers_they_bump(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        calls = [0]

        @mx.compile
        def step(x):
            calls[0] += 1  # numbers it bumps are put back; appends stay (docs/how-it-works.md)
            return x * 2

        @pytest.mark.compiled
        def test_step():
            step(mx.ones(4))

        def test_after():
            assert calls == [1], calls
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=shapeless", "--mlx-parity=off", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::test_after PASSED*"])


def test_a_compiled_gradient_that_reads_a_shape_is_probed_and_named_not_shapeless_safe(
    pytester, run
):
    # mx.value_and_grad(f) runs the plugin's transform wrapper, whose own globals change at
    # every call: the probe judges what f reads, and is not skipped as "rebound"
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        def mean_loss(x):
            return x.sum() / x.shape[0]  # the size baked in at trace time

        step = mx.compile(mx.value_and_grad(mean_loss))

        @pytest.mark.compiled
        def test_step():
            value, grad = step(mx.ones(4))
            mx.eval(value, grad)
        """
    )
    result = run("--mlx-compile-matrix", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *value_and_grad(mean_loss) (test_*.py:4) is not shapeless-safe: "
            "compiled shapeless it is wrong at sizes the test did not use (the trace read .shape "
            "at test_*.py:5)*"
        ]
    )
    result.stdout.no_fnmatch_line("*shapeless probe skipped*")
