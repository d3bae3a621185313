"""Records of test variants, the terminal timings table, the JSON report and the baseline gate.

A record is built on the process that ran the test (an xdist worker or the only process) at the
end of its teardown. On a worker it rides on its teardown report as JSON (``report.mlx_record``),
and is collected on the controller by ``pytest_runtest_logreport``: so ``-n 2`` sees the same
records as ``-n 0``, and a crashed worker loses only the test it was running.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest

from pytest_mlxcompile import _mlx, shapeless_probe
from pytest_mlxcompile.modes import ALL_MODES, Mode
from pytest_mlxcompile.records import Collector, variant_record
from pytest_mlxcompile.settings import CompareRule, Settings
from pytest_mlxcompile.timing import (
    PAYOFF_CALLS,
    ROOFLINE_METHOD,
    FunctionTiming,
    measured_roofline,
)

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
SCHEMA_VERSION = 2
#: Versions a baseline may have: 2 added ``achieved`` and ``run.roofline``, which are optional
#: on reading.
_READABLE_VERSIONS = (1, 2)
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
            "roofline": _roofline(collector),
        },
        "tests": [collector.records[nodeid] for nodeid in sorted(collector.records)],
        "shapeless": shapeless_probe.notes_of(
            collector.records[n] for n in sorted(collector.records)
        ),
    }


def _roofline(collector: Collector) -> dict[str, Any]:
    """The device copy bandwidth the timings were judged against: this process's measurement,
    else (pytest-xdist) the one a worker's timing carried, else null."""
    measured = measured_roofline()
    if measured is not None:
        return measured.to_json()
    for _, timing in collector.timings():
        if timing.roofline is not None:
            method = ROOFLINE_METHOD.format(mib="64 (CPU) or 512 (GPU)")
            return {"bandwidth": timing.roofline, "method": f"{method}, in a pytest-xdist worker"}
    return {"bandwidth": None, "method": "not measured: nothing was timed in a compiled mode"}


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
    if doc.get("version") not in _READABLE_VERSIONS:
        readable = " and ".join(map(str, _READABLE_VERSIONS))
        raise ValueError(f"version {doc.get('version')!r}; this plugin reads versions {readable}")
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


_UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))


