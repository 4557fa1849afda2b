"""The trace report model: each requirement's status from its links and the test results, the
summaries by profile and area, and the gate (D9).

Status of an active requirement, from the outcomes of every linked test in every run:

- ``failed``: a linked test failed or errored (or xfailed, unless a waiver covers it);
- ``passed``: otherwise, a linked test passed (or xpassed);
- ``skipped``: otherwise, linked tests ran but were skipped (the reasons are kept);
- ``untested``: no linked test ran at all;
- ``waived``: untested, skipped or xfailed, and listed in ``requirements/waivers.yaml``;
  a waived requirement whose tests pass is ``passed`` with a warning that the waiver can go;
- ``suspect``: would be ``passed``, but a linked test was reviewed against another text
  (``requirements/reviews.yaml``); unreviewed links are shown as such and do not change the status.

Only requirements of the selected profiles are reported (all profiles by default); retired ones
are listed apart and never gated. The gate fails on a MUST of the
selected profiles that is ``failed``, ``untested``, or ``skipped`` for a reason that is not a
declared environment skip (a test marked ``gpu`` skipped where no GPU is visible).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llorch.tools.spec import RETIRED, load_maps
from llorch.tools.trace.inputs import (
    Run,
    TestResult,
    TraceInputError,
    Waiver,
    base_nodeid,
    load_reviews,
    load_waivers,
)

REPORT_SCHEMA = "llorch-report/1"
STATUSES = ("passed", "failed", "untested", "skipped", "waived", "suspect")
_FAILING = ("failed", "error")
_PASSING = ("passed", "xpassed")
_GPU_REASON = re.compile(r"^\s*gpu\b", re.IGNORECASE)


@dataclass(frozen=True)
class GateFailure:
    id: str
    profile: str
    reason: str


@dataclass
class Report:
    """The whole report; :meth:`to_json` is what ``report.json`` holds."""

    generated: str
    profiles: list[str]
    requirements: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    warnings: list[str]
    gate_failures: list[GateFailure]
    retired: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def gate_passed(self) -> bool:
        return not self.gate_failures

    def gate_dict(self) -> dict[str, Any]:
        return {"passed": self.gate_passed, "profiles": self.profiles,
                "failures": [{"id": f.id, "profile": f.profile, "reason": f.reason}
                             for f in self.gate_failures]}

    def summary_line(self) -> str:
        counts = self.summary["by_status"]
        parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
        return f"trace: {self.summary['total']} requirement(s): {parts or 'none'}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "generated": self.generated, "summary": self.summary,
                "gate": self.gate_dict(), "runs": self.runs, "warnings": self.warnings,
                "requirements": self.requirements, "retired": self.retired}


def _declared_skip(test: TestResult, run: Run) -> bool:
    """A skip the environment explains: the test needs a GPU and none is visible (D6, D9)."""
    if "gpu" in test.needs:
        return run.environment is None or run.environment.get("gpu") is None
    return bool(test.skip_reason and _GPU_REASON.match(test.skip_reason))


def _review_state(reviews: dict[str, str], nodeid: str, fingerprint: str) -> str:
    seen = reviews.get(base_nodeid(nodeid))
    if seen is None:
        return "unreviewed"
    return "reviewed" if seen == fingerprint else "suspect"


def _status(req: dict[str, Any], rows: list[dict[str, Any]], waiver: Waiver | None,
            warnings: list[str]) -> tuple[str, str]:
    """(status, what the tests alone showed)."""
    outcomes = [r["outcome"] for test in rows for r in test["runs"]]
    if any(o in _FAILING for o in outcomes):
        observed = "failed"
    elif "xfailed" in outcomes and not any(o in _PASSING for o in outcomes):
        observed = "xfailed"
    elif any(o in _PASSING for o in outcomes):
        observed = "passed"
    elif "skipped" in outcomes:
        observed = "skipped"
    else:
        observed = "untested"
    status = "failed" if observed == "xfailed" else observed
    if waiver is not None:
        if observed == "passed":
            warnings.append(f"{req['id']}: waived (issue #{waiver.issue}) but its tests pass; "
                            "the waiver can be removed")
        elif observed in ("untested", "skipped", "xfailed"):
            status = "waived"
    if status == "passed" and any(t["review"] == "suspect" for t in rows):
        status = "suspect"
    return status, observed


def build(maps_dir: Path, runs: list[Run], profiles: list[str] | None) -> Report:
    """Compute the report from the maps in ``maps_dir`` (``requirements/``) and ``runs``."""
    reqs = load_maps(maps_dir)
    if not reqs:
        raise TraceInputError(f"no requirement maps in {maps_dir}; run `llorch spec extract`")
    waivers = load_waivers(maps_dir)
    reviews = load_reviews(maps_dir)
    known = {r["id"]: r for r in reqs}
    active_profiles = sorted({r["profile"] for r in reqs if r["status"] != RETIRED})
    if profiles:
        unknown = sorted(set(profiles) - set(active_profiles))
        if unknown:
            raise TraceInputError(f"no requirement has profile(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(active_profiles)}")
    selected = sorted(set(profiles)) if profiles else active_profiles
    warnings: list[str] = []

    # results by requirement: cited by the run (reqs) or linked statically (maps)
    by_req: dict[str, dict[str, list[tuple[TestResult, Run]]]] = {}
    for run in runs:
        for test in run.tests:
            ids = set(test.reqs)
            for rid in ids - known.keys():
                warnings.append(f"{test.nodeid} ({run.source}) cites {rid}, which no spec defines")
            for rid in ids & known.keys():
                by_req.setdefault(rid, {}).setdefault(test.nodeid, []).append((test, run))
    by_base: dict[str, list[tuple[TestResult, Run]]] = {}
    for run in runs:
        for test in run.tests:
            by_base.setdefault(test.base, []).append((test, run))
    for r in reqs:
        for nodeid in r["links"]["tests"]:
            for test, run in by_base.get(nodeid, []):
                if r["id"] not in test.reqs:  # JUnit input, or a marker the run did not see
                    by_req.setdefault(r["id"], {}).setdefault(test.nodeid, []).append((test, run))
    undefined = sorted(waivers.keys() - known.keys())
    if undefined:
        raise TraceInputError(f"{maps_dir / 'waivers.yaml'}: waiver for {', '.join(undefined)}, "
                              "which no spec defines")
    retired = [{"id": r["id"], "spec": r["spec"], "text": r["text"]}
               for r in sorted(reqs, key=lambda x: x["id"]) if r["status"] == RETIRED]
    for item in retired:
        if item["id"] in waivers:
            warnings.append(f"waiver for {item['id']}, which is retired; remove it")

    rows: list[dict[str, Any]] = []
    failures: list[GateFailure] = []
    for r in sorted(reqs, key=lambda x: x["id"]):
        if r["status"] == RETIRED or r["profile"] not in selected:
            continue
        rid = r["id"]
        ran = by_req.get(rid, {})
        tests: list[dict[str, Any]] = []
        for nodeid in sorted(set(ran) | set(r["links"]["tests"])):
            results = ran.get(nodeid, [])
            if not results and any(base_nodeid(n) == nodeid for n in ran):
                continue  # parametrised: the runs are listed under their own ids
            tests.append({
                "nodeid": nodeid,
                "linked": base_nodeid(nodeid) in r["links"]["tests"] or nodeid in r["links"]["tests"],
                "review": _review_state(reviews.get(rid, {}), nodeid, r["fingerprint"]),
                "runs": [{"source": run.source, "outcome": t.outcome, "duration_s": t.duration_s,
                          "skip_reason": t.skip_reason, "message": t.message,
                          "declared_skip": t.outcome == "skipped" and _declared_skip(t, run)}
                         for t, run in results],
            })
        waiver = waivers.get(rid)
        status, observed = _status(r, tests, waiver, warnings)
        skips = sorted({run["skip_reason"] or "" for t in tests for run in t["runs"]
                        if run["outcome"] == "skipped"})
        row = {
            "id": rid, "area": rid.split("-")[0], "level": r["level"], "keyword": r["keyword"],
            "profile": r["profile"], "status": status, "observed": observed, "text": r["text"],
            "spec": r["spec"], "section": r["section"], "anchor": r["anchor"],
            "fingerprint": r["fingerprint"], "tests": tests,
            "scenarios": r["links"]["scenarios"], "code": r["links"]["code"],
            "waiver": {"reason": waiver.reason, "issue": waiver.issue} if waiver else None,
            "skip_reasons": skips,
        }
        rows.append(row)
        if r["level"] == "must":
            reason = _gate_reason(status, tests)
            if reason:
                failures.append(GateFailure(rid, r["profile"], reason))

    report = Report(
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        profiles=selected, requirements=rows,
        runs=[{"source": run.source, "kind": run.kind, "started": run.started, "finished": run.finished,
               "environment": run.environment,
               "counts": dict(sorted(Counter(t.outcome for t in run.tests).items()))} for run in runs],
        warnings=warnings, gate_failures=failures, retired=retired)
    report.summary = _summary(rows, selected, failures)
    return report


def _gate_reason(status: str, tests: list[dict[str, Any]]) -> str | None:
    if status == "failed":
        bad = [t["nodeid"] for t in tests if any(r["outcome"] in (*_FAILING, "xfailed") for r in t["runs"])]
        return "failed: " + ", ".join(bad)
    if status == "untested":
        return "untested: no linked test ran" if tests else "untested: no test is linked"
    if status == "skipped":
        undeclared = [r["skip_reason"] or "no reason" for t in tests for r in t["runs"]
                      if r["outcome"] == "skipped" and not r["declared_skip"]]
        if undeclared:
            return "skipped without waiver: " + "; ".join(sorted(set(undeclared)))
    return None


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    c = Counter(r["status"] for r in rows)
    return {s: c.get(s, 0) for s in STATUSES}


def _summary(rows: list[dict[str, Any]], selected: list[str], failures: list[GateFailure]) -> dict[str, Any]:
    def group(key: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for value in sorted({r[key] for r in rows}):
            members = [r for r in rows if r[key] == value]
            out[value] = {"total": len(members), **_counts(members)}
        return out

    musts = [r for r in rows if r["level"] == "must"]
    return {"total": len(rows), "by_status": _counts(rows), "by_profile": group("profile"),
            "by_area": group("area"), "by_level": _group_levels(rows),
            "gated_musts": len(musts), "gate_failures": len(failures)}


def _group_levels(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for level in ("must", "should", "may"):
        members = [r for r in rows if r["level"] == level]
        if members:
            out[level] = {"total": len(members), **_counts(members)}
    return out
