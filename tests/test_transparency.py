"""The instrumented compile must behave exactly like mx.compile wherever users put it."""

from __future__ import annotations


def test_nested_compiled_functions_are_checked_only_at_the_outermost_call(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        RUNS = {"inner": 0, "outer": 0}

        @mx.compile
        def inner(x):
            RUNS["inner"] += 1
            return mx.exp(x)

        @mx.compile
        def outer(x):
            RUNS["outer"] += 1
            return inner(x) * 2

        @pytest.mark.compiled
        def test_nested(mlx_mode):
            for _ in range(3):
                y = outer(mx.ones((2, 2)))
            assert mx.allclose(y, 2 * mx.exp(mx.ones((2, 2)))).item()
            print(f"{mlx_mode}: outer body {RUNS['outer']} inner body {RUNS['inner']}")
            RUNS.update(inner=0, outer=0)
        """
    )
    result = run("--mlx-compile-matrix", "-s")
    result.assert_outcomes(passed=3)
    # eager: 3 calls each; compiled: the outer trace runs inner's body once; the eager shadows
    # run the plain functions too, but put back the numbers they bump (nothing the shadow does
    # is visible to the test)
    result.stdout.fnmatch_lines(
        [
            "*eager: outer body 3 inner body 3*",
            "*compiled: outer body 1 inner body 1*",
            "*shapeless: outer body 1 inner body 1*",
        ]
    )


def test_compiled_functions_work_under_grad_and_vmap(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @mx.compile
        def loss(w, x):
            return ((x @ w) ** 2).sum()

        @mx.compile
        def square(x):
            return x * x

        @pytest.mark.compiled
        def test_grad_and_vmap():
            w, x = mx.ones((3, 2)), mx.ones((4, 3))
            g = mx.grad(loss)(w, x)
            assert mx.allclose(g, 2 * x.T @ (x @ w)).item()
            v = mx.vmap(square)(mx.arange(6.0).reshape(3, 2))
            assert v.tolist() == [[0.0, 1.0], [4.0, 9.0], [16.0, 25.0]]
            l, g2 = mx.value_and_grad(loss)(w, x)
            assert mx.allclose(g2, g).item()
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=3)


def test_bound_methods_modules_and_partial_with_state_work(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx
        import mlx.nn as nn
        import pytest

        class Scaler:
            def __init__(self):
                self.factor = 3.0
            def apply(self, x):
                return x * self.factor

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(4, 2)
            def __call__(self, x):
                return nn.gelu(self.linear(x))

        @pytest.mark.compiled
        def test_kinds_of_callables():
            s = Scaler()
            assert mx.compile(s.apply)(mx.ones(2)).tolist() == [3.0, 3.0]
            net = Net()
            # unevaluated initial weights would pull their RandomBits graph into the trace
            mx.eval(net.parameters())
            x = mx.ones((5, 4))
            assert mx.allclose(mx.compile(net)(x), net(x)).item()
            assert mx.allclose(mx.compile(net.__call__)(x), net(x)).item()
            total = {"sum": mx.array(0.0)}

            @partial(mx.compile, inputs=total, outputs=total)
            def accumulate(x):
                total["sum"] = total["sum"] + x.sum()
                return total["sum"]

            for _ in range(3):
                accumulate(mx.ones(2))
            assert total["sum"].item() == 6.0
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=3)


def test_exceptions_from_the_compiled_function_are_the_ones_mx_compile_raises(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import numpy as np
        import pytest

        @mx.compile
        def add(x, y):
            return x + y

        @pytest.mark.compiled
        def test_errors():
            with pytest.raises(ValueError, match="Function arguments must be trees of arrays"):
                add(mx.ones(2), np.ones(2))
            with pytest.raises(ValueError, match="broadcast"):
                add(mx.ones(2), mx.ones(3))
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-modes=compiled,shapeless")
    result.assert_outcomes(passed=2)


def test_the_mlx_compile_fixture_puts_a_test_in_the_matrix(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        def test_uses_fixture(mlx_compile, mlx_mode):
            f = mlx_compile(lambda x: x + 1)
            assert f(mx.ones(2)).tolist() == [2.0, 2.0]
            print("ran in", mlx_mode)
        """
    )
    result = run("--mlx-compile-matrix", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*::test_uses_fixture[[]eager[]] PASSED*"])


def test_mlx_helpers_compiled_inside_mlx_itself_are_left_alone(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import mlx.nn as nn
        import pytest

        @pytest.mark.compiled
        def test_nn_gelu_is_plain_mlx():
            assert "InstrumentedFunction" not in type(nn.gelu).__name__
            assert type(mx.compile(lambda x: x)).__name__ == "InstrumentedFunction"
        """
    )
    run().assert_outcomes(passed=1)


def test_outside_member_tests_a_call_runs_no_python_frame_of_the_plugin(pytester, run):
    # P1b of benchmarks/run.py: outside a variant the call is the plain compiled function's,
    # in C; inside one it goes through the routed call. Also after a variant routed them all.
    pytester.makepyfile(
        """
        import sys
        import mlx.core as mx
        import pytest

        double = mx.compile(lambda x: x * 2)

        def plugin_frames(f):
            seen = []
            def profile(frame, event, arg):
                if event == "call" and "pytest_mlxcompile" in frame.f_code.co_filename:
                    seen.append(frame.f_code.co_name)
            sys.setprofile(profile)
            try:
                f(mx.ones(2))
            finally:
                sys.setprofile(None)
            return seen

        def test_before_any_variant():
            print("before:", plugin_frames(double))

        @pytest.mark.compiled
        def test_in_a_variant():
            double(mx.ones(2))
            print("in a variant:", plugin_frames(double))

        def test_after_a_variant():
            double(mx.ones(2))  # the first call after a variant puts the plain call back
            late = mx.compile(lambda x: x + 1)
            print("after:", plugin_frames(double), "made after:", plugin_frames(late))
        """
    )
    result = run("-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*before: []*",
            "*in a variant: ['_routed_call'*",
            "*after: [] made after: []*",
        ]
    )


def test_a_compiled_function_as_a_class_attribute_stays_unbound_and_copies_as_mx_compile(
    pytester, run
):
    pytester.makepyfile(
        """
        import copy
        import mlx.core as mx
        import pytest

        class Model:
            step = mx.compile(lambda x: x + 1)

        @pytest.mark.compiled
        def test_called_through_an_instance():
            assert Model().step(mx.array(1)).item() == 2
            assert type(Model.step).__name__ == "InstrumentedFunction"

        def test_copied_like_the_real_compile():
            with pytest.raises(TypeError) as err:
                copy.copy(Model.step)
            print("copy:", err.value)
        """
    )
    result = run("-s", "-W", "error")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*copy: cannot pickle *function* object*"])


def test_outside_marked_tests_compiled_functions_pass_straight_through(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        RUNS = []

        @mx.compile
        def f(x):
            RUNS.append(1)
            return x + 1

        def test_unmarked():
            for _ in range(3):
                f(mx.ones(2))
            assert len(RUNS) == 1
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=1)


def test_mlx_imported_before_the_plugin_is_reported_as_a_warning(pytester):
    pytester.makepyfile(
        test_x="""
        def test_x():
            pass
        """,
        start="""
        import sys
        import mlx.core  # before pytest loads its plugins
        import pytest
        sys.exit(pytest.main(["-p", "mlxcompile", "-p", "no:cacheprovider", "-W", "default"]))
        """,
    )
    result = pytester.runpython(pytester.path / "start.py")
    result.stdout.fnmatch_lines(
        ["*PytestConfigWarning: pytest-mlxcompile: mlx.core was imported before the plugin loaded*"]
    )


def test_compiling_the_same_callable_again_shares_its_traces_as_mlx_does(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import mlx.nn as nn
        import pytest

        TRACES = []

        def swiglu(x):
            TRACES.append(1)
            return nn.silu(x) * x

        class Block:
            def __init__(self):
                self.fused = mx.compile(swiglu)  # every block compiles the same function

        @pytest.mark.compiled
        def test_blocks(mlx_mode):
            TRACES.clear()
            blocks = [Block() for _ in range(3)]
            for block in blocks:
                block.fused(mx.ones((2, 4)))
            print(mlx_mode, "traces", len(TRACES))
        """
    )
    result = run("--mlx-compile-matrix", "--mlx-parity=off", "-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*compiled traces 1*", "*shapeless traces 1*"])


