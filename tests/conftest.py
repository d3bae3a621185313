from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Run pytest in a subprocess with the plugin on: MLX state is process-global."""

    def _run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "mlxcompile", "-p", "no:cacheprovider", *args)

    return _run
