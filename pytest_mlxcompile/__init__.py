"""pytest-mlxcompile: test MLX code eagerly, compiled and shapeless, and catch what compile breaks.

Importing this package never imports MLX.
"""

from __future__ import annotations

from pytest_mlxcompile import _mlx, instrument
from pytest_mlxcompile.api import assert_compile_parity
from pytest_mlxcompile.budget import max_recompiles
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
    "max_recompiles",
]

# Instrument mx.compile the moment MLX loads (or now, if it has): max_recompiles() in a plain
# script can only count traces of functions compiled through the instrumented compile. Outside a
# test or a budget the instrumented function calls the real compiled one after one global read.
_mlx.on_load(instrument.install)

__version__ = "0.1.0"
