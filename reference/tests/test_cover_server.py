"""``llorch serve`` with configurations the conformance one lacks, reached over the wire: CLI flags
over the config file, a missing config, budgets on the OpenAI routes, the default drain deadline,
engine failures after streaming began, usage sums, the gRPC message limit and liveness of a server
whose pools never become ready."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from llorch.proto import orchestrator_pb2 as pb
from llorch.proto import orchestrator_pb2_grpc as pb_grpc

from .test_server_blackbox import llorch_serve

DRAIN_DEFAULT_MS = 600
MAX_BODY = 4096
ENVELOPE_FIELDS = {"code", "message", "retriable", "retry_after_ms", "correlation_id", "policy_label"}
TENANT = "X-Llorch-Tenant"


def _mock(**kw: Any) -> dict[str, Any]:
    return {"tokens_per_s": 200.0, "ttft_ms": 1, **kw}


def _write(tmp: Path, data: dict[str, Any]) -> Path:
    path = tmp / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def busy_ports() -> Iterator[tuple[int, int]]:
    """Two loopback ports held open for the module: a server that binds them fails."""
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        socks.append(sock)
    yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    for sock in socks:
        sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, busy_ports: tuple[int, int]) -> Iterator[dict[str, Any]]:
    """One server: its config names a non-loopback host and busy ports that ``--host``/``--*-port``
    override; pools for ordinary, failing and slow work; small budgets; a short default drain."""
    data = {
        "server": {"host": "203.0.113.7", "grpc_port": busy_ports[0], "http_port": busy_ports[1]},
        "limits": {"max_tokens": 512, "max_body_bytes": MAX_BODY},
        "budgets": {"tenants": {"cover-budget-a": {"tokens": 40}, "cover-budget-b": {"tokens": 40},
                                "cover-rate-a": {"requests_per_s": 0.001, "burst": 1},
                                "cover-rate-b": {"requests_per_s": 0.001, "burst": 1}}},
        "runtime": {"drain_deadline_ms": DRAIN_DEFAULT_MS},
        "pools": [
            {"id": "main", "model": "m-main", "replicas": 1, "slots_per_replica": 4, "mock": _mock()},
            {"id": "failing", "model": "m-fail", "mock": _mock(fail_after=3)},
            {"id": "slow", "model": "m-slow", "mock": _mock(tokens_per_s=20.0)},
        ],
    }
    path = _write(tmp_path_factory.mktemp("cover"), data)
    with llorch_serve("--config", str(path), "--host", "127.0.0.1") as (info, _, _):
        yield info


@pytest.fixture
def http(served: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served["http"], timeout=20) as client:
        yield client


def _tenant() -> str:
    return "cover-" + uuid.uuid4().hex[:10]


def _submit(http: httpx.Client, tenant: str, **body: Any) -> httpx.Response:
    return http.post("/v1/tasks", json={"model": "m-main", "prompt": "hello there", "max_tokens": 4, **body},
                     headers={TENANT: tenant})


def _sse(http: httpx.Client, tenant: str, task_id: str) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    with http.stream("GET", f"/v1/tasks/{task_id}/events", headers={TENANT: tenant}) as resp:
        raw = resp.read().decode()
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return resp.status_code, events


def _wait(predicate: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.req("CFG-1012")
def test_flags_override_the_config(served: dict[str, Any], busy_ports: tuple[int, int]) -> None:
    grpc_host, _, grpc_port = served["grpc"].rpartition(":")
    http_url = httpx.URL(served["http"])
    assert grpc_host in ("127.0.0.1", "grpc://127.0.0.1") and http_url.host == "127.0.0.1", (
        f"[CFG-1012] --host 127.0.0.1 not applied: {served}")
    assert int(grpc_port) not in (0, busy_ports[0]) and http_url.port not in (None, 0, busy_ports[1]), (
        f"[CFG-1012] port 0 did not pick a free port over the config's: {served}")
    assert httpx.get(served["http"] + "/healthz").status_code == 200
    with grpc.insecure_channel(served["grpc"].removeprefix("grpc://")) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        caps = stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
    assert caps.api_version == "v1"


@pytest.mark.req("CFG-1005")
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_missing_or_unreadable_config_exits_2(tmp_path: Path, kind: str) -> None:
    from click.testing import CliRunner

    from llorch.cli import main

    path = tmp_path / "nowhere.yaml"
    if kind == "directory":
        path.mkdir()
    argv = ["serve", "--config", str(path), "--grpc-port", "0", "--http-port", "0"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, f"[CFG-1005] exit {result.exit_code} for a {kind} config: {result.output}"
    assert str(path) in result.output + (result.stderr or ""), (
        f"[CFG-1005] the message does not name {path}: {result.output!r}")


# ---- budgets ---------------------------------------------------------------------------------


def _completion(http: httpx.Client, tenant: str, max_tokens: int) -> httpx.Response:
    body = {"model": "m-main", "prompt": "hello there", "max_tokens": max_tokens}
    return http.post("/v1/completions", json=body, headers={TENANT: tenant})


@pytest.mark.req("BUD-1014")
def test_budgets_apply_to_task_api_and_openai_routes(http: httpx.Client) -> None:
    spent = _submit(http, "cover-budget-a", max_tokens=30)
    assert spent.status_code == 202, spent.text
    _sse(http, "cover-budget-a", spent.json()["task_id"])
    refused = _completion(http, "cover-budget-a", 30)
    assert refused.status_code == 429, (
        f"[BUD-1014] OpenAI route ignored a budget spent via tasks: {refused.text}")
    assert _completion(http, "cover-budget-b", 30).status_code == 200
    refused = _submit(http, "cover-budget-b", max_tokens=30)
    assert refused.status_code == 429, (
        f"[BUD-1014] task API ignored a budget spent via OpenAI: {refused.text}")
    assert refused.json()["error"]["code"] == "BUDGET_EXCEEDED"


@pytest.mark.req("BUD-1014")
def test_rate_limits_apply_to_task_api_and_openai_routes(http: httpx.Client) -> None:
    assert _submit(http, "cover-rate-a").status_code == 202
    refused = _completion(http, "cover-rate-a", 2)
    assert refused.status_code == 429, f"[BUD-1014] OpenAI route ignored the rate limit: {refused.text}"
    assert _completion(http, "cover-rate-b", 2).status_code == 200
    refused = _submit(http, "cover-rate-b")
    assert refused.status_code == 429, f"[BUD-1014] task API ignored the rate limit: {refused.text}"
    assert refused.json()["error"]["code"] == "RATE_LIMITED"


# ---- pools -----------------------------------------------------------------------------------


@pytest.mark.req("POOL-1019")
def test_drain_with_deadline_zero_uses_the_configured_default(http: httpx.Client) -> None:
    tenant = _tenant()
    resp = _submit(http, tenant, model="m-slow", max_tokens=500)
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    _wait(lambda: http.get(f"/v1/tasks/{task_id}", headers={TENANT: tenant}).json()["state"] == "streaming",
          "the slow task to stream")
    t0 = time.monotonic()
    drained = http.post("/v1/pools/slow/drain", json={"deadline_ms": 0}, timeout=20)
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert drained.status_code == 200, drained.text
    assert drained.json()["cancelled"] == 1, f"[POOL-1019] drain result {drained.json()}"
    assert DRAIN_DEFAULT_MS * 0.8 <= elapsed_ms < DRAIN_DEFAULT_MS + 5000, (
        f"[POOL-1019] drain with deadline_ms 0 took {elapsed_ms:.0f} ms (default {DRAIN_DEFAULT_MS} ms)")


@pytest.mark.req("POOL-1009")
def test_healthz_is_200_while_no_pool_is_ready(tmp_path: Path) -> None:
    data = {"pools": [{"id": "never", "model": "m-never", "mock": _mock(loadable_models=["another-model"])}]}
    with llorch_serve("--config", str(_write(tmp_path, data))) as (info, _, _):
        ready = httpx.get(info["http"] + "/readyz")
        assert ready.status_code == 503, f"the pool became ready: the check could not fail ({ready.text})"
        pools = httpx.get(info["http"] + "/v1/pools").json()["pools"]
        assert not any(p["ready"] for p in pools)
        live = httpx.get(info["http"] + "/healthz")
        assert live.status_code == 200, f"[POOL-1009] /healthz {live.status_code} with no ready pool"


# ---- errors after streaming began --------------------------------------------------------------


@pytest.mark.req("STR-1015", "ERR-1026")
def test_engine_failure_mid_stream_ends_sse_with_an_error_event(http: httpx.Client) -> None:
    tenant = _tenant()
    resp = _submit(http, tenant, model="m-fail", max_tokens=20)
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    status, events = _sse(http, tenant, task_id)
    names = [name for name, _ in events]
    assert status == 200, f"[STR-1015] status {status}"
    assert "token" in names, f"the failure came before streaming began: {names}"
    assert names[-1] == "error", f"[STR-1015] the stream ended with {names[-1]}: {names}"
    error = events[-1][1]
    assert {"code", "message", "retriable", "retry_after_ms"} <= set(error), f"[STR-1015] error event {error}"
    assert error["code"] == "ENGINE_ERROR" and isinstance(error["retriable"], bool)
    record = http.get(f"/v1/tasks/{task_id}", headers={TENANT: tenant}).json()
    assert record["state"] == "failed", record
    assert isinstance(record["error"], dict) and set(record["error"]) == ENVELOPE_FIELDS, record
    for name in ENVELOPE_FIELDS:
        assert record["error"][name] == error[name], (
            f"[ERR-1026] Task.error {name} {record['error'][name]!r} vs event {error[name]!r}")


# ---- persistence -------------------------------------------------------------------------------


@pytest.mark.req("PER-1018")
def test_usage_equals_the_sums_over_the_tenants_tasks(http: httpx.Client) -> None:
    tenant = _tenant()
    ids = [_submit(http, tenant, max_tokens=n, prompt="count " * n).json()["task_id"] for n in (1, 5, 9)]
    ids.append(_submit(http, tenant, model="m-fail", max_tokens=10).json()["task_id"])
    for task_id in ids:
        _sse(http, tenant, task_id)
    tasks = http.get("/v1/tasks", headers={TENANT: tenant}).json()["tasks"]
    assert len(tasks) == len(ids)
    want = (sum(t["tokens_in"] for t in tasks), sum(t["tokens_out"] for t in tasks))
    assert want[0] > 0 and want[1] > 0

    def usage() -> tuple[int, int]:
        rows = [r for r in http.get("/v1/usage", headers={TENANT: tenant}).json()["usage"]
                if r["tenant"] == tenant]
        return sum(r["tokens_in"] for r in rows), sum(r["tokens_out"] for r in rows)

    got = usage()
    assert got == want, f"[PER-1018] usage (in, out) {got} vs the tasks' sums {want}"


# ---- security ----------------------------------------------------------------------------------


@pytest.mark.req("SEC-1016")
def test_oversized_grpc_message_is_refused(served: dict[str, Any]) -> None:
    with grpc.insecure_channel(served["grpc"].removeprefix("grpc://")) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(pb.SubmitRequest(model="m-main", prompt="x" * (MAX_BODY * 2), max_tokens=1),
                        metadata=((TENANT.lower(), _tenant()),), timeout=10)
        assert info.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), (
            f"[SEC-1016] an oversized message answered {info.value.code()}")
        ok = stub.Submit(pb.SubmitRequest(model="m-main", prompt="small", max_tokens=1),
                         metadata=((TENANT.lower(), _tenant()),), timeout=10)
        assert ok.task_id, "the server stopped serving after the oversized message"
