from __future__ import annotations

import fnmatch
import json
import sys

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
        for n in range(1, {count}):
            encode(mx.ones((n, 16)))
        print(f"{{mlx_mode}} traces: {{mlx_recompiles.count(encode)}}")
"""


def _section(result: pytest.RunResult, name: str) -> list[str]:
    """The lines of a terminal summary section, without its header."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("=") and f" {name} " in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("="))
    return lines[start + 1 : end]


def test_a_new_python_string_on_every_batch_fails_as_a_storm_naming_the_argument(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def loss(x, text):
            return (x * len(text)).sum()

        @pytest.mark.compiled
        def test_train():
            for text in ["the", "cat", "sat", "on", "a", "mat", "and", "ran"]:
                loss(mx.ones((4,)), text)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*loss(mx.ones((4,)), text)",
            "E*RecompileError: loss [[]compiled[]] call 8 retraced: "
            "arg 1 'text' (str) 'and' -> 'ran'",
            # a decorator's call site is its own line from Python 3.11, the def line before
            "E*where: loss defined at test_*.py:4, compiled at test_*.py:[45]",
            "E*budget: auto (the default, --mlx-max-recompiles=auto): a Python constant new on 8 "
            "of 8 calls (a counter, a per-call value) fails; a few values each reused pass",
            "E*trace  call  reason",
            "E*    1     1  first trace: arg 0 'x' array (4,) float32, arg 1 'text' str 'the'",
            "E*    2     2  arg 1 'text' (str) 'the' -> 'cat'",
            "E*    8     8  arg 1 'text' (str) 'and' -> 'ran'",
            "E*why: MLX bakes Python int/float/str arguments into the graph as constants, so every "
            "new value compiles a new graph, and MLX keeps each one (no eviction, mlx#4464)",
            "E*fix: keep strings out of the compiled function's arguments: work out what the graph "
            "needs from the string before the call and pass that as an mx.array",
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


def test_an_int_offset_new_on_every_call_fails_naming_offset_old_and_new(pytester, run):
    pytester.makepyfile(ROPE.replace("OFFSETS", "range(7, 16)"))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: rope [[]compiled[]] call 8 retraced: arg 1 'offset' (int) 13 -> 14",
            "E*budget: auto (*): a Python constant new on 8 of 8 calls (a counter, a per-call "
            "value) fails; a few values each reused pass",
            "E*fix: pass the value as an mx.array (e.g. mx.array(offset)): arrays are graph "
            "inputs, so one graph serves every value; if it must stay Python (a slice bound, an "
            "axis), call with a few values each reused",
        ]
    )


def test_a_sweep_of_seven_calls_with_a_new_setting_on_nearly_each_passes(pytester, run):
    # Not enough calls to tell a counter from a sweep of settings (STORM_CALLS = 8): mlx-lm's
    # test_sample_utils tries top_p 0.3, 0.95, 0.4, 0.6, 0.95, 0.5
    pytester.makepyfile(ROPE.replace("OFFSETS", "[0.3, 0.95, 0.4, 0.6, 0.95, 0.5, 0.1]"))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(passed=1)


def test_an_offset_passed_as_an_mx_array_passes(pytester, run):
    pytester.makepyfile(ROPE.replace("OFFSETS", "[mx.array(o) for o in (7, 8, 9)]"))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)


def test_six_sequence_lengths_pass_in_compiled_and_are_listed_in_the_summary_with_v(pytester, run):
    pytester.makepyfile(LENGTHS.format(count=7, marker=""))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled", "-s", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*compiled traces: 6",
            "*= recompiles =*",
            "test_*.py::test_lengths: encode (test_*.py:4) traced 6 times in [[]compiled[]]",
            "  trace 2 (call 2): arg 0 'x' shape (1, 16) -> (2, 16)",
            "  trace 3 (call 3): arg 0 'x' shape (2, 16) -> (3, 16)",
        ]
    )


