"""The orchestrator's task-API surface over the wire: task identity and listing, capabilities, the
served OpenAPI document, every gRPC RPC, error envelopes and stream errors, queue policy, started
events and stream isolation."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf import message_factory
from llorch.harness.clients import STREAM_TIMEOUT_S, error_detail, message_json, wait_until

from llorch import resources
from llorch.proto import common_pb2, orchestrator_pb2

ENVELOPE_FIELDS = ("code", "message", "retriable", "retry_after_ms", "correlation_id", "policy_label")
DETAIL_FIELDS = ("code", "message", "retriable", "retry_after_ms", "policy_label")
LONG = 512  # a task that streams for a while on the mock engines (the conformance config caps at 512)
SECRET = "conform-secret-7f3a9c"
SERVER_PATH = re.compile(
    r"(?:/(?:home|usr|opt|var|tmp|srv|root|etc|work|app)/[\w.@+-]+)|\.py\b|site-packages")


def _admitted(api: Any, **overrides: Any) -> dict[str, Any]:
    """Submit until the target admits it (a full queue answers 429 for a while); bounded wait."""
    out: list[dict[str, Any]] = []

    def attempt() -> bool:
        resp = api.submit(**overrides)
        if resp.status_code == 202:
            out.append(resp.json())
            return True
        assert resp.status_code == 429, f"submit answered {resp.status_code}: {resp.text[:300]}"
        return False

    assert wait_until(attempt, STREAM_TIMEOUT_S), "the target kept refusing a valid submit"
    return out[0]


def _wait_terminal(api: Any, task_id: str) -> dict[str, Any]:
    """The task once it reached a terminal state (polled with a bounded deadline)."""
    seen: list[dict[str, Any]] = []

    def terminal() -> bool:
        seen.append(api.get_task(task_id))
        return seen[-1]["state"] in ("completed", "cancelled", "failed", "expired")

    assert wait_until(terminal, STREAM_TIMEOUT_S), f"task {task_id} still {seen[-1]['state']}"
    return seen[-1]


@pytest.fixture
def cleanup(api: Any) -> Iterator[list[str]]:
    """Task ids to cancel when the test ends, so long tasks never leak into the next test."""
    ids: list[str] = []
    yield ids
    for task_id in ids:
        api.cancel(task_id)


# ---- admission ------------------------------------------------------------------------------


@pytest.mark.req("ADM-1003")
def test_task_ids_are_unique(api: Any) -> None:
    ids = [api.submit_ok(max_tokens=1)["task_id"] for _ in range(6)]
    ids += [api.grpc_submit(max_tokens=1).task_id for _ in range(6)] if api.stub is not None else []
    assert all(ids), f"[ADM-1003] an accepted task has no task_id: {ids}"
    assert len(set(ids)) == len(ids), f"[ADM-1003] task_id repeated: {ids}"
    other = api.for_tenant(api.tenant + "-b").submit_ok(max_tokens=1)["task_id"]
    assert other not in ids, "[ADM-1003] another tenant's task got an id already handed out"


@pytest.mark.req("ADM-1006")
def test_priority_defaults_to_normal(api: Any) -> None:
    task = api.submit_ok(max_tokens=1)
    assert api.get_task(task["task_id"])["priority"] == "normal", "[ADM-1006] unset priority is not normal"
    high = api.submit_ok(max_tokens=1, priority="high")
    assert api.get_task(high["task_id"])["priority"] == "high", "explicit priority not reported"
    if api.stub is not None:
        sub = api.grpc_submit(max_tokens=1, priority="PRIORITY_UNSPECIFIED")
        got = api.grpc_task(sub.task_id).priority
        assert got == orchestrator_pb2.PRIORITY_NORMAL, (
            f"[ADM-1006] PRIORITY_UNSPECIFIED reported as {orchestrator_pb2.Priority.Name(got)}")


@pytest.mark.req("ADM-1021")
def test_list_tasks_state_and_limit(api: Any, cleanup: list[str]) -> None:
    done = [_admitted(api, max_tokens=1)["task_id"] for _ in range(101)]
    def listing(**params: Any) -> list[dict[str, Any]]:
        resp = api.request("GET", "/v1/tasks", params=params)
        assert resp.status_code == 200, f"GET /v1/tasks {params}: {resp.status_code} {resp.text[:200]}"
        tasks: list[dict[str, Any]] = resp.json()["tasks"]
        return tasks

    assert wait_until(lambda: len(listing(state="completed", limit=1000)) == len(done), STREAM_TIMEOUT_S), (
        "[ADM-1021] state=completed never listed the 101 finished tasks")
    running = api.submit_ok(max_tokens=LONG, model="mock-tiny", placement={"pin_pool": "pool-single"})
    cleanup.append(running["task_id"])

    assert len(listing()) == 100, "[ADM-1021] without limit= the listing is not 100 of 102 tasks"
    assert len(listing(limit=7)) == 7, "[ADM-1021] limit=7 not honoured"
    completed = listing(state="completed", limit=1000)
    assert completed and all(t["state"] == "completed" for t in completed), (
        f"[ADM-1021] state=completed lists {sorted({t['state'] for t in completed})}")
    assert running["task_id"] not in {t["task_id"] for t in completed}, "[ADM-1021] a live task listed"
    live_state = api.get_task(running["task_id"])["state"]
    assert live_state not in ("completed", "cancelled", "failed", "expired"), "the long task ended too soon"
    live = listing(state=live_state)
    assert [t["task_id"] for t in live] == [running["task_id"]], (
        f"[ADM-1021] state={live_state} lists {[(t['task_id'], t['state']) for t in live]}")


# ---- capabilities and contracts ---------------------------------------------------------------


@pytest.mark.req("CFG-1015")
def test_capabilities_describe_the_server(api: Any) -> None:
    caps = api.capabilities()
    assert caps.get("api_version") == "v1", f"[CFG-1015] api_version {caps.get('api_version')!r}"
    assert isinstance(caps.get("server_version"), str) and caps["server_version"], "[CFG-1015] server_version"
    profiles = caps.get("profiles")
    assert isinstance(profiles, list) and "core" in profiles, f"[CFG-1015] profiles {profiles!r}"
    assert isinstance(caps.get("auth_required"), bool), (
        f"[CFG-1015] auth_required {caps.get('auth_required')!r}")
    if caps["auth_required"] and not api.token:
        assert api.request("GET", "/v1/tasks").status_code == 401, "[CFG-1015] auth_required but no auth"
    models = caps.get("models")
    assert isinstance(models, list) and models, f"[CFG-1015] models {models!r}"
    served = {m["id"] for m in api.request("GET", "/v1/models").json()["data"]}
    assert set(models) == served, f"[CFG-1015] capabilities models {models} vs /v1/models {sorted(served)}"
    for model in models:
        resp = api.submit(model=model, max_tokens=1)
        assert resp.status_code == 202, f"[CFG-1015] model {model} not served: {resp.text[:200]}"


@pytest.mark.req("CTR-1020")
def test_served_openapi_matches_the_contract(api: Any) -> None:
    resp = api.request("GET", "/openapi.json")
    assert resp.status_code == 200, f"[CTR-1020] GET /openapi.json answered {resp.status_code}"
    served = resp.json()
    shipped = json.loads((resources.contracts_dir() / "openapi" / "openapi.json").read_text(encoding="utf-8"))
    assert set(served.get("paths", {})) == set(shipped["paths"]), (
        f"[CTR-1020] paths differ: {sorted(set(served.get('paths', {})) ^ set(shipped['paths']))}")
    assert served["paths"] == shipped["paths"], "[CTR-1020] path operations differ"
    assert served.get("components", {}).get("schemas") == shipped["components"]["schemas"], (
        "[CTR-1020] component schemas differ")


def _placeholder_request(method: Any) -> Any:
    """A request naming things that do not exist, so no RPC can change the target's state."""
    cls = message_factory.GetMessageClass(method.input_type)
    req = cls()
    for fd in method.input_type.fields:
        if fd.name.endswith("_id") and fd.type == fd.TYPE_STRING:
            setattr(req, fd.name, "conform-does-not-exist")
    return req


