"""The eager shadow runs on copies: what it does never reaches the test, and what eager writes
through to an argument (which a compiled call cannot) is a finding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import GPU
from schema_check import validate

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "pytest_mlxcompile" / "report.schema.json").read_text()
)


@pytest.fixture
def run(run):
    """Parity on its own: the sanitizer diagnoses some of these programs earlier."""
    return lambda *args: run("--mlx-sanitize=off", *args)


KV_CACHE_ARGUMENT = """
import mlx.core as mx
import pytest

@mx.compile
def write_kv(cache, k, pos):
    cache[:, pos] = k
    return k.sum()

@pytest.mark.compiled
def test_fill():
    cache = mx.zeros((2, 4))
    for pos in range(3):
        write_kv(cache, mx.ones((2,)), mx.array(pos))
"""


@pytest.mark.parametrize("sanitize", ["off", "on"])
def test_an_argument_updated_in_place_fails_naming_the_argument_and_the_fix(
    pytester, run, sanitize
):
    pytester.makepyfile(KV_CACHE_ARGUMENT)
    result = run(f"--mlx-sanitize={sanitize}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: write_kv [[]compiled[]] call 1: eager updated argument 0 'cache' in "
            "place, the compiled call did not (mx.compile does not write through to arguments: "
            "return the new value)",
            "E *argument 0 'cache': updated in place",
            "E *where: write_kv defined at test_an_argument_updated_in_place_*.py:4",
            "E *why: mx.compile traces the function on copies of its arguments*",
            "E *fix: return the updated value from write_kv and use the returned one "
            "(cache = step(cache, ...)), or declare it as state: *",
        ]
    )


def test_a_function_returning_the_updated_cache_passes(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def write_kv(cache, k, pos):
            cache[:, pos] = k
            return cache

        @mx.compile
        def write_kv_functional(cache, k, pos):
            return mx.where(mx.arange(cache.shape[1]) == pos, k[:, None], cache)

        @pytest.mark.compiled
        def test_fill():
            a = b = mx.zeros((2, 4))
            for pos in range(3):
                a = write_kv(a, mx.ones((2,)), mx.array(pos))
                b = write_kv_functional(b, mx.ones((2,)), mx.array(pos))
            assert a.sum().item() == b.sum().item() == 6.0
        """
    )
    run().assert_outcomes(passed=1)


def test_an_argument_list_appended_to_fails_naming_the_list_and_the_item(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def remember(seen, x):
            seen.append(x * 2)
            return x + 1

        @pytest.mark.compiled
        def test_remember():
            remember([], mx.ones((2,)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: remember [[]compiled[]] call 1: eager changed argument 0 'seen' in "
            "place, the compiled call did not (mx.compile does not write through to arguments: "
            "return the new value)",
            "E *argument 0 'seen': changed in place (list: item 0 added)",
        ]
    )


def test_declared_state_the_shadow_updates_in_place_stays_as_the_compiled_call_left_it(
    pytester, run
):
    # Plain mx.compile gives the same outcome: the array the test kept is never written.
    program = """
        from functools import partial

        import mlx.core as mx
        import pytest

        state = [mx.zeros((2,))]

        @partial(mx.compile, inputs=state, outputs=state)
        def accumulate(x):
            state[0] += x
            return state[0] * 1

        @pytest.mark.compiled
        def test_accumulate():
            first = state[0]
            accumulate(mx.ones((2,)))
            accumulate(mx.ones((2,)))
            assert first.tolist() == [0.0, 0.0]
            assert state[0].tolist() == [2.0, 2.0]
        """
    pytester.makepyfile(program)
    run().assert_outcomes(passed=1)
    run("-p", "no:mlxcompile").assert_outcomes(passed=1)


def test_python_state_the_shadow_changes_is_put_back(pytester, run):
    # A counter bumped by the body: plain mx.compile bumps it on the trace only.
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        calls = 0

        @mx.compile
        def double(x):
            global calls
            calls += 1
            return x * 2

        @pytest.mark.compiled
        def test_count():
            for _ in range(3):
                double(mx.ones((2,)))
            assert calls == 1
        """
    )
    run().assert_outcomes(passed=1)
    run("-p", "no:mlxcompile").assert_outcomes(passed=1)


def test_a_python_number_in_a_list_the_shadow_bumps_is_put_back(pytester, run):
    # MLX's own test_compile.py counts traces with ``counter = [0]`` in a closure: the shadow's
    # eager run bumped the list item too, and the test saw 4 where plain MLX gives 2.
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled
        def test_count_traces():
            counter = [0]
            tally = {"n": 0}

            @mx.compile
            def add(x, y):
                counter[0] += 1
                tally["n"] += 1
                return x + y

            add(mx.array(1), 1)
            add(1, mx.array(1))
            add(1, mx.array(1))
            assert (counter[0], tally["n"]) == (2, 2)
        """
    )
    run().assert_outcomes(passed=1)
    run("-p", "no:mlxcompile").assert_outcomes(passed=1)


