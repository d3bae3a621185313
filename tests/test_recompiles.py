from __future__ import annotations

import fnmatch
import json

import pytest

ROPE = """
    import mlx.core as mx
    import pytest

    @mx.compile
    def rope(x, offset):
        return x + offset

    @pytest.mark.compiled
    def test_decode():
        for offset in OFFSETS:
            rope(mx.ones((4, 16)), offset)
"""

LENGTHS = """
    import mlx.core as mx
    import pytest

    @mx.compile
    def encode(x):
        return x * 2

    @pytest.mark.compiled{marker}
    def test_lengths(mlx_recompiles, mlx_mode):
        for n in range(1, 11):
            encode(mx.ones((n, 16)))
        print(f"{{mlx_mode}} traces: {{mlx_recompiles.count(encode)}}")
"""


def test_a_new_python_string_each_batch_fails_naming_the_argument_and_two_values(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def loss(x, text):
            return (x * len(text)).sum()

        @pytest.mark.compiled
        def test_train():
            for text in ["the", "cat", "sat"]:
                loss(mx.ones((4,)), text)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*loss(mx.ones((4,)), text)",
            "E*RecompileError: loss [[]compiled[]] call 2 retraced: "
            "arg 1 'text' (str) 'the' -> 'cat'",
            "E*where: loss defined at test_*.py:4, compiled at test_*.py:4",
            "E*budget: auto (the default, --mlx-max-recompiles=auto): a retrace caused only by "
            "Python constants (int/float/str values) fails",
            "E*trace  call  reason",
            "E*    1     1  first trace: arg 0 'x' array (4,) float32, arg 1 'text' str 'the'",
            "E*    2     2  arg 1 'text' (str) 'the' -> 'cat'",
            "E*why: MLX bakes Python int/float/str arguments into the graph as constants*",
            "E*fix: pass the value as an mx.array (e.g. mx.array(offset))*",
        ]
    )


