"""Black-box properties of the queue and the task lifecycle, driven over HTTP.

Rules are wire calls (submit with random priorities and sizes, cancel, reload); a tiny model keeps
what was accepted and acknowledged; at the end of each run every accepted task is streamed to its
terminal event and checked. Hypothesis runs with the bounded CI profile (``llorch-ci``) or the soak
profile (``LLORCH_HYPOTHESIS=llorch-soak``); over the network there is no per-example deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from llorch.harness.plugin import hypothesis_settings
from llorch.harness.streamcheck import check_task_stream, format_violations

PRIORITIES = ("high", "normal", "low")
TERMINAL_STATES = {"completed", "cancelled", "failed", "expired"}
MAX_FILL = 256  # a queue larger than this is not filled in CI


def single_slot_pool(orchestrator: Any) -> dict[str, Any] | None:
    """The conformance configuration's one-slot pool (``pool-single``), if the target has one."""
    pools = [p for p in orchestrator.capabilities.get("pools") or [] if int(p.get("total_slots", 0)) == 1]
    named = [p for p in pools if p.get("pool_id") == "pool-single"]
    return (named or pools or [None])[0]


def long_max_tokens(orchestrator: Any) -> int:
    return min(4000, int(orchestrator.capabilities.get("max_tokens_limit") or 4000))


@dataclass
class Accepted:
    task_id: str
    priority: str
    position: int
    cancel_ack: str | None = None
    tokens_at_ack: int | None = None
    events: list[Any] = field(default_factory=list)


@pytest.mark.req("QUE-1001", "QUE-1009", "STR-1001", "STR-1002", "STR-1029", "STR-1035")
def test_queue_state_machine(api: Any, orchestrator: Any) -> None:
    capacity = int(orchestrator.capabilities.get("queue_capacity") or 0)
    pool = single_slot_pool(orchestrator)
    pinned: dict[str, Any] = {}
    if pool:
        pinned = {"placement": {"pin_pool": pool["pool_id"]}, "model": pool["model"]}

    class QueueMachine(RuleBasedStateMachine):
        tasks = Bundle("tasks")

        @initialize()
        def start(self) -> None:
            self.accepted: list[Accepted] = []

        @rule(target=tasks, priority=st.sampled_from(PRIORITIES), max_tokens=st.integers(1, 6))
        def submit(self, priority: str, max_tokens: int) -> Accepted | None:
            resp = api.submit(priority=priority, max_tokens=max_tokens, **pinned)
            if resp.status_code == 429:
                assert resp.json()["error"]["code"] == "ADMISSION_REJECT", resp.text
                return None
            assert resp.status_code == 202, f"submit answered {resp.status_code}: {resp.text[:200]}"
            body = resp.json()
            if capacity:
                assert body["queue_position"] < capacity, (
                    f"[QUE-1009] queue_position {body['queue_position']}")
            task = Accepted(body["task_id"], priority, body["queue_position"])
            self.accepted.append(task)
            return task

        @rule(task=tasks)
        def cancel(self, task: Accepted | None) -> None:
            if task is None or task.cancel_ack is not None:
                return
            resp = api.cancel(task.task_id)
            assert resp.status_code == 200, f"cancel of an accepted task answered {resp.status_code}"
            task.cancel_ack = str(resp.json().get("state", "")).lower()
            task.tokens_at_ack = int(api.get_task(task.task_id).get("tokens_out") or 0)

        @invariant()
        def accepted_tasks_exist(self) -> None:
            for task in getattr(self, "accepted", [])[-3:]:
                resp = api.request("GET", f"/v1/tasks/{task.task_id}")
                assert resp.status_code == 200, f"[QUE-1001] accepted task {task.task_id} is unknown"

        def teardown(self) -> None:
            for task in getattr(self, "accepted", []):
                events = api.sse_events(task.task_id)
                violations = check_task_stream(events)
                assert not violations, f"task {task.task_id}: " + format_violations(violations)
                state = str(api.get_task(task.task_id).get("state", "")).lower()
                assert state in TERMINAL_STATES, f"[QUE-1001] task {task.task_id} ended in state {state!r}"
                if task.cancel_ack == "cancelled":
                    streamed = sum(e.count for e in events if e.kind == "token")
                    assert events[-1].kind == "cancelled" and events[-1].reason == "client", (
                        f"[STR-1029] acknowledged cancel ended {events[-1]}")
                    assert streamed == task.tokens_at_ack, (
                        f"[STR-1035] {streamed} tokens streamed, {task.tokens_at_ack} at the cancel answer")

    run_state_machine_as_test(QueueMachine, settings=hypothesis_settings())


