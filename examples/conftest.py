"""Example-suite plumbing: the pitfalls are expected failures whose diagnosis is printed.

A test marked ``@pytest.mark.pitfall(raises=SomeError)`` shows a bug that compile introduces:
its ``[eager]`` variant must pass, and its compiled variants must fail with that error (a strict
xfail: if the plugin stopped catching the bug, the test would XPASS and the run would fail).
The summary prints each caught diagnosis, so the main run ends green and still shows what the
plugin catches. Add ``--runxfail`` to see the full failures instead.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _pitfalls_fail_in_compiled_variants(request: pytest.FixtureRequest) -> None:
    mark = request.node.get_closest_marker("pitfall")
    if mark is not None and request.getfixturevalue("mlx_mode") != "eager":
        reason = mark.kwargs.get("reason", "a compile pitfall the plugin must catch")
        xfail = pytest.mark.xfail(raises=mark.kwargs["raises"], strict=True, reason=reason)
        request.applymarker(xfail)


# trylast: print after the plugin's sections, right above pytest's short summary.
@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    caught = [r for r in terminalreporter.stats.get("xfailed", []) if r.longrepr is not None]
    if not caught:
        return
    terminalreporter.section("pitfalls caught as documented (expected failures)")
    for report in caught:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
        terminalreporter.write_line(report.nodeid)
        for line in message.splitlines():
            terminalreporter.write_line(f"  {line}")
    terminalreporter.write_line("(add --runxfail to see them as failures with tracebacks)")