def test_the_same_python_string_every_batch_passes(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def loss(x, text):
            return (x * len(text)).sum()

        @pytest.mark.compiled
        def test_train():
            for _ in range(3):
                loss(mx.ones((4,)), "the")
        """
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*recompiles*")


def test_a_growing_int_offset_fails_naming_offset_old_and_new(pytester, run):
    pytester.makepyfile(ROPE.replace("OFFSETS", "[7, 8, 9]"))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: rope [[]compiled[]] call 2 retraced: arg 1 'offset' (int) 7 -> 8",
            "E*fix: pass the value as an mx.array*",
        ]
    )


def test_an_offset_passed_as_an_mx_array_passes(pytester, run):
    pytester.makepyfile(ROPE.replace("OFFSETS", "[mx.array(o) for o in (7, 8, 9)]"))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)


def test_ten_sequence_lengths_pass_in_compiled_and_are_listed_in_the_summary(pytester, run):
    pytester.makepyfile(LENGTHS.format(marker=""))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*compiled traces: 10",
            "*= recompiles =*",
            "test_*.py::test_lengths[[]compiled[]]: encode (test_*.py:4) traced 10 times",
            "  trace 2 (call 2): arg 0 'x' shape (1, 16) -> (2, 16)",
            "  trace 3 (call 3): arg 0 'x' shape (2, 16) -> (3, 16)",
        ]
    )


def test_the_recompiles_section_is_the_same_under_xdist(pytester, run):
    pytester.makepyfile(LENGTHS.format(marker=""))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= recompiles =*",
            "test_*.py::test_lengths[[]compiled[]]: encode (test_*.py:4) traced 10 times",
            "  trace 2 (call 2): arg 0 'x' shape (1, 16) -> (2, 16)",
        ]
    )


def test_ten_sequence_lengths_fail_with_a_budget_of_zero_showing_the_shape_reason(pytester, run):
    pytester.makepyfile(LENGTHS.format(marker="(max_recompiles=0)"))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: encode [[]compiled[]] call 2 retraced: "
            "arg 0 'x' shape (1, 16) -> (2, 16)",
            "E*budget: 0 retrace(s) after the first trace "
            "(@pytest.mark.compiled(max_recompiles=0)): this is retrace 1",
            "E*fix: compile with shapeless=True if the function is shape-agnostic*"
            "or pad inputs to a few bucket sizes",
        ]
    )


def test_ten_sequence_lengths_trace_once_in_shapeless(pytester, run):
    pytester.makepyfile(LENGTHS.format(marker="(max_recompiles=0)"))
    result = run("--mlx-compile-matrix", "--mlx-modes=shapeless", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*shapeless traces: 1"])


def test_the_option_sets_the_budget_for_every_test(pytester, run):
    pytester.makepyfile(LENGTHS.format(marker=""))
    result = run("--mlx-max-recompiles=3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: encode [[]compiled[]] call 5 retraced: "
            "arg 0 'x' shape (4, 16) -> (5, 16)",
            "E*budget: 3 retrace(s) after the first trace (--mlx-max-recompiles=3): "
            "this is retrace 4",
        ]
    )


def test_a_per_mode_marker_budget_applies_only_to_its_mode(pytester, run):
    pytester.makepyfile(LENGTHS.format(marker='(max_recompiles={"compiled": 2})'))
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_lengths[[]eager[]] PASSED*",
            "*::test_lengths[[]compiled[]] FAILED*",
            "*::test_lengths[[]shapeless[]] PASSED*",
            "E*budget: 2 retrace(s) after the first trace "
            "(@pytest.mark.compiled(max_recompiles={'compiled': 2})): this is retrace 3",
        ]
    )


def test_a_new_rank_retraces_in_both_modes_and_is_listed_not_failed(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def double(x):
            return x * 2

        @pytest.mark.compiled
        def test_ranks():
            double(mx.ones((4, 16)))
            double(mx.ones((2, 4, 16)))
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= recompiles =*",
            "test_*.py::test_ranks[[]compiled[]]: double (test_*.py:4) traced 2 times",
            "  trace 2 (call 2): arg 0 'x' ndim 2 -> 3: shape (4, 16) -> (2, 4, 16)",
        ]
    )


def test_a_lambda_compiled_inside_the_function_under_test_fails_naming_the_new_object(
    pytester, run
):
    pytester.makepyfile(
        model="""
        import mlx.core as mx

        def scaled(x):
            return mx.compile(lambda y: y * 2)(x)
        """,
        test_model="""
        import mlx.core as mx
        import pytest
        from model import scaled

        @pytest.mark.compiled
        def test_steps():
            for _ in range(3):
                scaled(mx.ones(3))
        """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: scaled.<locals>.<lambda> [[]compiled[]] call 2 retraced: new "
            "function object compiled from the same code at model.py:4 "
            "(mx.compile called inside a loop or a function?)",
            "E*fix: hoist mx.compile out of the loop or function*",
        ]
    )


def test_parametrized_cases_that_each_compile_a_fresh_function_once_pass(pytester, run):
    # chex's process-wide counter fails the second case (reference/anchors-jax.md §2a)
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.parametrize("k", [1, 2, 3])
        @pytest.mark.compiled(max_recompiles=0)
        def test_case(k):
            @mx.compile
            def g(x):
                return x * k

            assert g(mx.ones(2)).tolist() == [k, k]
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=9)


def test_mlx_recompiles_counts_and_explains_each_trace(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def step(x, mask=None):
            return x if mask is None else x * mask

        def test_history(mlx_recompiles):
            step(mx.ones((2, 3)))
            step(mx.ones((2, 3)))
            step(mx.ones((2, 3)), mask=mx.ones((2, 3)))
            step(mx.ones((2, 3), dtype=mx.float16))
            assert mlx_recompiles.count(step) == 3
            for event in mlx_recompiles.history(step):
                print(event.trace, event.call, "|", *event.reason_texts)
        """
    )
    result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*1 1 | first trace: arg 0 'x' array (2, 3) float32",
            "2 3 | kwarg 'mask' added (array (2, 3) float32)",
            "3 4 | arg 0 'x' dtype float32 -> float16",
        ]
    )