@pytest.mark.req("QUE-1005")
def test_fifo_within_a_priority_on_a_single_slot(api: Any, orchestrator: Any) -> None:
    pool = single_slot_pool(orchestrator)
    if pool is None:
        pytest.skip("the target has no single-slot pool (conformance configuration: pool-single)")
    pinned = {"placement": {"pin_pool": pool["pool_id"]}, "model": pool["model"]}

    @hypothesis_settings()
    @given(st.lists(st.sampled_from(PRIORITIES), min_size=2, max_size=6))
    def check(priorities: list[str]) -> None:
        blocker = api.submit_ok(max_tokens=long_max_tokens(orchestrator), **pinned)
        col = api.collect(blocker["task_id"])
        try:
            assert col.wait_for(lambda evs: any(e.WhichOneof("kind") == "started" for e in evs)), (
                "the blocking task never started")
            queued = [(p, api.submit_ok(priority=p, max_tokens=1, **pinned)["task_id"])
                      for p in priorities]
        finally:
            api.cancel(blocker["task_id"])
            col.close()
        for prio in PRIORITIES:
            same = [tid for p, tid in queued if p == prio]
            stamps = [_started_ms(api, tid) for tid in same]
            assert stamps == sorted(stamps), f"[QUE-1005] {prio} tasks started out of submit order: {stamps}"

    check()


def _started_ms(api: Any, task_id: str) -> int:
    for ev in api.grpc_events(task_id):
        if ev.WhichOneof("kind") == "started":
            return int(ev.timestamp_ms)
    raise AssertionError(f"task {task_id} has no started event")


@pytest.mark.req("QUE-1001", "QUE-1009", "QUE-1011")
def test_overload_loses_no_accepted_task(api: Any, orchestrator: Any) -> None:
    caps = orchestrator.capabilities
    capacity = int(caps.get("queue_capacity") or 0)
    if not capacity or capacity > MAX_FILL:
        pytest.skip(f"queue_capacity {capacity} is too large to fill in CI (conformance configuration)")
    slots = sum(int(p.get("total_slots", 0)) for p in caps.get("pools") or [] if p.get("model") == api.model)
    accepted: list[str] = []
    refused: list[Any] = []
    try:
        for _ in range(capacity + slots + 2):
            resp = api.submit(max_tokens=long_max_tokens(orchestrator))
            if resp.status_code == 202:
                accepted.append(resp.json()["task_id"])
            else:
                refused.append(resp)
    finally:
        unknown = [tid for tid in accepted if api.cancel(tid).status_code == 404]
    assert not unknown, f"[QUE-1001] {len(unknown)} accepted tasks are unknown to the target: {unknown[:3]}"
    for tid in accepted:
        state = str(api.get_task(tid).get("state", "")).lower()
        assert state in TERMINAL_STATES, f"[QUE-1001] task {tid} in state {state!r} after cancel"
    assert refused, (
        f"[QUE-1009] {len(accepted)} tasks accepted with queue_capacity {capacity} and {slots} slots")
    if caps.get("full_policy") == "reject":
        err = refused[0]
        assert err.status_code == 429, f"[QUE-1011] overload answered {err.status_code}"
        body = err.json()["error"]
        got = (body["code"], body["retriable"], body["policy_label"])
        assert got == ("ADMISSION_REJECT", True, "queue.reject"), f"[QUE-1011] {body}"
