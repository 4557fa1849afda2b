"""The bounded priority queue against a plain-list model, plus the policies' edge cases."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from llorch.reference.core.queue import QueueFull, TaskQueue, WouldBlock
from llorch.reference.core.types import FullPolicy, Priority
from llorch.reference.errors import ErrorCode, Overloaded

priorities = st.sampled_from(list(Priority))


class QueueModel(RuleBasedStateMachine):
    """The model: one list of (task id, priority) in enqueue order; everything derives from it."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: TaskQueue[int] | None = None
        self.model: list[tuple[str, Priority]] = []
        self.popped: list[tuple[str, Priority]] = []  # popped, not yet requeued
        self.next_id = 0

    @rule(capacity=st.integers(1, 6), policy=st.sampled_from(list(FullPolicy)))
    @precondition(lambda self: self.queue is None)
    def make(self, capacity, policy):
        self.queue = TaskQueue(capacity, policy)
        self.capacity, self.policy = capacity, policy

    def _expected_victim(self, newcomer: Priority) -> str | None:
        if self.policy is FullPolicy.DROP_LRU:
            return self.model[0][0]
        if self.policy is FullPolicy.SHED_LOWER_PRIORITY:
            lower = [p for _, p in self.model if p > newcomer]
            if lower:
                worst = max(lower)
                return [t for t, p in self.model if p == worst][-1]
        return None

    @precondition(lambda self: self.queue is not None)
    @rule(priority=priorities)
    def push(self, priority):
        assert self.queue is not None
        task_id = f"t{self.next_id}"
        self.next_id += 1
        full = len(self.model) >= self.capacity
        victim = self._expected_victim(priority) if full else None
        if full and victim is None:
            with pytest.raises(QueueFull) as info:
                self.queue.push_nowait(task_id, self.next_id, priority)
            assert info.value.code is ErrorCode.ADMISSION_REJECT
            assert info.value.policy_label == f"queue.{self.policy.value}"
            return
        pushed = self.queue.push_nowait(task_id, self.next_id, priority)
        if victim is None:
            assert pushed.evicted is None
        else:
            assert pushed.evicted is not None and pushed.evicted.task_id == victim
            expected_code = (ErrorCode.QUEUE_FULL_DROP_LRU if self.policy is FullPolicy.DROP_LRU
                             else ErrorCode.QUEUE_SHED_LOWER_PRIORITY)
            assert pushed.evicted.code is expected_code
            self.model = [(t, p) for t, p in self.model if t != victim]
        self.model.append((task_id, priority))
        assert pushed.position == sum(1 for _, p in self.model if p == priority) - 1

    @precondition(lambda self: self.queue is not None)
    @rule(mask=st.integers(0, 2**6 - 1))
    def pop(self, mask):
        """Pop with an eligibility predicate: task number n is eligible when bit n % 6 of mask is set."""
        assert self.queue is not None

        def eligible(payload: int) -> bool:
            return bool(mask >> (payload % 6) & 1)

        ids = {t: int(t[1:]) + 1 for t, _ in self.model}  # payload = id + 1, as pushed
        candidates = [(p, i, t) for i, (t, p) in enumerate(self.model) if eligible(ids[t])]
        if not candidates:
            with pytest.raises(WouldBlock):
                self.queue.pop_nowait(eligible)
            return
        _, _, expected = min(candidates)
        task_id, payload = self.queue.pop_nowait(eligible, now_ms=self.next_id)
        assert task_id == expected
        assert payload == ids[expected]
        self.popped.append(next((t, p) for t, p in self.model if t == expected))
        self.model = [(t, p) for t, p in self.model if t != expected]

    @precondition(lambda self: self.queue is not None and bool(self.popped))
    @rule(data=st.data())
    def requeue(self, data):
        """An engine refused a popped task: it goes back at the head of its class, and counts as the
        least recently enqueued; a full queue refuses it and stays as it was."""
        assert self.queue is not None
        task_id, priority = data.draw(st.sampled_from(self.popped))
        self.popped.remove((task_id, priority))
        payload = int(task_id[1:]) + 1
        if len(self.model) >= self.capacity:
            with pytest.raises(QueueFull):
                self.queue.requeue_nowait(task_id, payload, priority)
            return
        self.queue.requeue_nowait(task_id, payload, priority)
        self.model.insert(0, (task_id, priority))
        assert self.queue.position(task_id) == 0

    @precondition(lambda self: self.queue is not None and bool(self.model))
    @rule(data=st.data())
    def cancel(self, data):
        assert self.queue is not None
        task_id, _ = data.draw(st.sampled_from(self.model))
        before = len(self.queue)
        assert self.queue.remove(task_id) is not None
        assert self.queue.remove(task_id) is None  # exactly one removed
        assert len(self.queue) == before - 1
        self.model = [(t, p) for t, p in self.model if t != task_id]

    @invariant()
    def agrees_with_model(self):
        if self.queue is None:
            return
        assert len(self.queue) <= self.capacity
        assert [t for t, _ in self.queue.items()] == [t for t, _ in sorted(
            self.model, key=lambda tp: (tp[1], self.model.index(tp)))]
        for task_id, prio in self.model:
            same_class = [t for t, p in self.model if p == prio]
            assert self.queue.position(task_id) == same_class.index(task_id)
        stats = self.queue.statistics()
        assert stats.depth == len(self.model)
        assert dict(stats.depth_by_priority) == {p: sum(1 for _, q in self.model if q == p) for p in Priority}


@pytest.mark.req("QUE-1005", "QUE-1006", "QUE-1007", "QUE-1009", "QUE-1011", "QUE-1012", "QUE-1013",
                 "QUE-1014", "QUE-1018", "ADM-1005", "POOL-1014")
