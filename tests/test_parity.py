from __future__ import annotations

import pytest


@pytest.fixture
def run(run):
    """These tests exercise parity itself: the sanitizer, which diagnoses many of the same bugs
    earlier and more precisely (tests/test_sanitize.py), is off."""
    return lambda *args: run("--mlx-sanitize=off", *args)


STALE_GLOBAL = """
    import mlx.core as mx
    import pytest

    W = mx.array([1.0, 2.0, 3.0])

    @mx.compile
    def scale(x):
        return x * W

    @pytest.mark.compiled
    def test_reassigned_global():
        global W
        W = mx.array([1.0, 2.0, 3.0])
        scale(mx.ones(3))
        W = mx.array([10.0, 20.0, 30.0])
        scale(mx.ones(3))
"""


def test_a_global_reassigned_between_calls_fails_both_compiled_variants_at_call_2(pytester, run):
    pytester.makepyfile(STALE_GLOBAL)
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_reassigned_global[[]eager[]] PASSED*",
            "*::test_reassigned_global[[]compiled[]] FAILED*",
            "*::test_reassigned_global[[]shapeless[]] FAILED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: scale [[]compiled[]] call 2 differs from eager at out",
            "E *shape (3,) float32; mismatched 3 / 3 (100.0%); greatest abs diff 2.7e+01 at (2,);",
            "E *greatest rel diff 9.0e-01 at (0,); rtol 1.3e-06 atol 1e-05 (float32 defaults)",
            "E *at (2,): eager 30, compiled 3",
            "E *where: scale defined at test_*.py:6; traced 1 time(s) in this test; "
            "this call reused the graph",
            "E *fix: pass it as an argument, or declare it with mx.compile(..., inputs=*",
        ]
    )


def test_parity_off_lets_the_stale_global_through(pytester, run):
    pytester.makepyfile(STALE_GLOBAL)
    result = run("--mlx-compile-matrix", "--mlx-parity=off")
    result.assert_outcomes(passed=3)


def test_parity_first_checks_only_the_call_after_each_trace(pytester, run):
    pytester.makepyfile(STALE_GLOBAL)
    result = run("--mlx-parity=first")
    result.assert_outcomes(passed=1)


def test_the_marker_parity_argument_overrides_the_option(pytester, run):
    pytester.makepyfile(
        STALE_GLOBAL.replace("@pytest.mark.compiled", "@pytest.mark.compiled(parity='off')")
    )
    result = run("--mlx-parity=all")
    result.assert_outcomes(passed=1)


def test_a_difference_within_the_tolerance_passes_and_beyond_it_fails(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        bias = mx.array(0.0)

        @mx.compile
        def shift(x):
            return x + bias

        def drift(amount):
            global bias
            shift(mx.ones(4))
            bias = mx.array(amount)
            shift(mx.ones(4))

        @pytest.mark.compiled(atol=1e-3, rtol=0)
        def test_small_drift():
            drift(5e-4)

        @pytest.mark.compiled(atol=1e-3, rtol=0)
        def test_large_drift():
            drift(5e-2)
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*rtol 0.0e+00 atol 1e-03 (set by the test)*"])


def test_tolerance_options_apply_to_every_dtype(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        bias = mx.array(0.0, dtype=mx.float16)

        @mx.compile
        def shift(x):
            return x + bias

        @pytest.mark.compiled
        def test_drift():
            global bias
            shift(mx.ones(4, dtype=mx.float16))
            bias = mx.array(0.01, dtype=mx.float16)
            shift(mx.ones(4, dtype=mx.float16))
        """
    )
    run().assert_outcomes(failed=1)
    run("--mlx-atol=0.1").assert_outcomes(passed=1)


def test_integer_results_compare_exactly(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        offset = mx.array(0)

        @mx.compile
        def add(x):
            return x + offset

        @pytest.mark.compiled(atol=10)
        def test_ints():
            global offset
            add(mx.zeros(2, dtype=mx.int32))
            offset = mx.array(1)
            add(mx.zeros(2, dtype=mx.int32))
        """
    )
    result = run()
    # atol applies to every dtype when the test sets it: 1 is within 10
    result.assert_outcomes(passed=1)


def test_declared_state_after_the_call_is_compared_too(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        counter = {"n": mx.array(0.0)}
        step_size = mx.array(1.0)

        @partial(mx.compile, inputs=counter, outputs=counter)
        def tick(x):
            counter["n"] = counter["n"] + step_size
            return x

        @pytest.mark.compiled
        def test_tick():
            global step_size
            tick(mx.ones(1))
            step_size = mx.array(5.0)
            tick(mx.ones(1))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E *ParityError: tick [[]compiled[]] call 2 differs from eager at inputs[[]'n'[]]"]
    )


def test_a_tree_structure_difference_is_reported_with_both_sides(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        mode = {"pair": False}

        @mx.compile
        def f(x):
            return (x, x) if mode["pair"] else (x,)

        @pytest.mark.compiled
        def test_structure():
            f(mx.ones(1))
            mode["pair"] = True
            f(mx.ones(1))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: f [[]compiled[]] call 2 differs from eager at out",
            "E *tree structure differs",
            "E *eager tuple of 2",
            "E *compiled tuple of 1",
        ]
    )


def test_the_compiled_state_is_what_the_test_sees_after_a_checked_call(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import pytest

        state = {"count": mx.array(0)}

        @partial(mx.compile, inputs=state, outputs=state)
        def bump(x):
            state["count"] = state["count"] + 1
            return x

        @pytest.mark.compiled
        def test_counts_each_call_once():
            state["count"] = mx.array(0)
            for _ in range(3):
                bump(mx.ones(1))
            assert state["count"].item() == 3
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=3)
