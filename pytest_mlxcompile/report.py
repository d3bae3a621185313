"""Records of test variants, the terminal timings table, the JSON report and the baseline gate.

A record is built on the process that ran the test (an xdist worker or the only process), rides on
its teardown report as JSON (``report.mlx_record``), and is collected on the controller by
``pytest_runtest_logreport``: so ``-n 2`` sees the same records as ``-n 0``, and a crashed worker
loses only the test it was running.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from pytest_mlxcompile import _mlx, shapeless_probe
from pytest_mlxcompile.instrument import VariantRun
from pytest_mlxcompile.modes import ALL_MODES, Mode
from pytest_mlxcompile.settings import CompareRule, Settings
from pytest_mlxcompile.timing import PAYOFF_CALLS, FunctionTiming

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "Baseline",
    "Collector",
    "gate",
    "machine_info",
    "regressions",
    "variant_record",
    "write_json",
    "write_summary",
]

SCHEMA = "pytest-mlxcompile/report"
#: Bump on any change that breaks a reader; adding optional keys does not (docs/report-schema.md).
SCHEMA_VERSION = 1
#: Keys other checks store in ``FunctionRecord.extra`` that the report copies when present.
_EXTRA_LISTS = ("recompiles", "diagnoses", "notes")
#: What must match for a baseline's timings to be comparable at all.
_MACHINE_KEYS = ("mlx", "backend", "device", "system", "architecture", "python")


def machine_info() -> dict[str, Any]:
    mx = _mlx.core()
    device = mx.default_device()
    backend = "cpu"
    if device.type == mx.gpu:
        backend = "metal" if mx.metal.is_available() else "cuda"
    try:
        name = str(mx.device_info().get("device_name", ""))
    except Exception:  # pragma: no cover - a backend without device_info
        name = ""
    return {
        "mlx": str(mx.__version__),
        "backend": backend,
        "device": name or str(device),
        "system": platform.system(),
        "architecture": platform.machine(),
        "platform": platform.platform(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "cpu_count": os.cpu_count() or 0,
    }


def machine_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{key} {saved.get(key)!r} != {current.get(key)!r}"
        for key in _MACHINE_KEYS
        if saved.get(key) != current.get(key)
    ]


def mismatch_warning(differs: list[str]) -> str:
    return (
        "the baseline was saved on another machine or version ("
        + "; ".join(differs)
        + "), so its timings may differ for reasons other than the code"
    )


# records ---------------------------------------------------------------------------------------
def variant_record(
    nodeid: str, run: VariantRun | None, timings: Sequence[FunctionTiming]
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
        "mode": None if run is None else str(run.mode),
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


def junit_properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Short per-test properties for --junitxml: traces per function and the speedups."""
    props = [(f"mlx_traces[{f['function']}]", str(f["traces"])) for f in record["functions"]]
    for timing in record["timings"]:
        for mode, speedup in timing["speedup"].items():
            props.append((f"mlx_speedup[{timing['function']}][{mode}]", f"{speedup['value']:.3f}"))
    return props


def _outcome(previous: str | None, report: pytest.TestReport) -> str | None:
    if report.when == "setup":
        return {"failed": "error", "skipped": "skipped"}.get(report.outcome)
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        return report.outcome
    if report.failed:
        return "error"
    return previous or "passed"


@dataclass(eq=False)  # a plugin object: pytest keeps plugins in sets, so hashable
class Collector:
    """The controller's view: one record per test variant, from its reports."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _outcomes: dict[str, str | None] = field(default_factory=dict)
    _durations: dict[str, float] = field(default_factory=dict)
    #: pytest-xdist workers that went down with an error, each with the test it was running
    lost_workers: list[str] = field(default_factory=list)
    #: tests that reached their teardown report (or crashed): all of them in a complete run
    finished: int = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On the controller this sees every worker's reports too."""
        self.add(report)

    def worker_down(self, worker: str, error: object) -> None:
        """pytest-xdist lost ``worker``; :meth:`add` names the test it was running, if any."""
        self.lost_workers.append(f"{worker}: {error}")

    def _crashed(self, report: pytest.TestReport) -> None:
        """pytest-xdist's report for the test a crashed worker was running (``when='???'``):
        record the variant as crashed, and name it in that worker's ``lost_workers`` entry."""
        nodeid = report.nodeid
        self._outcomes.pop(nodeid, None)
        self._durations.pop(nodeid, None)
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
        nodeid = report.nodeid
        if report.when not in ("setup", "call", "teardown"):
            self.finished += 1
            self._crashed(report)
            return
        self._outcomes[nodeid] = _outcome(self._outcomes.get(nodeid), report)
        self._durations[nodeid] = self._durations.get(nodeid, 0.0) + report.duration
        if report.when != "teardown":
            return
        self.finished += 1
        outcome, duration = self._outcomes.pop(nodeid), self._durations.pop(nodeid)
        text = getattr(report, "mlx_record", None)
        if isinstance(text, str):
            record = json.loads(text)
            record["outcome"], record["duration"] = outcome, duration
            self.records[nodeid] = record

    def timings(self) -> list[tuple[str, FunctionTiming]]:
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