def test_the_recompiles_section_is_the_same_under_xdist(pytester, run):
    pytester.makepyfile(LENGTHS.format(count=7, marker=""))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled", "-n", "2", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= recompiles =*",
            "test_*.py::test_lengths: encode (test_*.py:4) traced 6 times in [[]compiled[]]",
            "  trace 2 (call 2): arg 0 'x' shape (1, 16) -> (2, 16)",
        ]
    )


def test_ten_sequence_lengths_fail_with_a_budget_of_zero_showing_the_shape_reason(pytester, run):
    pytester.makepyfile(LENGTHS.format(count=11, marker="(max_recompiles=0)"))
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
    pytester.makepyfile(LENGTHS.format(count=11, marker="(max_recompiles=0)"))
    result = run("--mlx-compile-matrix", "--mlx-modes=shapeless", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*shapeless traces: 1"])


def test_the_option_sets_the_budget_for_every_test(pytester, run):
    pytester.makepyfile(LENGTHS.format(count=11, marker=""))
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
    pytester.makepyfile(LENGTHS.format(count=11, marker='(max_recompiles={"compiled": 2})'))
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


def test_a_new_rank_retraces_in_both_modes_and_is_listed_once_with_v_not_failed(pytester, run):
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
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless", "-v")
    result.assert_outcomes(passed=2)
    assert _section(result, "recompiles") == [
        "test_a_new_rank_retraces_in_both_modes_and_is_listed_once_with_v_not_failed.py::"
        "test_ranks: double (test_a_new_rank_retraces_in_both_modes_and_is_listed_once_with_v_"
        "not_failed.py:4) traced 2 times in [compiled], 2 in [shapeless]",
        "  trace 2 (call 2): arg 0 'x' ndim 2 -> 3: shape (4, 16) -> (2, 4, 16)",
    ]


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


def test_a_compiled_loss_traced_on_every_call_under_mx_grad_fails_with_the_fix(pytester, run):
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
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*grad(mx.ones(2), mx.ones(2))",
            "E*RecompileError: loss [[]compiled[]] trace 3 retraced: called under mx.grad, which "
            "traces compiled functions every call",
            "E*budget: auto (the default, --mlx-max-recompiles=auto): tracing on every call under "
            "mx.grad fails: 3 traces with this signature from test_*.py:10",
            "E*    1     -  first trace: arg 0 'w' array (2,) float32, arg 1 'x' array (2,) float32",
            "E*    2     -  called under mx.grad, which traces compiled functions every call",
            "E*    3     -  called under mx.grad, which traces compiled functions every call",
            "E*why: MLX runs a compiled function's Python body again on every call made under "
            "mx.grad (the cache is not used inside transformations), so loss is compiled from "
            "scratch on every step",
            "E*fix: compile the transformed function instead, e.g. "
            "mx.compile(mx.value_and_grad(loss)) or mx.compile(mx.grad(loss)), or compile the "
            "whole step that calls it: it traces once and is reused",
        ]
    )
    # not a matrix variant: the section names no mode
    assert _section(result, "recompiles") == [
        "test_a_compiled_loss_traced_on_every_call_under_mx_grad_fails_with_the_fix.py::"
        "test_train: loss (test_a_compiled_loss_traced_on_every_call_under_mx_grad_fails_with_"
        "the_fix.py:3) traced 3 times (over budget)",
        "  trace 2: called under mx.grad, which traces compiled functions every call",
        "  trace 3: called under mx.grad, which traces compiled functions every call",
    ]


