"""Feeds ``pytest_mlxcompile_record`` every record of a test variant as the checks produce it.

Only tests in a session where some plugin implements the hook get this observer: without one,
nothing on the per-call path changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_mlxcompile.instrument import FunctionRecord, Observer, VariantRun

__all__ = ["Emit", "RecordEmitter"]

#: ``emit(kind, record)``: calls the hook for the test
Emit = Callable[[str, dict[str, Any]], None]

#: ``FunctionRecord.extra`` lists the checks append to, and the record kind of their entries
_EXTRA_KINDS = (("recompiles", "trace"), ("diagnoses", "diagnosis"), ("notes", "note"))


class RecordEmitter(Observer):
    """Emits each new entry of the checks' lists, and one ``parity`` record per checked call."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self._sent: dict[tuple[int, str], int] = {}
        #: the outermost call in flight and its parity count before it, to see a check happen
        self._pending: tuple[FunctionRecord, int] | None = None
        #: the message of a ParityError the test failed with (set by the plugin)
        self.parity_error: str | None = None

    def _drain(self, record: FunctionRecord) -> None:
        for key, kind in _EXTRA_KINDS:
            entries = record.extra.get(key)
            if not isinstance(entries, list):
                continue
            sent = self._sent.get((id(record), key), 0)
            if len(entries) > sent:
                self._sent[(id(record), key)] = len(entries)
                for entry in entries[sent:]:
                    self.emit(kind, entry)

    def _parity(self, record: FunctionRecord, passed: bool, message: str | None) -> None:
        entry: dict[str, Any] = {
            "function": record.fn.name,
            "where": record.fn.where,
            "mode": str(record.run.mode),
            "call": record.calls,
            "passed": passed,
        }
        if message is not None:
            entry["message"] = message
        self.emit("parity", entry)

    def trace_finished(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> None:
        self._drain(record)

    def before_call(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._pending = (record, record.parity_checks)

    def call_failed(
        self, record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
    ) -> None:
        self._pending = None
        self._drain(record)

    def after_call(
        self,
        record: FunctionRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: object,
        traced: bool,
    ) -> None:
        pending, self._pending = self._pending, None
        self._drain(record)
        if pending is not None and pending[0] is record and record.parity_checks > pending[1]:
            self._parity(record, True, None)

    def finish(self, run: VariantRun) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and self.parity_error is not None:
            record, checks = pending
            if record.parity_checks > checks:  # the check of the call in flight raised
                self._parity(record, False, self.parity_error)
        for record in run.records.values():
            self._drain(record)