# JSON ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunEnd:
    """How the session ended: what ``run.exitstatus``/``interrupted``/``complete`` say."""

    exitstatus: int = 0
    interrupted: bool = False
    complete: bool = True

    @property
    def why(self) -> str:
        if self.interrupted:
            return f"interrupted, exit status {self.exitstatus}"
        return f"stopped early, exit status {self.exitstatus}"


def document(
    collector: Collector,
    settings: Settings,
    machine: dict[str, Any],
    workers: int,
    end: RunEnd | None = None,
) -> dict[str, Any]:
    end = end or RunEnd()
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "run": {
            "matrix": settings.matrix,
            "modes": [str(m) for m in settings.modes],
            "timings": settings.timings,
            "timings_budget": settings.timings_budget,
            "workers": workers,
            "lost_workers": collector.lost_workers,
            "exitstatus": end.exitstatus,
            "interrupted": end.interrupted,
            "complete": end.complete,
        },
        "tests": [collector.records[nodeid] for nodeid in sorted(collector.records)],
        "shapeless": shapeless_probe.notes_of(
            collector.records[n] for n in sorted(collector.records)
        ),
    }


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Write atomically, creating parent folders; never over a directory; no temporary file
    is left behind on any failure (the error propagates)."""
    if os.path.isdir(path):
        raise OSError(f"{path!r} is a directory")
    # the folder as the OS resolves the path ('a/../r.json' needs 'a'): the same one os.replace
    # will use, so the temporary file and the report are on one file system
    parent = os.path.dirname(path) or os.curdir
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mlx-report-", suffix=".json", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1, allow_nan=False)
            handle.write("\n")
        umask = os.umask(0)  # mkstemp makes the file private; give it the mode open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def partial_path(path: str) -> str:
    """Where an incomplete run's report goes when a report is already at ``path``."""
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext or '.json'}"


def save(path: str, doc: dict[str, Any]) -> str:
    """Write the report and return the line that says where it went.

    A complete run replaces the report at ``path``. An incomplete one (interrupted, stopped by
    ``-x``/``--maxfail``) never replaces a report already there: it goes to
    :func:`partial_path` beside it. A write that fails leaves no temporary file and is reported
    in the line, not raised: the run's own result stays what it was.
    """
    run, count = doc["run"], len(doc["tests"])
    end = RunEnd(run["exitstatus"], run["interrupted"], run["complete"])
    target = path if end.complete or not os.path.exists(path) else partial_path(path)
    try:
        write_json(target, doc)
    except (OSError, ValueError, TypeError) as exc:
        return f"mlx report: ERROR: could not write {target}: {exc}; no report was written"
    if end.complete:
        return f"mlx report: {path} ({count} test variants)"
    if target == path:
        return f"mlx report: {path} ({count} test variants; incomplete: {end.why})"
    return (
        f"mlx report: this run is incomplete ({end.why}): kept the previous {path}; "
        f"this run's {count} test variants are in {target}"
    )


# baseline --------------------------------------------------------------------------------------
SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "report.schema.json")
#: Statistics the gate divides by: a saved time of 0 cannot be a real measurement.
_POSITIVE_STATS = ("min", "median", "q1", "q3")


