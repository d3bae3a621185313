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
        result = pytester.runpytest_subprocess("-p", "mlxcompile", "-p", "no:cacheprovider", *args)
        # whatever a test expects, the plugin never crashes pytest itself
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
        return result

    return _run
