"""``--mlx-report-html``: one self-contained HTML page rendered from the JSON report document.

Everything is inline (CSS, a few lines of JS for sorting, SVG charts): the page opens from disk
with no network. It reads the document ``report.document`` builds (or a saved JSON report) and
tolerates optional keys being absent, so older reports still render.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

__all__ = ["render", "write_html"]

#: verdicts of a speedup's range, in the order the page lists them
GAINED, NO_GAIN, SLOWER, NOT_RUN = "gained", "no gain", "slower", "could not compare"


def write_html(path: str, doc: dict[str, Any], page: str | None = None) -> None:
    """Write the page (``render(doc)`` unless given) atomically, creating parent folders."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mlx-report-", suffix=".html", dir=parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render(doc) if page is None else page)
    umask = os.umask(0)  # mkstemp makes the file private; give it the mode open() would
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


# reading the document --------------------------------------------------------------------------
def _get(data: object, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class Row:
    """One timed function of one test, with what the page shows about it."""

    def __init__(self, test: dict[str, Any], timing: dict[str, Any], roofline: float | None):
        self.nodeid = str(test.get("nodeid", ""))
        self.timing = timing
        self.function = str(timing.get("function", "?"))
        self.where = str(timing.get("where", ""))
        self.test = self.nodeid.split("::", 1)[-1]
        self.label = f"{self.test}::{self.function}"
        speedup = _get(timing, "speedup", "compiled")
        self.speedup = _num(_get(speedup, "value"))
        self.low = _num(_get(speedup, "low"))
        self.high = _num(_get(speedup, "high"))
        self.shapeless = _num(_get(timing, "speedup", "shapeless", "value"))
        achieved = timing.get("achieved")
        self.bandwidth = _num(_get(achieved, "bandwidth"))
        if self.bandwidth is None:
            self.bandwidth = _num(_get(timing, "bandwidth", "compiled"))
        self.eager_bandwidth = _num(_get(timing, "bandwidth", "eager"))
        self.roofline = _num(_get(achieved, "roofline")) or roofline
        fraction = _num(_get(achieved, "fraction"))
        if fraction is None and self.bandwidth is not None and self.roofline:
            fraction = self.bandwidth / self.roofline
        self.fraction = fraction
        self.bound = str(_get(achieved, "bound") or "")
        flags = timing.get("flags")
        self.flags = [str(f) for f in flags] if isinstance(flags, list) else []

    @property
    def verdict(self) -> str:
        if self.speedup is None:
            return NOT_RUN
        low = self.low if self.low is not None else self.speedup
        high = self.high if self.high is not None else self.speedup
        if low > 1:
            return GAINED
        if high < 1:
            return SLOWER
        return NO_GAIN

    def median(self, mode: str) -> float | None:
        return _num(_get(self.timing, "modes", mode, "stats", "median"))

    def mode_error(self, mode: str) -> str | None:
        error = _get(self.timing, "modes", mode, "error")
        return str(error) if error else None

    @property
    def fusion(self) -> tuple[int, int] | None:
        nodes = _get(self.timing, "modes", "eager", "nodes")
        kernels = _get(self.timing, "modes", "compiled", "kernels")
        if isinstance(nodes, int) and isinstance(kernels, int):
            return nodes, kernels
        return None

    def why(self) -> str:
        """In a few words, why the function gained or not."""
        parts = []
        fusion = self.fusion
        if fusion is not None:
            nodes, kernels = fusion
            if kernels >= nodes:
                parts.append(f"nothing to fuse ({nodes} op{'s' * (nodes != 1)} -> {kernels})")
            else:
                parts.append(f"fused {nodes} ops into {kernels} kernel{'s' * (kernels != 1)}")
        if self.bound == "memory" and self.fraction is not None:
            parts.append(f"memory-bound at {self.fraction:.0%} of the roofline")
        elif self.bound:
            parts.append(f"{self.bound}-bound")
        breaks = _num(_get(self.timing, "break_even_calls", "compiled"))
        if self.verdict == GAINED and breaks is not None:
            calls = math.ceil(breaks)
            parts.append(f"pays off after {calls} call{'s' * (calls != 1)}")
        for mode in ("compiled", "shapeless"):
            error = self.mode_error(mode)
            if error:
                parts.append(f"{mode}: {error}")
        parts += [flag for flag in self.flags if flag not in ("no gain beyond noise",)]
        return "; ".join(parts)


def _rows(doc: dict[str, Any]) -> list[Row]:
    roofline = _num(_get(doc, "run", "roofline", "bandwidth"))
    return [
        Row(test, timing, roofline)
        for test in _tests(doc)
        for timing in (test.get("timings") or [])
        if isinstance(timing, dict)
    ]


def _tests(doc: dict[str, Any]) -> list[dict[str, Any]]:
    tests = doc.get("tests")
    return [t for t in tests if isinstance(t, dict)] if isinstance(tests, list) else []


# formatting ------------------------------------------------------------------------------------
def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} B/s"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _calls(value: float) -> str:
    calls = math.ceil(value)
    return f"{calls} call{'s' * (calls != 1)}"


