"""The errors the plugin raises: every one an AssertionError, so pytest reports it as a failure."""

from __future__ import annotations

__all__ = [
    "CompileDisabledError",
    "HostSyncError",
    "MLXCompileError",
    "ParityError",
    "PlaceholderLeakError",
    "RecompileError",
    "ShapelessError",
    "StaleCaptureError",
    "UncapturedRandomStateError",
]


class MLXCompileError(AssertionError):
    """Base class: compiled code behaved differently from what the test and MLX promise."""


class ParityError(MLXCompileError):
    """A compiled call returned (or left in declared state) something eager did not."""


class RecompileError(MLXCompileError):
    """A compiled function retraced more often than its budget allows."""


class PlaceholderLeakError(MLXCompileError):
    """A placeholder array from a compile trace escaped into state outside the graph."""


class StaleCaptureError(ParityError):
    """A compiled function read a value that has changed since the graph froze it.

    A parity failure diagnosed at its cause, before the call: ``pytest.raises(ParityError)``
    catches it too.
    """


class UncapturedRandomStateError(MLXCompileError):
    """A compiled function drew random numbers without capturing ``mx.random.state``."""


class ShapelessError(MLXCompileError):
    """A shapeless graph gave a different shape or value than eager at another input shape."""


class HostSyncError(MLXCompileError):
    """A compiled function asked for an array's value (print, ``.item()``, ``if``) while tracing."""


class CompileDisabledError(MLXCompileError):
    """``mx.compile`` is switched off in this process, so compiled variants would prove nothing."""