def test_a_placeholder_in_declared_state_is_a_placeholder_leak_not_a_raw_mlx_error(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial

        import mlx.core as mx
        import pytest

        state = [mx.zeros((2,))]

        @partial(mx.compile, inputs=state)
        def step(x):
            state[0] = state[0] + x
            return x * 2

        @pytest.mark.compiled
        def test_step():
            step(mx.ones((2,)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *PlaceholderLeakError: step [[]compiled[]] call 1: the compiled call left a "
            "placeholder array at inputs[[]0[]]: [[]eval[]] Attempting to eval an array without "
            "a primitive.",
            "E *where: step defined at test_a_placeholder_in_declared_state_*.py:8",
            "E *fix: return the array and store the returned value, or declare its holder in "
            "both inputs= and outputs=",
        ]
    )
    result.stdout.no_fnmatch_line("*RuntimeError*")


@pytest.mark.skipif(GPU, reason="GatherMM runs float16 on GPUs; the refusal is the CPU backend's")
def test_results_mlx_cannot_evaluate_skip_the_check_with_a_warning_and_a_note(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def act(x):
            return x * mx.sigmoid(x)

        @pytest.mark.compiled
        def test_float16_moe_shapes_only():
            x = mx.ones((1, 1, 4), dtype=mx.float16)
            w = mx.ones((2, 4, 4), dtype=mx.float16)
            y = mx.gather_mm(x, w, rhs_indices=mx.array([1]))
            out = act(y)
            assert out.shape == (1, 1, 4)
        """
    )
    result = run("--mlx-report-json=out.json")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*test_results_mlx_cannot_evaluate_*.py:13: PytestWarning: pytest-mlxcompile: act "
            "[[]compiled[]] call 1: parity not checked: pytest-mlxcompile could not evaluate the "
            "results to compare them (the test itself may never evaluate them): MLX says at out: "
            "[[]GatherMM::eval[]] Currently only supports float32. (act is defined at *.py:4)",
        ]
    )
    doc = json.loads((pytester.path / "out.json").read_text())
    assert validate(doc, SCHEMA) == []
    function = doc["tests"][0]["functions"][0]
    assert (function["parity_checks"], function["parity_skipped"]) == (0, 1)
    assert [(n["kind"], n["function"], n["mode"]) for n in function["notes"]] == [
        ("check_not_evaluable", "act", "compiled")
    ]


@pytest.mark.skipif(GPU, reason="GatherMM runs float16 on GPUs; the refusal is the CPU backend's")
def test_results_mlx_cannot_evaluate_warn_once_per_function_and_test_not_once_per_call(
    pytester, run
):
    # mlx-lm's test_all_models calls swiglu on float16 GatherMM outputs hundreds of times per
    # model: 1541 identical warnings (but for the call number) under the matrix.
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def act(x):
            return x * mx.sigmoid(x)

        @pytest.mark.compiled
        def test_layers():
            x = mx.ones((1, 1, 4), dtype=mx.float16)
            w = mx.ones((2, 4, 4), dtype=mx.float16)
            for _ in range(3):
                x = act(mx.gather_mm(x, w, rhs_indices=mx.array([1])))
            assert x.shape == (1, 1, 4)
        """
    )
    result = run("--mlx-report-json=out.json")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*PytestWarning: pytest-mlxcompile: act [[]compiled[]] call 1: parity not checked: *"]
    )
    result.stdout.no_fnmatch_line("*act [[]compiled[]] call 2: parity not checked*")
    doc = json.loads((pytester.path / "out.json").read_text())
    function = doc["tests"][0]["functions"][0]
    assert (function["parity_checks"], function["parity_skipped"]) == (0, 3)