def _cell(text: str, sort: float | str | None = None, cls: str = "") -> str:
    key = "" if sort is None else f' data-sort="{escape(str(sort))}"'
    klass = f' class="{cls}"' if cls else ""
    return f"<td{key}{klass}>{escape(text)}</td>"


# charts ----------------------------------------------------------------------------------------
_LABEL_W, _PLOT_W, _ROW_H, _TOP, _BOTTOM = 360, 500, 26, 30, 44
_COLORS = {GAINED: "#1f9d55", NO_GAIN: "#8a94a0", SLOWER: "#d64545", NOT_RUN: "#c8ced6"}


def _log_scale(values: Iterable[float], floor: float, ceil: float) -> tuple[float, float]:
    finite = [v for v in values if v > 0]
    low = min([floor, *finite]) / 1.15
    high = max([ceil, *finite]) * 1.15
    return math.log(low), math.log(high)


def _ticks(lo: float, hi: float) -> list[float]:
    """Round values (1, 2, 5 times powers of ten) inside [e^lo, e^hi]."""
    ticks = []
    for exponent in range(math.floor(lo / math.log(10)) - 1, math.ceil(hi / math.log(10)) + 1):
        for step in (1, 2, 5):
            value = step * 10.0**exponent
            if lo <= math.log(value) <= hi:
                ticks.append(value)
    if len(ticks) > 9:
        ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]
    return ticks


def _svg_open(rows: int, title: str, cls: str, expected: int) -> tuple[str, int]:
    height = _TOP + rows * _ROW_H + _BOTTOM
    width = _LABEL_W + _PLOT_W + 90
    return (
        f'<svg class="chart {cls}" data-expected-bars="{expected}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        height,
    )


def _label(i: int, row: Row) -> str:
    y = _TOP + i * _ROW_H + _ROW_H / 2 + 4
    room = max(50 - len(row.function), 12)
    test = row.test if len(row.test) <= room else _shorten(row.test, room)
    return (
        f'<text class="label" x="{_LABEL_W - 8}" y="{y:.1f}" text-anchor="end">'
        f"<title>{escape(row.nodeid)}::{escape(row.function)}</title>"
        f'<tspan class="fname">{escape(row.function)}</tspan>'
        f'<tspan class="tname" dx="6">{escape(test)}</tspan></text>'
    )


def _shorten(test: str, room: int) -> str:
    """Keep the start of the test name and its parameters: ``test_gel…[float16-compiled]``."""
    name, bracket, params = test.partition("[")
    params = bracket + params
    if len(params) > room - 6:
        params = "[…" + params[-(room - 8) :]
    keep = max(room - len(params) - 1, 4)
    return name[:keep] + "…" + params


def _axis(lo: float, hi: float, height: int, fmt: str, caption: str) -> list[str]:
    def x(v: float) -> float:
        return _LABEL_W + (math.log(v) - lo) / (hi - lo) * _PLOT_W

    parts, last = [], -math.inf
    for tick in _ticks(lo, hi):
        if x(tick) - last < 58:  # labels closer than this overlap
            continue
        last = x(tick)
        parts.append(
            f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{_TOP - 6}" '
            f'y2="{height - _BOTTOM + 4}"/>'
            f'<text class="tick" x="{x(tick):.1f}" y="{height - _BOTTOM + 18}" '
            f'text-anchor="middle">{escape(fmt.format(tick) if fmt else _rate(tick))}</text>'
        )
    parts.append(
        f'<text class="caption" x="{_LABEL_W + _PLOT_W / 2}" y="{height - 6}" '
        f'text-anchor="middle">{escape(caption)}</text>'
    )
    return parts