@pytest.mark.parametrize(
    "body",
    [
        "mx.grad(loss)(mx.ones(2), mx.ones(2))",
        # MLX's test_compile.py: one call per transformation, each from its own line
        "mx.vjp(loss, (mx.ones(2), mx.ones(2)), (mx.array(1.0),))\n"
        "            mx.jvp(loss, (mx.ones(2), mx.ones(2)), (mx.ones(2), mx.ones(2)))\n"
        "            mx.vmap(loss)(mx.ones((3, 2)), mx.ones((3, 2)))\n"
        "            mx.vmap(loss, in_axes=(0, 1))(mx.ones((3, 2)), mx.ones((2, 3)))\n"
        "            mx.vmap(loss, in_axes=(1, 0))(mx.ones((2, 3)), mx.ones((3, 2)))",
        "step = mx.compile(mx.value_and_grad(loss))\n"
        "            for _ in range(3):\n"
        "                step(mx.ones(2), mx.ones(2))",
    ],
    ids=["one-call-under-grad", "one-call-per-transformation", "compiled-value-and-grad"],
)
def test_one_call_per_transformation_and_a_compiled_value_and_grad_pass(pytester, run, body):
    pytester.makepyfile(
        f"""
        import mlx.core as mx

        @mx.compile
        def loss(w, x):
            return (w * x).sum()

        def test_train(mlx_compile):
            loss(mx.ones(2), mx.ones(2))
            {body}
        """
    )
    result = run()
    result.assert_outcomes(passed=1)


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


# storms under auto -------------------------------------------------------------------------------
def test_ten_sequence_lengths_fail_under_auto_listing_the_shapes_and_suggesting_buckets(
    pytester, run
):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def encode(x):
            return x * 2

        @pytest.mark.compiled
        def test_lengths():
            for n in range(5, 15):
                encode(mx.ones((n, 16)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*encode(mx.ones((n, 16)))",
            "E*RecompileError: encode [[]compiled[]] call 9 retraced: "
            "arg 0 'x' shape (12, 16) -> (13, 16)",
            "E*budget: auto (the default, --mlx-max-recompiles=auto): more than 8 distinct input "
            "shapes (--mlx-max-shapes=8) fails: this is shape 9",
            "E*shapes seen for arg 0 'x': (5, 16), (6, 16), (7, 16), (8, 16), (9, 16), (10, 16), "
            "(11, 16), (12, 16), (13, 16)",
            "E*arg 0 'x' axis 0: 9 sizes 5..13",
            "E*    9     9  arg 0 'x' shape (12, 16) -> (13, 16)",
            "E*why: MLX keeps one graph per distinct signature and never evicts one (mlx#4464): "
            "every new shape compiles a new graph and keeps it for the life of the process",
            "E*fix: pad arg 0 'x' axis 0 to [[]8, 16[]] -> 2 traces; or compile with "
            "shapeless=True if the function is shape-agnostic (the [[]shapeless[]] variant checks "
            "it); or, if this many graphs is intended, raise the limit: "
            "@pytest.mark.compiled(max_shapes=N) or --mlx-max-shapes",
        ]
    )


@pytest.mark.parametrize(
    ("marker", "args"),
    [
        ("(max_shapes=10)", []),
        ("", ["--mlx-max-shapes=0"]),
        ("", ["-o", "mlx_max_shapes=12"]),
    ],
    ids=["marker", "option-no-limit", "ini"],
)
def test_max_shapes_from_the_marker_option_or_ini_lets_ten_lengths_pass(
    pytester, run, marker, args
):
    pytester.makepyfile(LENGTHS.format(count=11, marker=marker))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled", *args)
    result.assert_outcomes(passed=1)


