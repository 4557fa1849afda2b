"""The contract version (``contracts/VERSION``: one line ``MAJOR.MINOR``) and its rule.

A breaking change (``compat``) is accepted only with a major version above the baseline's; a
compatible change needs no bump (cut a minor version to freeze it). The baseline
(``contracts/baseline/``) carries the VERSION it was cut at and changes only when a version is cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llorch.tools.contracts import ContractError

VERSION_FILE = "VERSION"
_PATTERN = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def parse(text: str, origin: str) -> Version:
    match = _PATTERN.fullmatch(text.strip())
    if not match:
        raise ContractError(f"{origin}: expected MAJOR.MINOR (e.g. 1.0), got {text.strip()!r}")
    return Version(int(match[1]), int(match[2]))


def read(contracts: Path) -> Version | None:
    """The version in ``contracts/VERSION`` (or a baseline's), None where the file is absent."""
    path = contracts / VERSION_FILE
    return parse(path.read_text(), str(path)) if path.is_file() else None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


# req: CTR-1015, CTR-1800
def judge(breaking: int, baseline: Version | None, current: Version | None) -> Verdict:
    """Whether the current contracts may ship given the number of breaking changes."""
    if current is None:
        return Verdict(False, "contracts/VERSION is missing")
    if baseline is not None and current < baseline:
        return Verdict(False, f"version went backwards: {baseline} -> {current}")
    if breaking == 0:
        return Verdict(True, "no breaking change")
    if baseline is None or current.major > baseline.major:
        return Verdict(True, f"{breaking} breaking change(s), allowed by the major bump "
                             f"{baseline or 'none'} -> {current}")
    return Verdict(False, f"{breaking} breaking change(s) need a major version bump "
                          f"(contracts/VERSION is {current}, baseline {baseline})")
