"""Run the shipped suites in-process with pytest and record, per test, its outcome and cited IDs.

The suites are the files of the installed ``llorch.harness`` package, so a regular install certifies
a target without a checkout. pytest runs with ``--rootdir`` at the folder above ``harness/`` so node
ids read ``harness/<suite>/…`` in a checkout and in a wheel alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from llorch.harness.plugin import item_reqs

__all__ = ["HARNESS_DIR", "SUITES", "RunResult", "TestRecord", "run_suites"]

HARNESS_DIR = Path(__file__).resolve().parent.parent
SUITES = {
    "orchestrator": ("contract", "properties", "bdd", "schema", "metrics"),
    "adapter": ("adapter",),
}


@dataclass
class TestRecord:
    __test__ = False  # a record, not a pytest test class
    nodeid: str
    outcome: str = "passed"            # passed | failed | skipped | error | xfailed | xpassed
    reqs: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    message: str | None = None


@dataclass
class RunResult:
    exit_code: int
    records: dict[str, TestRecord]
    collected: int


def _skip_text(reason: str) -> str:
    """The skip reason as the test wrote it: pytest prefixes ``Skipped: `` to ``pytest.skip()``
    messages, which would hide the ``unsupported:`` marker that certification looks for."""
    return reason.removeprefix("Skipped: ")


class _Collector:
    """A pytest plugin object: outcome and IDs per test, and progress callbacks."""

    def __init__(self, on_total: Callable[[int], None], on_done: Callable[[TestRecord], None]) -> None:
        self.records: dict[str, TestRecord] = {}
        self.collected = 0
        self._on_total = on_total
        self._on_done = on_done

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = len(session.items)
        for item in session.items:
            self.records[item.nodeid] = TestRecord(item.nodeid, reqs=item_reqs(item))
        self._on_total(self.collected)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self.records.setdefault(report.nodeid, TestRecord(report.nodeid))
        rec.duration_s += report.duration
        xfail = hasattr(report, "wasxfail")
        if report.when == "call":
            if xfail:
                rec.outcome = "xpassed" if report.passed else "xfailed"
            elif report.failed:
                rec.outcome = "failed"
        elif report.failed and rec.outcome == "passed":
            rec.outcome = "error"
        if report.skipped and rec.outcome == "passed":
            rec.outcome = "xfailed" if xfail else "skipped"
            if isinstance(report.longrepr, tuple):
                rec.message = _skip_text(str(report.longrepr[2]))
        if report.failed and rec.message is None:
            crash = getattr(report.longrepr, "reprcrash", None)
            rec.message = str(getattr(crash, "message", "") or report.longreprtext)[:2000]

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        rec = self.records.get(nodeid)
        if rec is not None:
            self._on_done(rec)


def run_suites(suites: Sequence[str], pytest_args: Sequence[str], *,
               on_total: Callable[[int], None] = lambda n: None,
               on_done: Callable[[TestRecord], None] = lambda r: None) -> RunResult:
    """Run ``harness/<suite>/`` for each suite with extra pytest arguments; never raises for test
    failures (see ``exit_code``: pytest's own, 0 passed, 1 failed, 2+ usage/internal errors)."""
    paths = [str(HARNESS_DIR / s) for s in suites if (HARNESS_DIR / s).is_dir()]
    if not paths:
        return RunResult(int(pytest.ExitCode.NO_TESTS_COLLECTED), {}, 0)
    collector = _Collector(on_total, on_done)
    args = [*paths, f"--rootdir={HARNESS_DIR.parent}", "--import-mode=importlib", "-p", "no:cacheprovider",
            "-p", "no:terminal", *pytest_args]
    code = pytest.main(args, plugins=[collector])
    return RunResult(int(code), collector.records, collector.collected)