def test_mlx_recompiles_budget_fails_on_a_retrace_inside_the_block_only(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        @mx.compile
        def encode(x):
            return x * 2

        def test_warm_then_steady(mlx_recompiles):
            for n in (1, 2, 3):
                encode(mx.ones((n, 8)))
            with mlx_recompiles.budget(0, fn=encode):
                encode(mx.ones((3, 8)))
                encode(mx.ones((4, 8)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*encode(mx.ones((4, 8)))",
            "E*RecompileError: encode [[]compiled[]] call 5 retraced: "
            "arg 0 'x' shape (3, 8) -> (4, 8)",
            "E*budget: 0 retrace(s) after the first trace (mlx_recompiles.budget(0)): "
            "this is retrace 1",
            "E*    4     5  arg 0 'x' shape (3, 8) -> (4, 8)",
        ]
    )


def test_true_after_1_warns_that_mlx_silently_reused_the_graph(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        @mx.compile
        def scale(x, factor):
            return x * factor

        def test_flags(mlx_recompiles):
            scale(mx.ones(2), 1)
            scale(mx.ones(2), True)
        """
    )
    result = run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestWarning: pytest-mlxcompile: scale [[]compiled[]] call 2 reused a graph traced "
            "for other argument values: arg 1 'factor' int 1 -> bool True.*",
        ]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mlx-max-recompiles=-1"], "--mlx-max-recompiles: '-1' is not 'auto' or an int >= 0"),
        (["--mlx-max-recompiles=lots"], "--mlx-max-recompiles: 'lots' is not 'auto' or an int*"),
        (
            ["-o", "mlx_max_recompiles=never"],
            "mlx_max_recompiles = never (ini file): 'never' is not 'auto' or an int >= 0",
        ),
    ],
)
def test_a_bad_max_recompiles_option_is_a_usage_error_naming_the_value(
    pytester, run, args, message
):
    pytester.makepyfile("def test_x(): pass")
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-mlxcompile: {message}"])


def test_a_bad_max_recompiles_marker_value_is_a_collection_error_naming_it(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(max_recompiles=-2)
        def test_x():
            pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.compiled on *test_x: max_recompiles=-2 must be*"])


def test_max_recompiles_as_a_decorator_in_a_plain_script_raises_on_the_second_shape(pytester):
    script = pytester.makepyfile(
        """
        import mlx.core as mx
        from pytest_mlxcompile import max_recompiles

        @max_recompiles(0)
        @mx.compile
        def step(x):
            return x * 2

        step(mx.ones((2, 3)))
        step(mx.ones((2, 3)))
        print("same shape: ok")
        step(mx.ones((4, 3)))
        """
    )
    result = pytester.runpython(script)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["same shape: ok"])
    result.stderr.fnmatch_lines(
        [
            "pytest_mlxcompile.errors.RecompileError: step call 3 retraced: "
            "arg 0 'x' shape (2, 3) -> (4, 3)",
            "  budget: 0 retrace(s) after the first trace (max_recompiles(0)): this is retrace 1",
            "      2     3  arg 0 'x' shape (2, 3) -> (4, 3)",
        ]
    )


def test_max_recompiles_as_a_context_manager_in_a_plain_script_raises_on_the_second_shape(
    pytester,
):
    script = pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest_mlxcompile

        step = mx.compile(lambda x: x + 1)
        step(mx.ones((2, 3)))
        with pytest_mlxcompile.max_recompiles(0):
            step(mx.ones((2, 3)))
            step(mx.ones((2, 3)))
            print("same shape: ok")
            step(mx.ones((4, 3)))
        """
    )
    result = pytester.runpython(script)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["same shape: ok"])
    result.stderr.fnmatch_lines(
        [
            "pytest_mlxcompile.errors.RecompileError: <lambda> call 3 retraced: "
            "arg 0 'x' shape (2, 3) -> (4, 3)",
        ]
    )