def test_max_shapes_from_the_marker_wins_over_the_option(pytester, run):
    pytester.makepyfile(LENGTHS.format(count=11, marker="(max_shapes=3)"))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled", "--mlx-max-shapes=0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: encode [[]compiled[]] call 4 retraced: "
            "arg 0 'x' shape (3, 16) -> (4, 16)",
            "E*budget: auto (*): more than 3 distinct input shapes "
            "(@pytest.mark.compiled(max_shapes=3)) fails: this is shape 4",
        ]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mlx-max-shapes=many"], "--mlx-max-shapes: 'many' is not an int >= 0"),
        (["-o", "mlx_max_shapes=-1"], "mlx_max_shapes = -1 (ini file): '-1' is not an int >= 0"),
    ],
)
def test_a_bad_max_shapes_option_is_a_usage_error_naming_the_value(pytester, run, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-mlxcompile: {message}"])


def test_a_bad_max_shapes_marker_value_is_a_collection_error_naming_it(pytester, run):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compiled(max_shapes="lots")
        def test_x():
            pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.compiled on *test_x: max_shapes='lots' must be an int >= 0*"]
    )


def test_a_few_shape_changes_pass_and_print_no_section_at_default_verbosity(pytester, run):
    pytester.makepyfile(LENGTHS.format(count=4, marker=""))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*recompiles*")


def test_a_python_int_that_never_changes_passes(pytester, run):
    pytester.makepyfile(ROPE.replace("OFFSETS", "[7] * 8"))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)


# Python values that must stay Python -------------------------------------------------------------
TOP_K = """
    import mlx.core as mx
    import pytest

    @mx.compile
    def keep_top(x, k: int):
        if not isinstance(k, int) or not 0 < k <= x.shape[-1]:
            raise ValueError(f"k must be an int in (0, {{x.shape[-1]}}]")
        return mx.sort(x, axis=-1)[..., -k:]

    @pytest.mark.compiled
    def test_top_k():
        x = mx.arange(16.0)
        for k in {ks}:
            assert keep_top(x, k).shape == (k,)
"""


@pytest.mark.parametrize(
    "ks",
    ["(1, 2)", "(1, 1, 1, 2, 2, 2)", "(1, 2, 1, 2, 1, 2, 1, 2)", "(1, 2, 3, 4, 1, 2, 3, 4)"],
)
def test_a_few_top_k_settings_each_reused_pass(pytester, run, ks):
    pytester.makepyfile(TOP_K.format(ks=ks))
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled")
    result.assert_outcomes(passed=1)


def test_a_top_k_new_on_every_call_fails_saying_it_sets_a_shape_and_suggesting_buckets(
    pytester, run
):
    pytester.makepyfile(TOP_K.format(ks="range(1, 9)"))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: keep_top [[]compiled[]] call 8 retraced: arg 1 'k' (int) 7 -> 8",
            "E*budget: auto (*): a Python constant new on 8 of 8 calls (a counter, a per-call "
            "value) fails; a few values each reused pass",
            "E*why: MLX bakes Python int/float/str arguments into the graph as constants, so every "
            "new value compiles a new graph, and MLX keeps each one (no eviction, mlx#4464); "
            "arg 1 'k' sets a shape (output shape (7,) -> (8,)), so it must stay a Python value: "
            "an mx.array cannot",
            "E*fix: call with a few values, each reused (round up to buckets such as "
            "[[]1, 2, 4, 8[]]), or accept the retraces with @pytest.mark.compiled(max_recompiles=N)",
        ]
    )
    result.stdout.no_fnmatch_line("*mx.array(offset)*")


# new function objects ----------------------------------------------------------------------------
def test_compiling_the_same_code_per_dtype_or_per_configuration_passes(pytester, run):
    # MLX's test_compile.py: each dtype is new, so a hoisted mx.compile traces as often
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled
        def test_per_dtype():
            x = mx.array([0, 1, 2, 3])
            for dtype in [mx.bool_, mx.int8, mx.uint8]:
                x = x.astype(dtype)

                def fn(x):
                    return x * 1 + 0

                assert mx.array_equal(mx.compile(fn)(x), fn(x))

        @pytest.mark.compiled
        def test_two_ways():
            def mean(x):
                return mx.mean(x, keepdims=True)

            assert mx.allclose(mx.compile(mean)(mx.ones((5, 5))), mx.array(1.0))
            assert mx.allclose(mx.compile(mean, shapeless=True)(mx.ones(2)), mx.array(1.0))
        """
    )
    result = run()
    result.assert_outcomes(passed=2)


def test_two_model_instances_that_each_compile_a_helper_in_init_pass(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        class Model:
            def __init__(self, cap):
                def _softcap(x):
                    return mx.tanh(x / cap) * cap

                self.softcap = mx.compile(_softcap, shapeless=True)

        @pytest.mark.compiled
        def test_two_models():
            x = mx.ones((2, 3))
            a = Model(30.0).softcap(x)
            b = Model(30.0).softcap(x)
            assert mx.array_equal(a, b)
        """
    )
    result = run()
    result.assert_outcomes(passed=1)