def test_a_compiled_generator_function_says_mx_compile_cannot_compile_a_generator(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def gen(x):
            yield x * 2

        @pytest.mark.compiled
        def test_generator():
            assert next(gen(mx.ones((2,)))).tolist() == [2.0, 2.0]
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: gen [[]compiled[]] call 1: gen is a generator function, and "
            "mx.compile cannot compile a generator",
            "E *where: gen defined at test_a_compiled_generator_*.py:4",
            "E *fix: return the arrays (a list or tuple) from gen instead of yielding them*",
        ]
    )
    result.stdout.no_fnmatch_line("*rounding*")


def test_a_compiled_grad_is_named_after_the_users_function_and_line(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        W = mx.array([1.0, 2.0])

        def loss(x):
            return (x * W).sum()

        @pytest.mark.compiled
        def test_compiled_grad_stale():
            global W
            g = mx.compile(mx.grad(loss))
            g(mx.ones((2,)))
            W = mx.array([5.0, 5.0])
            g(mx.ones((2,)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ParityError: grad(loss) [[]compiled[]] call 2 differs from eager at out",
            "E *where: grad(loss) defined at test_a_compiled_grad_*.py:6; traced 1 time(s) *",
        ]
    )
    result.stdout.no_fnmatch_line("*_marking_transform*")


def test_a_compiled_builtin_is_named_after_it_at_the_compile_call(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled(max_recompiles=0)
        def test_exp():
            f = mx.compile(mx.exp)
            f(mx.ones((2,)))
            f(mx.ones((3,)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *RecompileError: mx.exp [[]compiled[]] call 2 retraced: arg 0 shape (2,) -> (3,)",
            "E *where: mx.exp defined at test_a_compiled_builtin_*.py:6, compiled at *.py:6",
        ]
    )


def test_a_tests_arguments_are_freed_when_it_ends_without_waiting_for_the_cyclic_gc(pytester, run):
    pytester.makepyfile(
        """
        import gc
        import weakref

        import mlx.core as mx
        import pytest

        refs = []

        @mx.compile
        def big(x):
            return x * 2 + 1

        @pytest.fixture(autouse=True, scope="module")
        def no_cyclic_gc():
            gc.disable()
            yield
            gc.enable()

        @pytest.mark.compiled
        @pytest.mark.parametrize("i", range(3))
        def test_big(i):
            assert all(ref() is None for ref in refs), "an earlier test's argument is alive"
            x = mx.ones((8,))
            refs.append(weakref.ref(x))
            assert big(x)[0].item() == 3.0
        """
    )
    # with the sanitizer too: it keeps the last call's arguments for the shapeless probe
    run("--mlx-sanitize=on", "--mlx-compile-matrix").assert_outcomes(passed=9)


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
    scale(mx.ones(3))
    W = mx.array([10.0, 20.0, 30.0])
    scale(mx.ones(3))
"""


def test_a_call_over_max_check_bytes_is_not_checked_and_says_so_in_a_note(pytester, run):
    pytester.makepyfile(STALE_GLOBAL)
    result = run("--mlx-max-check-bytes=32", "--mlx-report-json=out.json")
    result.assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "out.json").read_text())
    assert validate(doc, SCHEMA) == []
    function = doc["tests"][0]["functions"][0]
    assert (function["parity_checks"], function["parity_skipped"]) == (0, 2)
    assert function["notes"] == [
        {
            "kind": "check_over_budget",
            "function": "scale",
            "where": "test_a_call_over_max_check_bytes_is_not_checked_and_says_so_in_a_note.py:6",
            "mode": "compiled",
            "message": "scale [compiled] call 1: parity not checked: the eager shadow would "
            "evaluate about 36 B (arguments, captured and state arrays, outputs), over "
            "--mlx-max-check-bytes=32 B. scale is defined at "
            "test_a_call_over_max_check_bytes_is_not_checked_and_says_so_in_a_note.py:6. To check "
            "it, raise --mlx-max-check-bytes (0: no limit)",
        }
    ]


@pytest.mark.parametrize("value", ["36", "0", "1KiB"])
def test_a_call_within_max_check_bytes_is_checked(pytester, run, value):
    pytester.makepyfile(STALE_GLOBAL)
    result = run(f"--mlx-max-check-bytes={value}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *ParityError: scale [[]compiled[]] call 2 differs from eager*"])


def test_a_lazily_built_array_over_the_budget_is_never_evaluated_by_the_checks(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def double(x):
            return x * 2

        @pytest.mark.compiled
        def test_shape_only():
            mx.reset_peak_memory()
            w = mx.random.normal((1024, 1024))  # 4 MiB, never evaluated by the test
            assert double(w).shape == (1024, 1024)
            assert mx.get_peak_memory() < 2**20, "a check evaluated the graph"
        """
    )
    run("--mlx-sanitize=on", "--mlx-max-check-bytes=1MiB").assert_outcomes(passed=1)
    run("--mlx-max-check-bytes=0").assert_outcomes(failed=1)


def test_max_check_bytes_is_read_from_the_ini_file(pytester, run):
    pytester.makepyfile(STALE_GLOBAL)
    pytester.makeini("[pytest]\nmlx_max_check_bytes = 32\n")
    run().assert_outcomes(passed=1)


@pytest.mark.parametrize("value", ["lots", "-1", "1.5XB", "inf"])
def test_a_bad_max_check_bytes_is_a_usage_error_naming_it(pytester, run, value):
    pytester.makepyfile("def test_x(): pass")
    result = run(f"--mlx-max-check-bytes={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-mlxcompile: --mlx-max-check-bytes: {value!r} is not a size: give "
            "bytes as an int or a number with a unit (512MiB, 2GB); 0 means no limit"
        ]
    )


