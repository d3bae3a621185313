"""MLX's process-global state around each test: captured before, put back after, pass or fail.

What a test (or a compiled function it calls) can leave behind: the compile switch
(``mx.disable_compile`` is process-global and unreadable, probe §10), the default device and
stream, and placeholders in the global RNG key (``inputs=mx.random.state`` without ``outputs=``
poisons it until the next seed, probe §5).

The default device and streams are read from MLX only when a test changes them: the
instrumented ``mx.set_default_device``, ``mx.set_default_stream``, ``mx.clear_streams`` and
``mx.stream`` (``instrument.install``) call :func:`before_change` first, which keeps the default
device and the changed device's default stream as they were. Reading the default stream before
and after every test instead took four calls into MLX per test, the most of what isolation cost
a suite of trivial tests (benchmarks/run.py, P4). A change through a reference to MLX's own
function taken before the plugin loaded, or made in C++, goes unseen (the plugin warns about
importing mlx that early).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_mlxcompile import _mlx

if TYPE_CHECKING:
    from pytest_mlxcompile.compile_switch import CompileSwitch

__all__ = ["GlobalState", "before_change", "unwind"]

_MLX_CORE = _mlx.MLX_CORE
_new = object.__new__
_get_ident = threading.get_ident

#: The compile switch of the instrumented ``mlx.core`` (``instrument.install`` sets it, and
#: ``uninstall`` clears it): read once per test, where looking it up through the module would
#: cost two calls (benchmarks/run.py, P4). Read it as ``isolation.switch``: a name imported
#: from here would keep the value it had then.
switch: CompileSwitch | None = None

#: The state of the test in progress, from its capture to its restore (a test that runs
#: pytest in-process nests the inner session's tests in it: each restore goes back out)
_watched: GlobalState | None = None


def before_change(target: Any = None) -> None:
    """Keep what a setter is about to change, as it was before the test's first change: the
    default device (one for the process), and the default stream of ``target``'s device (a
    stream's, a device's; the default device's for None) when the test's thread changes it:
    each thread has its own default streams. The instrumented setters and ``mx.stream`` call
    this first."""
    watched = _watched
    if watched is None:
        return
    mx = watched.mx
    if watched.device is None:
        watched.device = mx.default_device()
        watched.streams = []
    if _get_ident() != watched.thread:
        return
    device = getattr(target, "device", target)
    if not isinstance(device, (mx.Device, mx.DeviceType)):  # None, a ThreadLocalStream
        device = watched.device
    kept = watched.streams
    if not any(s.device == device for s in kept):
        kept.append(mx.default_stream(device))


def unwind() -> Callable[[], None]:
    """For a session's end: watch again what was watched at its start. A session ended by
    ``pytest.exit`` skips its last test's restore, and a session run inside a test (pytester)
    must hand that test's state back."""
    outer = _watched

    def back() -> None:
        global _watched
        _watched = outer

    return back


class GlobalState:
    """Captured and put back around every test: a plain class with slots, cheap (P4)."""

    __slots__ = ("device", "keys", "mx", "outer", "random_key", "streams", "thread")

    mx: Any
    #: the default device before the test first changed it or a default stream; None while it
    #: has changed neither (before_change)
    device: Any
    #: the default stream of each device whose default stream the test may have changed, as it
    #: was before (before_change; set with ``device``)
    streams: list[Any]
    thread: int
    outer: GlobalState | None
    keys: list[Any]  # this thread's key list (MLX keeps it for the thread's life)
    random_key: Any

    @classmethod
    def capture(cls) -> GlobalState | None:
        """None when MLX is not loaded: then there is nothing a test could have changed."""
        global _watched
        mx = sys.modules.get(_MLX_CORE)
        if mx is None:
            return None
        # filled here, not by an __init__: one frame less for every test (benchmarks, P4)
        saved = _new(cls)
        saved.mx = mx
        saved.device = None
        saved.thread = _get_ident()
        saved.outer = _watched
        saved.keys = keys = _mlx.random_key_list()
        saved.random_key = keys[0] if keys else None
        _watched = saved
        return saved

    def restore(self) -> tuple[str, ...]:
        """Put the state back; returns what had to be repaired that the user should know."""
        global _watched
        device = self.device
        try:
            if switch is not None and switch.touched:
                switch.restore()
            if device is not None:  # the test changed the default device or a default stream
                # through the instrumented setters while still watched: before_change keeps
                # what it kept (an outer test's is not this one's to change)
                mx = self.mx
                for stream in self.streams:
                    if mx.default_stream(stream.device) != stream:
                        mx.set_default_stream(stream)
                if mx.default_device() != device:
                    mx.set_default_device(device)
        finally:
            _watched = self.outer
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
