"""Traceability report: from the requirement maps, their links and test results to
``index.html``, ``report.md`` and ``report.json``, plus the gate (D8, D9).

Python API (what ``llorch trace report`` and ``llorch conform`` call)::

    from llorch.tools.trace import build_report

    report = build_report([Path("out/results")], Path("out/trace"), profiles=["core", "cancel"])
    report.gate_failures      # [GateFailure(id, profile, reason)]: MUSTs not met; empty = gate passes
    report.gate_passed        # bool
    report.summary            # {"total", "by_status", "by_profile", "by_area", "by_level", ...}
    report.requirements       # one dict per requirement: status, tests with outcomes, code, waiver
    report.to_json()          # what report.json holds (contracts/report/report.schema.json)

``results`` are results JSON files (``llorch-results/1``, written by ``--llorch-results``), JUnit
XML files, or folders of either. ``profiles=None`` gates every profile present in the maps. The maps,
waivers and reviews are read from ``root/requirements`` (default: the checkout or the installed
package data). Invalid inputs raise :class:`TraceInputError`. Statuses and the gate rule are
described in :mod:`llorch.tools.trace.model`.
"""

from __future__ import annotations

from pathlib import Path

from llorch.tools.trace.inputs import TraceInputError, load_runs
from llorch.tools.trace.model import STATUSES, GateFailure, Report, build
from llorch.tools.trace.writers import write_all


def _default_root() -> Path:
    if Path("requirements").is_dir() and Path("specs").is_dir():
        return Path.cwd()
    from llorch import resources

    return resources.requirements_dir().parent


def build_report(results: list[Path], out_dir: Path | None, profiles: list[str] | None = None,
                 root: Path | None = None) -> Report:
    """Build the report from ``results``; write the three files into ``out_dir`` unless it is None."""
    runs = load_runs([Path(p) for p in results])
    report = build((root or _default_root()) / "requirements", runs, profiles)
    if out_dir is not None:
        write_all(report, Path(out_dir))
    return report


__all__ = ["STATUSES", "GateFailure", "Report", "TraceInputError", "build_report"]
