"""The event-stream contract over gRPC ``StreamEvents`` and SSE ``/v1/tasks/{id}/events``."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from llorch.harness.clients import error_detail, event_from_proto, message_json
from llorch.harness.streamcheck import check_task_stream, format_violations

from llorch.proto import common_pb2

GRAMMAR = ("STR-1001", "STR-1002", "STR-1003", "STR-1004", "STR-1005", "STR-1006")


@pytest.mark.req(*GRAMMAR, "STR-1007", "STR-1009")
@pytest.mark.parametrize("max_tokens", [1, 16])
def test_grpc_stream_follows_the_grammar(api: Any, max_tokens: int) -> None:
    sub = api.grpc_submit(max_tokens=max_tokens)
    events = api.grpc_events(sub.task_id)
    violations = check_task_stream([event_from_proto(e) for e in events])
    assert not violations, format_violations(violations)
    assert all(e.task_id == sub.task_id for e in events), "[STR-1007] an event lacks its task_id"
    stamps = [e.timestamp_ms for e in events]
    assert stamps == sorted(stamps), f"[STR-1007] timestamp_ms decreases: {stamps}"
    end = events[-1]
    if end.WhichOneof("kind") == "end":
        expected = "length" if end.end.tokens_out == max_tokens else "stop"
        assert end.end.finish_reason == expected, (
            f"[STR-1009] finish_reason {end.end.finish_reason!r} "
            f"with {end.end.tokens_out}/{max_tokens} tokens")


@pytest.mark.req(*GRAMMAR, "STR-1012", "STR-1013", "STR-1014")
def test_sse_stream_follows_the_grammar(api: Any) -> None:
    task = api.submit_ok(max_tokens=12)
    with api.http.stream("GET", f"/v1/tasks/{task['task_id']}/events", headers=api.headers) as resp:
        assert resp.status_code == 200, f"[STR-1012] status {resp.status_code}"
        assert resp.headers.get("content-type", "").startswith("text/event-stream"), (
            f"[STR-1012] content-type {resp.headers.get('content-type')!r}")
        raw = resp.read().decode()  # STR-1014: read() returns only once the server closes
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip() and not b.startswith(":")]
    names = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        assert {"id", "event", "data"} <= set(fields), f"[STR-1012] SSE block missing fields: {block!r}"
        data = json.loads(fields["data"])
        assert isinstance(data, dict) and data.get("task_id") == task["task_id"], f"[STR-1012] data {data!r}"
        assert data.get("seq") == int(fields["id"]) and isinstance(data.get("timestamp_ms"), int), (
            f"[STR-1012] id: {fields['id']} with data {data!r}")
        names.append(fields["event"])
    assert set(names) <= {"queued", "started", "token", "end", "error", "cancelled"}, f"[STR-1013] {names}"
    events = api.sse_events(task["task_id"])
    violations = check_task_stream(events)
    assert not violations, format_violations(violations)


@pytest.mark.req("STR-1016")
def test_grpc_and_sse_agree(api: Any) -> None:
    sub = api.grpc_submit(max_tokens=10)
    grpc_events = [event_from_proto(e) for e in api.grpc_events(sub.task_id)]
    sse_events = api.sse_events(sub.task_id)
    assert grpc_events == sse_events, f"[STR-1016] gRPC {grpc_events} != SSE {sse_events}"


@pytest.mark.req("STR-1019", "STR-1021")
def test_resume_and_replay_from_seq(api: Any) -> None:
    sub = api.grpc_submit(max_tokens=8)
    full = api.grpc_events(sub.task_id)
    assert full, "no events"
    again = api.grpc_events(sub.task_id)
    assert [message_json(e) for e in again] == [message_json(e) for e in full], (
        "[STR-1021] replay of a terminal task differs from its stream")
    n = len(full) // 2
    tail = api.grpc_events(sub.task_id, from_seq=n)
    assert [e.seq for e in tail] == [e.seq for e in full if e.seq >= n], "[STR-1019] wrong resumed window"
    violations = check_task_stream([event_from_proto(e) for e in tail], from_seq=n)
    assert not violations, format_violations(violations)


@pytest.mark.req("STR-1020")
def test_sse_last_event_id_resumes(api: Any) -> None:
    task = api.submit_ok(max_tokens=6)
    full = api.sse_events(task["task_id"])
    resumed = api.sse_events(task["task_id"], last_event_id=1)
    assert resumed and resumed[0].seq == 2, f"[STR-1020] resumed at {resumed[0].seq if resumed else None}"
    assert resumed == full[2:], "[STR-1020] resumed stream differs from the original tail"


@pytest.mark.req("STR-1008", "STR-1010")
def test_started_and_task_record_agree_with_the_stream(api: Any) -> None:
    sub = api.grpc_submit(max_tokens=5)
    events = api.grpc_events(sub.task_id)
    started = [e.started for e in events if e.WhichOneof("kind") == "started"]
    assert started, "no started event"
    s = started[0]
    assert s.pool_id and s.replica_id and s.engine and s.engine_version, f"[STR-1008] started: {s}"
    end = events[-1]
    assert end.WhichOneof("kind") == "end", f"task did not complete: {end}"
    task = api.grpc_task(sub.task_id)
    assert (task.tokens_in, task.tokens_out, task.finish_reason) == (
        end.end.tokens_in, end.end.tokens_out, end.end.finish_reason), f"[STR-1010] {task} vs {end.end}"


@pytest.mark.req("STR-1017")
def test_unknown_task_stream_is_not_found(api: Any) -> None:
    resp = api.request("GET", "/v1/tasks/conform-no-such-task/events")
    assert resp.status_code == 404, f"[STR-1017] SSE status {resp.status_code}"
    assert resp.json()["error"]["code"] == "TASK_NOT_FOUND", f"[STR-1017] {resp.text}"
    with pytest.raises(grpc.RpcError) as info:
        api.grpc_events("conform-no-such-task")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, f"[STR-1017] gRPC {info.value.code()}"
    detail = error_detail(info.value)
    assert detail is not None and detail.code == common_pb2.TASK_NOT_FOUND, f"[STR-1017] {detail}"
