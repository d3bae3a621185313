from __future__ import annotations

import pytest


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
