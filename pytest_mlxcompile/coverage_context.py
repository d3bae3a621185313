"""``--mlx-cov-context``: coverage.py's dynamic context becomes ``<nodeid>|<mode>``, and
``<nodeid>|<mode>|trace`` while MLX traces a compiled function (lines that ran only then never
ran on a cached call).

Works with any running ``coverage.Coverage`` (``coverage run -m pytest`` or pytest-cov's
``--cov``). It owns the dynamic context, so it refuses to run together with another owner
(pytest-cov's ``--cov-context``, coverage's ``dynamic_context`` setting).
"""

from __future__ import annotations

from typing import Any

from pytest_mlxcompile.instrument import FunctionRecord, Observer, VariantRun

__all__ = ["TraceContext", "conflict", "current", "switch"]

#: the suffix of the context lines get while MLX traces
TRACE = "trace"


def current() -> Any | None:
    """The running ``coverage.Coverage``, or None (also when coverage is not installed)."""
    try:
        import coverage
    except ImportError:
        return None
    return coverage.Coverage.current()


def conflict(cov: Any | None, cov_context_option: object) -> str | None:
    """Why another owner of the dynamic context rules ``--mlx-cov-context`` out, or None."""
    if cov_context_option:
        return (
            f"--mlx-cov-context and pytest-cov's --cov-context={cov_context_option} both set "
            "coverage's dynamic context; use one: --mlx-cov-context gives '<nodeid>|<mode>' "
            "(and '|trace'), --cov-context=test gives '<nodeid>|<phase>'"
        )
    dynamic = getattr(getattr(cov, "config", None), "dynamic_context", None)
    if dynamic:
        return (
            f"--mlx-cov-context and coverage's setting dynamic_context = {dynamic} both set "
            "coverage's dynamic context; remove dynamic_context from the coverage config "
            "(.coveragerc / pyproject.toml [tool.coverage.run]) or drop --mlx-cov-context"
        )
    return None


def switch(cov: Any, context: str) -> None:
    cov.switch_context(context)


class TraceContext(Observer):
    """Switches to ``<context>|trace`` while a compiled function's body runs for a trace."""

    def __init__(self, cov: Any, context: str) -> None:
        self.cov = cov
        self.context = context
        self._depth = 0  # nested compiled calls trace inside their caller's trace

    def trace_started(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._depth += 1
        if self._depth == 1:
            self.cov.switch_context(f"{self.context}|{TRACE}")

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.cov.switch_context(self.context)

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        self._reset()

    def finish(self, run: VariantRun) -> None:
        self._reset()

    def _reset(self) -> None:
        if self._depth:
            self._depth = 0
            self.cov.switch_context(self.context)
