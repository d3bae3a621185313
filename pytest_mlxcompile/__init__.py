"""pytest-mlxcompile: test MLX code eagerly, compiled and shapeless, and catch what compile breaks.

Importing this package never imports MLX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_mlxcompile import _mlx
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

if TYPE_CHECKING:
    from pytest_mlxcompile.api import assert_compile_parity
    from pytest_mlxcompile.budget import max_recompiles

#: public names of modules imported when first used: importing the package (every pytest run
#: with the plugin installed does) stays cheap
_LAZY = {"assert_compile_parity": "api", "max_recompiles": "budget"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"pytest_mlxcompile.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pytest_mlxcompile' has no attribute {name!r}")


def _install(mx: Any) -> None:
    from pytest_mlxcompile import instrument

    instrument.install(mx)


# Instrument mx.compile the moment MLX loads (or now, if it has): max_recompiles() in a plain
# script can only count traces of functions compiled through the instrumented compile. Outside a
# test or a budget the instrumented function calls the real compiled one after one global read.
#: Takes the hook back while MLX is not loaded (the plugin does at the end of its session: it
#: has its own, and a hook left in sys.meta_path keeps the session alive at interpreter exit).
_forget_mlx_hook = _mlx.on_load(_install)

__version__ = "0.1.0"
