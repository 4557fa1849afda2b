"""The certification summary of a conform run: verdict per profile and per requirement, and the exit
code of DECISIONS D10 (0 certified, 3 only known failures, 1 unexpected failure or stale entry).

A failing test blocks certification when it cites a must-level requirement of a claimed profile, or
cites no known requirement at all (a harness defect is never silently ignored); a failure citing
only should/may-level requirements, or only unclaimed profiles, is listed as advisory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llorch.harness.plugin import RequirementInfo

from .knownfailing import KnownFailing, classify
from .runner import TestRecord

__all__ = ["Certification", "certify", "write"]

FAILED = ("failed", "error")
EXIT_CERTIFIED, EXIT_FAILED, EXIT_KNOWN = 0, 1, 3


@dataclass
class Certification:
    target: dict[str, Any]
    profiles: list[str]
    verdict: str                                  # certified | known-failures | failed
    exit_code: int
    per_profile: dict[str, str]
    requirements: list[dict[str, Any]]
    counts: dict[str, int]
    unexpected_failures: list[dict[str, Any]] = field(default_factory=list)
    advisory_failures: list[dict[str, Any]] = field(default_factory=list)
    known: list[dict[str, Any]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    unexpected_passes: list[str] = field(default_factory=list)
    untested_musts: list[str] = field(default_factory=list)
    unsupported: list[dict[str, Any]] = field(default_factory=list)


def _blocking(rec: TestRecord, index: Mapping[str, RequirementInfo], claimed: set[str]) -> bool:
    infos = [index[r] for r in rec.reqs if r in index]
    if not infos:
        return True
    return any(i.level == "must" and (not claimed or i.profile in claimed) for i in infos)


def certify(records: Iterable[TestRecord], entries: list[KnownFailing], claimed: Iterable[str],
            index: Mapping[str, RequirementInfo], target: dict[str, Any]) -> Certification:
    recs = list(records)
    claimed_set = set(claimed)
    failed = [r.nodeid for r in recs if r.outcome in FAILED]
    passed = [r.nodeid for r in recs if r.outcome == "passed"]
    match = classify(entries, failed, passed)
    by_id = {r.nodeid: r for r in recs}

    unexpected = [by_id[n] for n in match.unexpected]
    blocking = [r for r in unexpected if _blocking(r, index, claimed_set)]
    advisory = [r for r in unexpected if r not in blocking]

    # per requirement
    per_req: dict[str, dict[str, Any]] = {}
    for rec in recs:
        for rid in rec.reqs:
            entry = per_req.setdefault(rid, {"id": rid, "tests": []})
            state = rec.outcome
            if rec.nodeid in match.known:
                state = "known"
            elif rec.outcome == "skipped" and (rec.message or "").startswith("unsupported"):
                state = "unsupported"
            entry["tests"].append({"nodeid": rec.nodeid, "outcome": state, "message": rec.message})
    rows: list[dict[str, Any]] = []
    for rid in sorted(per_req):
        info = index.get(rid)
        if claimed_set and info is not None and info.profile not in claimed_set:
            continue
        outcomes = {t["outcome"] for t in per_req[rid]["tests"]}
        if outcomes & set(FAILED):
            status = "failed"
        elif "known" in outcomes:
            status = "known"
        elif "unsupported" in outcomes:
            status = "unsupported"
        elif "passed" in outcomes or "xfailed" in outcomes:
            status = "passed"
        else:
            status = "skipped"
        rows.append({"id": rid, "profile": info.profile if info else None,
                     "level": info.level if info else None, "status": status,
                     "tests": per_req[rid]["tests"]})

    profiles = sorted(claimed_set) if claimed_set else sorted({r["profile"] for r in rows if r["profile"]})
    per_profile: dict[str, str] = {}
    for prof in profiles:
        musts = [r for r in rows if r["profile"] == prof and r["level"] == "must"]
        if any(r["status"] in ("failed", "unsupported") for r in musts):
            per_profile[prof] = "failed"
        elif any(r["status"] == "known" for r in musts):
            per_profile[prof] = "known-failures"
        else:
            per_profile[prof] = "certified"

    untested = sorted(rid for rid, info in index.items()
                      if info.level == "must" and info.profile in claimed_set and rid not in per_req)

    # an unsupported feature on a must of a claimed profile fails it, like a failing test would
    if blocking or match.stale or any(v == "failed" for v in per_profile.values()):
        verdict, code = "failed", EXIT_FAILED
    elif match.known:
        verdict, code = "known-failures", EXIT_KNOWN
    else:
        verdict, code = "certified", EXIT_CERTIFIED

    def failure(rec: TestRecord) -> dict[str, Any]:
        return {"nodeid": rec.nodeid, "reqs": rec.reqs, "outcome": rec.outcome, "message": rec.message}

    counts: dict[str, int] = {}
    for rec in recs:
        counts[rec.outcome] = counts.get(rec.outcome, 0) + 1
    return Certification(
        target=target, profiles=profiles, verdict=verdict, exit_code=code, per_profile=per_profile,
        requirements=rows, counts=counts,
        unexpected_failures=[failure(r) for r in blocking],
        advisory_failures=[failure(r) for r in advisory],
        known=[{"nodeid": n, "pattern": e.pattern, "reason": e.reason, "line": e.line}
               for n, e in match.known.items()],
        stale=[{"pattern": e.pattern, "reason": e.reason, "line": e.line} for e in match.stale],
        unexpected_passes=match.unexpected_passes,
        untested_musts=untested,
        unsupported=[{"nodeid": r.nodeid, "reqs": r.reqs, "message": r.message} for r in recs
                     if r.outcome == "skipped" and (r.message or "").startswith("unsupported")],
    )


def render_markdown(cert: Certification) -> str:
    t = cert.target
    lines = [
        "# llorch conformance certification", "",
        f"- Target: {t.get('kind', '?')} `{t.get('address', '?')}`",
        f"- Engine: {t.get('engine') or '?'} {t.get('engine_version') or ''}".rstrip(),
        f"- Profiles claimed: {', '.join(cert.profiles) or '(all)'}",
        f"- Verdict: **{cert.verdict}** (exit code {cert.exit_code})",
        f"- Tests: {', '.join(f'{k} {v}' for k, v in sorted(cert.counts.items()))}", "",
        "## Profiles", "", "| profile | verdict |", "|---|---|",
        *[f"| {p} | {v} |" for p, v in cert.per_profile.items()], "",
        "## Requirements", "", "| id | profile | level | status | tests |", "|---|---|---|---|---|",
        *[f"| {r['id']} | {r['profile']} | {r['level']} | {r['status']} | {len(r['tests'])} |"
          for r in cert.requirements], "",
    ]
    if cert.unexpected_failures:
        lines += ["## Unexpected failures", ""]
        lines += [f"- `{f['nodeid']}` ({', '.join(f['reqs']) or 'no IDs'}): "
                  f"{(f['message'] or '').splitlines()[0] if f['message'] else ''}"
                  for f in cert.unexpected_failures]
        lines.append("")
    if cert.advisory_failures:
        lines += ["## Advisory failures (should/may or unclaimed profiles)", ""]
        lines += [f"- `{f['nodeid']}` ({', '.join(f['reqs'])})" for f in cert.advisory_failures]
        lines.append("")
    if cert.known:
        lines += ["## Known failures", ""]
        lines += [f"- `{k['nodeid']}` — `{k['pattern']}`: {k['reason']}" for k in cert.known]
        lines.append("")
    if cert.stale:
        lines += ["## Stale known-failing entries (matched no failure)", ""]
        lines += [f"- line {s['line']}: `{s['pattern']}` — {s['reason']}" for s in cert.stale]
        lines.append("")
    if cert.unexpected_passes:
        lines += ["## Listed as known-failing but passed", ""]
        lines += [f"- `{n}`" for n in cert.unexpected_passes]
        lines.append("")
    if cert.unsupported:
        lines += ["## Unsupported features", ""]
        lines += [f"- `{u['nodeid']}`: {u['message']}" for u in cert.unsupported]
        lines.append("")
    if cert.untested_musts:
        lines += ["## Must-level requirements of the claimed profiles not covered by the suites", "",
                  ", ".join(cert.untested_musts), ""]
    return "\n".join(lines)


def write(cert: Certification, report_dir: Path) -> None:
    """certification.json and certification.md (also as summary.md, HAR-1051)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "certification.json").write_text(json.dumps(asdict(cert), indent=2) + "\n",
                                                   encoding="utf-8")
    md = render_markdown(cert)
    (report_dir / "certification.md").write_text(md, encoding="utf-8")
    (report_dir / "summary.md").write_text(md, encoding="utf-8")