def speedup_chart(rows: Sequence[Row]) -> str:
    """Bars from 1x to each compiled speedup (log scale), with the range as a whisker."""
    timed = sorted((r for r in rows if r.speedup is not None), key=lambda r: -(r.speedup or 0))
    if not timed:
        return '<p class="empty">No speedups: no function was timed in a compiled mode.</p>'
    values = [v for r in timed for v in (r.speedup, r.low, r.high, r.shapeless) if v is not None]
    lo, hi = _log_scale(values, 0.5, 2.0)

    def x(v: float) -> float:
        return _LABEL_W + (math.log(v) - lo) / (hi - lo) * _PLOT_W

    head, height = _svg_open(len(timed), "compiled speedup per function", "speedups", len(timed))
    parts = [head, *_axis(lo, hi, height, "{:g}x", "speedup: eager / compiled median (log scale)")]
    one = x(1.0)
    parts.append(
        f'<line class="one" x1="{one:.1f}" x2="{one:.1f}" y1="{_TOP - 10}" '
        f'y2="{height - _BOTTOM + 4}"/><text class="tick strong" x="{one:.1f}" '
        f'y="{_TOP - 14}" text-anchor="middle">1x = no gain</text>'
    )
    for i, row in enumerate(timed):
        assert row.speedup is not None
        y = _TOP + i * _ROW_H
        end = x(row.speedup)
        left, width = min(one, end), max(abs(end - one), 1.5)
        color = _COLORS[row.verdict]
        tip = f"{row.label}: {_x(row.speedup)} [{_x(row.low)} - {_x(row.high)}] ({row.verdict})"
        parts.append(_label(i, row))
        parts.append(
            f'<rect class="bar speedup-bar" data-function="{escape(row.label)}" '
            f'data-verdict="{row.verdict}" x="{left:.1f}" y="{y + 5}" width="{width:.1f}" '
            f'height="{_ROW_H - 10}" rx="3" fill="{color}"><title>{escape(tip)}</title></rect>'
        )
        if row.low is not None and row.high is not None:
            a, b, mid = x(row.low), x(row.high), y + _ROW_H / 2
            parts.append(
                f'<path class="whisker" d="M{a:.1f} {mid - 5}V{mid + 5}M{a:.1f} {mid}H{b:.1f}'
                f'M{b:.1f} {mid - 5}V{mid + 5}"/>'
            )
        if row.shapeless is not None:
            sx, mid = x(row.shapeless), y + _ROW_H / 2
            parts.append(
                f'<path class="shapeless-mark" d="M{sx:.1f} {mid - 5}l5 5l-5 5l-5 -5z">'
                f"<title>shapeless {_x(row.shapeless)}</title></path>"
            )
        marks = [v for v in (row.speedup, row.high, row.shapeless) if v is not None]
        text_x = x(max(marks)) + 8
        parts.append(
            f'<text class="value" x="{text_x:.1f}" y="{y + _ROW_H / 2 + 4:.1f}">'
            f"{escape(_x(row.speedup))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bandwidth_chart(rows: Sequence[Row], roofline: float | None, method: str) -> str:
    """Achieved bandwidth of each compiled function against the device's measured roofline."""
    measured = sorted(
        (r for r in rows if r.bandwidth is not None), key=lambda r: -(r.bandwidth or 0)
    )
    if not measured:
        return '<p class="empty">No bandwidth figures in this report.</p>'
    roofs = [r.roofline for r in measured if r.roofline] + ([roofline] if roofline else [])
    roof = max(roofs) if roofs else None
    values = [v for r in measured for v in (r.bandwidth, r.eager_bandwidth) if v is not None] + (
        [roof] if roof else []
    )
    top = max(values)
    lo, hi = _log_scale(values, min(values), top)

    def x(v: float) -> float:
        return _LABEL_W + (math.log(max(v, math.exp(lo))) - lo) / (hi - lo) * _PLOT_W

    head, height = _svg_open(len(measured), "achieved bandwidth", "bandwidth", len(measured))
    parts = [head, *_axis(lo, hi, height, "", "bytes in + out per second of the compiled median")]
    if roof:
        rx = x(roof)
        parts.append(
            f'<line class="roof" x1="{rx:.1f}" x2="{rx:.1f}" y1="{_TOP - 10}" '
            f'y2="{height - _BOTTOM + 4}"/><text class="tick roof-label" x="{rx - 4:.1f}" '
            f'y="{_TOP - 14}" text-anchor="end">device roofline {escape(_rate(roof))}'
            f"{escape(f' ({method})' if method else '')}</text>"
        )
    start = _LABEL_W
    for i, row in enumerate(measured):
        assert row.bandwidth is not None
        y = _TOP + i * _ROW_H
        end = x(row.bandwidth)
        fraction = "" if row.fraction is None else f" = {row.fraction:.1%} of the roofline"
        tip = f"{row.label}: {_rate(row.bandwidth)}{fraction}"
        parts.append(_label(i, row))
        parts.append(
            f'<rect class="bar bandwidth-bar" data-function="{escape(row.label)}" x="{start}" '
            f'y="{y + 5}" width="{max(end - start, 1.5):.1f}" height="{_ROW_H - 10}" rx="3" '
            f'fill="{_COLORS[row.verdict]}"><title>{escape(tip)}</title></rect>'
        )
        ex_end = end
        if row.eager_bandwidth is not None:
            ex, mid = x(row.eager_bandwidth), y + _ROW_H / 2
            ex_end = ex + 4
            parts.append(
                f'<circle class="eager-mark" cx="{ex:.1f}" cy="{mid}" r="4">'
                f"<title>eager {escape(_rate(row.eager_bandwidth))}</title></circle>"
            )
        text = _rate(row.bandwidth) + (f" ({row.fraction:.1%})" if row.fraction is not None else "")
        parts.append(
            f'<text class="value" x="{max(end, ex_end) + 8:.1f}" y="{y + _ROW_H / 2 + 4:.1f}">'
            f"{escape(text)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# sections --------------------------------------------------------------------------------------
def _header(doc: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    outcomes: dict[str, int] = {}
    for test in tests:
        outcome = str(test.get("outcome") or "unknown")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    badges = "".join(
        f'<span class="badge {escape(k)}">{n} {escape(k)}</span>'
        for k, n in sorted(outcomes.items(), key=lambda kv: -kv[1])
    )
    machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
    run = doc.get("run") if isinstance(doc.get("run"), dict) else {}
    facts = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(_plain(v))}</dd>" for k, v in (machine or {}).items()
    )
    run_facts = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(_plain(v))}</dd>"
        for k, v in (run or {}).items()
        if v not in (None, [], {})
    )
    return (
        f"<header><h1>pytest-mlxcompile report</h1>"
        f'<p class="sub">{escape(str(doc.get("created", "")))} · '
        f"{len(tests)} test variants {badges}</p>"
        f'<div class="facts"><section><h3>Machine</h3><dl>{facts}</dl></section>'
        f"<section><h3>Run</h3><dl>{run_facts}</dl></section></div></header>"
    )


