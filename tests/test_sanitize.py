from __future__ import annotations

import json

import pytest

LEAKY_GLOBAL_LIST = """
import mlx.core as mx
import pytest

state = []

@mx.compile
def leaky(x):
    z = mx.exp(x)
    state.append(z)
    return z * 2

@pytest.mark.compiled
def test_x():
    leaky(mx.ones((2, 3)))
"""


def test_a_placeholder_appended_to_a_global_list_is_a_leak_naming_the_list(pytester, run):
    pytester.makepyfile(LEAKY_GLOBAL_LIST)
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*::test_x[[]eager[]] PASSED*",
            "E *PlaceholderLeakError: leaky [[]compiled[]] trace 1 (call 1) leaked 1 placeholder"
            " array(s) into global 'state' in test_a_placeholder_*.py, item [[]1[]] (state[[]1[]])",
            "E *holder: global 'state' in *, item [[]1[]] (state[[]1[]]) — shape (2, 3) float32",
            "E *fix: return the array from leaky and store the returned value outside, or declare"
            " its holder as state*",
        ]
    )


def test_a_leak_into_a_default_argument_and_a_global_the_code_never_names_is_found(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def f(x, _memo={}):
            y = x * 2
            globals()["last"] = y
            _memo["y"] = y
            return y

        @pytest.mark.compiled
        def test_x():
            f(mx.ones(2))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *PlaceholderLeakError: f [[]compiled[]] trace 1 (call 1) leaked 1 placeholder"
            " array(s) into *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E *holder: default of argument '_memo' of f, key 'y' (_memo[[]'y'[]])"
            " — shape (2,) float32",
            "E *holder: global 'last' in test_a_leak_into*.py (last) — shape (2,) float32",
        ]
    )


def test_a_kv_cache_attribute_written_inside_the_compiled_call_is_a_leak(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import mlx.nn as nn
        import pytest

        class KVCache(nn.Module):
            def __init__(self):
                super().__init__()
                self.k_cache = mx.zeros((1, 4))

            def __call__(self, k):
                self.k_cache = mx.concatenate([self.k_cache, k], axis=0)
                return self.k_cache.sum(0)

        @pytest.mark.compiled
        def test_x():
            step = mx.compile(KVCache())
            step(mx.ones((1, 4)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *PlaceholderLeakError: KVCache [[]compiled[]] trace 1 (call 1) leaked 1 placeholder"
            " array(s) into attribute 'k_cache' of KVCache (self.k_cache)",
        ]
    )


def test_state_declared_in_inputs_but_not_outputs_is_a_leak_asking_for_outputs(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        import pytest

        model = nn.Linear(2, 2)
        optimizer = optim.SGD(learning_rate=0.1)
        loss_and_grad = nn.value_and_grad(model, lambda m, x: (m(x) ** 2).sum())

        @partial(mx.compile, inputs=[model.state, optimizer.state])
        def step(x):
            loss, grads = loss_and_grad(model, x)
            optimizer.update(model, grads)
            return loss

        @pytest.mark.compiled
        def test_x():
            step(mx.ones((3, 2)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *PlaceholderLeakError: step [[]compiled[]] trace 1 (call 1) leaked 3 placeholder"
            " array(s) into declared inputs=, item [[]0[]], attribute 'weight' of Linear"
            " (inputs[[]0[]].weight)",
            "E *fix: the function updates state it declares only in inputs=; declare the same"
            " containers in outputs= too*",
        ]
    )


def test_a_global_array_rebound_between_calls_is_a_stale_capture_not_a_parity_error(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        W = mx.array([1.0, 2.0, 3.0])

        @mx.compile
        def scale(x):
            return x * W

        @pytest.mark.compiled
        def test_x():
            global W
            scale(mx.ones(3))
            W = mx.array([10.0, 20.0, 30.0])
            scale(mx.ones(3))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *StaleCaptureError: scale [[]compiled[]] call 2 reused a graph traced with global"
            " 'W' in * (W) frozen in, and it has changed since",
            "E *global 'W' in * (W): rebound to another value since the trace (trace-time shape"
            " (3,) float32, now shape (3,) float32)",
            "E *fix: pass it to scale as an argument, or declare it: mx.compile(scale,"
            " inputs=state)*",
        ]
    )
    assert "ParityError" not in result.stdout.str()


WEIGHT_UPDATED_IN_PLACE = """
    import mlx.core as mx
    import pytest

    W = mx.array([1.0, 2.0, 3.0])

    @mx.compile
    def scale(x):
        return x * W

    @pytest.mark.compiled
    def test_x():
        scale(mx.ones(3))
        W[0] = 100
        scale(mx.ones(3))
"""


def test_a_lazy_weight_updated_in_place_is_a_stale_capture_though_nothing_evaluated_it(
    pytester, run
):
    # mx.ones is lazy: the trace captures it before it has a buffer address to compare
    pytester.makepyfile(WEIGHT_UPDATED_IN_PLACE.replace("mx.array([1.0, 2.0, 3.0])", "mx.ones(3)"))
    result = run("--mlx-parity=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *StaleCaptureError: scale [[]compiled[]] call 2 *global 'W'*",
            "E *global 'W' in * (W): updated in place since the trace (same array object, new"
            " data: an assignment like W[[]0[]] = ... or W += ...)",
        ]
    )


