"""Known-failing lists (DECISIONS D10): one ``PATTERN reason…`` a line, ``#`` comments.

A pattern matches test ids; only ``*`` (any run of characters within one path segment or node
part, i.e. no ``/`` and no ``::``) and ``**`` (anything) are wildcards — brackets and every other
character are literal, so parametrised ids like ``test_x[a-b]`` are written as they are. A failure
matched by an entry is *known*; an entry matching no failure of the run is *stale*.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KnownFailing", "KnownFailingError", "Match", "load", "parse", "pattern_regex"]


class KnownFailingError(ValueError):
    """A malformed known-failing file (a usage error: exit code 2)."""


def pattern_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append(r"(?:(?!::)[^/])*")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


@dataclass(frozen=True)
class KnownFailing:
    pattern: str
    reason: str
    line: int
    regex: re.Pattern[str]

    def matches(self, nodeid: str) -> bool:
        return self.regex.fullmatch(nodeid) is not None


@dataclass(frozen=True)
class Match:
    known: dict[str, KnownFailing]     # failed nodeid -> entry that covers it
    unexpected: list[str]              # failed nodeids no entry covers
    stale: list[KnownFailing]          # entries that matched no failure
    unexpected_passes: list[str]       # listed tests that passed


def parse(text: str, source: str = "<known-failing>") -> list[KnownFailing]:
    entries: list[KnownFailing] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition(" ")
        if "\t" in pattern:
            pattern, _, rest = pattern.partition("\t")
            reason = f"{rest} {reason}"
        reason = reason.strip().lstrip("#").strip()
        if not reason:
            raise KnownFailingError(f"{source}:{lineno}: entry {pattern!r} has no reason")
        entries.append(KnownFailing(pattern, reason, lineno, pattern_regex(pattern)))
    return entries


def load(path: Path) -> list[KnownFailing]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnownFailingError(f"cannot read known-failing file {path}: {exc}") from exc
    return parse(text, str(path))


def classify(entries: Iterable[KnownFailing], failed: Iterable[str], passed: Iterable[str]) -> Match:
    """Split failures into known and unexpected; find stale entries and listed tests that passed."""
    entries = list(entries)
    known: dict[str, KnownFailing] = {}
    unexpected: list[str] = []
    used: set[int] = set()
    for nodeid in failed:
        hit = next((e for e in entries if e.matches(nodeid)), None)
        if hit is None:
            unexpected.append(nodeid)
        else:
            known[nodeid] = hit
            used.add(hit.line)
    stale = [e for e in entries if e.line not in used]
    unexpected_passes = [n for n in passed if any(e.matches(n) for e in entries)]
    return Match(known, unexpected, stale, unexpected_passes)
