"""Step definitions of the journeys in ``features/``; every step does real work on the target."""

from __future__ import annotations

import math
from typing import Any

import pytest
from llorch.harness.clients import EventCollector, TenantClient, new_tenant
from llorch.harness.streamcheck import check_task_stream, format_violations
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("features")

CANCEL_GRACE_S = 2.0


@pytest.fixture
def ctx() -> dict[str, Any]:
    """What a scenario's steps hand each other."""
    return {"cleanup": []}


@pytest.fixture(autouse=True)
def _cancel_leftovers(ctx: dict[str, Any]) -> Any:
    yield
    for client, task_id in ctx["cleanup"]:
        client.cancel(task_id)
    for col in ctx.get("collectors", []):
        col.close()


def _single(orchestrator: Any) -> dict[str, Any]:
    pools = [p for p in orchestrator.capabilities.get("pools") or [] if int(p.get("total_slots", 0)) == 1]
    named = [p for p in pools if p.get("pool_id") == "pool-single"]
    if not (named or pools):
        pytest.skip("the target has no single-slot pool (conformance configuration: pool-single)")
    return (named or pools)[0]


def _long(orchestrator: Any) -> int:
    return min(4000, int(orchestrator.capabilities.get("max_tokens_limit") or 4000))


def _pinned(pool: dict[str, Any]) -> dict[str, Any]:
    return {"model": pool["model"], "placement": {"pin_pool": pool["pool_id"]}}


# ---- given ---------------------------------------------------------------------------------


@given("a tenant of its own", target_fixture="client")
def a_tenant(api: TenantClient) -> TenantClient:
    return api


@given("the single-slot pool is busy with a long task")
def single_pool_busy(client: TenantClient, orchestrator: Any, ctx: dict[str, Any]) -> None:
    pool = _single(orchestrator)
    ctx["pool"] = pool
    task = client.submit_ok(max_tokens=_long(orchestrator), **_pinned(pool))
    ctx["cleanup"].append((client, task["task_id"]))
    col = client.collect(task["task_id"])
    ctx.setdefault("collectors", []).append(col)
    assert col.wait_for(lambda evs: any(e.WhichOneof("kind") == "started" for e in evs)), (
        f"the blocking task never started: {col.kinds()}")


@given(parsers.parse("a session with {turns:d} turns"))
def a_session(client: TenantClient, ctx: dict[str, Any], turns: int) -> None:
    resp = client.request("POST", "/v1/sessions", json={"ttl_ms": 600_000, "max_turns": turns})
    assert resp.status_code == 201, f"[ADM-1028] session create answered {resp.status_code}: {resp.text}"
    session = resp.json()
    assert session["turns_used"] == 0 and session["max_turns"] == turns and session["tokens_used"] == 0, (
        f"[ADM-1028] {session}")
    assert session.get("session_id") and session.get("tenant") == client.tenant, f"[ADM-1028] {session}"
    assert int(session.get("expires_ms") or 0) > 0, f"[ADM-1028] no expires_ms: {session}"
    ctx["session"] = session


# ---- when ----------------------------------------------------------------------------------


@when(parsers.parse("the tenant submits a task of {n:d} tokens"))
def submit_n(client: TenantClient, ctx: dict[str, Any], n: int) -> None:
    ctx["n"] = n
    ctx["response"] = client.submit(max_tokens=n)


@when("the tenant follows its events over SSE")
def follow_sse(client: TenantClient, ctx: dict[str, Any]) -> None:
    assert ctx["response"].status_code == 202, ctx["response"].text
    ctx["events"] = client.sse_events(ctx["response"].json()["task_id"])


@when("the tenant fills the queue behind it")
def fill_queue(client: TenantClient, orchestrator: Any, ctx: dict[str, Any]) -> None:
    capacity = int(orchestrator.capabilities.get("queue_capacity") or 0)
    if not 0 < capacity <= 256:
        pytest.skip(f"queue_capacity {capacity} is too large to fill (conformance configuration)")
    pool = ctx["pool"]
    accepted = []
    refused = None
    for _ in range(capacity + 1):
        resp = client.submit(max_tokens=8, **_pinned(pool))
        if resp.status_code == 202:
            accepted.append(resp.json()["task_id"])
            ctx["cleanup"].append((client, accepted[-1]))
        else:
            refused = resp
            break
    ctx["accepted"] = accepted
    ctx["refused"] = refused if refused is not None else client.submit(max_tokens=8, **_pinned(pool))


