"""MLX's process-global state around each test: captured before, put back after, pass or fail.

What a test (or a compiled function it calls) can leave behind: the compile switch
(``mx.disable_compile`` is process-global and unreadable, probe §10), the default device and
stream, and placeholders in the global RNG key (``inputs=mx.random.state`` without ``outputs=``
poisons it until the next seed, probe §5).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from pytest_mlxcompile import _mlx

if TYPE_CHECKING:
    from pytest_mlxcompile.compile_switch import CompileSwitch

__all__ = ["GlobalState"]

_MLX_CORE = _mlx.MLX_CORE
_new = object.__new__

#: The compile switch of the instrumented ``mlx.core`` (``instrument.install`` sets it, and
#: ``uninstall`` clears it): read once per test, where looking it up through the module would
#: cost two calls (benchmarks/run.py, P4). Read it as ``isolation.switch``: a name imported
#: from here would keep the value it had then.
switch: CompileSwitch | None = None


class GlobalState:
    """Captured and put back around every test: a plain class with slots, cheap (P4)."""

    __slots__ = ("keys", "mx", "random_key", "stream")

    mx: Any
    stream: Any  # the default device's default stream: its ``device`` is the default device
    keys: list[Any]  # this thread's key list (MLX keeps it for the thread's life)
    random_key: Any

    @classmethod
    def capture(cls) -> GlobalState | None:
        """None when MLX is not loaded: then there is nothing a test could have changed."""
        mx = sys.modules.get(_MLX_CORE)
        if mx is None:
            return None
        # filled here, not by an __init__: one frame less for every test (benchmarks, P4)
        saved = _new(cls)
        saved.mx = mx
        saved.stream = mx.default_stream(mx.default_device())
        saved.keys = keys = _mlx.random_key_list()
        saved.random_key = keys[0] if keys else None
        return saved

    def restore(self) -> tuple[str, ...]:
        """Put the state back; returns what had to be repaired that the user should know."""
        if switch is not None and switch.touched:
            switch.restore()
        mx = self.mx
        stream = self.stream
        # One comparison in the common case: another device, or another default stream of
        # this one, gives another stream here. ``not ==``: MLX's objects define only __eq__,
        # and != finds it after a slow search (3x the time; this runs for every test).
        if not mx.default_stream(mx.default_device()) == stream:  # noqa: SIM201
            device = stream.device
            if mx.default_device() != device:
                mx.set_default_device(device)
            if mx.default_stream(device) != stream:
                mx.set_default_stream(stream)
        keys = self.keys
        # Every change of the key (a random call, a seed, a compile that writes a tracer into
        # it) puts a new array object in the list: the same object as before the test is the
        # key we saved, and reading its graph (mx.export_to_dot, the cost of most tests that
        # never touch the RNG) would tell nothing new.
        # The next random call evaluates the key anyway: evaluating it here is no extra risk.
        if (
            keys
            and keys[0] is not self.random_key
            and _mlx.is_placeholder(keys[0], evaluate_lazy=True)
        ):
            keys[0] = self.random_key
            return (
                "the test left a placeholder in mx.random.state (a function compiled with "
                "inputs=mx.random.state but not outputs=?), which would break every later "
                "random call; pytest-mlxcompile restored the key from before the test",
            )
        return ()