def test_max_recompiles_under_mx_compile_counts_the_body_runs_in_a_plain_script(pytester):
    script = pytester.makepyfile(
        """
        import mlx.core as mx
        from pytest_mlxcompile import max_recompiles

        @mx.compile
        @max_recompiles(1)
        def step(x, n):
            return x * n

        step(mx.ones(2), 1)
        step(mx.ones(3), 1)
        print("one retrace: ok")
        step(mx.ones(3), 2)
        """
    )
    result = pytester.runpython(script)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["one retrace: ok"])
    result.stderr.fnmatch_lines(
        ["pytest_mlxcompile.errors.RecompileError: step trace 3 retraced: arg 1 'n' (int) 1 -> 2"]
    )


def test_each_trace_is_recorded_as_plain_data_on_the_function_record():
    mx = pytest.importorskip("mlx.core")
    from pytest_mlxcompile import instrument
    from pytest_mlxcompile.modes import Mode
    from pytest_mlxcompile.recompiles import RecompileObserver

    instrument.install(mx)

    def scale(x, factor):
        return x * factor

    compiled = instrument.instrumented_compile(scale)
    observer = RecompileObserver(Mode.COMPILED, None)
    run = instrument.VariantRun(Mode.COMPILED, label="t", parity="off", observers=[observer])
    run.start()
    try:
        compiled(mx.ones(2), 2)
        compiled(mx.ones(2), 2)
        compiled(mx.ones(2), 3)
    finally:
        run.stop()
    (record,) = run.records.values()
    records = record.extra["recompiles"]
    assert json.loads(json.dumps(records)) == records
    assert [(r["trace"], r["call"], r["reasons"]) for r in records] == [
        (1, 1, ["first trace: arg 0 'x' array (2,) float32, arg 1 'factor' int 2"]),
        (2, 3, ["arg 1 'factor' (int) 2 -> 3"]),
    ]