def _unit(values: Iterable[float | None]) -> tuple[str, float]:
    """One unit for a whole column: the largest in which the column's median is at least 1."""
    known = sorted(v for v in values if v is not None and v > 0)
    if not known:
        return "us", 1e-6
    typical = known[len(known) // 2]
    return next(((u, s) for u, s in _UNITS if typical >= s), _UNITS[-1])


def _number(value: float) -> str:
    """Three significant digits without an exponent: 1234, 123, 12.3, 1.23, 0.123."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _in_unit(seconds: float | None, scale: float, *, tiny: str = "~0") -> str:
    if seconds is None:
        return "-"
    if seconds / scale < 0.0005:
        return tiny  # a compile cost lost in noise is not "0ns"
    return _number(seconds / scale)


def _calls(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    calls = max(math.ceil(value), 1)  # a compile that costs nothing pays off at once
    return "1 call" if calls == 1 else f"{calls} calls"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _fusion(timing: FunctionTiming) -> str:
    eager, compiled = timing.modes.get(Mode.EAGER), timing.modes.get(Mode.COMPILED)
    if eager is None or compiled is None or eager.nodes is None or compiled.kernels is None:
        return "-"
    return f"{eager.nodes} -> {compiled.kernels}"


def format_bandwidth(value: float) -> str:
    for unit, scale in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e3:.3g} kB/s"


def _achieved(timing: FunctionTiming) -> str:
    """``2.6 TB/s 89%``: compiled bandwidth and its fraction of the device's copy roofline."""
    if timing.bound == "compute":
        return "compute-bound"
    bandwidth = timing.bandwidth(Mode.COMPILED)
    if bandwidth is None or timing.bound != "memory":
        return "-"
    fraction = timing.roofline_fraction()
    if fraction is None:
        return format_bandwidth(bandwidth)
    return format_bandwidth(bandwidth) + (" <1%" if fraction < 0.005 else f" {fraction:.0%}")


_MODE_ID = re.compile(r"(?:-|\[)(?:eager|compiled|shapeless)\]$")


def _test_name(nodeid: str) -> str:
    """The node id without its file and its mode (a test is timed in one variant only)."""
    name = nodeid.split("::", 1)[-1]
    name = _MODE_ID.sub(lambda m: "]" if m.group(0)[0] == "-" else "", name)
    return name.replace("mlx.core.", "")


def _short_function(name: str) -> str:
    return name.replace("<locals>.", "")


def _natural(text: str) -> list[tuple[int, int | str]]:
    """Sort key that orders numbers by value: ``[64]`` before ``[512]``."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def _shorten(text: str, width: int) -> str:
    """Fit ``test[params]::function`` in ``width``: the test's name gives way first, so rows
    of one parametrized test stay apart; then the middle of what is left."""
    if len(text) <= width:
        return text
    cut = text.find("[")
    if cut < 0:
        cut = text.find("::")
    name, rest = (text[:cut], text[cut:]) if cut > 0 else (text, "")
    room = width - len(rest) - 3
    if room >= 8:
        return name[:room] + "..." + rest
    keep = max(width - 3, 2)
    head = keep * 2 // 3
    return text[:head] + "..." + text[len(text) - (keep - head) :]


#: Columns in the order shown; ``drop`` ranks what goes first when the terminal is too narrow
#: (0: never dropped).
_COLUMNS = (
    ("test::function", 0),
    ("eager", 0),
    ("compiled", 0),
    ("shapeless", 4),
    ("speedup [range]", 0),
    ("compile", 5),
    ("break-even", 6),
    ("mem", 2),
    ("achieved", 7),
    ("ops -> kernels", 1),
    ("flags", 0),
)


@dataclass
class TimingsTable:
    """The terminal's timings table: rows fitted to a width, a legend, and what to colour."""

    lines: list[str]
    #: per line: "red" (compiled is slower), "yellow" (no gain beyond noise) or ""
    colours: list[str]


def timings_table(
    timings: list[tuple[str, FunctionTiming]], *, width: int = 200, verbosity: int = 0
) -> TimingsTable:
    """Rows sorted by test (numbers by value), one unit per time column, fitted to ``width``.

    Narrow terminals lose the least telling columns first (ops -> kernels, mem, shapeless,
    compile, break-even, achieved), then the speedup's range, then flags move under their row,
    then ids are shortened in the middle. ``verbosity`` > 0 keeps everything; < 0 (``-q``)
    prints no legend.
    """
    ordered = sorted(timings, key=lambda item: (_natural(item[0]), item[1].function))
    units = {mode: _unit(t.median(mode) for _, t in ordered) for mode in (*ALL_MODES,)}
    compile_unit = _unit(t.compile_cost(Mode.COMPILED) for _, t in ordered)
    header = [
        "test::function",
        *(f"{mode} {units[mode][0]}" for mode in ALL_MODES),
        "speedup [range]",
        f"compile {compile_unit[0]}",
        "break-even",
        "mem",
        "achieved",
        "ops -> kernels",
        "flags",
    ]
    rows: list[list[str]] = []
    colours: list[str] = []
    for nodeid, timing in ordered:
        speedup = timing.speedup(Mode.COMPILED)
        flags = timing.flags() + (["contended"] if timing.contended else [])
        cells = [f"{_test_name(nodeid)}::{_short_function(timing.function)}"]
        for mode in ALL_MODES:
            entry = timing.modes.get(mode)
            if entry is None:
                cells.append("-")
            elif entry.error is not None:
                cells.append("n/a")
            else:
                cells.append(_in_unit(timing.median(mode), units[mode][1], tiny="<0.001"))
        cells += [
            "-" if speedup is None else str(speedup),
            _in_unit(timing.compile_cost(Mode.COMPILED), compile_unit[1]),
            _calls(timing.break_even(Mode.COMPILED)),
            _ratio(timing.memory_ratio(Mode.COMPILED)),
            _achieved(timing),
            _fusion(timing),
            "; ".join(flags),
        ]
        rows.append(cells)
        colours.append(
            "red"
            if "slower than eager" in flags
            else "yellow"
            if "no gain beyond noise" in flags
            else ""
        )
    keep = [i for i in range(len(header)) if _COLUMNS[i][1] == 0 or any(r[i] != "-" for r in rows)]
    flags_below = False
    if verbosity <= 0:
        longest = max(len(r[0]) for r in rows)
        excess = _width([header, *rows], keep) - width
        if excess > 0:  # long ids give way first, down to 45% of the width
            for row in rows:
                row[0] = _shorten(row[0], max(longest - excess, int(width * 0.45)))
        columns = sorted((i for i in keep if _COLUMNS[i][1]), key=lambda i: _COLUMNS[i][1])
        achieved = len(header) - 3
        # the roofline column outlasts the speedup's range, the flags' column and long ids
        # flags move under their rows once ops -> kernels is gone: every other column is
        # worth more than one line of flags per flagged row
        steps: list[int | str] = [i for i in columns if i != achieved]
        steps[1:1] = ["flags"]
        steps += ["range", "ids", *(i for i in columns if i == achieved)]
        while _width([header, *rows], keep) > width and steps:
            step = steps.pop(0)
            if step == "range":
                header[4] = "speedup"
                for row in rows:
                    row[4] = row[4].split(" ", 1)[0]
            elif step == "flags":
                flags_below = True
                keep.remove(len(header) - 1)
            elif step == "ids":
                excess = _width([header, *rows], keep) - width
                id_width = max(max(len(r[0]) for r in [header, *rows]) - excess, 24)
                for row in rows:
                    row[0] = _shorten(row[0], id_width)
            elif isinstance(step, int):
                keep.remove(step)
        excess = _width([header, *rows], keep) - width
        if excess > 0:
            id_width = max(max(len(r[0]) for r in [header, *rows]) - excess, 24)
            for row in rows:
                row[0] = _shorten(row[0], id_width)
    lines: list[str] = []
    line_colours: list[str] = []
    table = _table([[header[i] for i in keep], *([r[i] for i in keep] for r in rows)])
    for i, text in enumerate(table):
        lines.append(text)
        line_colours.append("" if i == 0 else colours[i - 1])
        if flags_below and i > 0 and rows[i - 1][-1]:
            lines.append(f"    flags: {rows[i - 1][-1]}")
            line_colours.append(colours[i - 1])
    if verbosity >= 0:
        legend = [
            wrapped
            for line in _legend(timings, verbose=verbosity > 0)
            for wrapped in (textwrap.wrap(line, width, subsequent_indent="  ") or [""])
        ]
        lines += legend
        line_colours += [""] * len(legend)
    return TimingsTable(lines, line_colours)


def _width(rows: list[list[str]], keep: list[int]) -> int:
    return sum(max(len(row[i]) for row in rows) for i in keep) + 2 * (len(keep) - 1)


def _legend(timings: list[tuple[str, FunctionTiming]], *, verbose: bool) -> list[str]:
    lines = [
        "",
        "eager/compiled/shapeless: median per call, outputs evaluated (n/a: the mode cannot run "
        "it, see the JSON report)",
        "speedup: eager / compiled median [quartiles of eager / compiled over paired rounds]",
        "achieved: bytes in + out per compiled call / median, and % of this device's copy "
        "bandwidth",
    ]
    if verbose:
        lines += [
            "compile: first call of a fresh compile minus the median; break-even: compile / time "
            "saved per call",
            "mem: compiled / eager peak memory; ops -> kernels: primitives in the eager graph -> "
            "non-view nodes in the compiled graph",
            "flags: 'slower than eager' or 'no gain beyond noise' when the speedup range is below "
            f"1 or includes it; 'pays off after >{PAYOFF_CALLS} calls'; 'memory-bound, at the "
            "roofline' (nothing left to gain from fusing) or 'far below the roofline' (overhead "
            "or compute dominates); compute-bound: a matrix product or convolution, no roofline %",
        ]
    if any(timing.contended for _, timing in timings):
        lines.append(
            "contended: timed while other pytest-xdist workers shared the machine; "
            "rerun with -n 0 for clean figures"
        )
    return lines


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def summary_lines(
    timings: list[tuple[str, FunctionTiming]], *, width: int = 200, verbosity: int = 0
) -> list[str]:
    return timings_table(timings, width=width, verbosity=verbosity).lines


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
        table = timings_table(
            timings,
            width=terminal._tw.fullwidth - 1,
            verbosity=terminal.config.get_verbosity(),
        )
        for line, colour in zip(table.lines, table.colours, strict=True):
            terminal.write_line(line, **({colour: True} if colour else {}))
    if baseline is not None:
        terminal.write_sep("=", f"mlx compare with {baseline.path}")
        for line in compare_lines(baseline, timings):
            terminal.write_line(line)
    if json_path is not None:
        terminal.write_line(f"mlx report: {json_path} ({len(collector.records)} test variants)")