def test_a_method_that_compiles_its_helper_on_every_call_fails(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        class Model:
            def __call__(self, x):
                return mx.compile(self.scale)(x)

            def scale(self, x):
                return x * 2

        @pytest.mark.compiled
        def test_steps():
            model = Model()
            for _ in range(2):
                model(mx.ones(3))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: Model.scale [[]compiled[]] call 2 retraced: new function object "
            "compiled from the same code at test_*.py:6 (mx.compile called inside a loop or a "
            "function?)",
            "E*budget: auto (*): the same code compiled again through a new function object, "
            "whose cache would have served this call, fails",
        ]
    )


# MLX's own compiles ------------------------------------------------------------------------------
UPSAMPLE = """
    import mlx.core as mx
    import mlx.nn as nn
    import pytest

    up = nn.Upsample(scale_factor=2, mode="cubic")

    @pytest.mark.compiled
    def test_upsample(mlx_recompiles):
        x = mx.ones((1, 4, 4, 1))
        {body}
"""


def test_nn_upsample_cubic_compiling_helpers_on_every_call_fails_at_the_users_call(pytester, run):
    # Never evaluated: the trace is what counts, and no kernel is JIT-compiled.
    pytester.makepyfile(UPSAMPLE.format(body="for _ in range(2):\n            up(x)"))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: _cubic_indices.<locals>._get_weight [[]compiled[]] trace 3 "
            "retraced: new function object compiled from the same code at "
            "mlx/nn/layers/upsample.py:* (mx.compile called inside a loop or a function?)",
            "E*where: _cubic_indices.<locals>._get_weight defined at mlx/nn/layers/upsample.py:* "
            "(library code), called from test_*.py:11",
            "E*fix: the mx.compile is in library code: if you cannot change it, accept its "
            "retraces in the test with `with mlx_recompiles.allow(): ...` (docs/recompiles.md); "
            "if you can: hoist mx.compile out of the loop or function*",
        ]
    )


def test_mlx_recompiles_allow_accepts_retraces_of_code_the_user_cannot_change(pytester, run):
    body = "with mlx_recompiles.allow():\n            for _ in range(2):\n                up(x)"
    pytester.makepyfile(UPSAMPLE.format(body=body))
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)


def test_mlx_activations_compiled_once_by_mlx_pass(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import mlx.nn as nn
        import pytest

        @pytest.mark.compiled
        def test_gelu():
            for n in (2, 3, 4):
                for _ in range(3):
                    nn.gelu(mx.ones(n))
                    nn.silu(mx.ones(n))
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)


# the user's own exception ------------------------------------------------------------------------
def test_a_retrace_that_raises_the_users_own_error_shows_that_error_not_a_recompile_error(
    pytester, run
):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def raises_on_second(x, flag):
            if flag:
                raise KeyError("the user's own error")
            return x + 1

        @pytest.mark.compiled(max_recompiles=0)
        def test_user_exception_on_retrace():
            raises_on_second(mx.ones((2,)), False)
            raises_on_second(mx.ones((2,)), True)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    lines = ['>*raise KeyError("the user\'s own error")', 'E*KeyError: "the user\'s own error"']
    if sys.version_info >= (3, 11):  # exception notes
        lines.append(
            "E*pytest-mlxcompile: this call also retraced over budget (raises_on_second "
            "[[]compiled[]] call 2 retraced: arg 1 'flag' (bool) False -> True); the "
            "RecompileError is not raised because the call failed first"
        )
    result.stdout.fnmatch_lines(lines)
    result.stdout.no_fnmatch_line("*RecompileError: raises_on_second*")


