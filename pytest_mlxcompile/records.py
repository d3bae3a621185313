"""One record per test variant, made on the process that ran it, and the collector that keeps
them for the reports.

Kept apart from :mod:`pytest_mlxcompile.report` (tables, JSON, baselines) and light to import:
the plugin loads it for every session, most of which write no report (benchmarks/run.py, P4).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mlxcompile.modes import ALL_MODES

if TYPE_CHECKING:
    from pytest_mlxcompile.instrument import VariantRun
    from pytest_mlxcompile.timing import FunctionTiming

__all__ = ["Collector", "junit_properties", "outcome", "set_junit_properties", "variant_record"]

#: what checks keep per function record (FunctionRecord.extra) that the report carries
_EXTRA_LISTS = ("recompiles", "diagnoses", "notes")


def variant_record(
    nodeid: str,
    run: VariantRun | None,
    timings: Sequence[FunctionTiming],
    mode: object = None,
) -> dict[str, Any]:
    """What one test variant did, in plain JSON types (the outcome is filled in later)."""
    functions = []
    for record in run.records.values() if run is not None else ():
        entry: dict[str, Any] = {
            "function": record.fn.name,
            "where": record.fn.where,
            "calls": record.calls,
            "traces": record.traces,
            "parity_checks": record.parity_checks,
            "parity_skipped": record.parity_skipped,
        }
        for key in _EXTRA_LISTS:
            if isinstance(record.extra.get(key), list):
                entry[key] = _plain(record.extra[key])
        functions.append(entry)
    return {
        "nodeid": nodeid,
        # a variant that never started (it called no compiled code) still has its mode
        "mode": str(run.mode) if run is not None else (None if mode is None else str(mode)),
        "outcome": None,
        "duration": 0.0,
        "functions": functions,
        "timings": [t.to_json() for t in timings],
    }


def _plain(value: object) -> Any:
    """JSON-safe copy of what another check stored (strings for anything exotic)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


#: the names of the JUnit properties start with these (the function's name follows)
_TRACES, _SPEEDUP = "mlx_traces[", "mlx_speedup["


def junit_properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Short per-test properties for --junitxml: traces per function and the speedups."""
    props = [(f"{_TRACES}{f['function']}]", str(f["traces"])) for f in record["functions"]]
    for timing in record["timings"]:
        for mode, speedup in timing["speedup"].items():
            props.append((f"{_SPEEDUP}{timing['function']}][{mode}]", f"{speedup['value']:.3f}"))
    return props


def set_junit_properties(
    properties: list[tuple[str, object]], record: dict[str, Any] | None
) -> None:
    """Put the record's :func:`junit_properties` (none without a record) in a test's
    ``user_properties``, in place of those an earlier run of the same test put there (a rerun
    plugin runs an item again)."""
    ours = junit_properties(record) if record is not None else []
    if ours or properties:
        properties[:] = [p for p in properties if not str(p[0]).startswith((_TRACES, _SPEEDUP))]
        properties += ours


def outcome(previous: str | None, report: pytest.TestReport) -> str | None:
    """A test variant's outcome after ``report``, given the one its earlier phases gave."""
    if report.when == "setup":
        return {"failed": "error", "skipped": "skipped"}.get(report.outcome)
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.failed:
        return "error"
    return previous or "passed"


class Collector:
    """The controller's view: one record per test variant, from its reports."""

    def __init__(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        #: one per test variant, made by ``variant_record`` at the end of its teardown; where
        #: the tests' reports are read (the JSON and HTML reports, xdist), it arrives on the
        #: teardown report with its outcome and duration over the three phases filled in
        self.records: dict[str, dict[str, Any]] = {} if records is None else records
        #: pytest-xdist workers that went down with an error, each with the test it was running
        self.lost_workers: list[str] = []
        #: tests that reached their teardown report (or crashed): all of them in a complete
        #: run; counted where the tests' reports are read (the JSON and HTML reports need it)
        self.finished = 0

    def worker_down(self, worker: str, error: object) -> None:
        """pytest-xdist lost ``worker``; :meth:`add` names the test it was running, if any."""
        self.lost_workers.append(f"{worker}: {error}")

    def _crashed(self, report: pytest.TestReport) -> None:
        """pytest-xdist's report for the test a crashed worker was running (``when='???'``):
        record the variant as crashed, and name it in that worker's ``lost_workers`` entry."""
        nodeid = report.nodeid
        self.records[nodeid] = {
            "nodeid": nodeid,
            "mode": _mode_of(nodeid),
            "outcome": "crashed",
            "duration": 0.0,
            "functions": [],
            "timings": [],
        }
        gateway = getattr(getattr(report, "node", None), "gateway", None)
        prefix = f"{getattr(gateway, 'id', '?')}: "
        for index in range(len(self.lost_workers) - 1, -1, -1):
            entry = self.lost_workers[index]
            if entry.startswith(prefix) and " while running " not in entry:
                self.lost_workers[index] = f"{entry} while running {nodeid}"
                return
        self.lost_workers.append(f"{prefix}crashed while running {nodeid}")

    def add(self, report: pytest.TestReport) -> None:
        """A test's teardown report, or a crashed worker's (``plugin.Reports`` passes no setup
        or call report)."""
        self.finished += 1
        if report.when != "teardown":
            self._crashed(report)
            return
        record = getattr(report, "mlx_record", None)
        if isinstance(record, str):  # from an xdist worker
            record = json.loads(record)
        if isinstance(record, dict):
            self.records[report.nodeid] = record

    def timings(self) -> list[tuple[str, FunctionTiming]]:
        from pytest_mlxcompile.timing import FunctionTiming  # not needed for most runs

        return [
            (nodeid, FunctionTiming.from_json(t))
            for nodeid, record in sorted(self.records.items())
            for t in record["timings"]
        ]


def _mode_of(nodeid: str) -> str | None:
    """The matrix mode in a node id (the matrix puts it last: ``test_x[3-compiled]``)."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    last = nodeid[nodeid.rindex("[") + 1 : -1].rsplit("-", 1)[-1]
    return last if last in {m.value for m in ALL_MODES} else None