@when("the tenant submits a long task and it starts streaming")
def long_task_streaming(client: TenantClient, orchestrator: Any, ctx: dict[str, Any]) -> None:
    sub = client.grpc_submit(max_tokens=_long(orchestrator))
    ctx["task_id"] = sub.task_id
    ctx["cleanup"].append((client, sub.task_id))
    col: EventCollector = client.collect(sub.task_id)
    ctx.setdefault("collectors", []).append(col)
    ctx["collector"] = col
    assert col.wait_for(lambda evs: any(e.WhichOneof("kind") == "token" for e in evs)), col.kinds()


@when("the tenant cancels it")
def cancel_it(client: TenantClient, ctx: dict[str, Any]) -> None:
    resp = client.cancel(ctx["task_id"])
    assert resp.status_code == 200, f"[STR-1027] cancel answered {resp.status_code}"
    # what the target had emitted when its answer arrived: the stream may deliver no more (STR-1028)
    ctx["tokens_at_answer"] = client.get_task(ctx["task_id"]).get("tokens_out")


@when("the tenant queues a task behind it and cancels it")
def queue_and_cancel(client: TenantClient, ctx: dict[str, Any]) -> None:
    task = client.submit_ok(max_tokens=4, **_pinned(ctx["pool"]))
    ctx["task_id"] = task["task_id"]
    resp = client.cancel(task["task_id"])
    assert resp.status_code == 200 and str(resp.json()["state"]).lower() == "cancelled", (
        f"[QUE-1017] cancel of a queued task: {resp.status_code} {resp.text}")


@when("the operator reloads the single-slot pool with its own model")
def reload_same(client: TenantClient, orchestrator: Any, ctx: dict[str, Any]) -> None:
    pool = _single(orchestrator)
    ctx["pool"] = pool
    ctx["before"] = client.request("GET", f"/v1/pools/{pool['pool_id']}").json()
    ctx["reload"] = client.request("POST", f"/v1/pools/{pool['pool_id']}/reload",
                                   json={"model": pool["model"]})


@when(parsers.parse('the operator reloads the single-slot pool with model "{model}"'))
def reload_other(client: TenantClient, orchestrator: Any, ctx: dict[str, Any], model: str) -> None:
    pool = _single(orchestrator)
    ctx["pool"] = pool
    ctx["before"] = client.request("GET", f"/v1/pools/{pool['pool_id']}").json()
    ctx["reload"] = client.request("POST", f"/v1/pools/{pool['pool_id']}/reload", json={"model": model})


@when(parsers.parse('the operator drains pool "{pool_id}"'))
def drain(client: TenantClient, orchestrator: Any, ctx: dict[str, Any], pool_id: str) -> None:
    ids = [p["pool_id"] for p in orchestrator.capabilities.get("pools") or []]
    if pool_id not in ids:
        pytest.skip(f"the target has no pool {pool_id!r} (conformance configuration)")
    resp = client.request("POST", f"/v1/pools/{pool_id}/drain", json={"deadline_ms": 1000})
    assert resp.status_code == 200, f"[POOL-1015] drain answered {resp.status_code}: {resp.text}"


@when(parsers.parse("the tenant submits {n:d} tasks in the session"))
def submit_in_session(client: TenantClient, ctx: dict[str, Any], n: int) -> None:
    for _ in range(n):
        task = client.submit_ok(max_tokens=2, session_id=ctx["session"]["session_id"])
        client.sse_events(task["task_id"])


@when("the tenant lists the pools")
def list_pools(client: TenantClient, ctx: dict[str, Any]) -> None:
    resp = client.request("GET", "/v1/pools")
    assert resp.status_code == 200, f"[POOL-1001] GET /v1/pools: {resp.status_code} {resp.text[:200]}"
    ctx["pools"] = resp.json()["pools"]


# ---- then ----------------------------------------------------------------------------------


@then("the answer is 202 with a task id and a Location header")
def accepted_202(ctx: dict[str, Any]) -> None:
    resp = ctx["response"]
    assert resp.status_code == 202, f"[ADM-1001] {resp.status_code}: {resp.text}"
    body = resp.json()
    fields = {"task_id", "queue_position", "predicted_start_ms", "correlation_id"}
    assert fields <= set(body), f"[ADM-1001] {body}"
    assert resp.headers.get("location", "").endswith(f"/v1/tasks/{body['task_id']}"), (
        f"[ADM-1002] Location {resp.headers.get('location')!r}")


@then("the task can be read back in a state at least queued")
def read_back(client: TenantClient, ctx: dict[str, Any]) -> None:
    task = client.get_task(ctx["response"].json()["task_id"])
    states = {"queued", "dispatched", "streaming", "completed"}
    assert str(task["state"]).lower() in states, f"[ADM-1004] {task}"


