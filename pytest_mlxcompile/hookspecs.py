"""Hooks other plugins (or a ``conftest.py``) implement to adjust pytest-mlxcompile.

Registered by the plugin's ``pytest_addhooks``. Hooks that need one answer are ``firstresult``
and the plugin itself implements them last (``trylast``) with its built-in behaviour, so an
implementation of yours is asked first and may return ``None`` to keep the default.
Reference with more examples: docs/hooks.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pytest

    from pytest_mlxcompile.modes import Mode

__all__ = [
    "RECORD_KINDS",
    "pytest_mlxcompile_machine_info",
    "pytest_mlxcompile_modes",
    "pytest_mlxcompile_record",
    "pytest_mlxcompile_tolerance",
]

hookspec = pluggy.HookspecMarker("pytest")

#: The ``kind`` values ``pytest_mlxcompile_record`` receives.
RECORD_KINDS = ("trace", "parity", "diagnosis", "note", "timing")


@hookspec(firstresult=True)
def pytest_mlxcompile_tolerance(
    item: pytest.Item, function: str, where: str, dtype: str, default: tuple[float, float]
) -> tuple[float, float] | None:
    """The ``(rtol, atol)`` parity uses for results of ``function`` with ``dtype``.

    Asked when a compiled result is not bit-identical to eager (bit-identical results pass
    without asking). ``function`` is the compiled function's name (``"gelu"``,
    ``"Model.__call__"``), ``where`` its ``file:line``, ``dtype`` MLX's dtype name
    (``"bfloat16"``), and ``default`` what the plugin would use: the marker's
    ``rtol=``/``atol=``, else ``--mlx-rtol``/``--mlx-atol``, else the dtype's default (float32:
    ``(1.3e-6, 1e-5)``; integers and bool: ``(0.0, 0.0)``, exact). Return ``None`` to keep it.
    A parity failure with a tolerance from this hook says so in its message.

    Example (``conftest.py``): fused softmax in half precision needs more room::

        def pytest_mlxcompile_tolerance(item, function, where, dtype, default):
            if function == "softmax" and dtype in ("float16", "bfloat16"):
                return (2e-2, 1e-3)
            return None
    """
    raise NotImplementedError  # pragma: no cover - a spec has no body


@hookspec
def pytest_mlxcompile_record(item: pytest.Item, kind: str, record: dict[str, Any]) -> None:
    """Called with every record as the plugin produces it, in every process (xdist workers too).

    ``kind`` is one of :data:`RECORD_KINDS`; ``record`` is the plain-JSON dict the report stores:

    - ``"trace"``: a (re)trace of a compiled function, as it happens: ``function``, ``where``,
      ``trace`` (1 for the first), ``call``, ``reasons`` (human texts) and ``kinds``. It is
      called while MLX traces: do not evaluate arrays here.
    - ``"parity"``: a parity check of one compiled call: ``function``, ``where``, ``mode``,
      ``call``, ``passed`` and, when it failed, ``message``.
    - ``"diagnosis"``: a compile bug found (``kind``, ``error``, ``function``, ``message``).
    - ``"note"``: a finding that is not a failure (a check skipped over the byte budget, a
      function that is not shapeless-safe).
    - ``"timing"``: one timed function (the JSON report's timing entry).

    Each call gets its own copy of the record: changing it does not change the report.
    Implementing this hook adds one observer to instrumented tests; without an implementation
    the plugin skips it.

    Example (``conftest.py``): stream every retrace with its reasons to a log::

        import json

        def pytest_mlxcompile_record(item, kind, record):
            if kind == "trace" and record["trace"] > 1:
                with open("retraces.jsonl", "a") as log:
                    log.write(json.dumps({"test": item.nodeid, **record}) + "\\n")
    """


@hookspec
def pytest_mlxcompile_machine_info(config: pytest.Config) -> dict[str, Any] | None:
    """Extra facts about the machine for the report's ``machine`` object (JSON and HTML).

    Return a dict of JSON values (or ``None``). Keys the plugin fills itself (``mlx``,
    ``backend``, ``device``, ...) cannot be replaced: a clash is a usage error naming the key.
    Called once, on the process that writes the report.

    Example (``conftest.py``): record the driver and the git commit of the run::

        import subprocess

        def pytest_mlxcompile_machine_info(config):
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
            return {"commit": commit.stdout.strip()}
    """


@hookspec(firstresult=True)
def pytest_mlxcompile_modes(
    metafunc: pytest.Metafunc, modes: tuple[Mode, ...]
) -> Sequence[Mode | str] | None:
    """The modes a test runs in under ``--mlx-compile-matrix``: veto a mode, or add one.

    ``modes`` is what the plugin chose: ``--mlx-modes`` narrowed by the marker's ``modes=``.
    Return a sequence of modes (``Mode`` or their names) to use instead, or ``None`` to keep
    them. An empty sequence skips the test with a reason naming this hook; an unknown name is a
    collection error. Only tests the matrix parametrizes ask this hook.

    Example (``conftest.py``): never run tests marked ``slow`` in the shapeless variant, and
    always add it for tests in ``tests/shapes/``::

        def pytest_mlxcompile_modes(metafunc, modes):
            if metafunc.definition.get_closest_marker("slow"):
                return [m for m in modes if m != "shapeless"]
            if "tests/shapes/" in metafunc.definition.nodeid:
                return ["eager", "compiled", "shapeless"]
            return None
    """
