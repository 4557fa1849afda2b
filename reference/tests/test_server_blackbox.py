"""Black-box tests of ``llorch serve`` over real gRPC and HTTP on loopback: the server runs as a
subprocess with the conformance configuration (or an auth-enabled variant) and is reached only
through its wire contracts, the ``llorch`` CLI, ``llorch.client`` and the official ``openai`` client.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llorch import resources
from llorch.client import ApiError, Client
from llorch.proto import orchestrator_pb2 as pb
from llorch.proto import orchestrator_pb2_grpc as pb_grpc

CONFORMANCE = resources.contracts_dir() / "conformance" / "orchestrator.yaml"
READY_S = 60.0
DEADLINE_S = 20.0
LLORCH = [sys.executable, "-m", "llorch"]


@contextmanager
def llorch_serve(*args: str, env: dict[str, str] | None = None,
                 command: str = "serve") -> Iterator[tuple[dict[str, Any], Path, subprocess.Popen[bytes]]]:
    """Start ``llorch serve … --json`` (or ``adapter serve``); yield its announced addresses, its stderr
    file and the process."""
    stderr_path = Path(tempfile.mkstemp(suffix=".log")[1])
    with stderr_path.open("wb") as stderr:
        ports = ["--grpc-port", "0", "--http-port", "0"] if command == "serve" else ["--port", "0"]
        proc = subprocess.Popen([*LLORCH, *command.split(), *ports, "--json", *args],
                                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
    try:
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(READY_S)
        if not line or not line[0]:
            raise RuntimeError(f"llorch serve did not announce itself:\n{stderr_path.read_text()[-3000:]}")
        yield json.loads(line[0]), stderr_path, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr_path.unlink(missing_ok=True)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def _cli(*args: str) -> CliResult:
    """Run a ``llorch`` command in this process (click's runner): the same code path as the console
    script, without paying an interpreter start per call."""
    from click.testing import CliRunner

    from llorch.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Any]]:
    with llorch_serve("--config", str(CONFORMANCE)) as (info, _, _):
        yield info


@pytest.fixture
def tenant() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def _wait_for(predicate: Any, what: str) -> Any:
    """Poll an observable state with a bounded deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- serve ----------------------------------------------------------------------------------------


@pytest.mark.req("CFG-1013", "CFG-1011", "CTR-1018", "CTR-1019")
def test_serve_announces_both_servers_and_they_answer(served: dict[str, Any]) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    assert set(served) == {"grpc", "http", "pid"} and isinstance(served["pid"], int)
    assert httpx.get(served["http"] + "/healthz").status_code == 200
    with grpc.insecure_channel(served["grpc"]) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        stub = pb_grpc.OrchestratorServiceStub(channel)
        caps = stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=5)
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert "llorch.v1.OrchestratorService" in services
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    config = yaml.safe_load(CONFORMANCE.read_text())
    assert caps.queue_capacity == config["queue"]["capacity"]
    assert caps.full_policy == config["queue"]["full_policy"]
    assert caps.max_tokens_limit == config["limits"]["max_tokens"]
    assert sorted(p.pool_id for p in caps.pools) == sorted(p["id"] for p in config["pools"])


@pytest.mark.req("CFG-1402")
@pytest.mark.parametrize("edge", ["grpc", "http"])
def test_serve_refuses_a_busy_port(served: dict[str, Any], edge: str) -> None:
    busy = served[edge].rsplit(":", 1)[1]
    flags = {"grpc": ["--grpc-port", busy, "--http-port", "0"],
             "http": ["--grpc-port", "0", "--http-port", busy]}
    result = _cli("serve", *flags[edge])
    assert result.returncode == 2 and busy in result.stderr


