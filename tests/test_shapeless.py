from __future__ import annotations


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
        ["E *ValueError: [[]Primitive::output_shapes[]] Slice cannot infer*"]
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
