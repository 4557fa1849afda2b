"""``llorch spec extract``: turn ``specs/*.md`` into the requirement maps ``requirements/<stem>.yaml``.

The maps are derived data (D8): each requirement's fields plus the links collected by
:mod:`llorch.tools.links` (tests by node id, BDD scenarios, code by file and enclosing name, never
line numbers), rendered deterministically so regenerating is diff-clean. Everything that would make
the maps lie is rejected with the file and line that caused it: a duplicate or malformed ID, a
profile outside the closed list, a missing or doubled RFC 2119 keyword, and a citation (test marker,
feature tag, code comment) of an ID that no spec defines or that is retired.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MAP_SCHEMA = "llorch-requirements/1"

# BRIEF.md / specs/README.md: the closed list of prefixes (adding one is a spec change, D5).
PREFIXES = frozenset({
    "ADM", "QUE", "SCH", "POOL", "STR", "ADP", "ERR", "DET", "CFG", "MET", "SEC", "PER", "BUD",
    "CTR", "OAI", "HAR",
})
# DECISIONS D6: the closed list of conformance profiles.
PROFILES = frozenset({
    "core", "streaming", "cancel", "admin", "openai", "openai-strict", "openai-tools", "metrics",
    "security", "persistence", "budgets", "sessions", "determinism", "resilience",
    "adapter-core", "adapter-streaming", "adapter-cancel", "adapter-determinism", "tooling",
})
# specs/README.md "Files and prefixes": the one spec file that owns each prefix.
OWNER: dict[str, str] = {
    "ADM": "admission", "QUE": "queue", "SCH": "scheduling", "POOL": "pools", "STR": "streaming",
    "ADP": "adapter", "ERR": "errors", "DET": "determinism", "CFG": "config", "MET": "metrics",
    "SEC": "security", "PER": "persistence", "BUD": "budgets", "CTR": "contracts", "OAI": "openai",
    "HAR": "harness",
}
RETIRED = "retired"
# D5: keyword -> level; the two-word forms are matched first so "MUST NOT" counts once.
KEYWORDS: dict[str, str] = {
    "MUST NOT": "must", "SHALL NOT": "must", "SHOULD NOT": "should", "NOT RECOMMENDED": "should",
    "MUST": "must", "SHALL": "must", "REQUIRED": "must",
    "SHOULD": "should", "RECOMMENDED": "should",
    "MAY": "may", "OPTIONAL": "may",
}
# Files in requirements/ that are hand-kept, not maps; a spec may not take their names.
RESERVED_STEMS = frozenset({"waivers", "reviews", "scan"})

ID_RE = re.compile(r"^(?P<prefix>[A-Z]+)-(?P<num>\d{4})$")
# Anything that looks like an attempt at an ID (so a typo is reported, not silently ignored).
ID_LIKE = r"[A-Z][A-Za-z]*-[A-Za-z0-9_]+"
_KEYWORD_RE = re.compile(r"\b(" + "|".join(re.escape(k) for k in KEYWORDS) + r")\b")
_ITEM_RE = re.compile(r"^(?P<indent>\s*)[-*+]\s+\[(?P<id>[^\]\s]*)\](?!\()\s*(?P<rest>.*)$")
_PROFILE_RE = re.compile(r"^\{(?P<profile>[^}]*)\}\s*(?P<text>.*)$")
_HEADING_RE = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN_RE = re.compile(r"`[^`]*`")


@dataclass(frozen=True, order=True)
class Problem:
    """One reason extraction failed, pointing at the exact file and line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ExtractError(Exception):
    """The specs or the citations are inconsistent; ``problems`` says where, each with file:line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Requirement:
    id: str
    level: str | None
    keyword: str | None
    profile: str
    text: str
    fingerprint: str
    spec: str
    line: int
    section: str
    anchor: str
    status: str
    tests: set[str] = field(default_factory=set)
    scenarios: set[tuple[str, str, str | None]] = field(default_factory=set)
    code: set[tuple[str, str]] = field(default_factory=set)

    def to_map(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.spec,
            "level": self.level,
            "keyword": self.keyword,
            "profile": self.profile,
            "status": self.status,
            "section": self.section,
            "anchor": self.anchor,
            "fingerprint": self.fingerprint,
            "text": self.text,
            "links": {
                "tests": sorted(self.tests),
                "scenarios": [
                    {"feature": f, "scenario": s, "nodeid": n}
                    for f, s, n in sorted(self.scenarios, key=lambda t: (t[0], t[1], t[2] or ""))
                ],
                "code": [{"file": f, "name": n} for f, n in sorted(self.code)],
            },
        }


def fingerprint(text: str) -> str:
    """Short sha256 of the whitespace-normalised text: changes iff the sentence changes."""
    normal = " ".join(text.split())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()[:12]


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_~]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", title.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_id(value: str) -> str | None:
    """Why ``value`` is not a well-formed requirement ID, or None if it is."""
    m = ID_RE.match(value)
    if m is None:
        return f"malformed requirement ID {value!r}: expected PREFIX-NNNN (four digits)"
    if m.group("prefix") not in PREFIXES:
        return (f"malformed requirement ID {value!r}: prefix {m.group('prefix')!r} is not one of "
                f"{', '.join(sorted(PREFIXES))}")
    return None


def parse_spec(path: Path, rel: str) -> tuple[list[Requirement], list[Problem]]:
    """Parse one spec file; ``rel`` is its repository-relative path used in messages and maps."""
    problems: list[Problem] = []
    reqs: list[Requirement] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    section, anchor = "", ""
    anchors_seen: dict[str, int] = {}
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        lineno = i + 1
        i += 1
        if _FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING_RE.match(line)
        if heading:
            section = heading.group("title")
            base = github_anchor(section)
            n = anchors_seen.get(base, 0)
            anchors_seen[base] = n + 1
            anchor = base if n == 0 else f"{base}-{n}"
            continue
        item = _ITEM_RE.match(line)
        if item is None:
            continue
        rid = item.group("id")
        if not re.fullmatch(ID_LIKE, rid):
            continue  # an ordinary bracketed list item, e.g. "- [x] done"
        # continuation lines: indented deeper than the bullet, not a new item or heading
        body = [item.group("rest")]
        indent = len(item.group("indent"))
        while i < len(lines):
            nxt = lines[i]
            stripped = nxt.strip()
            lead = len(nxt) - len(nxt.lstrip())
            if not stripped or lead <= indent or _ITEM_RE.match(nxt) or _HEADING_RE.match(nxt):
                break
            body.append(stripped)
            i += 1
        rest = " ".join(body)
        bad = check_id(rid)
        if bad:
            problems.append(Problem(rel, lineno, bad))
            continue
        owner = OWNER.get(rid.split("-")[0])
        if owner is not None and path.stem in OWNER.values() and owner != path.stem:
            problems.append(Problem(rel, lineno, f"{rid}: prefix {rid.split('-')[0]} belongs to "
                                                 f"specs/{owner}.md, not {rel}"))
            continue
        pm = _PROFILE_RE.match(rest)
        if pm is None:
            problems.append(Problem(rel, lineno, f"{rid}: missing profile in braces after the ID, "
                                                 "e.g. '- [QUE-1003] {core} …'"))
            continue
        profile, text = pm.group("profile").strip(), pm.group("text").strip()
        retired_heading = section.strip().lower() == "retired"
        if profile == RETIRED:
            if not retired_heading:
                problems.append(Problem(rel, lineno, f"{rid}: {{retired}} requirement outside a "
                                                     "'Retired' heading"))
            level = keyword = None
        else:
            if profile not in PROFILES:
                problems.append(Problem(rel, lineno, f"{rid}: profile {profile!r} is not one of "
                                                     f"{', '.join(sorted(PROFILES))}"))
                continue
            if retired_heading:
                problems.append(Problem(rel, lineno, f"{rid}: under the 'Retired' heading but its "
                                                     "profile is not {retired}"))
            found = _KEYWORD_RE.findall(_CODE_SPAN_RE.sub("", text))
            if not found:
                problems.append(Problem(rel, lineno, f"{rid}: no RFC 2119 level keyword (MUST, SHOULD, "
                                                     "MAY, …) in its text"))
                continue
            if len(found) > 1:
                problems.append(Problem(rel, lineno, f"{rid}: {len(found)} level keywords "
                                                     f"({', '.join(found)}); exactly one is allowed"))
                continue
            keyword = found[0]
            level = KEYWORDS[keyword]
        reqs.append(Requirement(
            id=rid, level=level, keyword=keyword, profile=profile, text=text,
            fingerprint=fingerprint(text), spec=rel, line=lineno, section=section, anchor=anchor,
            status=RETIRED if profile == RETIRED else "active"))
    prefixes = sorted({r.id.split("-")[0] for r in reqs})
    if len(prefixes) > 1:
        problems.append(Problem(rel, reqs[0].line if reqs else 1,
                                f"one spec file owns one prefix; found {', '.join(prefixes)}"))
    return reqs, problems


def load_specs(root: Path) -> tuple[dict[str, list[Requirement]], list[Problem]]:
    """Parse every ``specs/*.md`` under ``root``; returns requirements by spec stem and problems
    (including duplicates across files)."""
    problems: list[Problem] = []
    by_stem: dict[str, list[Requirement]] = {}
    seen: dict[str, Requirement] = {}
    for path in sorted((root / "specs").glob("*.md")):
        rel = path.relative_to(root).as_posix()
        reqs, probs = parse_spec(path, rel)
        problems += probs
        if reqs and path.stem in RESERVED_STEMS:
            problems.append(Problem(rel, 1, f"spec file name {path.stem!r} is reserved in requirements/"))
        for req in reqs:
            first = seen.get(req.id)
            if first is not None:
                problems.append(Problem(rel, req.line, f"duplicate requirement ID {req.id}: first "
                                                       f"defined at {first.spec}:{first.line}"))
                continue
            seen[req.id] = req
            by_stem.setdefault(path.stem, []).append(req)
    return by_stem, problems


def render_map(stem: str, spec: str, reqs: list[Requirement]) -> str:
    """The YAML text of one map: stable key order, sorted lists, one line per text."""
    data = {
        "schema": MAP_SCHEMA,
        "spec": spec,
        "requirements": [r.to_map() for r in sorted(reqs, key=lambda r: r.id)],
    }
    header = (f"# Generated by `llorch spec extract` from {spec}; do not edit by hand.\n"
              "# Review state lives in requirements/reviews.yaml, waivers in requirements/waivers.yaml.\n")
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1_000_000,
                                   default_flow_style=False)


def build_maps(root: Path) -> dict[str, str]:
    """Parse, link and render every map in memory: ``{"requirements/<stem>.yaml": text}``.

    Raises :class:`ExtractError` listing every problem found, each with file and line.
    """
    from llorch.tools import links

    by_stem, problems = load_specs(root)
    index = {r.id: r for reqs in by_stem.values() for r in reqs}
    collected, link_problems = links.collect(root)
    problems += link_problems
    for cite in collected:
        req = index.get(cite.req)
        if req is None:
            problems.append(Problem(cite.file, cite.line, f"{cite.req} is cited by {cite.kind} but no "
                                                          "spec defines it"))
            continue
        if req.status == RETIRED:
            problems.append(Problem(cite.file, cite.line, f"{cite.req} is cited by {cite.kind} but is "
                                                          f"retired ({req.spec}:{req.line})"))
            continue
        if cite.kind == "test":
            req.tests.add(cite.target)
        elif cite.kind == "marker":
            continue
        elif cite.kind == "scenario":
            req.scenarios.add((cite.file, cite.target, cite.nodeid))
            if cite.nodeid:
                req.tests.add(cite.nodeid)
        else:
            req.code.add((cite.file, cite.target))
    if problems:
        raise ExtractError(problems)
    return {f"requirements/{stem}.yaml": render_map(stem, reqs[0].spec, reqs)
            for stem, reqs in sorted(by_stem.items())}


def _generated_maps(root: Path) -> dict[str, str]:
    """Maps currently on disk (files carrying the map schema), by relative path."""
    out: dict[str, str] = {}
    for path in sorted((root / "requirements").glob("*.yaml")):
        if path.stem in RESERVED_STEMS:
            continue
        text = path.read_text(encoding="utf-8")
        if f"schema: {MAP_SCHEMA}" in text:
            out[path.relative_to(root).as_posix()] = text
    return out


def diff_maps(root: Path, wanted: dict[str, str]) -> list[str]:
    """Human-readable drift between the maps on disk and ``wanted`` (empty when identical)."""
    current = _generated_maps(root)
    report: list[str] = []
    for rel in sorted(set(current) | set(wanted)):
        old, new = current.get(rel), wanted.get(rel)
        if old == new:
            continue
        if old is None:
            report.append(f"{rel}: missing (run `llorch spec extract`)")
        elif new is None:
            report.append(f"{rel}: stale, its spec has no requirements or is gone")
        else:
            delta = list(difflib.unified_diff(old.splitlines(), new.splitlines(), rel, rel, n=0,
                                              lineterm=""))
            changed = sum(1 for d in delta if d[:1] in "+-" and d[:3] not in ("+++", "---"))
            report.append(f"{rel}: {changed} line(s) differ")
            report += ["    " + d for d in delta[2:22]]
    return report


def write_maps(root: Path, wanted: dict[str, str]) -> list[str]:
    """Write ``wanted`` and delete stale generated maps; returns the paths that changed."""
    changed: list[str] = []
    current = _generated_maps(root)
    (root / "requirements").mkdir(exist_ok=True)
    for rel, text in wanted.items():
        if current.get(rel) != text:
            (root / rel).write_text(text, encoding="utf-8")
            changed.append(rel)
    for rel in set(current) - set(wanted):
        (root / rel).unlink()
        changed.append(rel)
    return sorted(changed)


def load_maps(requirements_dir: Path) -> list[dict[str, Any]]:
    """Every requirement of the generated maps in ``requirements_dir``, with ``spec`` filled in."""
    out: list[dict[str, Any]] = []
    for path in sorted(requirements_dir.glob("*.yaml")):
        if path.stem in RESERVED_STEMS:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or data.get("schema") != MAP_SCHEMA:
            continue
        for req in data.get("requirements") or []:
            out.append({**req, "spec": data.get("spec", "")})
    return out
