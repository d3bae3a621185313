"""After every test, pass or fail, MLX's global state is as the test found it."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest_mlxcompile


def test_a_test_that_disables_compile_does_not_change_what_the_next_test_sees(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        RUNS = []

        def body(x):
            RUNS.append(1)
            return x * 2

        def test_disables():
            mx.disable_compile()
            assert False, "fails while compile is off"

        @pytest.mark.compiled
        def test_next_sees_compile_on():
            f = mx.compile(body)
            f(mx.ones(2)); f(mx.ones(2))
            assert len(RUNS) == 1 + 2  # one trace, plus the two eager shadow runs
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)


def test_calling_compiled_code_after_disable_compile_in_a_compiled_test_is_an_error(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled
        def test_turns_compile_off():
            f = mx.compile(lambda x: x + 1)
            mx.disable_compile()
            f(mx.ones(2))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *CompileDisabledError: *.<lambda> [[]compiled[]] call 1: mx.compile was switched off"
            " by mx.disable_compile() at test_*.py:7, so this call would run eagerly.*"
        ]
    )


def test_the_default_device_and_stream_are_restored_after_a_test(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx

        ORIGINAL = mx.default_stream(mx.default_device())

        def test_changes_stream():
            mx.set_default_stream(mx.new_stream(mx.default_device()))
            assert mx.default_stream(mx.default_device()) != ORIGINAL

        def test_sees_the_original_stream():
            assert mx.default_stream(mx.default_device()) == ORIGINAL
        """
    )
    run().assert_outcomes(passed=2)


def test_a_placeholder_left_in_the_random_state_is_repaired_with_a_warning(pytester, run):
    pytester.makepyfile(
        """
        from functools import partial
        import mlx.core as mx

        def test_poisons_rng():
            @partial(mx.compile, inputs=mx.random.state)  # no outputs=: leaves a placeholder
            def noisy(x):
                return x + mx.random.normal(x.shape)
            mx.eval(noisy(mx.ones(2)))

        def test_random_still_works():
            mx.eval(mx.random.normal((2,)))
        """
    )
    result = run()
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        ["*PytestWarning: pytest-mlxcompile: the test left a placeholder in mx.random.state*"]
    )


def test_a_default_stream_set_in_another_thread_is_that_threads_and_left_alone(pytester, run):
    # MLX keeps a default stream per thread: the test thread's stays, and nothing of the other
    # thread's is put back on it.
    pytester.makepyfile(
        """
        import threading
        import mlx.core as mx

        ORIGINAL = mx.default_stream(mx.default_device())

        def test_sets_one_in_a_thread():
            seen = []
            def work():
                device = mx.default_device()
                mx.set_default_stream(mx.new_stream(device))
                seen.append(mx.default_stream(device))
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
            assert seen[0] != ORIGINAL
            assert mx.default_stream(mx.default_device()) == ORIGINAL

        def test_next_sees_the_original_stream():
            assert mx.default_stream(mx.default_device()) == ORIGINAL
        """
    )
    run("-v").assert_outcomes(passed=2)


def test_a_change_made_inside_a_stream_block_is_undone_to_the_state_before_the_block(pytester, run):
    # mx.stream's context changes the default stream in MLX's own code and puts it back on
    # exit: what the test started with is the state before the block, not inside it
    pytester.makepyfile(
        """
        import mlx.core as mx

        ORIGINAL = mx.default_stream(mx.default_device())

        def test_first_change_inside_a_block():
            device = mx.default_device()
            with mx.stream(mx.new_stream(device)):
                mx.set_default_stream(mx.new_stream(device))
            assert mx.default_stream(device) == ORIGINAL  # the block put it back

        def test_next_sees_the_original_stream():
            assert mx.default_stream(mx.default_device()) == ORIGINAL
        """
    )
    run("-v").assert_outcomes(passed=2)


def test_a_test_that_runs_a_session_ended_by_pytest_exit_still_has_its_own_change_undone(
    pytester, run
):
    pytester.makeconftest('pytest_plugins = ["pytester"]')
    pytester.makepyfile(
        """
        import mlx.core as mx

        ORIGINAL = mx.default_stream(mx.default_device())

        def test_runs_an_inner_session_then_changes_the_stream(pytester):
            pytester.makepyfile(
                test_inner="import pytest\\ndef test_stops():\\n    pytest.exit('stop')\\n"
            )
            pytester.runpytest_inprocess("-p", "mlxcompile", "-p", "no:cacheprovider")
            mx.set_default_stream(mx.new_stream(mx.default_device()))

        def test_next_sees_the_original_stream():
            assert mx.default_stream(mx.default_device()) == ORIGINAL
        """
    )
    run("-v").assert_outcomes(passed=2)