def _field(path: Iterable[object]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(the top level)"


def _load_valid(path: str) -> dict[str, Any]:
    """The report at ``path`` if it is one this plugin wrote, else ValueError naming the field."""
    import jsonschema  # only a --mlx-compare run pays for the import

    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except RecursionError:
        raise ValueError("nested too deeply to be a report") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"'schema' is {found!r}, not {SCHEMA!r}")
    if doc.get("version") != SCHEMA_VERSION:
        raise ValueError(f"version {doc.get('version')!r}; this plugin reads {SCHEMA_VERSION}")
    with open(SCHEMA_FILE, encoding="utf-8") as handle:
        schema = json.load(handle)
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(doc)
    )
    if error is not None:
        raise ValueError(f"field {_field(error.absolute_path)}: {error.message}")
    for i, test in enumerate(doc["tests"]):
        for j, timing in enumerate(test["timings"]):
            for mode, entry in timing["modes"].items():
                stats = entry["stats"] or {}
                for key in _POSITIVE_STATS:
                    if key in stats and not stats[key] > 0:
                        where = f"tests[{i}].timings[{j}].modes.{mode}.stats.{key}"
                        raise ValueError(f"field {where}: {stats[key]!r} is not a time > 0")
    return doc


@dataclass
class Baseline:
    path: str
    machine: dict[str, Any]
    created: str
    timings: dict[tuple[str, str], FunctionTiming]

    @classmethod
    def load(cls, path: str) -> Baseline:
        """Read and validate a saved report at start-up: a bad one is a UsageError naming the
        file and the field, so it can never fail a test or the summary later."""
        try:
            doc = _load_valid(path)
            timings = {
                (test["nodeid"], t["function"]): FunctionTiming.from_json(t)
                for test in doc["tests"]
                for t in test["timings"]
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise pytest.UsageError(
                f"pytest-mlxcompile: --mlx-compare={path!r} is not a report saved by "
                f"--mlx-report-json: {reason}"
            ) from None
        return cls(path, doc["machine"], str(doc["created"]), timings)

    def get(self, nodeid: str, timing: FunctionTiming) -> FunctionTiming | None:
        return self.timings.get((nodeid, timing.function))


def _value(timing: FunctionTiming, rule: CompareRule) -> tuple[float, float, float] | None:
    """(value, low, high) of the rule's statistic: the spread decides what is beyond noise."""
    if rule.field == "speedup":
        speedup = timing.speedup(Mode.COMPILED)
        return None if speedup is None else (speedup.value, speedup.low, speedup.high)
    mode = timing.modes.get(Mode(rule.mode))
    if mode is None or mode.stats is None:
        return None
    if rule.field == "first_call":
        return None if mode.first_call is None else (mode.first_call,) * 3
    value = mode.stats.median if rule.field == "median" else mode.stats.min
    return value, mode.stats.q1, mode.stats.q3


def regressions(
    current: FunctionTiming, base: FunctionTiming, rules: Iterable[CompareRule]
) -> list[str]:
    """One line per rule the current timing breaks: worse by more than the percent AND outside
    the baseline's spread (a speedup's range, a time's quartiles)."""
    lines = []
    for rule in rules:
        now, then = _value(current, rule), _value(base, rule)
        if now is None or then is None:
            continue
        limit = rule.percent / 100
        if rule.field == "speedup":
            worse = now[0] < then[0] * (1 - limit) and now[2] < then[1]
            shown = f"{now[0]:.2f}x [{now[1]:.2f}-{now[2]:.2f}]"
            was = f"{then[0]:.2f}x [{then[1]:.2f}-{then[2]:.2f}]"
        else:
            worse = now[0] > then[0] * (1 + limit) and now[1] > then[2]
            shown = f"{format_time(now[0])} [q1 {format_time(now[1])}]"
            was = f"{format_time(then[0])} [q3 {format_time(then[2])}]"
        if worse:
            change = (now[0] - then[0]) / then[0] * 100 if then[0] else math.inf
            lines.append(
                f"{current.function}: {rule.mode + '.' if rule.mode else ''}{rule.field} {was} -> "
                f"{shown} ({change:+.0f}%), beyond {rule} and outside the baseline's spread"
            )
    return lines


def gate(
    nodeid: str,
    timings: Iterable[FunctionTiming],
    baseline: Baseline | None,
    rules: Sequence[CompareRule],
) -> str | None:
    """The failure message for a test whose timings regressed, or None."""
    if baseline is None or not rules:
        return None
    lines = [
        line
        for current in timings
        if (base := baseline.get(nodeid, current)) is not None
        for line in regressions(current, base, rules)
    ]
    if not lines:
        return None
    return f"pytest-mlxcompile: timings regressed against the baseline {baseline.path}:\n  " + (
        "\n  ".join(lines)
    )


# terminal --------------------------------------------------------------------------------------
def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g}{unit}"
    return f"{seconds / 1e-9:.3g}ns"


