"""What a ``llorch conform`` run produces: the targets it talks to, the report directory, the
profile selection, the model it picks for an OpenAI server, the evidence of a failure, and the
token options it refuses.

Every run is narrowed with ``--suite`` and ``-k`` to a few tests so the file takes seconds; the
full certification of the reference runs elsewhere (``nox -s verify``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import pytest
from click.testing import CliRunner
from llorch.harness import targets
from llorch.harness.conform.runner import run_suites
from llorch.harness.faulty.openai_base import MODEL, OpenAIServer, load, serve_in_thread
from llorch.harness.plugin import requirement_index
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llorch.cli import main

# a fast orchestrator test: one scrape of /metrics
FAST_ORCH = ("--suite", "metrics", "-k", "test_exposition_format")
RUN_TIMEOUT_S = 120


def conform(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m llorch conform ARGS`` as a user runs it, in its own process."""
    return subprocess.run([sys.executable, "-m", "llorch", "conform", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          check=False)


def results(report: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((report / "results.json").read_text())
    return data


def outcomes(report: Path) -> dict[str, str]:
    return {t["nodeid"]: t["outcome"] for t in results(report)["tests"]}


def assert_report_dir(report: Path) -> None:
    """The four products of a run (HAR-1035), the summary in both forms (HAR-1051)."""
    junit = ET.parse(report / "junit.xml").getroot()
    cases = junit.findall(".//testcase")
    assert cases, "junit.xml lists no test case"
    recorded = results(report)
    assert recorded["schema"] == "llorch-results/1" and recorded["tests"]
    assert len(cases) == len(recorded["tests"]), "junit.xml and results.json disagree on the tests run"
    assert "<html" in (report / "trace" / "index.html").read_text().lower()
    cert = json.loads((report / "certification.json").read_text())
    summary = (report / "summary.md").read_text()
    assert cert["verdict"] in summary and f"exit code {cert['exit_code']}" in summary


@pytest.fixture(scope="module")
def reference() -> Iterator[targets.ServedProcess]:
    """A reference orchestrator this file starts and addresses from outside."""
    with targets.start_reference() as served:
        yield served


@pytest.fixture(scope="module")
def control_url() -> Iterator[str]:
    with serve_in_thread(load("base")) as url:
        yield url


# ---- orchestrator ----------------------------------------------------------------------------


@pytest.mark.req("HAR-1033", "HAR-1035", "HAR-1051")
def test_conform_orchestrator_runs_against_the_given_addresses(reference: targets.ServedProcess,
                                                               tmp_path: Path) -> None:
    grpc_url, http_url = reference.info["grpc"], reference.info["http"]
    grpc_url = grpc_url if "://" in grpc_url else f"grpc://{grpc_url}"
    proc = conform("orchestrator", grpc_url, "--http", http_url, "--report-dir", str(tmp_path),
                   "--suite", "metrics", "--suite", "contract",
                   "-k", "test_exposition_format or test_cancel_unknown")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting the embedded reference" not in proc.stderr
    target = results(tmp_path)["environment"]["target"]
    assert target["address"] == f"grpc://{targets.grpc_address(grpc_url)}"
    assert target["http"] == targets.http_base(http_url)
    ran = outcomes(tmp_path)
    assert any("harness/metrics/" in n for n in ran) and any("harness/contract/" in n for n in ran)
    assert set(ran.values()) == {"passed"}, ran
    assert_report_dir(tmp_path)


@pytest.mark.req("HAR-1034", "HAR-1035", "HAR-1051", "HAR-1058")
def test_bare_conform_certifies_an_embedded_reference_into_the_default_report_dir(tmp_path: Path) -> None:
    empty = tmp_path / "known-failing.txt"
    empty.write_text("")
    proc = conform("--known-failing", str(empty), *FAST_ORCH, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [p for p in (tmp_path / "out" / "conform").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    report = runs[0]
    assert_report_dir(report)
    cert = json.loads((report / "certification.json").read_text())
    assert cert["verdict"] == "certified" and cert["exit_code"] == 0 and cert["known"] == []
    target = results(report)["environment"]["target"]
    parts = urlsplit(target["address"])
    assert parts.scheme == "grpc" and parts.hostname == "127.0.0.1"
    # the embedded reference was started for this run and stopped with it
    with pytest.raises(httpx.TransportError):
        httpx.get(target["http"] + "/healthz", timeout=2)


@pytest.mark.req("HAR-1053")
def test_profile_selects_exactly_its_tests(reference: targets.ServedProcess, tmp_path: Path) -> None:
    suites = ["contract", "metrics"]
    index = requirement_index()
    everything = run_suites(suites, ["--collect-only"])
    assert everything.collected > 0
    in_profile = {n for n, rec in everything.records.items()
                  if any(index[r].profile == "cancel" for r in rec.reqs if r in index)}
    assert in_profile and len(in_profile) < everything.collected, "the selection must leave tests out"
    proc = conform("orchestrator", f"grpc://{targets.grpc_address(reference.info['grpc'])}",
                   "--http", reference.info["http"], "--report-dir", str(tmp_path), "--profile", "cancel",
                   *(arg for s in suites for arg in ("--suite", s)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(outcomes(tmp_path)) == in_profile


@pytest.mark.req("HAR-1052")
def test_plugin_accepts_its_options_and_starts_the_reference_itself(tmp_path: Path) -> None:
    known = tmp_path / "known-failing.txt"
    known.write_text("")
    config = targets.conformance_config()
    result = run_suites(["metrics"], [
        "-k", "test_exposition_format", f"--llorch-results={tmp_path / 'results.json'}",
        "--adapter-target=grpc://127.0.0.1:9", "--openai-target=http://127.0.0.1:9", "--profile=metrics",
        f"--report-dir={tmp_path / 'report'}", f"--known-failing={known}"])
    assert result.exit_code == 0 and result.collected == 1, result.records
    target = results(tmp_path)["environment"]["target"]
    grpc_parts, http_parts = urlsplit(target["address"]), urlsplit(target["http"])
    assert grpc_parts.hostname == http_parts.hostname == "127.0.0.1"
    # free ports chosen at start, not the fixed ports of the conformance configuration
    fixed = config.read_text()
    assert f"grpc_port: {grpc_parts.port}\n" not in fixed and f"http_port: {http_parts.port}\n" not in fixed
    with pytest.raises(httpx.TransportError):  # a subprocess of that run, gone with it
        httpx.get(target["http"] + "/healthz", timeout=2)


@pytest.mark.req("HAR-1033")
def test_conform_adapter_runs_against_the_given_address(tmp_path: Path) -> None:
    with targets.start_adapter() as adapter:
        address = targets.grpc_address(adapter.info["grpc"])
        proc = conform("adapter", f"grpc://{address}", "--report-dir", str(tmp_path),
                       "-k", "test_props_slots_are_sane or test_health_reports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting the reference adapter" not in proc.stderr
    assert results(tmp_path)["environment"]["target"]["address"] == f"grpc://{address}"
    ran = outcomes(tmp_path)
    assert len(ran) == 2 and set(ran.values()) == {"passed"}, ran


# ---- openai ----------------------------------------------------------------------------------


class _TwoModels(OpenAIServer):
    """The correct server listing a decoy after its model, recording the model of each request.

    The decoy sorts first and is listed last, so only "the first listed id" reaches ``MODEL``."""

    name = "two_models"
    DECOY = "aaa-decoy"

    def __init__(self) -> None:
        super().__init__()
        self.requested: list[str] = []

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "llorch-selftest"}
            for m in (MODEL, self.DECOY)]})

    def _answer(self, body: Any, chat: bool) -> Response:
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            self.requested.append(body["model"])
        return super()._answer(body, chat)


def _openai_cmd() -> click.Command:
    group = main.get_command(click.Context(main), "conform")
    assert isinstance(group, click.Group)
    cmd = group.get_command(click.Context(group), "openai")
    assert cmd is not None
    return cmd


@pytest.mark.req("HAR-1041", "HAR-1033")
def test_conform_openai_without_model_uses_the_first_listed(tmp_path: Path) -> None:
    server = _TwoModels()
    with serve_in_thread(server) as url:
        res = CliRunner().invoke(_openai_cmd(), [url, "--report-dir", str(tmp_path),
                                                 "-k", "test_response_shape or test_model_echoed"])
    assert res.exit_code == 0, res.output
    cert = json.loads((tmp_path / "certification.json").read_text())
    assert cert["target"]["address"] == url and cert["target"]["model"] == MODEL
    assert server.requested and set(server.requested) == {MODEL}, server.requested


@pytest.mark.req("HAR-1044")
def test_openai_failure_carries_request_and_response_bytes(tmp_path: Path) -> None:
    with serve_in_thread(load("max_tokens_ignored")) as url:
        res = CliRunner().invoke(_openai_cmd(), [url, "--model", MODEL, "--report-dir", str(tmp_path),
                                                 "-k", "test_max_tokens_respected"])
    assert res.exit_code == 1, res.output
    failed = [t for t in results(tmp_path)["tests"] if t["outcome"] == "failed"]
    assert failed, "the faulty target was not failed"
    for test in failed:
        message = test["message"] or ""
        assert "--- request" in message and "/v1/" in message and "max_tokens" in message, message
        assert "--- response HTTP 200" in message and "bytes " in message, message
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    texts = [ET.tostring(f, encoding="unicode") for f in junit.iter("failure")]
    assert len(texts) == len(failed)
    assert all("--- request" in t and "--- response" in t for t in texts), texts


# ---- tokens ----------------------------------------------------------------------------------

# Runs in its own interpreter: `llorch submit` lives in the reference, which this harness process
# never imports. Prints the command's option names, its --help, and what `--token` does to it.
_PROBE = """
import json, sys
import click
from click.testing import CliRunner
from llorch.cli import main
path = sys.argv[1:]
cmd, ctx = main, click.Context(main)
for name in path:
    cmd = cmd.get_command(ctx, name)
    ctx = click.Context(cmd)
opts = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts)]
help_text = CliRunner().invoke(main, [*path, "--help"]).output
extra = ["hello"] if path == ["submit"] else []
res = CliRunner().invoke(main, [*path, *extra, "--token", "sk-secret-value"])
print(json.dumps({"opts": opts, "help": help_text, "exit": res.exit_code, "output": res.output}))
"""

# an option that could carry a credential (``--max-tokens`` counts tokens, it carries none)
CREDENTIAL = re.compile(r"token(?!s\b)|key|bearer|secret|passw|auth", re.I)


@pytest.mark.req("SEC-1013")
@pytest.mark.parametrize("name", ["conform", "conform orchestrator", "conform adapter", "conform openai",
                                  "submit"])
def test_no_token_on_the_command_line(name: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *name.split()], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=True)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    credential_opts = {o for o in probe["opts"] if CREDENTIAL.search(o)}
    assert credential_opts == {"--token-env"}, f"llorch {name} offers {sorted(credential_opts)}"
    offered = {w.rstrip(",") for w in probe["help"].split() if w.startswith("--") and CREDENTIAL.search(w)}
    assert offered == {"--token-env"}, offered
    assert probe["exit"] == 2, probe["output"]
    assert "No such option" in probe["output"] and "--token" in probe["output"], probe["output"]
    assert "sk-secret-value" not in probe["output"]
