"""The edges' translation layer (HTTP, SSE, OpenAI routes, gRPC) over a small in-test fake of
``OrchestratorApi``: wire shapes, error mapping, auth and limits, independent of the runtime.

The fake only records calls and replays scripted events; every rule it shows (capacity, unknown
model) is there to provoke the edge's translation of the error it raises.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from llorch.reference.core.types import (
    Admission,
    CancelledEvent,
    Ended,
    EventKind,
    Identity,
    Priority,
    Queued,
    Started,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskState,
    TokenOut,
)
from llorch.reference.errors import (
    Conflict,
    DeadlineUnmet,
    EngineFailure,
    ErrorCode,
    InternalError,
    InvalidParams,
    LlorchError,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from llorch.reference.runtime.api import CapabilitiesInfo, PoolStatus
from llorch.reference.server.errors import http_error, wire_status
from llorch.reference.server.grpc.server import GrpcServer
from llorch.reference.server.http.app import create_app
from llorch.reference.server.security import (
    Authenticator,
    Limits,
    Principal,
    SecuritySettings,
    fingerprint,
)

from llorch.proto import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc

MODEL = "fake-model"
TOKENS = (" alpha", " beta", " gamma")


@dataclass
class _Task:
    record: TaskRecord
    request: TaskRequest
    events: list[TaskEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class FakeOrchestrator:
    """Scripted events: queued, started, then (unless ``hold``) the tokens and end at once."""

    def __init__(self, *, capacity: int = 8, hold: bool = False) -> None:
        self.capacity = capacity
        self.hold = hold
        self.tasks: dict[str, _Task] = {}
        self.cancels: list[tuple[str, str]] = []
        self.submitted: list[tuple[TaskRequest, Identity]] = []

    async def _append(self, task: _Task, kind: EventKind) -> None:
        async with task.changed:
            seq = len(task.events)
            task.events.append(TaskEvent(task.record.task_id, seq, 1000 + seq, kind))
            task.changed.notify_all()

    async def submit(self, request: TaskRequest, identity: Identity) -> Admission:
        if request.model != MODEL:
            raise NotFound(f"no pool serves {request.model}", code=ErrorCode.MODEL_NOT_FOUND)
        active = sum(1 for t in self.tasks.values() if not t.events or not t.events[-1].terminal)
        if active >= self.capacity:
            raise Overloaded("queue full", retry_after_ms=1500, policy_label="queue.reject")
        task_id = f"t{len(self.tasks)}"
        record = TaskRecord(task_id, TaskState.STREAMING, identity.tenant, request.model, request.priority, 1)
        task = self.tasks[task_id] = _Task(record, request)
        self.submitted.append((request, identity))
        await self._append(task, Queued(0))
        await self._append(task, Started("pool-a", "pool-a-r0", "mock", "1.0", "sha256:x", 0))
        if not self.hold:
            await self.release(task_id)
        return Admission(task_id, 0, 0)

    async def release(self, task_id: str) -> None:
        task = self.tasks[task_id]
        n = min(task.request.max_tokens, len(TOKENS))
        for i in range(n):
            await self._append(task, TokenOut(i, TOKENS[i]))
        await self._append(task, Ended(4, n, 1, "length" if n == task.request.max_tokens else "stop"))

    def _task(self, task_id: str) -> _Task:
        if task_id not in self.tasks:
            raise NotFound(f"no task {task_id}", code=ErrorCode.TASK_NOT_FOUND)
        return self.tasks[task_id]

    async def events(self, task_id: str, identity: Identity, from_seq: int = 0) -> AsyncIterator[TaskEvent]:
        task = self._task(task_id)
        seen = [from_seq]
        while True:
            async with task.changed:
                await task.changed.wait_for(lambda: len(task.events) > seen[0])
                batch = task.events[seen[0]:]
            for event in batch:
                yield event
                seen[0] = event.seq + 1
                if event.terminal:
                    return

    async def cancel(self, task_id: str, identity: Identity, reason: str = "client") -> TaskRecord:
        task = self._task(task_id)
        self.cancels.append((task_id, reason))
        if not task.events[-1].terminal:
            await self._append(task, CancelledEvent(reason))
        return TaskRecord(task_id, TaskState.CANCELLED, identity.tenant, task.request.model,
                          task.request.priority, 1)

    async def get_task(self, task_id: str, identity: Identity) -> TaskRecord:
        return self._task(task_id).record

    async def list_tasks(self, identity: Identity, state: TaskState | None = None,
                         limit: int = 100) -> list[TaskRecord]:
        return [t.record for t in self.tasks.values() if t.record.tenant == identity.tenant][:limit]

    def _pool(self) -> PoolStatus:
        return PoolStatus("pool-a", MODEL, "mock", True, False, 4, 4, 1)

    def capabilities(self) -> CapabilitiesInfo:
        return CapabilitiesInfo("v1", "test", self.capacity, "reject", tuple(Priority), 64, 1000,
                                (self._pool(),), ("core",), False, (MODEL,))

    def pools(self) -> list[PoolStatus]:
        return [self._pool()]

    def pool(self, pool_id: str) -> PoolStatus:
        if pool_id != "pool-a":
            raise NotFound(f"no pool {pool_id}", code=ErrorCode.POOL_NOT_FOUND)
        return self._pool()

    async def drain_pool(self, pool_id: str, identity: Identity, deadline_ms: int = 0) -> Any:
        raise Conflict("not in this fake")

    async def reload_pool(self, pool_id: str, model: str, identity: Identity) -> Any:
        raise Conflict("not in this fake")

    async def create_session(self, identity: Identity, ttl_ms: int = 0, max_turns: int = 0) -> Any:
        raise Conflict("not in this fake")

    async def get_session(self, session_id: str, identity: Identity) -> Any:
        raise NotFound("no session", code=ErrorCode.SESSION_NOT_FOUND)

    async def delete_session(self, session_id: str, identity: Identity) -> None:
        raise NotFound("no session", code=ErrorCode.SESSION_NOT_FOUND)

    async def usage(self) -> list[Any]:
        return []

    def ready(self) -> bool:
        return True


TOKEN = "s3cret-token"
AUTH = SecuritySettings(authenticator=Authenticator.from_tokens([(TOKEN, Principal("team-a"))]))


def run_http(fake: FakeOrchestrator, fn: Callable[[httpx.AsyncClient], Awaitable[Any]],
             security: SecuritySettings | None = None) -> Any:
    app = create_app(fake, security)  # type: ignore[arg-type]

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await fn(client)

    return asyncio.run(main())


def sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


SUBMIT = {"model": MODEL, "prompt": "hello", "max_tokens": 2}

# ---- the error table --------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "http", "grpc_code"), [
    pytest.param(InvalidParams("x"), 400, grpc.StatusCode.INVALID_ARGUMENT,
                 marks=pytest.mark.req("ERR-1007"), id="invalid"),
    pytest.param(InvalidParams("x", code=ErrorCode.PAYLOAD_TOO_LARGE), 413, grpc.StatusCode.INVALID_ARGUMENT,
                 marks=pytest.mark.req("ERR-1008"), id="too-large"),
    pytest.param(Unauthenticated("x"), 401, grpc.StatusCode.UNAUTHENTICATED,
                 marks=pytest.mark.req("ERR-1009"), id="unauthenticated"),
    pytest.param(PermissionDenied("x"), 403, grpc.StatusCode.PERMISSION_DENIED,
                 marks=pytest.mark.req("ERR-1010"), id="denied"),
    pytest.param(NotFound("x", code=ErrorCode.MODEL_NOT_FOUND), 404, grpc.StatusCode.NOT_FOUND,
                 marks=pytest.mark.req("ERR-1011"), id="not-found"),
    pytest.param(Conflict("x", code=ErrorCode.SESSION_EXPIRED), 409, grpc.StatusCode.FAILED_PRECONDITION,
                 marks=pytest.mark.req("ERR-1012"), id="conflict"),
    pytest.param(Overloaded("x", code=ErrorCode.RATE_LIMITED), 429, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 marks=pytest.mark.req("ERR-1013"), id="overloaded"),
    pytest.param(Unavailable("x", code=ErrorCode.POOL_UNREADY), 503, grpc.StatusCode.UNAVAILABLE,
                 marks=pytest.mark.req("ERR-1014"), id="unavailable"),
    pytest.param(EngineFailure("x", code=ErrorCode.WORKER_RESET), 502, grpc.StatusCode.UNAVAILABLE,
                 marks=pytest.mark.req("ERR-1015"), id="engine"),
    pytest.param(DeadlineUnmet("x"), 504, grpc.StatusCode.DEADLINE_EXCEEDED,
                 marks=pytest.mark.req("ERR-1016"), id="deadline"),
    pytest.param(InternalError("x", code=ErrorCode.ORCHESTRATOR_RESTARTED), 500, grpc.StatusCode.INTERNAL,
                 marks=pytest.mark.req("ERR-1017"), id="internal"),
])
def test_error_table_maps_each_class(error: LlorchError, http: int, grpc_code: grpc.StatusCode) -> None:
    assert wire_status(error).http == http
    assert wire_status(error).grpc == grpc_code
    # An ErrorInfo that travelled without its exception (a stream error event) maps the same way.
    assert wire_status(error.info()) == wire_status(error)


@pytest.mark.req("ERR-1019", "ERR-1021")
def test_overload_headers_round_up_retry_after() -> None:
    status, body, headers = http_error(Overloaded("full", retry_after_ms=1500), "cid")
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert headers["X-Backoff-Ms"] == "1500"
    assert body["error"]["retriable"] is True and body["error"]["retry_after_ms"] == 1500


# ---- HTTP task API ----------------------------------------------------------------------------


@pytest.mark.req("ADM-1001", "ADM-1002", "STR-1036", "STR-1038")
def test_submit_answers_202_with_location_and_echoed_correlation_id() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/tasks", json=SUBMIT, headers={"X-Correlation-Id": "abc-123"})

    r = run_http(FakeOrchestrator(), go)
    assert r.status_code == 202
    assert r.headers["Location"] == f"/v1/tasks/{r.json()['task_id']}"
    assert r.headers["X-Correlation-Id"] == "abc-123"
    assert r.json()["correlation_id"] == "abc-123"


@pytest.mark.req("STR-1036", "STR-1039")
def test_generated_correlation_ids_differ() -> None:
    async def go(c: httpx.AsyncClient) -> list[str]:
        return [(await c.get("/healthz")).headers["X-Correlation-Id"] for _ in range(2)]

    first, second = run_http(FakeOrchestrator(), go)
    assert first and second and first != second


@pytest.mark.req("ADM-1007", "ADM-1008", "ERR-1001", "ERR-1018", "ERR-1023")
@pytest.mark.parametrize("body", [
    {**SUBMIT, "surprise": 1},
    {**SUBMIT, "sampler": {"temprature": 0.5}},
    {**SUBMIT, "max_tokens": True},
    {**SUBMIT, "max_tokens": "2"},
    {**SUBMIT, "priority": "urgent"},
    {"model": MODEL},
], ids=["unknown-field", "unknown-nested", "bool-as-int", "string-as-int", "bad-enum", "missing"])
def test_invalid_submit_is_400_in_envelope(body: dict[str, Any]) -> None:
    fake = FakeOrchestrator()

    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/tasks", json=body)

    r = run_http(fake, go)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"code", "message", "retriable", "retry_after_ms", "correlation_id", "policy_label"}
    assert error["code"] == "INVALID_PARAMS" and error["retriable"] is False
    assert error["correlation_id"] == r.headers["X-Correlation-Id"]
    assert fake.submitted == []


@pytest.mark.req("ERR-1023")
def test_malformed_json_is_400() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"})

    r = run_http(FakeOrchestrator(), go)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PARAMS"


@pytest.mark.req("ERR-1024")
def test_unknown_route_404_and_wrong_method_405_in_envelope() -> None:
    async def go(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        return await c.get("/v1/nowhere"), await c.delete("/v1/tasks")

    missing, wrong = run_http(FakeOrchestrator(), go)
    assert missing.status_code == 404 and "code" in missing.json()["error"]
    assert wrong.status_code == 405 and "code" in wrong.json()["error"]


@pytest.mark.req("ERR-1013", "ERR-1019", "ERR-1021")
def test_overload_is_429_with_retry_after() -> None:
    fake = FakeOrchestrator(capacity=1, hold=True)

    async def go(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        return await c.post("/v1/tasks", json=SUBMIT), await c.post("/v1/tasks", json=SUBMIT)

    first, second = run_http(fake, go)
    assert first.status_code == 202
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "2" and second.headers["X-Backoff-Ms"] == "1500"
    assert second.json()["error"]["code"] == "ADMISSION_REJECT"
    assert second.json()["error"]["policy_label"] == "queue.reject"


@pytest.mark.req("STR-1012", "STR-1013", "STR-1014")
def test_sse_events_carry_id_event_and_json_data() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        task_id = (await c.post("/v1/tasks", json=SUBMIT)).json()["task_id"]
        return await c.get(f"/v1/tasks/{task_id}/events")

    r = run_http(FakeOrchestrator(), go)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [e["event"] for e in events] == ["queued", "started", "token", "token", "end"]
    assert [int(e["id"]) for e in events] == [0, 1, 2, 3, 4]
    token = json.loads(events[2]["data"])
    assert token["text"] == TOKENS[0] and token["index"] == 0 and token["seq"] == 2
    assert json.loads(events[-1]["data"])["tokens_out"] == 2


@pytest.mark.req("STR-1019", "STR-1020")
def test_sse_resumes_after_last_event_id_and_from_seq() -> None:
    async def go(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        task_id = (await c.post("/v1/tasks", json=SUBMIT)).json()["task_id"]
        by_header = await c.get(f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "2"})
        by_query = await c.get(f"/v1/tasks/{task_id}/events", params={"from_seq": 2})
        return by_header, by_query

    by_header, by_query = run_http(FakeOrchestrator(), go)
    assert [int(e["id"]) for e in sse_events(by_header.text)] == [3, 4]
    assert [int(e["id"]) for e in sse_events(by_query.text)] == [2, 3, 4]


@pytest.mark.req("STR-1017")
def test_events_of_unknown_task_is_404() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.get("/v1/tasks/nope/events")

    r = run_http(FakeOrchestrator(), go)
    assert r.status_code == 404 and r.json()["error"]["code"] == "TASK_NOT_FOUND"


@pytest.mark.req("SEC-1014")
def test_body_over_limit_is_413() -> None:
    security = SecuritySettings(limits=Limits(max_body_bytes=200, max_prompt_bytes=100))
    fake = FakeOrchestrator()

    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/tasks", json={**SUBMIT, "prompt": "x" * 500})

    r = run_http(fake, go, security)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert fake.submitted == []


@pytest.mark.req("SEC-1015")
def test_prompt_over_limit_is_413() -> None:
    security = SecuritySettings(limits=Limits(max_body_bytes=10_000, max_prompt_bytes=100))

    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/tasks", json={**SUBMIT, "prompt": "x" * 101})

    r = run_http(FakeOrchestrator(), go, security)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


# ---- auth ----------------------------------------------------------------------------------------


@pytest.mark.req("SEC-1001", "SEC-1003", "SEC-1004", "ERR-1009")
def test_auth_refuses_missing_and_wrong_tokens_but_not_probes() -> None:
    async def go(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [await c.post("/v1/tasks", json=SUBMIT),
                await c.get("/v1/pools", headers={"Authorization": "Bearer wrong"}),
                await c.get("/healthz"), await c.get("/readyz")]

    missing, wrong, healthz, readyz = run_http(FakeOrchestrator(), go, AUTH)
    for r in (missing, wrong):
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "UNAUTHENTICATED"
    assert healthz.status_code == 200 and readyz.status_code == 200


@pytest.mark.req("SEC-1006")
def test_tenant_comes_from_token_not_header() -> None:
    fake = FakeOrchestrator()

    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/tasks", json=SUBMIT, headers={
            "Authorization": f"Bearer {TOKEN}", "X-Llorch-Tenant": "someone-else"})

    r = run_http(fake, go, AUTH)
    assert r.status_code == 202
    _, identity = fake.submitted[0]
    assert identity.tenant == "team-a"
    assert identity.token_fingerprint == fingerprint(TOKEN) and TOKEN not in identity.token_fingerprint


@pytest.mark.req("SEC-1011")
def test_fingerprint_is_first_8_hex_digits_of_sha256() -> None:
    import hashlib

    assert fingerprint(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()[:8]


# ---- OpenAI routes ---------------------------------------------------------------------------------

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.mark.req("OAI-1004", "OAI-1006")
def test_chat_completion_non_streaming() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/chat/completions", json=CHAT)

    r = run_http(FakeOrchestrator(), go)
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "".join(TOKENS)}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


@pytest.mark.req("OAI-1011", "OAI-1013", "OAI-1014", "OAI-1017", "OAI-1018", "OAI-1021", "OAI-1022")
def test_chat_stream_with_usage_chunk_then_done() -> None:
    fake = FakeOrchestrator()

    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/chat/completions",
                            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})

    r = run_http(fake, go)
    assert r.headers["content-type"].startswith("text/event-stream")
    datas = [e["data"] for e in sse_events(r.text)]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    body = chunks[:-1]
    assert all(c["usage"] is None for c in body)
    finishes = [c["choices"][0]["finish_reason"] for c in body]
    assert finishes[-1] == "length" and finishes.count(None) == len(finishes) - 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in body) == "".join(TOKENS)
    assert fake.cancels == []  # a completed stream cancels nothing


@pytest.mark.req("OAI-1038", "OAI-1039", "OAI-1040", "OAI-1041", "OAI-1042", "OAI-1046", "OAI-1048")
@pytest.mark.parametrize(("payload", "param"), [
    (b"{oops", None),
    (json.dumps({"messages": CHAT["messages"]}).encode(), "model"),
    (json.dumps({**CHAT, "max_tokens": "3"}).encode(), "max_tokens"),
    (json.dumps({**CHAT, "messages": {"role": "user"}}).encode(), "messages"),
    (json.dumps({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}).encode(), "messages[0].role"),
    (json.dumps({**CHAT, "temperature": 3}).encode(), "temperature"),
    (json.dumps({**CHAT, "max_tokens": 0}).encode(), "max_tokens"),
], ids=["bad-json", "no-model", "string-max-tokens", "object-messages", "unknown-role", "hot", "zero"])
def test_openai_client_mistakes_are_400_in_openai_shape(payload: bytes, param: str | None) -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/chat/completions", content=payload,
                            headers={"content-type": "application/json"})

    r = run_http(FakeOrchestrator(), go)
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and isinstance(error["message"], str)
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)


@pytest.mark.req("OAI-1043")
def test_unknown_model_is_404_model_not_found() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/completions", json={"model": "nope", "prompt": "x"})

    r = run_http(FakeOrchestrator(), go)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["param"] == "model"


@pytest.mark.req("OAI-1034", "OAI-1035")
def test_n_choices_non_streaming_and_streaming() -> None:
    fake = FakeOrchestrator()

    async def go(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        plain = await c.post("/v1/chat/completions", json={**CHAT, "n": 2, "seed": 5})
        streamed = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2,
                                                         "n": 3, "stream": True,
                                                         "stream_options": {"include_usage": True}})
        too_many = await c.post("/v1/chat/completions", json={**CHAT, "n": 9})
        return plain, streamed, too_many

    plain, streamed, too_many = run_http(fake, go)
    assert [c["index"] for c in plain.json()["choices"]] == [0, 1]
    assert plain.json()["usage"]["completion_tokens"] == 6
    assert [req.sampler.seed for req, _ in fake.submitted[:2]] == [5, 6]
    chunks = [json.loads(e["data"]) for e in sse_events(streamed.text) if e["data"] != "[DONE]"]
    finishes: dict[int, list[str]] = {}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            if choice["finish_reason"] is not None:
                finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert finishes == {0: ["length"], 1: ["length"], 2: ["length"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"


@pytest.mark.req("OAI-1044")
def test_openai_bad_key_is_401_in_openai_shape() -> None:
    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.get("/v1/models", headers={"Authorization": "Bearer nope"})

    r = run_http(FakeOrchestrator(), go, AUTH)
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.req("OAI-1052")
def test_openai_429_carries_retry_after() -> None:
    fake = FakeOrchestrator(capacity=0)

    async def go(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/chat/completions", json=CHAT)

    r = run_http(fake, go)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert r.json()["error"]["type"] == "rate_limit_error"


# ---- gRPC ------------------------------------------------------------------------------------------


def run_grpc(fake: FakeOrchestrator,
             fn: Callable[[orchestrator_pb2_grpc.OrchestratorServiceStub], Awaitable[Any]],
             security: SecuritySettings | None = None) -> Any:
    async def main() -> Any:
        server = GrpcServer(fake, security or SecuritySettings())  # type: ignore[arg-type]
        port = server.bind("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await fn(orchestrator_pb2_grpc.OrchestratorServiceStub(channel))
        finally:
            await server.stop(0)

    return asyncio.run(main())


def error_detail_of(exc: grpc.aio.AioRpcError) -> common_pb2.ErrorDetail:
    raw = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    detail = common_pb2.ErrorDetail()
    assert status.details[0].Unpack(detail)
    return detail


@pytest.mark.req("STR-1001", "STR-1037")
def test_grpc_submit_stream_end() -> None:
    async def go(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> Any:
        call = stub.Submit(orchestrator_pb2.SubmitRequest(model=MODEL, prompt="p", max_tokens=2),
                           metadata=(("x-correlation-id", "grpc-cid"),))
        answer = await call
        initial = dict(await call.initial_metadata())
        stream = stub.StreamEvents(orchestrator_pb2.StreamEventsRequest(task_id=answer.task_id))
        events = [e async for e in stream]
        return answer, initial, events

    answer, initial, events = run_grpc(FakeOrchestrator(), go)
    assert initial["x-correlation-id"] == "grpc-cid" and answer.correlation_id == "grpc-cid"
    assert [e.WhichOneof("kind") for e in events] == ["queued", "started", "token", "token", "end"]
    assert [e.token.text for e in events if e.HasField("token")] == list(TOKENS[:2])
    assert events[-1].end.tokens_out == 2


@pytest.mark.req("ERR-1003", "ERR-1004", "ERR-1013")
def test_grpc_overload_carries_error_detail() -> None:
    async def go(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(orchestrator_pb2.SubmitRequest(model=MODEL, prompt="p", max_tokens=2))
        return info.value

    exc = run_grpc(FakeOrchestrator(capacity=0), go)
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    detail = error_detail_of(exc)
    assert common_pb2.ErrorCode.Name(detail.code) == "ADMISSION_REJECT"
    assert detail.retriable and detail.retry_after_ms == 1500 and detail.policy_label == "queue.reject"


@pytest.mark.req("SEC-1002")
def test_grpc_auth_refusal_and_health_exempt() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def go(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListPools(orchestrator_pb2.ListPoolsRequest(),
                                 metadata=(("authorization", "Bearer wrong"),))
        ok = await stub.ListPools(orchestrator_pb2.ListPoolsRequest(),
                                  metadata=(("authorization", f"Bearer {TOKEN}"),))
        return info.value, ok

    async def main() -> Any:
        server = GrpcServer(FakeOrchestrator(), AUTH)  # type: ignore[arg-type]
        port = server.bind("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                refused, ok = await go(orchestrator_pb2_grpc.OrchestratorServiceStub(channel))
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                return refused, ok, health
        finally:
            await server.stop(0)

    refused, ok, health = asyncio.run(main())
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert common_pb2.ErrorCode.Name(error_detail_of(refused).code) == "UNAUTHENTICATED"
    assert [p.pool_id for p in ok.pools] == ["pool-a"]
    assert health.status == health.SERVING


@pytest.mark.req("CFG-1401")
def test_shutdown_tells_probes_before_the_listeners_close() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from llorch.reference.config import default_config
    from llorch.reference.server.app import Service

    async def main() -> tuple[int, int, Any]:
        service = Service(default_config(), FakeOrchestrator(), SecuritySettings(),  # type: ignore[arg-type]
                          host="127.0.0.1", grpc_port=0, http_port=0)
        bound = await service.start()
        try:
            async with httpx.AsyncClient(base_url=bound.http) as http:
                before = (await http.get("/readyz")).status_code
                await service.begin_shutdown()
                after = (await http.get("/readyz")).status_code
            async with grpc.aio.insecure_channel(bound.grpc) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        finally:
            await service.shutdown(0)
        return before, after, health

    before, after, health = asyncio.run(main())
    assert (before, after) == (200, 503)
    assert health.status == health.NOT_SERVING
