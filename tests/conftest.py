from __future__ import annotations

import re

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
        raw = raw_errors(result)
        assert not raw, "a raw error came out of pytest-mlxcompile:\n" + "\n".join(raw)
        return result

    return _run


#: What no run of ours may print (issue 10): a traceback through the plugin's own code ending
#: in RuntimeError, MLX's raw evaluation error (``[eval] ...``, ``[GatherMM::eval] ...``: the
#: checks evaluate, the programs under test here do not evaluate what MLX refuses) as the failure
#: of a test, or an INTERNALERROR. A test's own errors (``[metal_kernel] No Metal back-end``) pass.
RAW_ERROR = re.compile(
    r"pytest_mlxcompile[/\\]\S+\.py:\d+: RuntimeError"
    r"|^E\s+RuntimeError: \[(\w+::)?eval\]"
    r"|INTERNALERROR"
)


def raw_errors(result: pytest.RunResult) -> list[str]:
    """The lines of a pytester run that show a raw error out of the plugin."""
    return [line for line in result.outlines + result.errlines if RAW_ERROR.search(line)]