@pytest.mark.req("CTR-1022")
def test_every_rpc_is_implemented(grpc_channel: Any, api: Any) -> None:
    service = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
    unimplemented: list[str] = []
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        req = _placeholder_request(method)
        out_cls = message_factory.GetMessageClass(method.output_type)
        kw: dict[str, Any] = {"request_serializer": type(req).SerializeToString,
                              "response_deserializer": out_cls.FromString}
        try:
            if method.server_streaming:
                call = grpc_channel.unary_stream(path, **kw)(req, metadata=api.metadata, timeout=10)
                for _ in call:
                    break
                call.cancel()
            else:
                grpc_channel.unary_unary(path, **kw)(req, metadata=api.metadata, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                unimplemented.append(method.name)
    assert not unimplemented, f"[CTR-1022] UNIMPLEMENTED: {unimplemented}"


# ---- errors ---------------------------------------------------------------------------------


def _error_answers(api: Any) -> list[tuple[str, Any]]:
    """HTTP error answers of the task API: (what, response)."""
    auth = {"Authorization": f"Bearer {SECRET}"} if not api.token else {}
    return [
        ("invalid params", api.request("POST", "/v1/tasks", json=api.task_body(max_tokens=0), headers=auth)),
        ("not json", api.request("POST", "/v1/tasks", content=b"{",
                                 headers={"Content-Type": "application/json"})),
        ("unknown model", api.submit(model="conform-no-such-model")),
        ("unknown task", api.request("GET", "/v1/tasks/conform-does-not-exist", headers=auth)),
        ("unknown route", api.request("GET", "/v1/conform-no-such-route")),
        ("wrong method", api.request("DELETE", "/v1/capabilities")),
        ("real engine", api.submit(require_real_engine=True)),
        ("bad session", api.submit(session_id="conform-does-not-exist")),
    ]


def _stream_error(api: Any, cleanup: list[str]) -> tuple[str, dict[str, Any]]:
    """A task that ends with a stream ``error`` event: its deadline passes while it waits for the only
    slot of pool-single. Returns its task_id and the SSE error event's data."""
    blocker = api.submit_ok(model="mock-tiny", max_tokens=LONG, placement={"pin_pool": "pool-single"})
    cleanup.append(blocker["task_id"])
    task = api.submit_ok(model="mock-tiny", max_tokens=4, deadline_ms=50,
                         placement={"pin_pool": "pool-single"})
    with api.http.stream("GET", f"/v1/tasks/{task['task_id']}/events", headers=api.headers,
                         timeout=STREAM_TIMEOUT_S) as resp:
        assert resp.status_code == 200
        blocks = resp.read().decode().replace("\r\n", "\n").split("\n\n")
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "error":
            return task["task_id"], dict(json.loads(fields["data"]))
    pytest.fail(f"no error event in the stream of a task whose deadline passed: {blocks}")
    raise AssertionError


@pytest.mark.req("ERR-1002")
def test_error_codes_are_error_code_names(api: Any, cleanup: list[str]) -> None:
    codes: dict[str, str] = {}
    for what, resp in _error_answers(api):
        assert resp.status_code >= 400, f"{what} answered {resp.status_code}"
        codes[what] = resp.json()["error"]["code"]
    if api.stub is not None:
        with pytest.raises(grpc.RpcError) as info:
            api.grpc_submit(max_tokens=0)
        detail = error_detail(info.value)
        assert detail is not None, "no ErrorDetail on a gRPC error"
        codes["grpc detail"] = common_pb2.ErrorCode.Name(detail.code)
    codes["stream event"] = _stream_error(api, cleanup)[1]["code"]
    bad = {what: code for what, code in codes.items()
           if code not in common_pb2.ErrorCode.keys() or code == "ERROR_CODE_UNSPECIFIED"}
    assert not bad, f"[ERR-1002] codes that are not llorch.v1.ErrorCode names: {bad}"


@pytest.mark.req("ERR-1005")
def test_error_messages_leak_nothing(api: Any, cleanup: list[str]) -> None:
    messages = {what: str(resp.json()["error"]["message"]) for what, resp in _error_answers(api)}
    messages["stream event"] = str(_stream_error(api, cleanup)[1]["message"])
    if api.stub is not None:
        with pytest.raises(grpc.RpcError) as info:
            api.grpc_submit(max_tokens=0)
        messages["grpc status"] = str(info.value.details())
    for what, message in messages.items():
        assert "Traceback" not in message and 'File "' not in message, (
            f"[ERR-1005] {what}: stack trace {message!r}")
        assert SECRET not in message and "Bearer" not in message, f"[ERR-1005] {what}: token in {message!r}"
        assert not SERVER_PATH.search(message), f"[ERR-1005] {what}: server path in {message!r}"


@pytest.mark.req("ERR-1020")
def test_every_503_has_retry_after(api: Any) -> None:
    answers = [resp for _, resp in _error_answers(api) if resp.status_code == 503]
    assert answers, "the conformance target gave no 503 (require_real_engine on mock pools)"
    for resp in answers:
        value = resp.headers.get("retry-after", "")
        assert value.isdigit(), f"[ERR-1020] 503 {resp.request.url.path} with Retry-After {value!r}"


@pytest.mark.req("ERR-1025", "STR-1015")
def test_stream_error_event_carries_the_error_detail(api: Any, cleanup: list[str]) -> None:
    task_id, data = _stream_error(api, cleanup)
    missing = [f for f in ENVELOPE_FIELDS if f not in data]
    assert not missing, f"[ERR-1025] [STR-1015] the error event lacks {missing}: {data}"
    assert isinstance(data["retriable"], bool) and isinstance(data["retry_after_ms"], int), (
        f"[STR-1015] error event field types: {data}")
    if api.stub is not None:
        events = api.grpc_events(task_id)
        errors = [ev.error for ev in events if ev.WhichOneof("kind") == "error"]
        assert len(errors) == 1, f"gRPC replay has {len(errors)} error events"
        grpc_detail = message_json(errors[0])
        for name in DETAIL_FIELDS:
            assert grpc_detail[name] == data[name] or (name == "retry_after_ms" and int(grpc_detail[name]) ==
                                                       data[name]), (
                f"[ERR-1025] {name}: SSE {data[name]!r} vs gRPC {grpc_detail[name]!r}")


@pytest.mark.req("ERR-1026")
def test_failed_task_record_carries_the_terminal_error(api: Any, cleanup: list[str]) -> None:
    task_id, data = _stream_error(api, cleanup)
    record = _wait_terminal(api, task_id)
    assert isinstance(record.get("error"), dict), f"[ERR-1026] the Task record has no error: {record}"
    for name in DETAIL_FIELDS:
        assert record["error"].get(name) == data[name], (
            f"[ERR-1026] {name}: Task.error {record['error'].get(name)!r} vs event {data[name]!r}")
    if api.stub is not None:
        task = api.grpc_task(task_id)
        events = api.grpc_events(task_id)
        assert events[-1].WhichOneof("kind") == "error"
        assert task.error == events[-1].error, (
            f"[ERR-1026] gRPC Task.error {task.error} vs {events[-1].error}")


# ---- pools, queue, scheduling -------------------------------------------------------------------


@pytest.mark.req("POOL-1009")
def test_healthz_answers_while_serving(api: Any, cleanup: list[str]) -> None:
    assert api.http.get("/healthz").status_code == 200, "[POOL-1009] /healthz on an idle server"
    busy = [api.submit_ok(max_tokens=LONG, model="mock-tiny",
                          placement={"pin_pool": "pool-single"})["task_id"]]
    cleanup.extend(busy)
    free = {p["pool_id"]: p["free_slots"] for p in api.request("GET", "/v1/pools").json()["pools"]}
    assert wait_until(lambda: api.get_task(busy[0])["state"] in ("dispatched", "streaming"), 10)
    resp = api.http.get("/healthz")
    assert resp.status_code == 200, f"[POOL-1009] /healthz {resp.status_code} with busy pools {free}"


@pytest.mark.req("QUE-1010")
def test_full_policy_is_the_applied_policy(api: Any, orchestrator: Any, cleanup: list[str]) -> None:
    caps = api.capabilities()
    policy, capacity = caps["full_policy"], int(caps["queue_capacity"])
    assert policy in ("reject", "drop-lru", "shed-lower-priority"), f"[QUE-1010] full_policy {policy!r}"
    pin = {"model": "mock-tiny", "max_tokens": LONG, "placement": {"pin_pool": "pool-single"}}
    low = "low" if policy == "shed-lower-priority" else "normal"
    first = api.submit_ok(**pin, priority=low)["task_id"]
    cleanup.append(first)
    assert wait_until(lambda: api.get_task(first)["state"] in ("dispatched", "streaming"), 10)
    queued: list[str] = []
    for _ in range(capacity + 1):
        resp = api.submit(**pin, priority=low)
        if resp.status_code != 202:
            break
        queued.append(resp.json()["task_id"])
    cleanup.extend(queued)
    assert len(queued) == capacity, f"the queue of capacity {capacity} took {len(queued)} tasks"
    overflow = api.submit(**pin, priority="high" if policy == "shed-lower-priority" else "normal")
    if overflow.status_code == 202:
        cleanup.append(overflow.json()["task_id"])
    states = {t: api.get_task(t)["state"] for t in queued}
    if policy == "reject":
        assert overflow.status_code == 429, (
            f"[QUE-1010] reject policy admitted into a full queue: {overflow.text[:200]}")
        assert all(s == "queued" for s in states.values()), (
            f"[QUE-1010] reject dropped queued tasks: {states}")
    else:
        assert overflow.status_code == 202, f"[QUE-1010] {policy} refused: {overflow.text[:200]}"
        dropped = [t for t, s in states.items() if s != "queued"]
        expected = [queued[0]] if policy == "drop-lru" else dropped[:1]
        assert dropped and dropped == expected, f"[QUE-1010] {policy} dropped {dropped} of {queued}"


@pytest.mark.req("SCH-1014")
def test_started_event_names_the_replica(api: Any) -> None:
    pools = {p["pool_id"]: p for p in api.request("GET", "/v1/pools").json()["pools"]}
    for pool_id, pool in pools.items():
        if not pool.get("ready") or pool.get("draining"):
            continue
        task = api.submit_ok(model=pool["model"], max_tokens=2, placement={"pin_pool": pool_id})
        with api.http.stream("GET", f"/v1/tasks/{task['task_id']}/events", headers=api.headers) as resp:
            raw = resp.read().decode()
        started = [json.loads(line[len("data: "):]) for block in raw.replace("\r\n", "\n").split("\n\n")
                   if "event: started" in block for line in block.splitlines() if line.startswith("data: ")]
        assert started, f"no started event for a task on {pool_id}"
        ev = started[0]
        replica = {r["replica_id"]: r for r in pool["replicas"]}.get(ev["replica_id"])
        assert ev["pool_id"] == pool_id and replica is not None, f"[SCH-1014] started {ev} not on {pool_id}"
        for name in ("engine", "engine_version", "model_digest"):
            assert ev[name] == replica[name], (
                f"[SCH-1014] started {name} {ev[name]!r} vs replica {replica[name]!r}")


# ---- streaming isolation -----------------------------------------------------------------------


def _stalled_sse(base: str, path: str, headers: dict[str, str]) -> socket.socket:
    """An SSE request on a socket with a tiny receive buffer that the test never reads."""
    url = urlsplit(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((url.hostname or "127.0.0.1", url.port or 80))
    lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    return sock


@pytest.mark.req("STR-1025")
def test_slow_reader_does_not_stall_other_streams(api: Any, cleanup: list[str]) -> None:
    def timed_stream(max_tokens: int) -> float:
        task = api.submit_ok(max_tokens=max_tokens, placement={"pin_pool": "pool-a"})
        t0 = time.monotonic()
        events = api.sse_events(task["task_id"])
        assert events[-1].kind == "end", f"the fast task ended with {events[-1]}"
        return time.monotonic() - t0

    baseline = timed_stream(64)
    slow = api.submit_ok(max_tokens=LONG, placement={"pin_pool": "pool-a"})
    cleanup.append(slow["task_id"])
    socks = [_stalled_sse(api.http.base_url.scheme + "://" + api.http.base_url.netloc.decode(),
                          f"/v1/tasks/{slow['task_id']}/events", api.headers) for _ in range(4)]
    try:
        assert wait_until(lambda: api.get_task(slow["task_id"])["tokens_out"] > 32, 10), (
            "the slow-read task did not stream")
        elapsed: list[float] = []
        runner = threading.Thread(target=lambda: elapsed.append(timed_stream(64)), daemon=True)
        runner.start()
        runner.join(STREAM_TIMEOUT_S)
        assert elapsed, "[STR-1025] another task's stream stalled behind a reader that does not read"
        assert elapsed[0] < baseline * 3 + 1.0, (
            f"[STR-1025] another task's stream took {elapsed[0]:.2f}s beside a slow reader "
            f"(alone {baseline:.2f}s)")
    finally:
        for sock in socks:
            sock.close()