def test_queue_agrees_with_the_list_model():
    run_state_machine_as_test(QueueModel, settings=settings(max_examples=120, stateful_step_count=30,
                                                            deadline=None))


@pytest.mark.req("QUE-1011")
def test_reject_policy_raises_an_overload_and_leaves_the_queue_as_it_was():
    queue: TaskQueue[str] = TaskQueue(2, FullPolicy.REJECT)
    queue.push_nowait("a", "A", Priority.LOW)
    queue.push_nowait("b", "B", Priority.LOW)
    with pytest.raises(Overloaded) as info:
        queue.push_nowait("c", "C", Priority.HIGH)
    assert info.value.retriable
    assert info.value.policy_label == "queue.reject"
    assert [t for t, _ in queue.items()] == ["a", "b"]
    assert queue.statistics().rejected_total == 1


@pytest.mark.req("QUE-1012")
def test_drop_lru_evicts_the_oldest_task_whatever_its_class():
    queue: TaskQueue[str] = TaskQueue(3, FullPolicy.DROP_LRU)
    queue.push_nowait("old-high", "x", Priority.HIGH)
    queue.push_nowait("low", "y", Priority.LOW)
    queue.push_nowait("normal", "z", Priority.NORMAL)
    pushed = queue.push_nowait("new", "w", Priority.LOW)
    assert pushed.evicted is not None
    assert (pushed.evicted.task_id, pushed.evicted.payload) == ("old-high", "x")
    assert pushed.evicted.code is ErrorCode.QUEUE_FULL_DROP_LRU
    assert "old-high" not in queue


@pytest.mark.req("QUE-1013", "QUE-1014")
def test_shed_takes_the_newest_of_the_least_urgent_lower_class_or_rejects():
    queue: TaskQueue[str] = TaskQueue(3, FullPolicy.SHED_LOWER_PRIORITY)
    queue.push_nowait("n1", "", Priority.NORMAL)
    queue.push_nowait("l1", "", Priority.LOW)
    queue.push_nowait("l2", "", Priority.LOW)
    pushed = queue.push_nowait("h1", "", Priority.HIGH)
    assert pushed.evicted is not None and pushed.evicted.task_id == "l2"
    assert pushed.evicted.code is ErrorCode.QUEUE_SHED_LOWER_PRIORITY
    # a normal newcomer may shed the remaining low task, but not a normal one
    assert queue.push_nowait("n2", "", Priority.NORMAL).evicted.task_id == "l1"  # type: ignore[union-attr]
    with pytest.raises(QueueFull):
        queue.push_nowait("n3", "", Priority.NORMAL)
    assert [t for t, _ in queue.items()] == ["h1", "n1", "n2"]


@pytest.mark.req("QUE-1008", "QUE-1006")
def test_an_ineligible_urgent_task_does_not_block_an_eligible_one():
    queue: TaskQueue[str] = TaskQueue(4)
    queue.push_nowait("busy-pool", "pool-a", Priority.HIGH)
    queue.push_nowait("free-pool", "pool-b", Priority.LOW)
    assert queue.pop_nowait(lambda pool: pool == "pool-b")[0] == "free-pool"
    assert queue.position("busy-pool") == 0
    assert queue.pop_nowait()[0] == "busy-pool"
    with pytest.raises(WouldBlock):
        queue.pop_nowait()


@pytest.mark.req("QUE-1017", "QUE-1018", "QUE-1020")
def test_cancel_frees_the_place_and_moves_the_class_up():
    queue: TaskQueue[str] = TaskQueue(3, FullPolicy.REJECT)
    for name in ("a", "b", "c"):
        queue.push_nowait(name, name)
    assert queue.position("c") == 2
    assert queue.remove("a") == "a"
    assert queue.position("b") == 0 and queue.position("c") == 1
    assert queue.statistics().depth == 2
    assert queue.push_nowait("d", "d").position == 2  # the freed place is usable at once


@pytest.mark.req("QUE-1016")
def test_retry_after_follows_the_observed_dispatch_rate():
    queue: TaskQueue[int] = TaskQueue(1, FullPolicy.REJECT, initial_dispatch_interval_ms=1000)
    now = 0
    for _ in range(40):  # dispatches every 50 ms
        queue.push_nowait(f"t{now}", now)
        queue.pop_nowait(now_ms=now)
        now += 50
    queue.push_nowait("last", 0)
    with pytest.raises(QueueFull) as info:
        queue.push_nowait("over", 0)
    assert 40 <= info.value.retry_after_ms <= 60


def test_duplicate_ids_and_bad_capacity_are_refused():
    queue: TaskQueue[int] = TaskQueue(2)
    queue.push_nowait("a", 1)
    with pytest.raises(ValueError):
        queue.push_nowait("a", 2)
    with pytest.raises(ValueError):
        TaskQueue(0)
    with pytest.raises(KeyError):
        queue.position("missing")


def test_statistics_count_each_outcome():
    queue: TaskQueue[int] = TaskQueue(1, FullPolicy.DROP_LRU)
    queue.push_nowait("a", 1)
    queue.push_nowait("b", 2)  # evicts a
    queue.pop_nowait()
    queue.push_nowait("c", 3)
    queue.remove("c")
    stats = queue.statistics()
    counts = (stats.enqueued_total, stats.evicted_total, stats.popped_total, stats.removed_total)
    assert counts == (3, 1, 1, 1)
    assert stats.depth == 0 and stats.capacity == 1 and stats.policy is FullPolicy.DROP_LRU