def _plain(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value) or "-"
    if isinstance(value, float):
        return _rate(value) if value > 1e5 else f"{value:g}"
    return str(value)


def _glance(rows: list[Row]) -> str:
    if not rows:
        return (
            '<section id="glance"><h2>At a glance</h2><p class="empty">No timings in this '
            "report: run with --mlx-timings (or use the mlx_benchmark fixture).</p></section>"
        )
    groups: dict[str, list[Row]] = {GAINED: [], NO_GAIN: [], SLOWER: [], NOT_RUN: []}
    for row in rows:
        groups[row.verdict].append(row)
    titles = {
        GAINED: "Gained from compiling",
        NO_GAIN: "No gain beyond noise",
        SLOWER: "Slower compiled",
        NOT_RUN: "Could not compare",
    }
    cards = []
    for verdict, members in groups.items():
        if not members:
            continue
        members.sort(key=lambda r: -(r.speedup or 0))
        items = "".join(
            f'<li><b class="fn">{escape(r.function)}</b> '
            f'<span class="x">{escape(_x(r.speedup))}</span>'
            + (f' <span class="range">[{_x(r.low)}-{_x(r.high)}]</span>' if r.low else "")
            + f'<div class="test">{escape(r.test)}</div>'
            + (f'<div class="why">{escape(r.why())}</div>' if r.why() else "")
            + "</li>"
            for r in members
        )
        cards.append(
            f'<div class="card {verdict.replace(" ", "-")}"><h3>{titles[verdict]} '
            f'<span class="count">{len(members)}</span></h3><ul>{items}</ul></div>'
        )
    cards_html = "".join(cards)
    return (
        f'<section id="glance"><h2>At a glance</h2><div class="cards">{cards_html}</div></section>'
    )