@then("the next submit is answered 429 with Retry-After and X-Backoff-Ms")
def answered_429(ctx: dict[str, Any]) -> None:
    resp = ctx["refused"]
    assert resp.status_code == 429, f"[QUE-1011] a full queue answered {resp.status_code}: {resp.text[:200]}"
    err = resp.json()["error"]
    assert err["code"] == "ADMISSION_REJECT" and err["policy_label"] == "queue.reject", f"[QUE-1011] {err}"
    assert err["retriable"] is True and err["retry_after_ms"] > 0, f"[ERR-1021] {err}"
    assert resp.headers.get("retry-after") == str(math.ceil(err["retry_after_ms"] / 1000)), (
        f"[ERR-1019] Retry-After {resp.headers.get('retry-after')!r} for {err['retry_after_ms']} ms")
    assert resp.headers.get("x-backoff-ms") == str(err["retry_after_ms"]), (
        f"[ERR-1019] X-Backoff-Ms {resp.headers.get('x-backoff-ms')!r}")


@then("every accepted task is still queued")
def accepted_still_queued(client: TenantClient, ctx: dict[str, Any]) -> None:
    assert ctx["accepted"], "[QUE-1011] the queue took no task before refusing"
    for task_id in ctx["accepted"]:
        state = str(client.get_task(task_id)["state"]).lower()
        assert state == "queued", f"[QUE-1011] accepted {task_id} is {state!r} after the 429, not queued"


@then(parsers.parse("the stream is well formed and ends with an end event counting {n:d} tokens"))
def stream_ends(ctx: dict[str, Any], n: int) -> None:
    events = ctx["events"]
    violations = check_task_stream(events)
    assert not violations, format_violations(violations)
    assert events[-1].kind == "end" and events[-1].tokens_out == n, f"[STR-1006] {events[-1]}"


@then("the stream ends with a cancelled event of reason client")
def stream_cancelled(ctx: dict[str, Any]) -> None:
    col: EventCollector = ctx["collector"]
    assert col.wait_done(CANCEL_GRACE_S), "[STR-1028] tokens kept coming after the cancel answer"
    events = col.checked()
    assert not check_task_stream(events), format_violations(check_task_stream(events))
    assert events[-1].kind == "cancelled" and events[-1].reason == "client", f"[STR-1029] {events[-1]}"
    streamed = sum(e.count for e in events if e.kind == "token")
    assert streamed == ctx["tokens_at_answer"], (
        f"[STR-1028] {streamed} tokens streamed, {ctx['tokens_at_answer']} emitted at the cancel answer")


@then("that task's stream is queued then cancelled and it never started")
def queued_then_cancelled(client: TenantClient, ctx: dict[str, Any]) -> None:
    events = client.sse_events(ctx["task_id"])
    kinds = [e.kind for e in events]
    assert kinds == ["queued", "cancelled"] and events[-1].reason == "client", f"[QUE-1017] {kinds}"
    assert str(client.get_task(ctx["task_id"])["state"]).lower() == "cancelled", "[QUE-1017] state"


@then("the reload succeeds with a generation one higher")
def reload_ok(ctx: dict[str, Any]) -> None:
    resp = ctx["reload"]
    assert resp.status_code == 200, f"[POOL-1020] reload answered {resp.status_code}: {resp.text}"
    body = resp.json()
    assert body["success"] is True and body["rolled_back"] is False, f"[POOL-1020] {body}"
    assert body["generation"] == ctx["before"]["generation"] + 1, f"[POOL-1020] {body} after {ctx['before']}"


@then("a task pinned to the single-slot pool still completes")
def pinned_completes(client: TenantClient, ctx: dict[str, Any]) -> None:
    task = client.submit_ok(max_tokens=3, **_pinned(ctx["pool"]))
    events = client.sse_events(task["task_id"])
    assert events[-1].kind == "end", f"[POOL-1020] after the reload the task ended {events[-1]}"


@then("the reload fails and the pool keeps its model and generation")
def reload_failed(client: TenantClient, ctx: dict[str, Any]) -> None:
    resp = ctx["reload"]
    assert resp.status_code == 200, f"[POOL-1025] reload answered {resp.status_code}: {resp.text}"
    assert resp.json()["success"] is False, f"[POOL-1025] {resp.json()}"
    after = client.request("GET", f"/v1/pools/{ctx['pool']['pool_id']}").json()
    assert (after["model"], after["generation"]) == (ctx["before"]["model"], ctx["before"]["generation"]), (
        f"[POOL-1025] pool changed: {ctx['before']} -> {after}")


