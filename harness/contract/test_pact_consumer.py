"""Pact consumer tests of ``llorch.client`` (D16): each interaction is what the client really sends
and what it needs back; the pact file is written to ``contracts/pacts/`` and verified against a
running orchestrator by ``test_pact_provider.py``. These tests talk to a pact mock server whose answers
they define, so they check the client and cite only the pact requirement; what the orchestrator must
answer is checked by the provider verification (CTR-1500)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pact import Pact, generate, match
from pact.match.matcher import GenericMatcher

from llorch.client import ApiError, Client

from .conftest import CONSUMER, PACT_TENANT, PROVIDER

TASK_STATES = r"^(queued|dispatched|streaming|completed|cancelled|failed|expired)$"
ERROR = {"error": {"code": match.str("INVALID_PARAMS"), "message": match.str("bad field"),
                   "retriable": match.bool(False), "retry_after_ms": match.int(0),
                   "correlation_id": match.str("c-1"), "policy_label": match.str("")}}


def task_path(suffix: str = "") -> GenericMatcher[Any]:
    """A path holding the task id the provider state created (``${task_id}``)."""
    return GenericMatcher("type", value=f"/v1/tasks/t-example{suffix}",
                          generator=generate.provider_state(f"/v1/tasks/${{task_id}}{suffix}"))


@pytest.fixture
def pact(fresh_pact_dir: Path) -> Any:
    """One Pact object per test (it cannot change after it was served), merged into one file."""
    p = Pact(CONSUMER, PROVIDER).with_specification("V4")
    yield p
    p.write_file(fresh_pact_dir)


def _client(url: Any) -> Client:
    return Client(str(url), tenant=PACT_TENANT)


@pytest.mark.req("CTR-1023")
def test_submit(pact: Any) -> None:
    (pact.upon_receiving("a task submission").given("the orchestrator serves a model", model="mock-small")
     .with_request("POST", "/v1/tasks").with_header("X-Llorch-Tenant", PACT_TENANT)
     .with_body({"model": "mock-small", "prompt": "hello", "max_tokens": 4}, content_type="application/json")
     .will_respond_with(202)
     .with_body({"task_id": match.str("t-1"), "queue_position": match.int(0),
                 "predicted_start_ms": match.int(0), "correlation_id": match.str("c-1")},
                content_type="application/json"))
    with pact.serve() as srv, _client(srv.url) as client:
        sub = client.submit(model="mock-small", prompt="hello", max_tokens=4)
    assert sub.task_id == "t-1" and sub.queue_position == 0


@pytest.mark.req("CTR-1023")
def test_get_task(pact: Any) -> None:
    (pact.upon_receiving("a request for a task").given("a task exists")
     .with_request("GET", task_path()).with_header("X-Llorch-Tenant", PACT_TENANT)
     .will_respond_with(200)
     .with_body({"task_id": match.str("t-example"), "state": match.regex("completed", regex=TASK_STATES),
                 "tenant": match.str(PACT_TENANT), "model": match.str("mock-small"),
                 "priority": match.regex("normal", regex=r"^(high|normal|low)$"),
                 "pool_id": match.str("pool-a"), "replica_id": match.str("pool-a-r0"),
                 "tokens_in": match.int(1), "tokens_out": match.int(4), "created_ms": match.int(1),
                 "finished_ms": match.int(2), "finish_reason": match.str("length"),
                 "session_id": match.str(""), "error": None},
                content_type="application/json"))
    with pact.serve() as srv, _client(srv.url) as client:
        task = client.get_task("t-example")
    assert task.task_id == "t-example" and task.terminal


@pytest.mark.req("CTR-1023")
def test_cancel(pact: Any) -> None:
    (pact.upon_receiving("a cancel of a running task").given("a running task exists")
     .with_request("POST", task_path("/cancel")).with_header("X-Llorch-Tenant", PACT_TENANT)
     .will_respond_with(200)
     .with_body({"task_id": match.str("t-example"), "state": match.regex("cancelled", regex=TASK_STATES)},
                content_type="application/json"))
    with pact.serve() as srv, _client(srv.url) as client:
        cancelled = client.cancel("t-example")
    assert cancelled.state == "cancelled"


@pytest.mark.req("CTR-1023")
def test_invalid_submit(pact: Any) -> None:
    (pact.upon_receiving("an invalid task submission")
     .given("the orchestrator serves a model", model="mock-small")
     .with_request("POST", "/v1/tasks").with_header("X-Llorch-Tenant", PACT_TENANT)
     .with_body({"model": "mock-small", "prompt": "hello", "max_tokens": 0}, content_type="application/json")
     .will_respond_with(400).with_body(ERROR, content_type="application/json"))
    with pact.serve() as srv, _client(srv.url) as client, pytest.raises(ApiError) as info:
        client.submit(model="mock-small", prompt="hello", max_tokens=0)
    assert info.value.code == "INVALID_PARAMS" and not info.value.retriable


@pytest.mark.req("CTR-1023")
def test_unknown_task(pact: Any) -> None:
    body = {"error": {**ERROR["error"], "code": match.str("TASK_NOT_FOUND")}}
    (pact.upon_receiving("a request for an unknown task")
     .with_request("GET", "/v1/tasks/pact-no-such-task").with_header("X-Llorch-Tenant", PACT_TENANT)
     .will_respond_with(404).with_body(body, content_type="application/json"))
    with pact.serve() as srv, _client(srv.url) as client, pytest.raises(ApiError) as info:
        client.get_task("pact-no-such-task")
    assert info.value.status == 404 and info.value.code == "TASK_NOT_FOUND"


@pytest.mark.req("CTR-1023")
def test_capabilities_and_pools(pact: Any) -> None:
    replica = {"replica_id": match.str("pool-a-r0"), "ready": match.bool(True), "total_slots": match.int(2),
               "free_slots": match.int(2), "engine": match.str("mock"), "engine_version": match.str("1.0.0"),
               "model_digest": match.regex("sha256:" + "0" * 64, regex=r"^sha256:[0-9a-f]{64}$")}
    pool = {"pool_id": match.str("pool-a"), "model": match.str("mock-small"), "engine": match.str("mock"),
            "ready": match.bool(True), "draining": match.bool(False), "total_slots": match.int(4),
            "free_slots": match.int(4), "generation": match.int(0), "replicas": match.each_like(replica)}
    (pact.upon_receiving("a capabilities request")
     .with_request("GET", "/v1/capabilities").with_header("X-Llorch-Tenant", PACT_TENANT)
     .will_respond_with(200)
     .with_body({"api_version": match.str("v1"), "queue_capacity": match.int(8),
                 "full_policy": match.regex("reject", regex=r"^(reject|drop-lru|shed-lower-priority)$"),
                 "max_tokens_limit": match.int(512), "models": match.each_like("mock-small"),
                 "pools": match.each_like(pool), "auth_required": match.bool(False)},
                content_type="application/json"))
    (pact.upon_receiving("a pools request")
     .with_request("GET", "/v1/pools").with_header("X-Llorch-Tenant", PACT_TENANT)
     .will_respond_with(200).with_body({"pools": match.each_like(pool)}, content_type="application/json"))
    with pact.serve() as srv, _client(srv.url) as client:
        caps = client.capabilities()
        pools = client.pools()
    assert caps["models"] == ["mock-small"] and pools[0].pool_id == "pool-a"