def test_the_compiled_function_keeps_the_name_and_docstring_of_the_function(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        def scale(x):
            "Doubles x."
            return x * 2

        @pytest.mark.compiled
        def test_name():
            compiled = mx.compile(scale)
            assert (compiled.__name__, compiled.__qualname__, compiled.__doc__) == (
                "scale", "scale", "Doubles x."
            )
            assert compiled.__module__ == scale.__module__
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=3)


def test_calls_from_other_threads_run_as_declared_without_checks(pytester, run):
    pytester.makepyfile(
        """
        import threading
        import mlx.core as mx
        import pytest

        @mx.compile
        def bump(x):
            return mx.exp(x) + 1

        @pytest.mark.compiled
        def test_threads():
            results = []
            def work():
                results.append(bump(mx.ones(4)).sum().item())
            threads = [threading.Thread(target=work) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(results) == 4
            bump(mx.ones(4))
        """
    )
    run("--mlx-compile-matrix").assert_outcomes(passed=3)


def test_a_trace_from_another_thread_on_the_fast_path_runs_unobserved_and_is_not_counted(
    pytester, run
):
    pytester.makepyfile(
        """
        import threading
        import mlx.core as mx
        import pytest

        @mx.compile
        def double(x):
            return x * 2

        @pytest.mark.compiled(parity="off", max_recompiles=0)
        def test_loader_thread(mlx_recompiles):
            double(mx.ones(4))
            double(mx.ones(4))  # a cache hit: later ones take the fast path
            seen = []
            loader = threading.Thread(target=lambda: seen.append(double(mx.ones(8)).shape))
            loader.start()
            loader.join()
            assert seen == [(8,)]
            double(mx.ones(4))
            assert mlx_recompiles.count(double) == 1
        """
    )
    # sanitizer off: no check watches cache hits, so the thread's call takes the fast path
    run("-v", "--mlx-sanitize=off").assert_outcomes(passed=1)


