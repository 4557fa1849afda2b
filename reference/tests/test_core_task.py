"""The task state machine: one terminal state, forward moves only, timestamps, the record."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llorch.reference.core.task import TRANSITIONS, InvalidTransition, Task
from llorch.reference.core.types import TERMINAL_STATES, TaskRequest, TaskState
from llorch.reference.errors import ErrorCode, ErrorInfo, InternalError

ORDER = [TaskState.QUEUED, TaskState.DISPATCHED, TaskState.STREAMING]


def make_task(created_ms: int = 1_000, deadline_ms: int = 0) -> Task:
    return Task("t1", TaskRequest(model="m", prompt="p", max_tokens=4, deadline_ms=deadline_ms),
                tenant="acme", created_ms=created_ms)


def apply(task: Task, op: str, now_ms: int) -> None:
    """One named transition, as the runtime would call it."""
    if op == "dispatch":
        task.dispatch(now_ms, "pool-a", "r0")
    elif op == "start":
        task.start(now_ms, tokens_in=3)
    elif op == "complete":
        task.complete(now_ms, "stop")
    elif op == "cancel":
        task.cancel(now_ms, "client")
    elif op == "fail":
        task.fail(now_ms, ErrorInfo(ErrorCode.ENGINE_ERROR, "boom"))
    elif op == "expire":
        task.expire(now_ms)
    elif op == "requeue":
        task.requeue(now_ms)
    else:  # pragma: no cover
        raise AssertionError(op)


OPS = ["dispatch", "start", "complete", "cancel", "fail", "expire", "requeue"]


@pytest.mark.req("QUE-1001", "QUE-1250")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10_000)), max_size=12))
def test_random_transitions_reach_at_most_one_terminal_state_and_never_leave_it(steps):
    task = make_task()
    seen: list[TaskState] = [task.state]
    for op, now in steps:
        before = task.state
        try:
            apply(task, op, now)
        except InvalidTransition as exc:
            assert exc.current is before
            assert task.state is before  # a refused move changes nothing
            assert exc.target not in TRANSITIONS[before]
            continue
        assert task.state in TRANSITIONS[before]
        seen.append(task.state)
    terminals = [s for s in seen if s in TERMINAL_STATES]
    assert len(terminals) <= 1
    if terminals:
        assert seen[-1] == terminals[0]  # absorbing: nothing after it
    # forward only, but for the requeue (dispatched → queued), and never back once started
    live = [s for s in seen if s not in TERMINAL_STATES]
    assert live[0] is TaskState.QUEUED
    for before, after in itertools.pairwise(live):
        forward = ORDER.index(after) == ORDER.index(before) + 1
        assert forward or (before, after) == (TaskState.DISPATCHED, TaskState.QUEUED)
    if TaskState.STREAMING in live:
        assert TaskState.QUEUED not in live[live.index(TaskState.STREAMING):]


@pytest.mark.req("QUE-1001")
@pytest.mark.parametrize("finish", ["complete", "cancel", "fail"])
@pytest.mark.parametrize("op", OPS)
def test_every_move_out_of_a_terminal_state_raises(finish, op):
    task = make_task()
    if finish == "complete":
        apply(task, "dispatch", 1_001)
        apply(task, "start", 1_002)
    apply(task, finish, 1_003)
    record = task.record()
    with pytest.raises(InvalidTransition) as info:
        apply(task, op, 1_004)
    assert isinstance(info.value, InternalError)
    assert task.record() == record


@pytest.mark.req("QUE-1003")
def test_finished_ms_is_zero_until_terminal_then_not_before_created():
    task = make_task(created_ms=5_000)
    assert task.record().finished_ms == 0
    task.dispatch(5_010, "pool-a", "r0")
    task.start(5_020)
    assert task.record().finished_ms == 0
    task.complete(4_000, "length")  # a clock that stepped back
    record = task.record()
    assert record.finished_ms >= record.created_ms
    assert record.finished_ms == 5_020


@pytest.mark.req("QUE-1004")
def test_complete_requires_stop_or_length():
    task = make_task()
    task.dispatch(1_001, "p", "r")
    task.start(1_002)
    with pytest.raises(ValueError):
        task.complete(1_003, "eos")
    assert task.state is TaskState.STREAMING
    task.complete(1_003, "stop", tokens_out=7)
    assert task.record().finish_reason == "stop"
    assert task.record().tokens_out == 7


def test_record_carries_placement_tokens_and_wait():
    task = make_task(created_ms=100)
    task.dispatch(130, "pool-a", "r1")
    task.start(140, tokens_in=9)
    task.add_tokens(2)
    task.add_tokens(3)
    record = task.record()
    assert (record.state, record.pool_id, record.replica_id) == (TaskState.STREAMING, "pool-a", "r1")
    assert (record.tokens_in, record.tokens_out) == (9, 5)
    assert task.queue_wait_ms == 30
    assert dict(task.timestamps) == {TaskState.QUEUED: 100, TaskState.DISPATCHED: 130,
                                     TaskState.STREAMING: 140}


def test_tokens_only_counted_while_streaming():
    task = make_task()
    with pytest.raises(InvalidTransition):
        task.add_tokens(1)
    assert task.tokens_out == 0


@pytest.mark.req("ADM-1026", "QUE-1019")
def test_expiry_only_from_queued_and_carries_deadline_unmet():
    task = make_task(created_ms=1_000, deadline_ms=50)
    assert task.deadline_at_ms == 1_050
    assert not task.overdue(1_049)
    assert task.overdue(1_050)
    task.expire(1_050)
    record = task.record()
    assert record.state is TaskState.EXPIRED
    assert record.error is not None and record.error.code is ErrorCode.DEADLINE_UNMET

    running = make_task(deadline_ms=50)
    running.dispatch(1_001, "p", "r")
    with pytest.raises(InvalidTransition):
        running.expire(1_060)


def test_no_deadline_is_never_overdue():
    assert make_task(deadline_ms=0).deadline_at_ms is None
    assert not make_task(deadline_ms=0).overdue(10**12)


def test_failed_record_keeps_the_error():
    task = make_task()
    error = ErrorInfo(ErrorCode.QUEUE_FULL_DROP_LRU, "dropped", retriable=True)
    task.fail(1_010, error)
    assert task.record().error == error
    assert task.record().state is TaskState.FAILED


@pytest.mark.req("QUE-1250", "POOL-1014", "SCH-1016")
def test_requeue_forgets_the_placement_and_only_undoes_a_dispatch():
    task = make_task(created_ms=100)
    task.dispatch(130, "pool-a", "r1")
    task.requeue(135)
    record = task.record()
    assert (record.state, record.pool_id, record.replica_id) == (TaskState.QUEUED, "", "")
    assert task.queue_wait_ms == 0 and TaskState.DISPATCHED not in task.timestamps
    task.dispatch(170, "pool-a", "r0")
    assert task.queue_wait_ms == 70  # from acceptance, not from the requeue
    task.start(180)
    with pytest.raises(InvalidTransition):
        task.requeue(190)  # tokens may have gone out: too late to go back
    assert task.state is TaskState.STREAMING
    with pytest.raises(InvalidTransition):
        make_task().requeue(1_001)  # never dispatched
