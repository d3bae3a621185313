from __future__ import annotations

import mlx.core
import pytest

pytest_plugins = ["pytester"]

# Imported here, before any test: pytester restores sys.modules after each test, and importing
# MLX's extension module a second time in one process aborts.
GPU = mlx.core.cuda.is_available() or mlx.core.metal.is_available()


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Run pytest in a subprocess with the plugin on: MLX state is process-global."""

    def _run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "mlxcompile", "-p", "no:cacheprovider", *args)

    return _run
