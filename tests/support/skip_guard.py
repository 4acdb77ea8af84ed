"""Under CI=true an unexpected skip fails the run: a missing install step must never turn into a green CI.

A skip is expected only if ALLOWED names its test (node id prefix) with the reason it may skip in CI.
Tests that need something CI cannot have are deselected instead, with a header line saying so
(`requires_reference`: the live clone named by $PRDIT_REFERENCE).
"""

from __future__ import annotations

import os

import pytest

# node id prefix -> why it may skip under CI. Empty: every test runs on CI's machine.
ALLOWED: dict[str, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _allowed(nodeid: str) -> bool:
    return any(nodeid.startswith(prefix) for prefix in ALLOWED)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


class SkipGuard:
    def __init__(self) -> None:
        self.unexpected: list[tuple[str, str]] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and not _allowed(report.nodeid):
            self.unexpected.append((report.nodeid, _reason(report)))

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped and not _allowed(report.nodeid):  # a whole module skipped (importorskip)
            self.unexpected.append((report.nodeid, _reason(report)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.unexpected:
            terminalreporter.section("unexpected skips under CI=true", red=True)
            for nodeid, reason in self.unexpected:
                terminalreporter.line(f"{nodeid}: {reason}")
            terminalreporter.line(
                "a skip in CI means a test proved nothing: install what it needs through the README's "
                "commands, or list it in tests/support/skip_guard.py ALLOWED with the reason"
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_reference: needs the live reference clone $PRDIT_REFERENCE (else deselected)"
    )
    # only the controller (no xdist worker) judges: it sees every worker's reports
    if in_ci() and not hasattr(config, "workerinput"):
        config.pluginmanager.register(SkipGuard(), "prdit-skip-guard")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PRDIT_REFERENCE"):
        return
    keep = [i for i in items if i.get_closest_marker("requires_reference") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str | None:
    if not os.environ.get("PRDIT_REFERENCE"):
        return "PRDIT_REFERENCE is not set: the live-clone exactness tests are deselected (recorded fixtures run)"
    return None
