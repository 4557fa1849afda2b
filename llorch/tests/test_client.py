"""``llorch.client`` against canned wire answers (httpx.MockTransport): typed records, a tolerant
reader for fields a newer server adds, and typed errors built from the error envelope."""

from __future__ import annotations

import json

import httpx
import pytest

from llorch.client import ApiError, Client, TransportError

TASK = {"task_id": "t1", "state": "completed", "tenant": "a", "model": "m", "priority": "normal",
        "pool_id": "p", "replica_id": "r", "tokens_in": 1, "tokens_out": 2, "created_ms": 3,
        "finished_ms": 4, "finish_reason": "stop", "error": None, "session_id": ""}


def client_for(handler: httpx.MockTransport) -> Client:
    return Client("http://target", transport=handler, token="tok", tenant="a")


def test_task_record_ignores_fields_it_does_not_know() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**TASK, "added_in_v2": True})

    with client_for(httpx.MockTransport(handler)) as client:
        task = client.get_task("t1")
    assert task.task_id == "t1" and task.terminal
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert seen[0].headers["X-Llorch-Tenant"] == "a"


def test_error_envelope_becomes_api_error() -> None:
    envelope = {"error": {"code": "ADMISSION_REJECT", "message": "queue full", "retriable": True,
                          "retry_after_ms": 250, "correlation_id": "c1", "policy_label": "queue.reject"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json=envelope, headers={"Retry-After": "1"})

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(ApiError) as info:
        client.submit(model="m", prompt="p", max_tokens=1)
    error = info.value
    assert (error.status, error.code, error.retriable, error.retry_after_ms, error.policy_label) == (
        429, "ADMISSION_REJECT", True, 250, "queue.reject")


def test_events_stop_at_the_terminal_event() -> None:
    body = "".join(f"id: {i}\nevent: {kind}\ndata: {json.dumps({'seq': i})}\n\n"
                   for i, kind in enumerate(["started", "token", "end", "token"]))

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Last-Event-ID"] == "0"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    with client_for(httpx.MockTransport(handler)) as client:
        kinds = [e.kind for e in client.events("t1", last_event_id=0)]
    assert kinds == ["started", "token", "end"]


def test_non_json_answer_is_a_transport_error() -> None:
    with client_for(httpx.MockTransport(lambda r: httpx.Response(200, text="<html>"))) as client, \
            pytest.raises(TransportError):
        client.capabilities()