def test_mlx_setters_are_its_own_again_after_the_session(pytester):
    # mlx loads inside the session (the test module imports it): the plugin patched it then,
    # and puts MLX's own functions back at the end
    pytester.makepyfile(
        test_sets="""
        import mlx.core as mx

        def test_a():
            mx.set_default_stream(mx.new_stream(mx.cpu))
        """
    )
    pytester.makepyfile(
        drive="""
        import pytest
        code = pytest.main(["-p", "mlxcompile", "-p", "no:cacheprovider", "-q", "test_sets.py"])
        import mlx.core as mx
        names = ("set_default_device", "set_default_stream", "clear_streams")
        print("WRAPPED AFTER:", [n for n in names if hasattr(getattr(mx, n), "__wrapped__")])
        """
    )
    result = pytester.runpython(pytester.path / "drive.py")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*", "WRAPPED AFTER: []"])


def test_what_a_module_fixture_sets_stays_for_every_test_that_uses_it(pytester, run):
    pytester.makepyfile(
        """
        import mlx.core as mx
        import pytest

        @pytest.fixture(scope="module")
        def own_stream():
            stream = mx.new_stream(mx.cpu)
            mx.set_default_stream(stream)
            yield stream

        def test_one(own_stream):
            assert mx.default_stream(mx.cpu) == own_stream

        @pytest.mark.compiled
        def test_two(own_stream):
            assert mx.default_stream(mx.cpu) == own_stream

        def test_three(own_stream):
            assert mx.default_stream(mx.cpu) == own_stream
            mx.set_default_stream(mx.new_stream(mx.cpu))  # the test's own change is undone

        def test_four(own_stream):
            assert mx.default_stream(mx.cpu) == own_stream
        """
    )
    result = run("-v", "--mlx-compile-matrix")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*::test_four PASSED*"])


def test_a_variant_ended_by_pytest_exit_leaves_compiled_functions_plain_after_the_session(
    pytester,
):
    pytester.makepyfile(
        test_exit="""
        import mlx.core as mx
        import pytest

        f = mx.compile(lambda x: x * 2)

        @pytest.mark.compiled
        def test_a():
            f(mx.ones(3))
            pytest.exit("stopping mid-variant")
        """
    )
    pytester.makepyfile(
        drive="""
        import pytest
        code = pytest.main(["-p", "mlxcompile", "-p", "no:cacheprovider", "-q", "test_exit.py"])
        import test_exit
        from pytest_mlxcompile import instrument
        print("ACTIVE AFTER:", instrument.active_run())
        print("PLAIN CALL:", test_exit.f(test_exit.mx.ones(3)).tolist())
        """
    )
    result = pytester.runpython(pytester.path / "drive.py")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        ["*stopping mid-variant*", "ACTIVE AFTER: None", "PLAIN CALL: [[]2.0, 2.0, 2.0[]]"]
    )


# A conftest that records, when the interpreter exits, whether the run's config went in the first
# garbage collection of the exit (module globals still set) or waited for the modules' clearing:
# what keeps a session alive that long costs a large suite another full collection at exit.
EXIT_PROBE = """
import json, os

class _Probe:
    def __init__(self):
        self.json, self.write, self.fd = json, os.write, os.open(
            "freed.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        )

    def __del__(self):
        when = b"the first collection" if self.json.dumps is not None else b"module clearing"
        self.write(self.fd, b"config freed at " + when)

def pytest_configure(config):
    config._exit_probe = _Probe()
"""


def test_the_session_is_freed_in_the_first_garbage_collection_at_interpreter_exit(
    pytester, run, monkeypatch
):
    # the package found on sys.path, as a regular install leaves it: then pytest rewrites the
    # plugin's modules, and their __loader__ (pytest's import hook) holds the config
    root = str(Path(pytest_mlxcompile.__file__).parent.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    pytester.makeconftest(EXIT_PROBE)
    pytester.makepyfile(
        test_a="""
        import mlx.core as mx
        import pytest

        @pytest.mark.compiled
        def test_a():
            pass
        """
    )
    result = run("-q")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["1 passed*"])
    assert (pytester.path / "freed.txt").read_text() == "config freed at the first collection"