def test_a_weight_updated_in_place_is_a_stale_capture_though_its_id_is_unchanged(pytester, run):
    pytester.makepyfile(WEIGHT_UPDATED_IN_PLACE)
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *StaleCaptureError: scale [[]compiled[]] call 2 *global 'W'*",
            "E *global 'W' in * (W): updated in place since the trace (same array object, new"
            " data*",
        ]
    )


def test_module_weights_changed_outside_an_undeclared_compiled_module_are_a_stale_capture(
    pytester, run
):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import mlx.nn as nn
        import pytest

        @pytest.mark.compiled
        def test_x():
            layer = nn.Linear(2, 2)
            forward = mx.compile(layer)
            forward(mx.ones((1, 2)))
            layer.update({"weight": mx.zeros((2, 2))})
            forward(mx.ones((1, 2)))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *StaleCaptureError: Linear [[]compiled[]] call 2 reused a graph traced with"
            " attribute 'weight' of Linear (self.weight) frozen in*",
        ]
    )


def test_a_closure_variable_rebound_between_calls_is_a_stale_capture(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        def make():
            bias = mx.ones(2)

            @mx.compile
            def f(x):
                return x + bias

            def set_bias(value):
                nonlocal bias
                bias = value

            return f, set_bias

        @pytest.mark.compiled
        def test_x():
            f, set_bias = make()
            f(mx.ones(2))
            set_bias(mx.zeros(2))
            f(mx.ones(2))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *StaleCaptureError: make.<locals>.f [[]compiled[]] call 2 *closure variable"
            " 'bias' of make.<locals>.f (bias)*",
            "E *fix: pass it to make.<locals>.f as an argument, or declare it: mx.compile(f,"
            " inputs=state)*",
        ]
    )