def _calls(value: float | None) -> str:
    if value is None:
        return "-"
    return "never" if math.isinf(value) else f"{math.ceil(value)} calls"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _median(timing: FunctionTiming, mode: Mode) -> str:
    entry = timing.modes.get(mode)
    if entry is None:
        return "-"
    if entry.error is not None:
        return "n/a"
    return format_time(timing.median(mode))


def _fusion(timing: FunctionTiming) -> str:
    eager, compiled = timing.modes.get(Mode.EAGER), timing.modes.get(Mode.COMPILED)
    if eager is None or compiled is None or eager.nodes is None or compiled.kernels is None:
        return "-"
    return f"{eager.nodes} -> {compiled.kernels}"


def _test_name(nodeid: str) -> str:
    """The node id without its file: short, and still names the class and parameters."""
    return nodeid.split("::", 1)[-1]


def _row(nodeid: str, timing: FunctionTiming) -> list[str]:
    test = _test_name(nodeid)
    speedup = timing.speedup(Mode.COMPILED)
    flags = timing.flags() + (["contended"] if timing.contended else [])
    return [
        f"{test}::{timing.function}",
        *(_median(timing, mode) for mode in ALL_MODES),
        "-" if speedup is None else str(speedup),
        format_time(timing.compile_cost(Mode.COMPILED)),
        _calls(timing.break_even(Mode.COMPILED)),
        _ratio(timing.memory_ratio(Mode.COMPILED)),
        _fusion(timing),
        "; ".join(flags),
    ]


_HEADER = [
    "test::function",
    "eager",
    "compiled",
    "shapeless",
    "speedup [range]",
    "compile",
    "break-even",
    "mem",
    "ops -> kernels",
    "flags",
]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def summary_lines(timings: list[tuple[str, FunctionTiming]]) -> list[str]:
    rows = [_HEADER, *(_row(nodeid, timing) for nodeid, timing in timings)]
    lines = _table(rows)
    lines += [
        "",
        "eager/compiled/shapeless: median per call with outputs evaluated (n/a: the mode cannot "
        "run it, see the JSON report)",
        "speedup: eager / compiled median [quartiles of eager / compiled over paired rounds]; "
        "compile: first call of a fresh compile minus the median; break-even: compile / time "
        "saved per call",
        "mem: compiled / eager peak memory; ops -> kernels: primitives in the eager graph -> "
        "non-view nodes in the compiled graph",
        f"flags: 'slower than eager' or 'no gain beyond noise' when the speedup range is below 1 "
        f"or includes it; 'pays off after >{PAYOFF_CALLS} calls'",
    ]
    if any(timing.contended for _, timing in timings):
        lines.append(
            "contended: timed while other pytest-xdist workers shared the machine; "
            "rerun with -n 0 for clean figures"
        )
    return lines


def compare_lines(baseline: Baseline, timings: list[tuple[str, FunctionTiming]]) -> list[str]:
    rows = [["test::function", "mode", "median then", "median now", "change", "speedup"]]
    for nodeid, timing in timings:
        base = baseline.get(nodeid, timing)
        if base is None:
            continue
        for mode in timing.modes:
            then, now = base.median(mode), timing.median(mode)
            change = "-" if not then or now is None else f"{(now - then) / then * 100:+.1f}%"
            speedups = ""
            if mode.compiles:
                old, new = base.speedup(mode), timing.speedup(mode)
                speedups = (
                    f"{_ratio(old.value if old else None)} -> {_ratio(new.value if new else None)}"
                )
            rows.append(
                [
                    f"{_test_name(nodeid)}::{timing.function}",
                    str(mode),
                    format_time(then),
                    format_time(now),
                    change,
                    speedups,
                ]
            )
    if len(rows) == 1:
        return [f"no test here has timings in {baseline.path}"]
    return _table(rows)


def write_summary(
    terminal: pytest.TerminalReporter,
    collector: Collector,
    baseline: Baseline | None,
    json_path: str | None,
) -> None:
    timings = collector.timings()
    if timings:
        terminal.write_sep("=", "mlx timings")
        for line in summary_lines(timings):
            terminal.write_line(line)
    if baseline is not None:
        terminal.write_sep("=", f"mlx compare with {baseline.path}")
        for line in compare_lines(baseline, timings):
            terminal.write_line(line)
    if json_path is not None:
        terminal.write_line(f"mlx report: {json_path} ({len(collector.records)} test variants)")
