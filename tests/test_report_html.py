"""--mlx-report-html: one self-contained page, checked as text and in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from pytest_mlxcompile import report_html

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAST = "--mlx-timings-budget=0.05"

SUITE = """
import mlx.core as mx
import pytest

@mx.compile
def gelu_ish(x):
    return x * mx.sigmoid(1.702 * x) + mx.tanh(x) * 0

@mx.compile
def double(x):
    return x * 2

@pytest.mark.compiled(timings=True)
def test_both():
    gelu_ish(mx.ones(64))
    double(mx.ones(3))
    double(mx.ones(5))
"""


def _bars(page: str, chart: str) -> int:
    return len(re.findall(rf'<rect class="bar {chart}-bar"', page))


def test_the_html_report_has_a_bar_per_timed_function_and_loads_nothing_from_outside(pytester, run):
    pytester.makepyfile(SUITE)
    result = run(FAST, "--mlx-report-html=out/report.html", "--mlx-report-json=out/report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mlx report: out/report.html (HTML, 1 test variants)"])
    page = (pytester.path / "out" / "report.html").read_text()
    doc = json.loads((pytester.path / "out" / "report.json").read_text())
    timed = [t["function"] for test in doc["tests"] for t in test["timings"]]
    assert sorted(timed) == ["double", "gelu_ish"]
    assert _bars(page, "speedup") == 2
    assert _bars(page, "bandwidth") == 2
    # self-contained: no stylesheet, script or image is fetched; the only URL is SVG's namespace
    assert re.findall(r"(?:src|href)=\"(?!#)[^\"]*\"", page) == []
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"http://www.w3.org/2000/svg"}
    # the trace history shows the retrace of double with its reason
    assert "arg 0 &#x27;x&#x27; shape (3,) -&gt; (5,)" in page


def test_an_html_path_that_is_not_html_is_a_usage_error(pytester, run):
    pytester.makepyfile(SUITE)
    result = run("--mlx-report-html=report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-mlxcompile: --mlx-report-html: 'report.json' must end in .html "
            "(the report is one HTML page)"
        ]
    )


def test_an_html_path_whose_folder_cannot_be_made_is_a_usage_error_before_any_test(pytester, run):
    pytester.makepyfile(SUITE)
    pytester.path.joinpath("blocker").write_text("a file, not a folder")
    result = run("--mlx-report-html=blocker/report.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest-mlxcompile: --mlx-report-html='blocker/report.html': cannot write a "
         "report there: 'blocker' is a file, not a folder"]
    )  # fmt: skip
    assert "test_an_html_path" not in result.stdout.str()  # no test ran


def test_the_page_charts_bandwidth_against_the_roofline_when_the_report_has_one(pytester, run):
    pytester.makepyfile(SUITE)
    run(FAST, "--mlx-report-json=report.json").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "report.json").read_text())
    # an older report, or one whose run timed nothing compiled: no roofline measured
    doc["run"]["roofline"] = {"bandwidth": None, "method": "not measured"}
    for test in doc["tests"]:
        for timing in test["timings"]:
            timing.pop("achieved", None)
    assert 'class="roof"' not in report_html.render(doc)
    assert "This report has no device roofline" in report_html.render(doc)
    # the fields the performance work adds (common brief): a roofline and achieved figures
    doc["run"]["roofline"] = {"bandwidth": 4e10, "method": "copy of 256 MiB"}
    for test in doc["tests"]:
        for timing in test["timings"]:
            timing["achieved"] = {
                "bytes": 1024,
                "bandwidth": 1e9,
                "roofline": 4e10,
                "fraction": 0.025,
                "bound": "memory",
            }
    page = report_html.render(doc)
    assert "device roofline 40 GB/s (copy of 256 MiB)" in page
    assert page.count("1 GB/s (2.5%)") == 2
    assert "memory-bound at 2% of the roofline" in page
    assert _bars(page, "bandwidth") == 2


def test_the_page_lists_shapeless_notes_and_function_notes_when_the_report_has_them(pytester, run):
    pytester.makepyfile(SUITE)
    run(FAST, "--mlx-report-json=report.json").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "report.json").read_text())
    assert 'id="notes"' not in report_html.render(doc)
    note = {"function": "double", "where": "x.py:5", "mode": "shapeless"}
    doc["shapeless"] = [{**note, "kind": "not_shapeless_safe", "message": "wrong at size 7"}]
    doc["tests"][0]["functions"][0]["notes"] = [
        {**note, "kind": "check_skipped", "message": "over the byte budget"}
    ]
    page = report_html.render(doc)
    assert '<section id="notes"><h2>Notes (2)</h2>' in page
    assert "wrong at size 7" in page
    assert "over the byte budget" in page


def test_a_report_without_timings_or_tests_still_renders_saying_what_is_missing():
    page = report_html.render({"schema": "pytest-mlxcompile/report", "version": 1, "tests": []})
    assert "No timings in this report: run with --mlx-timings" in page
    assert "No speedups: no function was timed in a compiled mode." in page
    assert "No compile bug was diagnosed." in page


# real browser --------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            channels = {2: 3, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows = zlib.decompress(idat), width * channels, []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


@needs_chromium
def test_the_examples_report_loads_in_chromium_without_errors_and_draws_every_bar(
    pytester, run, tmp_path
):
    for path in EXAMPLES.glob("*.py"):
        pytester.makepyfile(**{path.stem: path.read_text()})
    result = run(
        "--mlx-compile-matrix",
        "--mlx-timings",
        FAST,
        "--mlx-report-html=report.html",
        "--mlx-report-json=report.json",
    )
    assert result.ret == pytest.ExitCode.OK  # the pitfalls are expected failures (xfail)
    page_path = pytester.path / "report.html"
    doc = json.loads((pytester.path / "report.json").read_text())
    timed = sum(len(test["timings"]) for test in doc["tests"])
    assert timed >= 6

    dom = _chromium(tmp_path / "profile-1", "--dump-dom", page_path.as_uri() + "#selfcheck-sort")
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert f'data-state="ok">selfcheck ok: {timed} speedup bars<' in dom.stdout, dom.stdout[-2000:]

    shot = tmp_path / "examples-report.png"
    _chromium(
        tmp_path / "profile-2",
        "--hide-scrollbars",
        "--window-size=1400,2200",
        f"--screenshot={shot}",
        page_path.as_uri(),
    )
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 2200)
    colors = {row[i : i + 3] for row in rows[::7] for i in range(0, len(row), 21)}
    assert len(colors) > 50, f"screenshot {shot} looks blank: {len(colors)} colours"
    print(f"screenshot of the examples report: {shot}")