def test_nested_compiled_calls_and_transforms_get_no_diagnosis(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def inner(x):
            return x * 2

        @mx.compile
        def outer(x):
            return inner(x) + 1

        # max_recompiles: the grad loop traces outer on every call, a storm under auto; this
        # test is about the sanitizer's diagnoses
        @pytest.mark.compiled(max_recompiles=10)
        def test_x():
            grad = mx.grad(lambda x: outer(x).sum())
            for n in (2, 2, 3):
                outer(mx.ones(n))
                grad(mx.ones(n))
            mx.vmap(outer)(mx.ones((3, 2)))
        """
    )
    result = run("--mlx-compile-matrix")
    result.assert_outcomes(passed=3)


def test_a_python_int_attribute_the_function_increments_is_a_stale_capture(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        class Cache:
            offset = 0

        cache = Cache()

        @mx.compile
        def shift(x):
            y = x + cache.offset
            cache.offset += 1
            return y

        @pytest.mark.compiled
        def test_x():
            shift(mx.ones(3))
            shift(mx.ones(3))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *StaleCaptureError: shift [[]compiled[]] trace 1 (call 1) changed global 'cache'"
            " in *, attribute 'offset' of Cache (cache.offset) while tracing*",
            "E *(cache.offset): 0 -> 1",
            "E *why: a Python number changes only while mx.compile traces the function; the"
            " compiled graph froze the value it read, and inputs=/outputs= carry arrays only,"
            " so declaring its holder does not help",
            "E *fix: keep it in an mx.array (e.g. self.offset = mx.array(0)) and declare its"
            " holder in both inputs= and outputs= of shift's mx.compile, or update it outside"
            " the compiled function and pass it in as an argument",
        ]
    )


DROPOUT = """
from functools import partial
import mlx.core as mx
import mlx.nn as nn
import pytest

dropout = nn.Dropout(0.5)

@partial(mx.compile, {capture})
def drop(x):
    return dropout(x)

@pytest.mark.compiled
def test_drop():
    drop(mx.ones((4, 4)))
    drop(mx.ones((4, 4)))

def test_next_test_draws_random_numbers_eagerly():
    assert mx.random.normal((3,)).shape == (3,)
"""


def test_dropout_without_the_random_state_captured_is_an_uncaptured_random_state_error(
    pytester, run
):
    pytester.makepyfile(DROPOUT.format(capture=""))
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *UncapturedRandomStateError: drop [[]compiled[]] trace 1 (call 1) drew random"
            " numbers but mx.random.state is not captured in both inputs= and outputs= (inputs=:"
            " no, outputs=: no)",
            "E *why: the random key is baked into the graph at trace time, so every later call"
            " repeats the same random numbers*",
        ]
    )


def test_dropout_with_the_random_state_captured_passes_and_later_random_calls_work(pytester, run):
    pytester.makepyfile(DROPOUT.format(capture="inputs=mx.random.state, outputs=mx.random.state"))
    result = run("--mlx-compile-matrix", "-rs")
    # shapeless: MLX refuses random bits shapeless, a skip (never probed)
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * drop (*) is not shapeless-capable: *RandomBits*"])


def test_random_state_in_inputs_only_is_diagnosed_and_repaired_for_the_next_test(pytester, run):
    pytester.makepyfile(DROPOUT.format(capture="inputs=mx.random.state"))
    result = run("-W", "always")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *UncapturedRandomStateError: * (inputs=: yes, outputs=: no)",
            "E *why: with inputs= but not outputs=, the trace left a placeholder in the global"
            " key, so every later random call would raise; pytest-mlxcompile restores the key"
            " after this test so later tests are not affected",
            "*pytest-mlxcompile: the test left a placeholder in mx.random.state*",
        ]
    )


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("print(x)", "print(x)"),
        ("v = x.sum().item()", "v = x.sum().item()"),
        ("v = float(x.sum())", "v = float(x.sum())"),
        ("if x.sum() > 0: x = -x", "if x.sum() > 0: x = -x"),
    ],
    ids=["print", "item", "float", "if"],
)
def test_a_host_sync_while_tracing_names_the_users_line_and_the_fix(pytester, run, body, line):
    pytester.makepyfile(
        f"""
        import mlx.core as mx
        import pytest

        @mx.compile
        def f(x):
            {body}
            return x

        @pytest.mark.compiled
        def test_x():
            f(mx.ones(3))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *HostSyncError: f [[]compiled[]] call 1: test_a_host_sync*.py:6 needs an array's"
            " value while mx.compile traces f",
            f"E *line: {line}",
            "E *fix: keep the decision in the graph (mx.where(cond, a, b) instead of if/else)*",
        ]
    )
    assert "ValueError" not in result.stdout.str().split("HostSyncError", 1)[0]


