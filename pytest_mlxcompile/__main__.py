"""``python -m pytest_mlxcompile report RUN.json [--compare OLD.json] [--html OUT.html]``.

Prints the end-of-run summary (recompiles, timings, the comparison with a baseline) of a saved
``--mlx-report-json`` report, and writes its HTML page, without running any test. Bad input is
a message naming the file and the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pytest_mlxcompile import recompiles, report, report_html, settings
from pytest_mlxcompile.timing import FunctionTiming

__all__ = ["main"]

PROG = "python -m pytest_mlxcompile"


class BadInput(Exception):
    """A file or argument the command cannot use; the message says which and why."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Work with reports saved by pytest --mlx-report-json, without running tests.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    show = commands.add_parser(
        "report",
        help="print a saved report's summary (and write its HTML page)",
        description="Print the summary pytest prints at the end of a run (recompiles, timings, "
        "the comparison with a baseline) from a saved JSON report.",
    )
    show.add_argument("run", metavar="RUN.json", help="a report saved by --mlx-report-json")
    show.add_argument(
        "--compare", metavar="OLD.json", help="a baseline report to compare the timings with"
    )
    show.add_argument("--html", metavar="OUT.html", help="also write the report as one HTML page")
    return parser


def load(path: str, what: str) -> dict[str, Any]:
    """A saved report, checked enough that rendering it cannot fail halfway."""
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as exc:
        raise BadInput(f"{what} {path!r}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{what} {path!r} is not JSON: {exc}") from None
    problem = _problem(doc)
    if problem is not None:
        raise BadInput(
            f"{what} {path!r} is not a report saved by pytest --mlx-report-json: {problem}"
        )
    return doc  # type: ignore[no-any-return]


def _problem(doc: object) -> str | None:
    if not isinstance(doc, dict):
        return f"the top level is a {type(doc).__name__}, not an object"
    if doc.get("schema") != report.SCHEMA:
        return f"'schema' is {doc.get('schema')!r}, not {report.SCHEMA!r}"
    if doc.get("version") != report.SCHEMA_VERSION:
        return f"'version' is {doc.get('version')!r}; this version reads {report.SCHEMA_VERSION}"
    tests = doc.get("tests")
    if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
        return "'tests' is not a list of objects"
    for index, test in enumerate(tests):
        for key, kind in (("nodeid", str), ("functions", list), ("timings", list)):
            if not isinstance(test.get(key), kind):
                return f"tests[{index}] has no {key!r} {kind.__name__}"
        for number, timing in enumerate(test["timings"]):
            try:
                FunctionTiming.from_json(timing)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                return (
                    f"tests[{index}].timings[{number}] is malformed ({type(exc).__name__}: {exc})"
                )
    return None


def _section(title: str) -> str:
    width = max(shutil.get_terminal_size().columns, 40)
    return f" {title} ".center(width, "=")


def summary(doc: dict[str, Any], path: str, baseline: report.Baseline | None) -> list[str]:
    """The lines pytest's terminal summary shows for this run."""
    collector = report.Collector(records={t["nodeid"]: t for t in doc["tests"]})
    outcomes: dict[str, int] = {}
    for test in doc["tests"]:
        outcome = str(test.get("outcome") or "unknown")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
    counts = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "no test variants"
    lines = [
        f"mlx report {path}: saved {doc.get('created', '?')} ({counts})",
        "machine: "
        + ", ".join(f"{k} {v}" for k, v in (machine or {}).items() if k in _SHOWN_MACHINE),
    ]
    retraced = recompiles.summary_lines(recompiles.summary_entries(collector.records.items()))
    if retraced:
        lines += [_section("recompiles"), *retraced]
    diagnoses = [
        f"{d.get('error') or d.get('kind')}: {test['nodeid']}: "
        + str(d.get("message", "")).splitlines()[0]
        for test in doc["tests"]
        for function in test["functions"]
        if isinstance(function, dict)
        for d in function.get("diagnoses") or []
        if isinstance(d, dict)
    ]
    if diagnoses:
        lines += [_section("mlx diagnoses"), *diagnoses]
    timings = collector.timings()
    if timings:
        lines += [_section("mlx timings"), *report.summary_lines(timings)]
    else:
        lines.append("no timings in this report (run pytest with --mlx-timings to record them)")
    if baseline is not None:
        lines.append(_section(f"mlx compare with {baseline.path}"))
        differs = report.machine_mismatch(baseline.machine, machine or {})
        if differs:
            lines.append(f"WARNING: {report.mismatch_warning(differs)}")
        lines += report.compare_lines(baseline, timings)
    return lines


_SHOWN_MACHINE = ("mlx", "backend", "device", "system", "architecture", "python")


def _report(args: argparse.Namespace) -> int:
    if args.html is not None:
        try:
            settings.parse_html_path(args.html, "--html")
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    doc = load(args.run, "RUN.json")
    baseline = None
    if args.compare is not None:
        load(args.compare, "--compare")
        baseline = report.Baseline.load(args.compare)
    try:
        lines = summary(doc, args.run, baseline)
        page = report_html.render(doc) if args.html is not None else ""
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a key of the right type checked above, holding something else deeper down
        raise BadInput(
            f"RUN.json {args.run!r} is not a report saved by pytest --mlx-report-json: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    for line in lines:
        print(line)
    if args.html is not None:
        try:
            report_html.write_html(args.html, doc, page)
        except OSError as exc:
            raise BadInput(f"--html {args.html!r}: cannot write it: {exc}") from None
        print(f"mlx report: {args.html} (HTML, {len(doc['tests'])} test variants)")
    return 0


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "report":
        parser.print_usage(sys.stderr)
        _fail("choose a command: report RUN.json [--compare OLD.json] [--html OUT.html]")
    try:
        return _report(args)
    except BadInput as exc:
        _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
