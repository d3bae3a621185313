"""Whether ``mx.compile`` really compiles in this process, and why not.

MLX can switch compile off silently (reference/mlx-compile-probe.md §8, §10):
``MLX_DISABLE_COMPILE`` set to any value, ``mx.disable_compile()`` (a process-global with no
getter), or no ``g++`` on PATH for the CPU backend's JIT. Then the Python body runs on every call
and a "compiled" variant proves nothing. The truth comes from a probe (trace a fresh function
twice); the patched ``enable_compile``/``disable_compile`` tell us who flipped the switch and
let us put it back.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from pytest_mlxcompile import _mlx, locations

__all__ = ["CompileSwitch"]


def _caller_site() -> str:
    frame = sys._getframe(2)
    return f"{locations.relative(frame.f_code.co_filename)}:{frame.f_lineno}"


class CompileSwitch:
    def __init__(
        self,
        real_compile: Callable[..., Any],
        real_enable: Callable[[], None],
        real_disable: Callable[[], None],
    ) -> None:
        self._real_compile = real_compile
        self._real_enable = real_enable
        self._real_disable = real_disable
        #: ``False`` after a ``mx.disable_compile()`` seen by us, ``True`` after enable.
        self.switched_on: bool | None = None
        self.switched_at: str = ""
        self.touched = False
        self._baseline: bool | None = None
        self._kept: tuple[Callable[..., Any], Any, list[int], Any] | None = None
        #: compile was found on, and nobody flipped the switch through ``mx`` since
        self._verified = False

    # the patched mx.enable_compile / mx.disable_compile
    def enable(self) -> None:
        self.baseline_on()
        self._real_enable()
        self.switched_on, self.switched_at, self.touched = True, _caller_site(), True
        self._verified = False

    def disable(self) -> None:
        self.baseline_on()
        self._real_disable()
        self.switched_on, self.switched_at, self.touched = False, _caller_site(), True
        self._verified = False

    def probe(self) -> bool:
        """True when a fresh compiled function runs its body once for two calls."""
        mx = _mlx.core()
        runs = [0]

        def body(x: Any) -> Any:
            runs[0] += 1
            return x * 2

        compiled = self._real_compile(body)
        x = mx.ones((2,))  # not 0-d: a 0-d `x + 1` retraces on every call in mlx 0.32.4
        mx.eval(compiled(x))
        mx.eval(compiled(x))
        return runs[0] == 1

    def _still_on(self) -> bool:
        """A cheap probe for every test variant: one call of a function compiled and traced
        once before; compile is on when its body does not run again. A fresh probe (a compile
        and a kernel build, ~6 ms) is the fallback when it does, or the first time."""
        if self._kept is None:
            runs = [0]

            def body(x: Any) -> Any:
                runs[0] += 1
                return x * 2

            mx = _mlx.core()
            x = mx.ones((2,))
            compiled = self._real_compile(body)
            compiled(x)
            compiled(x)
            if runs[0] != 1:
                return False
            self._kept = (compiled, x, runs, mx.default_stream(mx.default_device()))
        if self._kept_hits():
            return True
        self._kept = None
        return False

    def _kept_hits(self) -> bool:
        """Whether the kept probe's call is a cache hit. On the stream it was traced on: MLX
        keeps a compiled function's graphs per stream, and on another one (a test's
        ``mx.stream(...)``) the body would run again with compile on."""
        assert self._kept is not None
        compiled, x, runs, stream = self._kept
        before = runs[0]
        with _mlx.core().stream(stream):
            compiled(x)  # lazy: a cache hit runs nothing, not even a kernel
        return runs[0] == before

    def baseline_on(self) -> bool:
        """Whether compile worked before any test flipped the switch (probed once)."""
        if self._baseline is None:
            self._baseline = self.probe()
        return self._baseline

    def off_reason(self) -> str | None:
        """None when compile works; else what turned it off and how to fix it."""
        if self.switched_on is False:
            return (
                f"mx.disable_compile() was called at {self.switched_at}. Fix: call "
                "mx.enable_compile() before compiled code runs, or limit that test to "
                "@pytest.mark.compiled(modes=['eager'])"
            )
        # Once found on, it stays on until the switch is flipped through mx (which clears
        # _verified): a call into MLX per test variant costs ~50 us in a suite, where its
        # caches are cold (benchmarks/run.py, P4). A flip that bypasses mx (a reference to
        # the real function kept from before the plugin loaded, a default device that cannot
        # compile) runs the body at every call: each is a trace, which asks off_since_verified.
        if self._verified:
            return None
        if self._still_on() or self.probe():
            self._verified = True
            return None
        return self.why_off()

    def off_since_verified(self) -> bool:
        """Whether compile, found on before, is off now: the kept probe's body runs again.

        Cheap (one cached call, no evaluation, safe inside a trace: its argument is no
        tracer), for every trace of an instrumented function. False when nothing was verified.
        """
        if not self._verified or self._kept is None or self._kept_hits():
            return False
        self._kept, self._verified = None, False
        return True

    def why_off(self) -> str:
        """What turned compile off, and the fix, found without a probe."""
        flag = os.environ.get("MLX_DISABLE_COMPILE")
        if flag is not None:
            return (
                f"the environment variable MLX_DISABLE_COMPILE is set (to {flag!r}; MLX treats "
                "any value, even 0, as off). Fix: unset it, or run only --mlx-modes=eager"
            )
        mx = _mlx.core()
        if mx.default_device() == mx.cpu and shutil.which("g++") is None:
            return (
                "the CPU backend JIT-compiles fused kernels with g++ and there is no g++ on PATH, "
                "so MLX skips compilation. Fix: install g++ (Debian/Ubuntu: apt-get install g++) "
                "or put it on PATH before MLX is imported"
            )
        return (
            "mx.disable_compile() is in effect (it was called before the plugin could see it). "
            "Fix: call mx.enable_compile() before the tests run"
        )

    def restore(self) -> None:
        """Undo a test's enable/disable so the next test sees the session's switch."""
        if not self.touched:
            return
        if self._baseline is False:
            self._real_disable()
        else:
            self._real_enable()
        self.switched_on, self.touched = None, False
        self._verified = False