def test_a_finished_test_does_not_keep_its_compiled_functions_alive(pytester, run):
    pytester.makepyfile(
        """
        import gc
        import weakref
        import mlx.core as mx
        import pytest

        REFS = []

        @pytest.mark.compiled
        def test_compiles():
            weight = mx.ones((1024,))
            scaled = mx.compile(lambda x: x * weight)
            scaled(mx.ones((1024,)))
            REFS.append(weakref.ref(scaled))

        def test_after():
            gc.collect()
            assert REFS[0]() is None, "the plugin still holds the previous test's function"
        """
    )
    run("--mlx-timings", "-p", "no:randomly").assert_outcomes(passed=2)


def test_compiles_in_another_thread_while_variants_start_and_end_leave_every_check_on(
    pytester, run
):
    # The instrumented functions switch to the routed call and back as variants start and end;
    # a data loader's thread compiling meanwhile must neither break the switch nor leave some
    # functions unchecked (each marked test below must fail).
    pytester.makeconftest(
        """
        import sys

        sys.setswitchinterval(1e-6)  # switch threads as often as possible

        def pytest_collection_modifyitems(items):
            marked = [i for i in items if "marked" in i.name]
            plain = [i for i in items if "plain" in i.name]
            items[:] = [x for pair in zip(marked, plain) for x in pair]
        """
    )
    pytester.makepyfile(
        """
        import threading
        import mlx.core as mx
        import pytest

        W = [mx.array(1.0)]

        def bad(x):
            return x * W[0]

        def f(x):
            return x + 1

        LIB = [mx.compile(f) for _ in range(2000)]
        step = mx.compile(bad)

        @pytest.fixture(scope="session", autouse=True)
        def background_compiler():
            stop = threading.Event()

            def loop():
                while not stop.is_set():
                    mx.compile(f)

            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            yield
            stop.set()
            thread.join()

        @pytest.mark.compiled
        @pytest.mark.parametrize("i", range(100))
        def test_marked(i):
            W[0] = mx.array(1.0)
            step(mx.array(2.0))
            W[0] = mx.array(3.0)
            step(mx.array(2.0))

        @pytest.mark.parametrize("i", range(100))
        def test_plain(i):
            LIB[0](mx.array(1.0))
        """
    )
    result = run("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=100, failed=100)
    result.stdout.no_fnmatch_line("*RuntimeError*")