def test_mlx_core_keeps_its_own_loader_and_no_import_hook_stays_once_it_has_loaded(pytester):
    pytester.makepyfile(
        script="""
        import sys
        from pytest_mlxcompile import _mlx

        ran = []
        _mlx.on_load(lambda mx: ran.append("first"))
        _mlx.on_load(lambda mx: ran.append("second"))
        import mlx.core as mx

        print("RAN:", ran)
        print("HOOKS LEFT:", [type(f).__name__ for f in sys.meta_path if isinstance(f, _mlx._Finder)])
        print("LOADER:", type(mx.__loader__).__module__, type(mx.__spec__.loader).__module__)
        print("PATCHED:", type(mx.compile(lambda x: x)).__name__)
        """
    )
    result = pytester.runpython(pytester.path / "script.py")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "RAN: [[]'second', 'first'[]]",
            "HOOKS LEFT: [[][]]",
            "LOADER: _frozen_importlib_external _frozen_importlib_external",
            "PATCHED: InstrumentedFunction",
        ]
    )


def test_a_script_that_runs_pytest_before_importing_mlx_still_gets_the_instrumented_compile(
    pytester,
):
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    pytester.makepyfile(
        script="""
        import pytest

        pytest.main(["-q", "-p", "no:cacheprovider", "test_plain.py"])  # MLX never loaded
        import mlx.core as mx
        from pytest_mlxcompile import RecompileError, max_recompiles

        f = mx.compile(lambda x: x * 2)
        print("TYPE:", type(f).__name__)
        try:
            with max_recompiles(0):
                f(mx.ones(2))
                f(mx.ones(3))
        except RecompileError:
            print("BUDGET: enforced")
        """
    )
    result = pytester.runpython(pytester.path / "script.py")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["1 passed*", "TYPE: InstrumentedFunction", "BUDGET: enforced"])


def test_a_hook_that_fails_when_mlx_loads_does_not_keep_the_other_hooks_from_running(pytester):
    pytester.makepyfile(
        script="""
        from pytest_mlxcompile import _mlx

        ran = []
        _mlx.on_load(lambda mx: ran.append("kept"))

        def fails(mx):
            raise ValueError("boom")

        _mlx.on_load(fails)
        try:
            import mlx.core
        except ValueError as exc:
            print("RAISED:", exc)
        print("RAN:", ran)
        """
    )
    result = pytester.runpython(pytester.path / "script.py")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["RAISED: boom", "RAN: [[]'kept'[]]"])


def test_a_test_that_moves_to_another_device_gets_its_device_and_stream_back(monkeypatch):
    # This machine has one device (MLX's CPU backend): a stand-in for mlx.core with two, that
    # keeps a default stream per device as MLX does, drives GlobalState's device branch. Its
    # setters tell isolation before they change anything, as the instrumented ones do.
    from types import SimpleNamespace

    from pytest_mlxcompile.isolation import GlobalState, before_change

    class Device(SimpleNamespace):
        pass

    class Stream(SimpleNamespace):
        pass

    cpu, gpu = Device(name="cpu"), Device(name="gpu")

    class FakeCore:
        def __init__(self):
            self.device = cpu
            self.streams = {"cpu": Stream(device=cpu, index=0), "gpu": Stream(device=gpu, index=1)}
            self.random = SimpleNamespace(state=[object()])

        def default_device(self):
            return self.device

        def default_stream(self, device):
            return self.streams[device.name]

        def set_default_device(self, device):
            before_change()
            self.device = device

        def set_default_stream(self, stream):
            before_change(stream)
            self.streams[stream.device.name] = stream

    FakeCore.Device = FakeCore.DeviceType = Device  # what isolation tells devices by
    fake = FakeCore()
    original = dict(fake.streams)
    monkeypatch.setitem(sys.modules, "mlx.core", fake)
    saved = GlobalState.capture()
    assert saved is not None

    # the test: another default stream on a device that is not the default one, another
    # device, and another default stream on the first one
    fake.set_default_stream(Stream(device=gpu, index=3))
    fake.set_default_device(gpu)
    fake.set_default_stream(Stream(device=cpu, index=2))
    assert saved.restore() == ()

    assert fake.default_device() is cpu
    assert fake.streams == original

    # MLX's default device is one for the process: another thread's change is undone too
    saved = GlobalState.capture()
    assert saved is not None
    worker = threading.Thread(target=fake.set_default_device, args=(gpu,))
    worker.start()
    worker.join()
    assert saved.restore() == ()
    assert fake.default_device() is cpu