def test_a_compiled_loss_under_mx_grad_is_reported_as_tracing_on_every_call(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        @mx.compile
        def loss(w, x):
            return (w * x).sum()

        def test_train(mlx_compile):
            grad = mx.grad(loss)
            for _ in range(3):
                grad(mx.ones(2), mx.ones(2))
        """
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= recompiles =*",
            "test_*.py::test_train: loss (test_*.py:3) traced 3 times",
            "  trace 2: called under mx.grad, which traces compiled functions every call",
        ]
    )


def _signature(*args, **kwargs):
    from pytest_mlxcompile.signature import parameter_names, signature_of

    def step(x, xs=None, offset=0, *rest, **options):
        pass

    return signature_of(args, kwargs, names=parameter_names(step))


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        ("(x(4, 16),)", "(x(8, 16),)", "structure-free: arg 0 'x' shape (4, 16) -> (8, 16)"),
        ("(x(4,), None, 7)", "(x(4,), None, 8)", "arg 2 'offset' (int) 7 -> 8"),
        ("(x(4,), None, 1)", "(x(4,), None, 1.0)", "arg 2 'offset' int 1 -> float 1.0"),
        ("(x(4,), [x(2)] * 2)", "(x(4,), [x(2)] * 3)", "arg 1 'xs' list of 2 -> list of 3"),
        ("(x(4,), {'a': 1, 'b': 2})", "(x(4,), {'b': 2, 'a': 1})", "arg 1 'xs' dict key order*"),
        ("(x(4,), [x(2), 3])", "(x(4,), [x(2), 4])", "arg 1 'xs'[[]1[]] (int) 3 -> 4"),
        ("(x(4,), None, 0, 5)", "(x(4,), None, 0, 6)", "arg 3 (*rest) (int) 5 -> 6"),
        ("(x(4,),)", "(x(4,), x(4,))", "arg 1 'xs' added (array (4,) float32)"),
    ],
)
def test_a_signature_diff_names_the_argument_and_the_old_and_new_values(before, after, reason):
    mx = pytest.importorskip("mlx.core")
    from pytest_mlxcompile.signature import diff

    def x(*shape):
        return mx.ones(shape)

    old = _signature(*eval(before, {"x": x}))
    new = _signature(*eval(after, {"x": x}))
    texts = [r.text for r in diff(old, new)]
    pattern = reason.removeprefix("structure-free: ")
    assert len(texts) == 1, texts
    assert fnmatch.fnmatch(texts[0], pattern), texts


def test_a_kwarg_that_becomes_an_array_and_true_after_1_read_as_users_expect():
    mx = pytest.importorskip("mlx.core")
    from pytest_mlxcompile.signature import diff

    before = _signature(mx.ones(2), mask=None)
    after = _signature(mx.ones(2), mask=mx.ones(2))
    assert [r.text for r in diff(before, after)] == ["kwarg 'mask' None -> array"]
    one, true = _signature(mx.ones(2), None, 1), _signature(mx.ones(2), None, True)
    assert diff(one, true) == []
    assert one.cache_key() == true.cache_key()
    assert one.exact_key() != true.exact_key()


def test_max_recompiles_inside_a_test_budgets_the_decorated_function_and_the_block(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest
        from pytest_mlxcompile import max_recompiles

        @max_recompiles(1)
        @mx.compile
        def encode(x):
            return x * 2

        @mx.compile
        def decode(x):
            return x / 2

        def test_decorated(mlx_compile):
            for n in (1, 2, 3):
                encode(mx.ones(n))

        def test_block(mlx_compile):
            decode(mx.ones(1))
            with max_recompiles(0):
                decode(mx.ones(1))
                decode(mx.ones(2))
        """
    )
    result = run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: encode [[]compiled[]] call 3 retraced: arg 0 'x' shape (2,) -> (3,)",
            "E*budget: 1 retrace(s) after the first trace (max_recompiles(1)): this is retrace 2",
            "E*RecompileError: decode [[]compiled[]] call 3 retraced: arg 0 'x' shape (1,) -> (2,)",
            "E*budget: 0 retrace(s) after the first trace (max_recompiles(0)): this is retrace 1",
        ]
    )


def test_max_recompiles_on_a_function_mlx_compiled_before_the_import_is_a_type_error(pytester):
    script = pytester.makepyfile(
        """
        import mlx.core as mx

        step = mx.compile(lambda x: x)

        from pytest_mlxcompile import max_recompiles

        max_recompiles(0)(step)
        """
    )
    result = pytester.runpython(script)
    assert result.ret == 1
    result.stderr.fnmatch_lines(
        [
            "TypeError: max_recompiles(0) cannot see the traces of <*>: it was compiled by MLX "
            "before pytest-mlxcompile patched mx.compile. Fix: import pytest_mlxcompile before "
            "compiling it, or put @max_recompiles under @mx.compile",
        ]
    )


def test_eager_variants_count_no_traces(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def double(x):
            return x * 2

        @pytest.mark.compiled(modes=["eager"], max_recompiles=0)
        def test_eager(mlx_recompiles):
            for n in (1, 2, 3):
                double(mx.ones(n))
            assert mlx_recompiles.count(double) == 0
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=1)


def test_max_recompiles_under_mx_compile_counts_each_test_variant_on_its_own(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest
        from pytest_mlxcompile import max_recompiles

        @mx.compile
        @max_recompiles(0)
        def double(x):
            return x * 2

        @pytest.mark.compiled
        def test_a():
            double(mx.ones(3)); double(mx.ones(3))

        @pytest.mark.compiled
        def test_b():
            double(mx.ones(3))
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=6)