def test_an_eager_run_that_reads_a_placeholder_is_a_placeholder_leak_not_a_raw_mlx_error(
    pytester, run
):
    # The trace stores its intermediate in a global; the eager reference then reads it.
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        memo = {}

        @mx.compile
        def remember(x):
            if "y" not in memo:
                memo["y"] = x * 2
            return memo["y"] + x

        @pytest.mark.compiled
        def test_remember():
            remember(mx.ones((2,)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *PlaceholderLeakError: remember [[]compiled[]] call 1: the eager reference run of "
            "remember read a placeholder array (a value a compile trace left behind): "
            "[[]eval[]] Attempting to eval an array without a primitive.",
            "E *where: remember defined at test_an_eager_run_that_reads_*.py:6",
        ]
    )


@pytest.mark.skipif(GPU, reason="the float16 GatherMM refusal is the CPU backend's")
def test_a_compiled_result_mlx_cannot_evaluate_while_the_eager_one_can_is_a_parity_error():
    # No real program is known to reach this branch; the refusal is borrowed from GatherMM.
    from types import SimpleNamespace

    import mlx.core as mx

    from pytest_mlxcompile.errors import ParityError
    from pytest_mlxcompile.instrument import VariantRun
    from pytest_mlxcompile.modes import Mode
    from pytest_mlxcompile.state import capture

    x = mx.ones((1, 1, 4), dtype=mx.float16)
    refused = mx.gather_mm(x, mx.ones((2, 4, 4), dtype=mx.float16), rhs_indices=mx.array([1]))
    fn = SimpleNamespace(name="act", where="m.py:3")
    record = SimpleNamespace(fn=fn, calls=2, extra={}, parity_skipped=0)
    run = VariantRun(Mode.COMPILED, label="t")
    with pytest.raises(ParityError) as raised:
        run._unevaluable(record, mx.ones((1, 1, 4)), capture([refused]), [], [])
    assert str(raised.value).splitlines()[:2] == [
        "act [compiled] call 2: the compiled result at out[0] cannot be evaluated, the eager one "
        "can: MLX says: [GatherMM::eval] Currently only supports float32.",
        "  where: act defined at m.py:3",
    ]
    assert (record.parity_skipped, record.extra) == (0, {})