# the summary -------------------------------------------------------------------------------------
SUMMARY = """
    import mlx.core as mx
    import pytest

    @mx.compile
    def encode(x):
        return x * 2

    @mx.compile
    def rope(x, offset):
        return x + offset

    @pytest.mark.compiled
    def test_lengths():
        for n in (1, 2, 3):
            encode(mx.ones((n, 4)))

    @pytest.mark.compiled
    def test_counter():
        for offset in range(8):
            rope(mx.ones(2), offset)
"""


def test_the_recompiles_section_lists_only_failures_at_default_verbosity(pytester, run):
    pytester.makepyfile(SUMMARY)
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless")
    result.assert_outcomes(passed=2, failed=2)
    name = "test_the_recompiles_section_lists_only_failures_at_default_verbosity.py"
    assert _section(result, "recompiles") == [
        f"{name}::test_counter: rope ({name}:8) traced 8 times in [compiled] (over budget), "
        "8 in [shapeless] (over budget)",
        "  trace 2 (call 2): arg 1 'offset' (int) 0 -> 1",
        "  trace 3 (call 3): arg 1 'offset' (int) 1 -> 2",
        "  trace 4 (call 4): arg 1 'offset' (int) 2 -> 3",
        "  trace 5 (call 5): arg 1 'offset' (int) 3 -> 4",
        "  trace 6 (call 6): arg 1 'offset' (int) 4 -> 5",
        "  trace 7 (call 7): arg 1 'offset' (int) 5 -> 6",
        "  ... 1 more",
    ]


def test_the_recompiles_section_lists_every_retrace_grouped_by_function_with_v(pytester, run):
    pytester.makepyfile(SUMMARY)
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless", "-v")
    result.assert_outcomes(passed=2, failed=2)
    name = "test_the_recompiles_section_lists_every_retrace_grouped_by_function_with_v.py"
    assert _section(result, "recompiles") == [
        f"{name}::test_counter: rope ({name}:8) traced 8 times in [compiled] (over budget), "
        "8 in [shapeless] (over budget)",
        "  trace 2 (call 2): arg 1 'offset' (int) 0 -> 1",
        "  trace 3 (call 3): arg 1 'offset' (int) 1 -> 2",
        "  trace 4 (call 4): arg 1 'offset' (int) 2 -> 3",
        "  trace 5 (call 5): arg 1 'offset' (int) 3 -> 4",
        "  trace 6 (call 6): arg 1 'offset' (int) 4 -> 5",
        "  trace 7 (call 7): arg 1 'offset' (int) 5 -> 6",
        "  ... 1 more",
        f"{name}::test_lengths: encode ({name}:4) traced 3 times in [compiled]",
        "  trace 2 (call 2): arg 0 'x' shape (1, 4) -> (2, 4)",
        "  trace 3 (call 3): arg 0 'x' shape (2, 4) -> (3, 4)",
    ]


