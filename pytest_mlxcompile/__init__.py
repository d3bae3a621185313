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
# The hook stays in sys.meta_path until MLX loads, also after a pytest session in this process
# (a script's max_recompiles() after pytest.main()); in a process that never loads MLX it keeps
# the plugin's modules, and through pytest's rewriting import hook a session, until the second
# garbage collection at interpreter exit.
_mlx.on_load(_install)

__version__ = "0.1.0"
