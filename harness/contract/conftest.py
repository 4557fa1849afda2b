"""Where pacts live: written by the consumer tests, verified against the running target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llorch import resources

os.environ.setdefault("PACT_DO_NOT_TRACK", "true")

CONSUMER = "llorch-client"
PROVIDER = "llorch-orchestrator"
EVENTS_PROVIDER = "llorch-orchestrator-events"
PACT_TENANT = "pact-consumer"


def shipped_pacts() -> Path:
    return resources.contracts_dir() / "pacts"


@pytest.fixture(scope="session")
def pact_dir(report_dir: Path) -> Path:
    """``contracts/pacts/`` in a checkout (the pacts are committed), else the report dir."""
    root = resources.repo_root()
    return (root / "contracts" / "pacts") if root is not None else (report_dir / "pacts")


@pytest.fixture(scope="session")
def fresh_pact_dir(pact_dir: Path) -> Path:
    """Cleared once per session before the consumer tests write: ``write_file`` merges otherwise."""
    if pact_dir.is_dir():
        for path in pact_dir.glob(f"{CONSUMER}-*.json"):
            path.unlink()
    pact_dir.mkdir(parents=True, exist_ok=True)
    return pact_dir


def pacts_to_verify(pact_dir: Path, provider: str) -> Path:
    """The pact this run's consumer tests wrote, else the shipped one."""
    name = f"{CONSUMER}-{provider}.json"
    for base in (pact_dir, shipped_pacts()):
        if (base / name).is_file():
            return base / name
    pytest.fail(f"no pact {name}: run the consumer tests (harness/contract/test_pact_consumer.py) first")
    raise AssertionError  # unreachable


__all__ = ["CONSUMER", "EVENTS_PROVIDER", "PACT_TENANT", "PROVIDER", "pacts_to_verify"]