def test_the_recompiles_section_counts_the_entries_it_leaves_out(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def encode(x):
            return x * 2

        @pytest.mark.parametrize("case", range(12))
        @pytest.mark.compiled
        def test_case(case):
            encode(mx.ones(1))
            encode(mx.ones(2))
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless", "-v")
    result.assert_outcomes(passed=24)
    section = _section(result, "recompiles")
    assert len(section) == 10 * 2 + 1
    assert section[-1] == "... and 2 more: 1 function(s) in 2 test(s) (-vv shows all)"
    assert section[0].endswith("traced 2 times in [compiled]")
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless", "-vv")
    assert len(_section(result, "recompiles")) == 12 * 2


def test_a_sweep_of_a_few_shapes_dtypes_and_settings_passes_although_it_makes_twelve_graphs(
    pytester, run
):
    # mlx-lm's test_all_models: many model configurations through one compiled helper
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def compute_dt(dt, limit):
            return mx.clip(dt, limit[0], limit[1])

        @pytest.mark.compiled
        def test_all_models(mlx_recompiles):
            for shape in [(1, 2, 8), (1, 1, 8), (2, 2, 8)]:
                for dtype in [mx.float32, mx.float16]:
                    for limit in [(0.0, 1.0), (0.001, 100.0)]:
                        compute_dt(mx.ones(shape, dtype=dtype), limit)
            assert mlx_recompiles.count(compute_dt) == 12
        """
    )
    result = run()
    result.assert_outcomes(passed=1)


def test_nine_values_of_one_python_argument_fail_even_when_each_is_reused(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def rope(x, offset):
            return x + offset

        @pytest.mark.compiled
        def test_decode():
            for offset in range(9):
                rope(mx.ones(2), offset)
                rope(mx.ones(2), offset)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: rope [[]compiled[]] call 17 retraced: arg 1 'offset' (int) 7 -> 8",
            "E*budget: auto (*): more than 8 distinct values of arg 1 'offset' "
            "(--mlx-max-shapes=8) fails: this is value 9",
            "E*values seen for arg 1 'offset': 0, 1, 2, 3, 4, 5, 6, 7, 8",
            "E*fix: pass the value as an mx.array: arrays are graph inputs, so one graph serves "
            "every value; if it must stay Python (a slice bound, an axis), call with a few values; "
            "or, if this many graphs is intended, raise the limit: "
            "@pytest.mark.compiled(max_shapes=N) or --mlx-max-shapes",
        ]
    )


def test_max_recompiles_under_mx_compile_shows_the_bodys_own_error_on_a_retrace(pytester):
    script = pytester.makepyfile(
        """
        import mlx.core as mx
        from pytest_mlxcompile import max_recompiles

        @mx.compile
        @max_recompiles(0)
        def check(x, flag):
            if flag:
                raise KeyError("the user's own error")
            return x

        check(mx.ones(2), False)
        check(mx.ones(2), True)
        """
    )
    result = pytester.runpython(script)
    assert result.ret == 1
    lines = ['KeyError: "the user\'s own error"']
    if sys.version_info >= (3, 11):  # exception notes
        lines.append(
            "pytest-mlxcompile: this call also retraced over budget (check trace 2 retraced: "
            "arg 1 'flag' (bool) False -> True)"
        )
    result.stderr.fnmatch_lines(lines)
    result.stderr.no_fnmatch_line("*RecompileError*")


def test_a_compile_per_call_in_an_installed_package_is_reported_at_the_users_call(pytester, run):
    pytester.mkdir("site-packages")
    pytester.path.joinpath("site-packages", "fakelib.py").write_text(
        "import mlx.core as mx\n\n\ndef scaled(x):\n    return mx.compile(lambda y: y * 2)(x)\n"
    )
    pytester.makeini("[pytest]\npythonpath = site-packages\n")
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest
        from fakelib import scaled

        @pytest.mark.compiled
        def test_steps():
            for _ in range(2):
                scaled(mx.ones(3))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*RecompileError: scaled.<locals>.<lambda> [[]compiled[]] call 2 retraced: new "
            "function object compiled from the same code at site-packages/fakelib.py:5 "
            "(mx.compile called inside a loop or a function?)",
            "E*where: scaled.<locals>.<lambda> defined at site-packages/fakelib.py:5 (library "
            "code), called from test_*.py:8",
            "E*fix: the mx.compile is in library code: if you cannot change it, accept its "
            "retraces in the test with `with mlx_recompiles.allow(): ...`*",
        ]
    )