def _legend() -> str:
    return (
        '<p class="legend">'
        + "".join(
            f'<span><i style="background:{_COLORS[v]}"></i>{escape(v)}</span>'
            for v in (GAINED, NO_GAIN, SLOWER)
        )
        + '<span><i class="whisker-key"></i>range (paired rounds)</span>'
        + '<span><i class="diamond-key"></i>shapeless</span></p>'
    )


def _table(rows: list[Row]) -> str:
    if not rows:
        return ""
    head = [
        ("test::function", "text"),
        ("eager", "num"),
        ("compiled", "num"),
        ("shapeless", "num"),
        ("speedup", "num"),
        ("range", "text"),
        ("compile", "num"),
        ("break-even", "num"),
        ("mem", "num"),
        ("ops → kernels", "text"),
        ("bandwidth", "num"),
        ("of roofline", "num"),
        ("why / flags", "text"),
    ]
    ths = "".join(
        f'<th data-type="{kind}" tabindex="0" title="sort by {escape(name)}">{escape(name)}</th>'
        for name, kind in head
    )
    body = []
    for row in rows:
        medians = []
        for mode in ("eager", "compiled", "shapeless"):
            median = row.median(mode)
            text = "n/a" if row.mode_error(mode) else _time(median)
            medians.append(_cell(text, median if median is not None else ""))
        cost = _num(_get(row.timing, "compile_cost", "compiled"))
        breaks = _num(_get(row.timing, "break_even_calls", "compiled"))
        memory = _memory_ratio(row.timing)
        fusion = row.fusion
        body.append(
            f'<tr class="{row.verdict.replace(" ", "-")}">'
            + f'<td data-sort="{escape(row.label)}" class="fn"><b>{escape(row.function)}</b>'
            f'<div class="test">{escape(row.test)}</div></td>'
            + "".join(medians)
            + _cell(_x(row.speedup), row.speedup if row.speedup is not None else "", "x")
            + _cell(f"{_x(row.low)} - {_x(row.high)}" if row.low is not None else "-")
            + _cell(_time(cost), cost if cost is not None else "")
            + _cell(
                "never"
                if breaks is None and row.verdict != GAINED
                else ("-" if breaks is None else _calls(breaks)),
                breaks if breaks is not None else 1e300,
            )
            + _cell(_x(memory), memory if memory is not None else "")
            + _cell("-" if fusion is None else f"{fusion[0]} → {fusion[1]}")
            + _cell(_rate(row.bandwidth), row.bandwidth if row.bandwidth is not None else "")
            + _cell(
                "-" if row.fraction is None else f"{row.fraction:.1%}",
                row.fraction if row.fraction is not None else "",
            )
            + _cell("; ".join(filter(None, [row.why(), *row.flags[:1]])), None, "why")
            + "</tr>"
        )
    return (
        '<section id="timings"><h2>Timings</h2><p class="hint">Click a column header to sort. '
        "Medians per call with outputs evaluated; speedup = eager / compiled median, its range "
        "the quartiles over paired rounds.</p>"
        f'<div class="scroll"><table class="sortable" id="timings-table"><thead><tr>{ths}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _memory_ratio(timing: dict[str, Any]) -> float | None:
    eager = _num(_get(timing, "modes", "eager", "peak_memory"))
    compiled = _num(_get(timing, "modes", "compiled", "peak_memory"))
    return compiled / eager if eager and compiled is not None else None


def _diagnoses(tests: list[dict[str, Any]]) -> str:
    cards = []
    for test in tests:
        for function in test.get("functions") or []:
            for diagnosis in (
                (function.get("diagnoses") or []) if isinstance(function, dict) else []
            ):
                if not isinstance(diagnosis, dict):
                    continue
                cards.append(
                    f'<article class="diagnosis"><h3><span class="err">'
                    f"{escape(str(diagnosis.get('error') or diagnosis.get('kind', '')))}</span> "
                    f"{escape(str(diagnosis.get('function', '')))} "
                    f'<span class="where">{escape(str(diagnosis.get("where", "")))}</span></h3>'
                    f'<p class="test">{escape(str(test.get("nodeid", "")))} · '
                    f"{escape(str(test.get('outcome', '')))}</p>"
                    f"<pre>{escape(str(diagnosis.get('message', '')))}</pre></article>"
                )
    failed = [
        t
        for t in tests
        if t.get("outcome") in ("failed", "error")
        and not any(isinstance(f, dict) and f.get("diagnoses") for f in (t.get("functions") or []))
    ]
    failures = "".join(
        f'<li><span class="badge {escape(str(t.get("outcome")))}">{escape(str(t.get("outcome")))}'
        f"</span> {escape(str(t.get('nodeid', '')))}</li>"
        for t in failed
    )
    body = "".join(cards) or '<p class="empty">No compile bug was diagnosed.</p>'
    if failures:
        body += f'<h3>Other failures (see the test log)</h3><ul class="plain">{failures}</ul>'
    return f'<section id="diagnoses"><h2>Diagnoses ({len(cards)})</h2>{body}</section>'


def _traces(tests: list[dict[str, Any]]) -> str:
    by_function: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for test in tests:
        for function in test.get("functions") or []:
            if isinstance(function, dict):
                key = (str(function.get("function", "?")), str(function.get("where", "")))
                by_function.setdefault(key, []).append((test, function))
    if not by_function:
        return ""
    blocks = []
    order = sorted(
        by_function.items(),
        key=lambda kv: (-max(int(f.get("traces") or 0) for _, f in kv[1]), kv[0]),
    )
    for (name, where), uses in order:
        most = max(len(f.get("recompiles") or []) for _, f in uses)
        variants = []
        for test, function in uses:
            events = [e for e in function.get("recompiles") or [] if isinstance(e, dict)]
            rows = "".join(
                f"<tr><td>{escape(str(e.get('trace', '')))}</td>"
                f"<td>{escape(str(e.get('call') if e.get('call') is not None else '-'))}</td>"
                f"<td>{escape(', '.join(map(str, e.get('kinds') or [])) or 'first')}</td>"
                f"<td>{escape('; '.join(map(str, e.get('reasons') or [])))}</td></tr>"
                for e in events
            )
            table = (
                f'<table class="events"><thead><tr><th>trace</th><th>call</th><th>kind</th>'
                f"<th>reasons</th></tr></thead><tbody>{rows}</tbody></table>"
                if rows
                else ""
            )
            calls = escape(str(function.get("calls", 0)))
            if test.get("mode") == "eager":
                counts = f"{calls} calls, eager: the Python body runs on every call"
            else:
                counts = (
                    f"{calls} calls, {escape(str(function.get('traces', 0)))} traces, "
                    f"{escape(str(function.get('parity_checks', 0)))} parity checks"
                )
            variants.append(
                f'<div class="variant"><p><b>{escape(str(test.get("nodeid", "")))}</b> · '
                f"{counts}</p>{table}</div>"
            )
        retraced = "retraced" if most > 1 else ""
        blocks.append(
            f'<details class="function {retraced}"{" open" if most > 1 else ""}><summary>'
            f'<span class="fn">{escape(name)}</span> <span class="where">{escape(where)}</span>'
            f' <span class="count">up to {most} trace{"s" * (most != 1)} in a variant</span>'
            f"</summary>{''.join(variants)}</details>"
        )
    return f'<section id="traces"><h2>Trace history</h2>{"".join(blocks)}</section>'


def _notes(doc: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    notes = [n for n in doc.get("shapeless") or [] if isinstance(n, dict)]
    for test in tests:
        for function in test.get("functions") or []:
            if isinstance(function, dict):
                notes += [n for n in function.get("notes") or [] if isinstance(n, dict)]
    if not notes:
        return ""
    items = "".join(
        f'<li><span class="tag">{escape(str(n.get("kind", "note")))}</span> '
        f"<b>{escape(str(n.get('function', '')))}</b> "
        f'<span class="where">{escape(str(n.get("where", "")))}</span> '
        f'<span class="tag">{escape(str(n.get("mode", "")))}</span>'
        f"<div>{escape(str(n.get('message', '')))}</div></li>"
        for n in notes
    )
    return (
        f'<section id="notes"><h2>Notes ({len(notes)})</h2><ul class="notes">{items}</ul></section>'
    )


# the page --------------------------------------------------------------------------------------
def render(doc: dict[str, Any]) -> str:
    """The whole page for one report document."""
    tests = _tests(doc)
    rows = _rows(doc)
    roofline = _num(_get(doc, "run", "roofline", "bandwidth"))
    method = str(_get(doc, "run", "roofline", "method") or "")
    if roofline is None:
        roof_note = (
            '<p class="hint">This report has no device roofline (it needs a report with '
            "<code>run.roofline</code>); the bars show achieved bandwidth only, circles the "
            "eager bandwidth.</p>"
        )
    else:
        roof_note = (
            '<p class="hint">Bars: achieved bandwidth of the compiled median; circles: eager; '
            "the red line: the device's measured copy bandwidth.</p>"
        )
    body = (
        _header(doc, tests)
        + '<nav><a href="#glance">At a glance</a><a href="#speedups">Speedups</a>'
        '<a href="#bandwidth">Bandwidth</a><a href="#timings">Timings</a>'
        '<a href="#diagnoses">Diagnoses</a><a href="#traces">Traces</a></nav><main>'
        + _glance(rows)
        + '<section id="speedups"><h2>Speedup per function</h2>'
        + _legend()
        + f'<div class="scroll">{speedup_chart(rows)}</div></section>'
        + '<section id="bandwidth"><h2>Achieved bandwidth against the device roofline</h2>'
        + roof_note
        + f'<div class="scroll">{bandwidth_chart(rows, roofline, method)}</div></section>'
        + _table(rows)
        + _diagnoses(tests)
        + _traces(tests)
        + _notes(doc, tests)
        + '<footer><p id="selfcheck" data-state="pending">page script did not run</p></footer>'
        + "</main>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pytest-mlxcompile report · {escape(str(doc.get('created', '')))}</title>"
        f"<style>{_CSS}</style></head><body>{body}<script>{_JS}</script></body></html>\n"
    )


_CSS = """
:root{--fg:#1d2430;--muted:#5f6b7a;--line:#e3e7ec;--bg:#f6f8fa;--card:#fff;--gain:#1f9d55;
--nogain:#8a94a0;--slow:#d64545;--accent:#3b6fd6}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
sans-serif;color:var(--fg);background:var(--bg)}
header{background:#17202e;color:#eef2f7;padding:20px 28px 14px}
header h1{margin:0;font-size:22px;font-weight:650}.sub{margin:4px 0 12px;color:#b8c2d0}
.facts{display:flex;gap:40px;flex-wrap:wrap}.facts h3{margin:0 0 4px;font-size:12px;
text-transform:uppercase;letter-spacing:.06em;color:#8fa0b6}
dl{display:grid;grid-template-columns:auto auto;gap:1px 12px;margin:0;font-size:13px}
dt{color:#8fa0b6}dd{margin:0}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);
padding:8px 28px;display:flex;gap:18px}nav a{color:var(--accent);text-decoration:none}
main{padding:8px 28px 40px;max-width:1400px}section{margin-top:22px}
h2{font-size:18px;margin:0 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;margin-left:6px;font-size:12px;
background:#5f6b7a;color:#fff}.badge.passed{background:var(--gain)}.badge.failed,
.badge.error{background:var(--slow)}.badge.skipped{background:#c08a1e}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--nogain);
border-radius:8px;padding:10px 14px}.card.gained{border-left-color:var(--gain)}
.card.slower{border-left-color:var(--slow)}.card h3{margin:0 0 6px;font-size:15px}
.card ul{margin:0;padding-left:0;list-style:none}.card li{padding:5px 0;
border-top:1px solid var(--line)}.card li:first-child{border-top:0}
.count{color:var(--muted);font-weight:400;font-size:13px}
.fn{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.x{font-weight:650}.range,.where{color:var(--muted);font-size:12px}
.why{color:var(--muted);font-size:12.5px}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:8px}svg.chart{display:block;max-width:100%;height:auto;font-size:12px}
svg .label{fill:var(--fg);font-size:12px}svg .fname{font-weight:650;
font-family:ui-monospace,Menlo,monospace}svg .tname{fill:var(--muted);font-size:11px}
svg .tick{fill:var(--muted);font-size:11px}svg .strong{fill:var(--fg);font-weight:600}
svg .caption{fill:var(--muted);font-size:12px}svg .grid{stroke:#edf0f3}
svg .one{stroke:#1d2430;stroke-width:1.5;stroke-dasharray:4 3}
svg .roof{stroke:var(--slow);stroke-width:2;stroke-dasharray:6 3}svg .roof-label{fill:var(--slow)}
svg .whisker{stroke:#1d2430;stroke-width:1.4;fill:none}svg .value{fill:var(--fg);font-weight:600}
svg .shapeless-mark{fill:#fff;stroke:#6b4fd6;stroke-width:1.6}
svg .eager-mark{fill:#fff;stroke:#1d2430;stroke-width:1.4}
.legend{display:flex;gap:16px;color:var(--muted);font-size:12.5px;margin:0 0 6px}
.legend i{display:inline-block;width:14px;height:10px;border-radius:2px;margin-right:5px;
vertical-align:middle}.legend .whisker-key{border-top:2px solid #1d2430;height:0;width:16px}
.legend .diamond-key{width:9px;height:9px;border:1.6px solid #6b4fd6;transform:rotate(45deg);
border-radius:0}
.hint,.empty{color:var(--muted);margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:13px;background:var(--card)}
th,td{padding:5px 6px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.why,th:last-child{text-align:left}
td.fn{white-space:normal;min-width:240px;max-width:320px}td.fn .test{color:var(--muted);
font-size:11.5px;word-break:break-all}td.why{white-space:normal;
min-width:200px;color:var(--muted)}
table.sortable th{cursor:pointer;user-select:none;background:#f0f3f6;position:sticky;top:0}
table.sortable th:hover{background:#e4e9ef}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
tr.gained td.x{color:var(--gain)}tr.slower td.x{color:var(--slow)}tr.no-gain td.x{color:#6b7480}
.diagnosis{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--slow);
border-radius:8px;padding:8px 14px;margin-bottom:12px}.diagnosis h3{margin:0;font-size:15px}
.err{color:var(--slow)}.test{margin:2px 0 6px;color:var(--muted);font-size:12px}
li .test{margin:0;word-break:break-all}
pre{white-space:pre-wrap;background:#fbf4f4;border-radius:6px;padding:8px 10px;margin:0;
font-size:12.5px}
details.function{background:var(--card);border:1px solid var(--line);border-radius:8px;
margin-bottom:8px;padding:6px 12px}details.retraced{border-left:6px solid #c08a1e}
summary{cursor:pointer}.variant{margin:6px 0 10px 14px}.variant p{margin:4px 0}
table.events th,table.events td{text-align:left;white-space:normal}
ul.plain,ul.notes{padding-left:18px}.tag{background:#eef1f5;border-radius:4px;padding:0 5px;
font-size:12px}footer{margin-top:30px;color:#b0b8c3;font-size:11px}
"""

_JS = """
(function(){
var mark=document.getElementById('selfcheck');
function fail(msg){if(mark){mark.dataset.state='error';mark.textContent='selfcheck error: '+msg;}}
window.addEventListener('error',function(e){fail(e.message||'script error');});
function key(td,type){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent;
 if(type==='num'){var f=parseFloat(v);return isNaN(f)?Infinity:f;}return v.toLowerCase();}
function sortBy(table,index,dir){var th=table.tHead.rows[0].cells[index];var type=th.dataset.type;
 var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[index],type),y=key(b.cells[index],type);
  return (x<y?-1:x>y?1:0)*dir;});
 rows.forEach(function(r){body.appendChild(r);});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir>0?'ascending':'descending');}
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(table){
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
  function go(){var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
   if(th.dataset.type==='num'&&!th.hasAttribute('aria-sort'))dir=-1;sortBy(table,i,dir);}
  th.addEventListener('click',go);
  th.addEventListener('keydown',function(e){if(e.key==='Enter')go();});});});
try{var problems=[];
 Array.prototype.forEach.call(document.querySelectorAll('svg.chart'),function(svg){
  var want=parseInt(svg.getAttribute('data-expected-bars'),10);
  var got=svg.querySelectorAll('rect.bar').length;
  if(want!==got)problems.push(svg.getAttribute('class')+': '+got+' bars, expected '+want);});
 var table=document.getElementById('timings-table');
 if(table&&location.hash==='#selfcheck-sort'){
  var i=Array.prototype.findIndex.call(table.tHead.rows[0].cells,function(c){
   return c.textContent==='speedup';});
  table.tHead.rows[0].cells[i].click();
  var vals=Array.prototype.map.call(table.tBodies[0].rows,function(r){
   return key(r.cells[i],'num');});
  for(var k=1;k<vals.length;k++){if(vals[k-1]<vals[k])problems.push('speedup not sorted');}}
 var bars=document.querySelectorAll('svg.speedups rect.speedup-bar').length;
 if(problems.length){fail(problems.join('; '));}
 else if(mark){mark.dataset.state='ok';
  mark.textContent='selfcheck ok: '+bars+' speedup bars';}
}catch(e){fail(String(e));}
})();
"""
