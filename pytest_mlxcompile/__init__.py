"""pytest-mlxcompile: test MLX code eagerly, compiled and shapeless, and catch what compile breaks.

Importing this package never imports MLX.
"""

from __future__ import annotations

from pytest_mlxcompile.api import assert_compile_parity
from pytest_mlxcompile.errors import (
    CompileDisabledError,
    HostSyncError,
    MLXCompileError,
    ParityError,
    PlaceholderLeakError,
    RecompileError,
    ShapelessError,
    StaleCaptureError,
    UncapturedRandomStateError,
)
from pytest_mlxcompile.modes import Mode

__all__ = [
    "CompileDisabledError",
    "HostSyncError",
    "MLXCompileError",
    "Mode",
    "ParityError",
    "PlaceholderLeakError",
    "RecompileError",
    "ShapelessError",
    "StaleCaptureError",
    "UncapturedRandomStateError",
    "assert_compile_parity",
]

__version__ = "0.1.0"
