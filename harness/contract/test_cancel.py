"""Cancel over the wire: race-free (no token after the answer), idempotent, typed for unknown tasks."""

from __future__ import annotations

from typing import Any

import pytest
from llorch.harness.streamcheck import check_task_stream, format_violations

CANCEL_GRACE_S = 2.0
LONG = 4000  # tokens: a task that cannot finish on its own within the test


def _long(api: Any, orchestrator: Any) -> int:
    limit = int(orchestrator.capabilities.get("max_tokens_limit") or LONG)
    return min(LONG, limit)


def _state(body: dict[str, Any]) -> str:
    return str(body.get("state", "")).lower()


@pytest.mark.req("STR-1027", "STR-1028", "STR-1029", "STR-1035")
def test_cancel_running_task_ends_its_stream(api: Any, orchestrator: Any) -> None:
    max_tokens = _long(api, orchestrator)
    sub = api.grpc_submit(max_tokens=max_tokens)
    col = api.collect(sub.task_id)
    try:
        assert col.wait_for(lambda evs: sum(e.WhichOneof("kind") == "token" for e in evs) >= 2), (
            f"no tokens streamed: {col.kinds()} {col.error}")
        resp = api.cancel(sub.task_id)
        assert resp.status_code == 200, f"[STR-1027] cancel answered {resp.status_code}: {resp.text}"
        assert _state(resp.json()) == "cancelled" and resp.json().get("task_id") == sub.task_id, (
            f"[STR-1027] cancel answer {resp.json()}")
        # what the target had emitted when its answer arrived; the stream may deliver no more
        at_answer = api.get_task(sub.task_id).get("tokens_out")
        assert col.wait_done(CANCEL_GRACE_S), (
            f"[STR-1028] tokens kept coming {CANCEL_GRACE_S}s after the cancel answer "
            f"({col.kinds().count('token')} so far)")
    finally:
        col.close()
    events = col.checked()
    violations = check_task_stream(events)
    assert not violations, format_violations(violations)
    last = events[-1]
    assert last.kind == "cancelled" and last.reason == "client", (
        f"[STR-1028] [STR-1029] the stream ended with {last.kind} {last.reason!r}, not cancelled/client")
    streamed = sum(e.count for e in events if e.kind == "token")
    assert streamed < max_tokens, "[STR-1028] the cancelled task streamed to max_tokens"
    assert streamed == at_answer, (
        f"[STR-1028] [STR-1035] {streamed} tokens streamed, Task.tokens_out was {at_answer} right after the "
        "cancel answer")
    task = api.get_task(sub.task_id)
    assert _state(task) == "cancelled", f"[STR-1027] task state after cancel: {task.get('state')}"
    assert task.get("tokens_out") == streamed, (
        f"[STR-1035] Task.tokens_out {task.get('tokens_out')} but the stream delivered {streamed}")


@pytest.mark.req("STR-1030")
def test_cancel_is_idempotent(api: Any, orchestrator: Any) -> None:
    task = api.submit_ok(max_tokens=_long(api, orchestrator))
    first = api.cancel(task["task_id"])
    assert first.status_code == 200, first.text
    events_before = api.sse_events(task["task_id"])
    second = api.cancel(task["task_id"])
    assert second.status_code == 200, f"[STR-1030] repeated cancel answered {second.status_code}"
    assert _state(second.json()) == _state(first.json()), f"[STR-1030] {first.json()} vs {second.json()}"
    assert api.sse_events(task["task_id"]) == events_before, "[STR-1030] a repeated cancel added events"


@pytest.mark.req("STR-1031")
def test_cancel_after_the_end_changes_nothing(api: Any) -> None:
    task = api.submit_ok(max_tokens=3)
    events = api.sse_events(task["task_id"])
    assert events and events[-1].kind == "end", f"task did not complete: {events}"
    resp = api.cancel(task["task_id"])
    assert resp.status_code == 200, f"[STR-1031] cancel of a finished task: {resp.status_code}"
    assert _state(resp.json()) == "completed", f"[STR-1031] {resp.json()}"
    assert api.sse_events(task["task_id"]) == events, "[STR-1031] cancel changed a finished task's events"


@pytest.mark.req("STR-1032")
def test_cancel_unknown_task(api: Any) -> None:
    resp = api.cancel("conform-no-such-task")
    assert resp.status_code == 404, f"[STR-1032] status {resp.status_code}"
    assert resp.json()["error"]["code"] == "TASK_NOT_FOUND", f"[STR-1032] {resp.text}"
