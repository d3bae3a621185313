"""Always loaded (its own ``pytest11`` entry point): keeps a suite that uses the plugin's names
working when the plugin itself is off (``-p no:mlxcompile``).

With the plugin off, the ``compiled`` marker would be unknown (an error under
``--strict-markers``) and the fixtures missing (an error for each test that asks for one). Here the
marker is registered, and each fixture skips its test with a reason that says why. With the plugin
on, this module does nothing: the plugin registers the real marker and fixtures.

A top-level module, not part of the package: importing ``pytest_mlxcompile`` patches
``mx.compile``, which ``-p no:mlxcompile`` must not do. Imports neither MLX nor the plugin.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import pytest

__all__ = ["FIXTURES", "StandIns"]

#: The plugin's fixtures (pytest_mlxcompile/plugin.py), each stood in for here.
FIXTURES = ("mlx_benchmark", "mlx_compile", "mlx_mode", "mlx_recompiles")
_MARKER_LINE = "compiled(*, modes=None, ...): pytest-mlxcompile's marker (the plugin is disabled)"


def _plugin_active(config: pytest.Config) -> bool:
    plugin = sys.modules.get("pytest_mlxcompile.plugin")
    return plugin is not None and config.pluginmanager.is_registered(plugin)


def _skip(name: str) -> NoReturn:
    pytest.skip(
        f"the {name} fixture needs pytest-mlxcompile, which is disabled in this run "
        "(-p no:mlxcompile); run without it to use the fixture"
    )


class StandIns:
    """Fixtures registered only while the plugin is off; each skips the test that uses it."""

    @pytest.fixture
    def mlx_benchmark(self) -> Any:
        _skip("mlx_benchmark")

    @pytest.fixture
    def mlx_compile(self) -> Any:
        _skip("mlx_compile")

    @pytest.fixture
    def mlx_mode(self) -> Any:
        _skip("mlx_mode")

    @pytest.fixture
    def mlx_recompiles(self) -> Any:
        _skip("mlx_recompiles")


# trylast: the plugin's own pytest_configure (when it is on) has registered by then.
@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if _plugin_active(config):
        return
    config.addinivalue_line("markers", _MARKER_LINE)
    config.pluginmanager.register(StandIns(), "mlxcompile-stand-ins")