@pytest.mark.req("SEC-1010")
def test_serve_refuses_non_loopback_without_auth() -> None:
    result = _cli("serve", "--host", "0.0.0.0", "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert "without authentication" in result.stderr


@pytest.mark.req("CFG-1001")
def test_serve_refuses_unknown_config_field(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFORMANCE.read_text())
    config["queue"]["capactiy"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _cli("serve", "--config", str(path))
    assert result.returncode == 2 and "capactiy" in result.stderr


@pytest.mark.req("PER-1014")
def test_serve_with_an_unusable_store_exits_2_naming_the_path(tmp_path: Path) -> None:
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as conn:
        conn.execute("PRAGMA user_version = 99")  # a schema version this build does not know
    config = yaml.safe_load(CONFORMANCE.read_text())
    config["store"] = {"path": str(odd)}
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _cli("serve", "--config", str(path), "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2 and str(odd) in result.stderr


@pytest.mark.req("CFG-1401", "PER-1016", "PER-1017")
def test_serve_exits_0_on_sigterm_and_stats_reads_its_store(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFORMANCE.read_text())
    store = tmp_path / "llorch.db"
    config["store"] = {"path": str(store)}
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(config))
    with llorch_serve("--config", str(path)) as (info, _, proc):
        with Client(info["http"], tenant="stats-tenant") as client:
            task = client.submit(model="mock-small", prompt="count me", max_tokens=3)
            assert [e.kind for e in client.events(task.task_id)][-1] == "end"
        proc.terminate()
        assert proc.wait(30) == 0
    result = _cli("stats", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    rows = [r for r in json.loads(result.stdout)["usage"] if r["tenant"] == "stats-tenant"]
    assert [(r["tasks"], r["tokens_out"]) for r in rows] == [(1, 3)]
    table = _cli("stats", "--store", str(store))
    assert "stats-tenant" in table.stdout


@pytest.mark.req("CFG-1014")
def test_adapter_serve_announces_and_serves_health() -> None:
    with llorch_serve(command="adapter serve") as (info, _, proc):
        assert set(info) == {"grpc", "pid"}
        with grpc.insecure_channel(info["grpc"]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.mark.req("SEC-1401")
def test_adapter_serve_refuses_non_loopback() -> None:
    result = _cli("adapter", "serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2 and "without authentication" in result.stderr


# ---- task API over HTTP and gRPC ------------------------------------------------------------------


@pytest.mark.req("STR-1001", "STR-1002", "STR-1016")
def test_submit_stream_end_over_http_and_grpc(served: dict[str, Any], tenant: str) -> None:
    with Client(served["http"], tenant=tenant) as client:
        task = client.submit(model="mock-small", prompt="hello there", max_tokens=8, sampler={"seed": 7})
        sse = list(client.events(task.task_id))
    kinds = [e.kind for e in sse]
    assert kinds[-1] == "end" and kinds.count("end") == 1 and "started" in kinds
    assert sum(e.data.get("count", 1) for e in sse if e.kind == "token") == sse[-1].data["tokens_out"] == 8
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        events = list(stub.StreamEvents(pb.StreamEventsRequest(task_id=task.task_id),
                                        metadata=(("x-llorch-tenant", tenant),), timeout=DEADLINE_S))
    assert [e.seq for e in events] == [e.seq for e in sse]
    grpc_text = "".join(e.token.text for e in events if e.HasField("token"))
    assert grpc_text == "".join(e.data["text"] for e in sse if e.kind == "token")


@pytest.mark.req("STR-1027", "STR-1028", "STR-1029", "STR-1035")
def test_cancel_is_acknowledged_and_no_token_follows(served: dict[str, Any], tenant: str) -> None:
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        meta = (("x-llorch-tenant", tenant),)
        answer = stub.Submit(pb.SubmitRequest(model="mock-tiny", prompt="long", max_tokens=400),
                             metadata=meta, timeout=10)
        stream = stub.StreamEvents(pb.StreamEventsRequest(task_id=answer.task_id), metadata=meta,
                                   timeout=DEADLINE_S)
        seen: list[pb.TaskEvent] = []
        for event in stream:
            seen.append(event)
            if event.HasField("token"):
                break
        ack = stub.Cancel(pb.CancelRequest(task_id=answer.task_id), metadata=meta, timeout=10)
        record = stub.GetTask(pb.GetTaskRequest(task_id=answer.task_id), metadata=meta, timeout=10)
        seen.extend(stream)
    assert ack.state == pb.CANCELLED
    assert seen[-1].HasField("cancelled") and seen[-1].cancelled.reason == "client"
    delivered = sum(e.token.count or 1 for e in seen if e.HasField("token"))
    assert delivered == record.tokens_out < 400  # nothing beyond what the record froze at the ack


@pytest.mark.req("ERR-1013", "ERR-1019", "ERR-1021")
def test_overload_is_429_with_retry_after(served: dict[str, Any], tenant: str) -> None:
    caps = httpx.get(served["http"] + "/v1/capabilities").json()
    pinned = {"placement": {"pin_pool": "pool-single"}}
    accepted: list[str] = []
    with Client(served["http"], tenant=tenant) as client:
        try:
            with pytest.raises(ApiError) as info:
                for _ in range(caps["queue_capacity"] + 2):  # one slot + a full queue + one more
                    accepted.append(client.submit(model="mock-tiny", prompt="x", max_tokens=400,
                                                  placement=pinned["placement"]).task_id)
            raw = httpx.post(served["http"] + "/v1/tasks", headers={"X-Llorch-Tenant": tenant},
                             json={"model": "mock-tiny", "prompt": "x", "max_tokens": 400, **pinned})
        finally:
            for task_id in accepted:
                client.cancel(task_id)
    assert info.value.status == 429 and info.value.retriable and info.value.retry_after_ms > 0
    assert raw.status_code == 429
    assert int(raw.headers["Retry-After"]) >= 1 and int(raw.headers["X-Backoff-Ms"]) > 0


# ---- OpenAI-compatible surface with the official client -------------------------------------------


@pytest.mark.req("OAI-1011", "OAI-1018", "OAI-1021")
def test_openai_client_streams_chat_with_usage(served: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=served["http"] + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="mock-small", messages=[{"role": "user", "content": "Say hello"}], max_tokens=6, seed=3,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)  # the client stops at data: [DONE]; an error event would raise
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0] and chunks[-1].choices == []
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason is not None]
    assert finishes == ["length"]
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    assert text and usage_chunks[0].usage.completion_tokens == 6  # type: ignore[union-attr]


@pytest.mark.req("OAI-1038", "OAI-1042", "OAI-1043", "OAI-1045")
def test_openai_client_gets_4xx_in_openai_shape(served: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=served["http"] + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="mock-small",
                                       messages=[{"role": "oracle", "content": "?"}])  # type: ignore[list-item,misc]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "?"}])
    assert bad.value.status_code == 400 and bad.value.code is not None
    assert isinstance(bad.value.body, dict) and set(bad.value.body) == {"message", "type", "param", "code"}
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"


@pytest.mark.req("OAI-1050")
def test_openai_stream_disconnect_cancels_upstream(served: dict[str, Any], tenant: str) -> None:
    headers = {"X-Llorch-Tenant": tenant}
    body = {"model": "mock-tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400,
            "stream": True}
    with httpx.Client(base_url=served["http"], headers=headers, timeout=DEADLINE_S) as http, \
            http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        _wait_for(lambda: any('"content":" ' in line or ('"content":"' in line and '""' not in line)
                              for line in [next(lines)]), "a content chunk")
    # the client is gone: the task must end cancelled and its slot come back
    with Client(served["http"], tenant=tenant) as client:
        task = _wait_for(lambda: next((t for t in client.list_tasks() if t.terminal), None), "terminal task")
        assert task.state == "cancelled" and task.tokens_out < 400
        _wait_for(lambda: client.pool("pool-single").free_slots == 1, "the slot to be free")


@pytest.mark.req("OAI-1051")
def test_openai_non_streaming_disconnect_cancels_upstream(served: dict[str, Any], tenant: str) -> None:
    body = {"model": "mock-tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400}
    with Client(served["http"], tenant=tenant) as client:
        with httpx.Client(base_url=served["http"], headers={"X-Llorch-Tenant": tenant},
                          timeout=httpx.Timeout(5.0, read=0.3)) as http:
            with pytest.raises(httpx.ReadTimeout):  # 400 tokens at 200/s: the answer cannot come in time
                http.post("/v1/chat/completions", json=body)
        task = _wait_for(lambda: next((t for t in client.list_tasks() if t.terminal), None), "terminal task")
        assert task.state == "cancelled" and task.tokens_out < 400
        _wait_for(lambda: client.pool("pool-single").free_slots == 1, "the slot to be free")


# ---- CLI client commands ---------------------------------------------------------------------------


@pytest.mark.req("PER-1017")
def test_cli_submit_tasks_pools_stats(served: dict[str, Any], tenant: str) -> None:
    url = ["--url", served["http"]]
    submitted = _cli("submit", "hello cli", "--model", "mock-small", "--max-tokens", "5", "--json",
                     "--tenant", tenant, *url)
    assert submitted.returncode == 0, submitted.stderr
    events = [json.loads(line) for line in submitted.stdout.splitlines()]
    assert events[0]["event"] == "submitted" and events[-1]["event"] == "end"
    task_id = events[0]["task_id"]
    listed = json.loads(_cli("tasks", "list", "--json", "--tenant", tenant, *url).stdout)
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]
    shown = json.loads(_cli("tasks", "show", task_id, "--json", "--tenant", tenant, *url).stdout)
    assert shown["state"] == "completed" and shown["tokens_out"] == 5
    pools = json.loads(_cli("pools", "list", "--json", *url).stdout)["pools"]
    assert {p["pool_id"] for p in pools} == {"pool-a", "pool-b", "pool-single"}
    usage = json.loads(_cli("stats", "--json", *url).stdout)["usage"]
    mine = [r for r in usage if r["tenant"] == tenant]
    assert sum(r["tokens_out"] for r in mine) == 5 and sum(r["tasks"] for r in mine) == 1
    missing = _cli("tasks", "show", "no-such-task", *url)
    assert missing.returncode == 1 and "TASK_NOT_FOUND" in missing.stderr


# ---- auth, end to end ------------------------------------------------------------------------------

SECRET = "tok-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def served_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    config = yaml.safe_load(CONFORMANCE.read_text())
    config["auth"] = {"tokens": [{"token_env": "LLORCH_TEST_TOKEN", "tenant": "team-a"}]}
    path = tmp_path_factory.mktemp("auth") / "auth.yaml"
    path.write_text(yaml.safe_dump(config))
    with llorch_serve("--config", str(path), "--log-level", "debug",
                      env={"LLORCH_TEST_TOKEN": SECRET}) as (info, stderr, _):
        yield info, stderr


@pytest.mark.req("SEC-1001", "SEC-1002", "SEC-1004", "SEC-1006", "SEC-1007", "SEC-1008", "SEC-1009",
                 "SEC-1011", "OAI-1044")
def test_auth_refusal_over_http_grpc_and_openai(served_with_auth: tuple[dict[str, Any], Path]) -> None:
    info, stderr = served_with_auth
    refused = httpx.post(info["http"] + "/v1/tasks",
                         json={"model": "mock-small", "prompt": "x", "max_tokens": 2})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHENTICATED"
    assert httpx.get(info["http"] + "/readyz").status_code == 200
    assert httpx.get(info["http"] + "/metrics").status_code == 401
    with Client(info["http"], token=SECRET, tenant="spoofed") as client:
        task = client.submit(model="mock-small", prompt="x", max_tokens=2)
        assert client.get_task(task.task_id).tenant == "team-a"
        assert client.capabilities()["auth_required"] is True
        with pytest.raises(ApiError) as denied_drain:
            client.drain("pool-b")
        assert denied_drain.value.status == 403 and denied_drain.value.code == "PERMISSION_DENIED"
    with grpc.insecure_channel(info["grpc"]) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.ListPools(pb.ListPoolsRequest(), metadata=(("authorization", "Bearer nope"),), timeout=5)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bearer = (("authorization", f"Bearer {SECRET}"),)
        ok = stub.ListPools(pb.ListPoolsRequest(), metadata=bearer, timeout=5)
        assert ok.pools
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=info["http"] + "/v1", api_key="wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=info["http"] + "/v1", api_key=SECRET, max_retries=0).models.list()
    assert {m.id for m in models} == {"mock-small", "mock-tiny"}
    assert SECRET not in stderr.read_text()


# ---- TLS ---------------------------------------------------------------------------------------------


@pytest.mark.req("SEC-1018", "SEC-1019")
def test_tls_serves_both_edges_and_refuses_plaintext(tmp_path: Path) -> None:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    config = yaml.safe_load(CONFORMANCE.read_text())
    config["server"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(config))
    with llorch_serve("--config", str(path)) as (info, _, _):
        assert info["http"].startswith("https://")
        import ssl

        trust = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(info["http"] + "/healthz", verify=trust).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(info["http"].replace("https://", "http://") + "/healthz", timeout=5)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(info["grpc"], credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(info["grpc"]) as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


@pytest.mark.req("SEC-1020")
def test_tls_with_missing_key_fails_at_start_naming_the_file(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFORMANCE.read_text())
    missing = tmp_path / "nowhere-key.pem"
    config["server"]["tls"] = {"cert_file": str(missing), "key_file": str(missing)}
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _cli("serve", "--config", str(path), "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2 and str(missing) in result.stderr