@then(parsers.parse('pool "{pool_id}" reports draining'))
def reports_draining(client: TenantClient, pool_id: str) -> None:
    pool = client.request("GET", f"/v1/pools/{pool_id}").json()
    assert pool["draining"] is True and pool["ready"] is False, f"[POOL-1015] {pool}"


@then(parsers.parse('a task pinned to pool "{pool_id}" is refused with 503 POOL_UNREADY'))
def pinned_refused(client: TenantClient, pool_id: str) -> None:
    resp = client.submit(max_tokens=2, placement={"pin_pool": pool_id})
    assert resp.status_code == 503, f"[SCH-1015] [SCH-1013] submit to a draining pool: {resp.status_code}"
    assert resp.json()["error"]["code"] == "POOL_UNREADY", f"[SCH-1013] {resp.text}"


@then(parsers.parse("the session reports {n:d} turns used"))
def turns_used(client: TenantClient, ctx: dict[str, Any], n: int) -> None:
    session = client.request("GET", f"/v1/sessions/{ctx['session']['session_id']}").json()
    assert session["turns_used"] == n, f"[ADM-1030] {session}"


@then("another submit in the session is answered 409 SESSION_EXPIRED")
def session_exhausted(client: TenantClient, ctx: dict[str, Any]) -> None:
    resp = client.submit(max_tokens=2, session_id=ctx["session"]["session_id"])
    assert resp.status_code == 409, f"[ADM-1031] {resp.status_code}: {resp.text[:200]}"
    assert resp.json()["error"]["code"] == "SESSION_EXPIRED", f"[ADM-1031] {resp.text[:200]}"


@then("another tenant can neither read, use nor delete the session")
def other_tenant_session(client: TenantClient, ctx: dict[str, Any]) -> None:
    other = client.for_tenant(new_tenant("other"))
    resp = other.request("GET", f"/v1/sessions/{ctx['session']['session_id']}")
    assert resp.status_code == 404, f"[ADM-1036] {resp.status_code}"
    assert resp.json()["error"]["code"] == "SESSION_NOT_FOUND", f"[ADM-1036] {resp.text[:200]}"
    used = other.submit(max_tokens=2, session_id=ctx["session"]["session_id"])
    assert used.status_code == 404 and used.json()["error"]["code"] == "SESSION_NOT_FOUND", (
        f"[ADM-1036] another tenant submitted in the session: {used.status_code} {used.text[:200]}")
    gone = other.request("DELETE", f"/v1/sessions/{ctx['session']['session_id']}")
    assert gone.status_code == 404, f"[ADM-1036] another tenant deleted the session: {gone.status_code}"
    mine = client.request("GET", f"/v1/sessions/{ctx['session']['session_id']}")
    assert mine.status_code == 200 and mine.json()["turns_used"] == 0, f"[ADM-1036] {mine.text[:200]}"


@then("the task reports the tenant")
def reports_tenant(client: TenantClient, ctx: dict[str, Any]) -> None:
    task = client.get_task(ctx["response"].json()["task_id"])
    assert task["tenant"] == client.tenant, f"[ADM-1019] tenant {task['tenant']!r}, sent {client.tenant!r}"


@then("another tenant neither lists nor reads the task")
def other_tenant_blind(client: TenantClient, ctx: dict[str, Any]) -> None:
    task_id = ctx["response"].json()["task_id"]
    other = client.for_tenant(new_tenant("other"))
    listed = [t["task_id"] for t in other.request("GET", "/v1/tasks").json()["tasks"]]
    assert task_id not in listed, "[ADM-1020] another tenant lists the task"
    resp = other.request("GET", f"/v1/tasks/{task_id}")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "TASK_NOT_FOUND", (
        f"[ADM-1022] another tenant read the task: {resp.status_code}")


@then("every pool of the capabilities is listed with its fields and replicas")
def pools_listed(orchestrator: Any, ctx: dict[str, Any]) -> None:
    announced = {p["pool_id"] for p in orchestrator.capabilities.get("pools") or []}
    listed = {p["pool_id"]: p for p in ctx["pools"]}
    assert announced and announced <= set(listed), f"[POOL-1001] {sorted(listed)} vs {announced}"
    fields = {"pool_id", "model", "engine", "ready", "draining", "total_slots", "free_slots", "generation",
              "replicas"}
    for pool in listed.values():
        assert fields <= set(pool), f"[POOL-1001] {pool['pool_id']} lacks {sorted(fields - set(pool))}"
        assert pool["replicas"], f"[POOL-1001] {pool['pool_id']} lists no replica"
        assert pool["total_slots"] == sum(r["total_slots"] for r in pool["replicas"]), f"[POOL-1001] {pool}"
