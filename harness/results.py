"""The results recorder: a pytest plugin object that writes the results JSON (``llorch-results/1``,
schema ``contracts/report/results.schema.json``) that ``llorch trace report`` reads.

``harness/plugin.py`` registers ``ResultsRecorder(config, path)`` when ``--llorch-results PATH`` is
given. Per test it records the node id normalised to the repository layout (``harness/…``,
``reference/tests/…``, ``tools/tests/…``, whether run from a checkout or an installed wheel), the
outcome (a failure in setup or teardown is ``error``), the requirement IDs of the ``req`` markers
(the test's own and those inherited from its class and module), the environment markers it needs
(``gpu``), the skip reason, the duration, a short failure message and, when the test recorded it
(``record_property("evidence", …)``), the evidence of its failing checks.

The ``target`` block of the environment is filled by whoever knows the target (the target
fixtures, ``llorch conform``), either directly::

    recorder = config.pluginmanager.get_plugin("llorch-results")
    if recorder is not None:
        recorder.target_info.update({"kind": "orchestrator", "address": "…", "engine": "mock"})

or, without a reference to the recorder, through the config stash::

    from llorch.harness.results import TARGET_INFO
    config.stash.setdefault(TARGET_INFO, {}).update({...})

Both are merged when the file is written at the end of the session.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

RESULTS_SCHEMA = "llorch-results/1"
TARGET_INFO: pytest.StashKey[dict[str, Any]] = pytest.StashKey()
# Markers that declare an environment a test needs; a skip for lack of it is a declared skip (D9).
ENVIRONMENT_MARKERS = ("gpu",)
# Top-level folders of the repository whose tests keep their path in a node id.
_TOP = ("harness", "reference", "tools", "llorch")
_SITE_RE = re.compile(r"(?:^|.*/)(?:site|dist)-packages/llorch/(?P<rest>.+)$")
_MESSAGE_MAX = 500
_EVIDENCE_MAX = 8000


@functools.cache
def _package_dirs() -> tuple[tuple[Path, str], ...]:
    """Where the code folders live in this install, most specific first."""
    import importlib.util

    out: list[tuple[Path, str]] = []
    for sub in _TOP[:3]:
        spec = importlib.util.find_spec(f"llorch.{sub}")
        if spec is not None and spec.submodule_search_locations:
            out.append((Path(next(iter(spec.submodule_search_locations))).resolve(), sub))
    import llorch

    out.append((Path(llorch.__file__).resolve().parent, "llorch"))
    return tuple(out)


def normalise_nodeid(nodeid: str, rootpath: Path | None = None) -> str:
    """Node id relative to the repository layout.

    ``../../venv/lib/python3.11/site-packages/llorch/harness/x/test_y.py::t`` and
    ``/home/u/llorch/harness/x/test_y.py::t`` both become ``harness/x/test_y.py::t``. With
    ``rootpath`` (pytest's rootdir) the file is located on disk and mapped through the installed
    package folders; otherwise, or when that fails, the path text decides.
    """
    path, sep, rest = nodeid.partition("::")
    path = path.replace("\\", "/")
    if rootpath is not None and path:
        target = (rootpath / path).resolve()
        for base, name in _package_dirs():
            if target.is_relative_to(base):
                return f"{name}/{target.relative_to(base).as_posix()}{sep}{rest}"
    site = _SITE_RE.match(path)
    if site:
        inner = site.group("rest")
        path = inner if inner.split("/", 1)[0] in _TOP[:3] else f"llorch/{inner}"
    elif path.split("/", 1)[0] not in _TOP:
        parts = path.split("/")
        last_pkg = max((i for i, p in enumerate(parts[:-1]) if p == "llorch"), default=-1)
        code = [i for i, p in enumerate(parts[:-1]) if p in _TOP[:3] and i > last_pkg]
        start = code[0] if code else last_pkg
        if start >= 0:
            path = "/".join(parts[start:])
    return f"{path}{sep}{rest}"


def _gpu() -> str | None:
    """The visible GPUs' names from ``nvidia-smi``, or None when there is none (or no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return ", ".join(names) if out.returncode == 0 and names else None


def _version() -> str:
    from llorch import __version__

    return __version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _message(report: pytest.TestReport) -> str | None:
    """The failure in one line: the crash message pytest shows (``E   AssertionError: …``)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or report.longreprtext.strip()
    if not text:
        return None
    line = " ".join(text.split())
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 1] + "…"


class ResultsRecorder:
    """Collects one entry per test from the run reports and writes the JSON at session end."""

    def __init__(self, config: pytest.Config, path: str | Path) -> None:
        self.config = config
        self.path = Path(path)
        self.target_info: dict[str, Any] = {}
        self.started = _now()
        self._tests: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []

    # reqs and needs ride on user_properties so they reach reports under xdist too
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from llorch.harness.plugin import item_reqs  # closest first: function, class, module

        for item in items:
            reqs = item_reqs(item)
            needs = [m for m in ENVIRONMENT_MARKERS if item.get_closest_marker(m) is not None]
            item.user_properties.append(("llorch_reqs", " ".join(reqs)))
            item.user_properties.append(("llorch_needs", " ".join(needs)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = normalise_nodeid(report.nodeid, self.config.rootpath)
        entry = self._tests.get(nodeid)
        if entry is None:
            props = dict(report.user_properties)
            entry = {"nodeid": nodeid, "outcome": "passed",
                     "reqs": str(props.get("llorch_reqs", "")).split(),
                     "needs": str(props.get("llorch_needs", "")).split(),
                     "duration_s": 0.0, "skip_reason": None, "message": None}
            self._tests[nodeid] = entry
            self._order.append(nodeid)
        entry["duration_s"] = round(entry["duration_s"] + float(report.duration), 6)
        evidence = self._evidence(report)
        if evidence:
            entry["evidence"] = evidence
        xfail = hasattr(report, "wasxfail")
        if report.when == "call":
            if report.passed:
                entry["outcome"] = "xpassed" if xfail else "passed"
            elif report.failed:
                entry["outcome"] = "failed"
                entry["message"] = _message(report)
            elif xfail:
                entry["outcome"], entry["skip_reason"] = "xfailed", str(report.wasxfail) or None
            else:
                entry["outcome"], entry["skip_reason"] = "skipped", self._skip_reason(report)
        elif report.failed and entry["outcome"] not in ("failed", "error"):
            entry["outcome"] = "error"  # setup or teardown broke: the test proved nothing
            entry["message"] = f"{report.when}: {_message(report) or 'failed'}"
        elif report.when == "setup" and report.skipped:
            if xfail:
                entry["outcome"], entry["skip_reason"] = "xfailed", str(report.wasxfail) or None
            else:
                entry["outcome"], entry["skip_reason"] = "skipped", self._skip_reason(report)

    @staticmethod
    def _evidence(report: pytest.TestReport) -> str | None:
        """What the test recorded as ``evidence`` (``record_property("evidence", …)``, the OpenAI
        suite's failing checks): each report carries the item's properties so far, so the latest
        report holds them all."""
        texts = [str(v) for k, v in report.user_properties if k == "evidence"]
        if not texts:
            return None
        text = "\n\n".join(texts)
        return text if len(text) <= _EVIDENCE_MAX else text[: _EVIDENCE_MAX - 1] + "…"

    @staticmethod
    def _skip_reason(report: pytest.TestReport) -> str | None:
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reason = str(longrepr[2])
            return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
        return str(longrepr) if longrepr else None

    def environment(self) -> dict[str, Any]:
        stashed = self.config.stash.get(TARGET_INFO, {})
        target = {**stashed, **self.target_info}
        return {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "host": socket.gethostname(),
            "llorch": _version(),
            "gpu": _gpu(),
            "target": target or None,
        }

    def document(self) -> dict[str, Any]:
        return {"schema": RESULTS_SCHEMA, "started": self.started, "finished": _now(),
                "environment": self.environment(),
                "tests": [self._tests[n] for n in self._order]}

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # an xdist worker: the controller receives every report and writes the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.document(), indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"llorch results: {self.path}")


__all__ = ["ENVIRONMENT_MARKERS", "RESULTS_SCHEMA", "TARGET_INFO", "ResultsRecorder", "normalise_nodeid"]