def test_clean_code_gets_no_diagnosis_in_any_variant(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import math
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        import pytest

        @mx.compile
        def gelu(x):
            return x * (1 + mx.erf(x / math.sqrt(2))) / 2

        class RMSNorm(nn.Module):
            def __init__(self, dims, eps=1e-5):
                super().__init__()
                self.weight = mx.ones((dims,))
                self.eps = eps

            def __call__(self, x):
                return mx.fast.rms_norm(x, self.weight, self.eps)

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(4, 16)
                self.drop = nn.Dropout(0.5)
                self.l2 = nn.Linear(16, 3)

            def __call__(self, x):
                return self.l2(self.drop(nn.relu(self.l1(x))))

        box = [mx.array(1.0)]

        @partial(mx.compile, inputs=box)
        def scaled(x):
            return x * box[0]

        @pytest.mark.compiled
        def test_gelu():
            for shape in [(2, 3), (2, 3), (4, 5)]:
                gelu(mx.random.normal(shape))

        @pytest.mark.compiled
        def test_rmsnorm():
            norm = mx.compile(RMSNorm(8))
            for n in (2, 2, 3):
                norm(mx.random.normal((n, 8)))

        @pytest.mark.compiled
        def test_training_step():
            model = MLP()
            optimizer = optim.Adam(learning_rate=1e-2)
            loss_and_grad = nn.value_and_grad(
                model, lambda m, x, y: nn.losses.cross_entropy(m(x), y, reduction="mean")
            )
            state = [model.state, optimizer.state, mx.random.state]

            @partial(mx.compile, inputs=state, outputs=state)
            def step(x, y):
                loss, grads = loss_and_grad(model, x, y)
                optimizer.update(model, grads)
                return loss

            x, y = mx.random.normal((8, 4)), mx.array([0, 1, 2, 0, 1, 2, 0, 1])
            for _ in range(4):
                step(x, y)
                mx.eval(state)

        @pytest.mark.compiled
        def test_declared_inputs_that_change():
            box[0] = mx.array(1.0)
            scaled(mx.ones(2))
            box[0] = mx.array(3.0)
            assert scaled(mx.ones(2)).tolist() == [3.0, 3.0]
        """
    )
    result = run("--mlx-compile-matrix", "-rs")
    # the training step draws dropout masks: MLX refuses it shapeless, a skip
    result.assert_outcomes(passed=11, skipped=1)
    assert "Error" not in result.stdout.str()


def test_with_sanitize_off_a_stale_capture_is_left_to_parity(pytester, run):
    pytester.makepyfile(WEIGHT_UPDATED_IN_PLACE)
    result = run("--mlx-sanitize=off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *ParityError: scale [[]compiled[]] call 2 differs*"])
    assert "StaleCaptureError" not in result.stdout.str()


def test_the_ini_twin_switches_the_sanitizer_off(pytester, run):
    pytester.makeini("[pytest]\nmlx_sanitize = off\n")
    pytester.makepyfile(LEAKY_GLOBAL_LIST)
    result = run()
    result.assert_outcomes(passed=1)


def test_a_bad_sanitize_value_is_a_usage_error(pytester, run):
    pytester.makepyfile("def test_x(): pass")
    result = run("--mlx-sanitize=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-mlxcompile: --mlx-sanitize: 'maybe' is not one of on, off"]
    )


def test_every_diagnosis_is_kept_as_plain_data_on_the_function_record(pytester, run):
    pytester.makeconftest(
        """
        import json
        import pytest
        from pytest_mlxcompile.plugin import run_key

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_teardown(item):
            try:
                return (yield)
            finally:
                records = item.stash[run_key].records.values()
                found = [d for r in records for d in r.extra.get("diagnoses", [])]
                with open("diagnoses.json", "w") as fh:
                    json.dump(found, fh)
        """
    )
    pytester.makepyfile(LEAKY_GLOBAL_LIST)
    run().assert_outcomes(failed=1)
    (diagnosis,) = json.loads((pytester.path / "diagnoses.json").read_text())
    assert diagnosis["kind"] == "placeholder_leak"
    assert diagnosis["error"] == "PlaceholderLeakError"
    assert diagnosis["function"] == "leaky"
    assert diagnosis["mode"] == "compiled"
    assert diagnosis["message"].startswith("leaky [compiled] trace 1 (call 1) leaked 1")


def test_an_object_the_sanitizer_cannot_walk_gives_a_warning_not_a_failure(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        class Registry(dict):
            def items(self):
                raise RuntimeError("not today")

        registry = Registry()

        @mx.compile
        def f(x):
            return x + len(registry)

        @pytest.mark.compiled
        def test_x():
            f(mx.ones(2))
            f(mx.ones(2))
        """
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*PytestWarning: pytest-mlxcompile: the stale-capture check could not walk what f"
            " (*:10) reaches and skipped part of it: RuntimeError('not today')",
        ]
    )
