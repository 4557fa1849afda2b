"""The bounded priority queue between admission and dispatch.

Pure and synchronous in trio's style: ``push_nowait`` raises ``QueueFull``, ``pop_nowait`` raises
``WouldBlock``; the runtime wraps them in async waits. Inside one priority class the order is the
order of acceptance (FIFO); classes are served HIGH, then NORMAL, then LOW.

Layout: one ``OrderedDict`` per class (task id → entry) plus an index (task id → class), so
cancel/remove is O(1) and the head of each class is its oldest task.

Ordering guarantee of ``pop_nowait(eligible)``: it returns the oldest task of the most urgent class
among the tasks for which ``eligible(payload)`` is true. An ineligible task (its pools are all busy)
keeps its place and blocks nobody; among eligible tasks, FIFO within a class holds.

``requeue_nowait`` puts a popped task back at the *head* of its class (an engine refused it after
dispatch, POOL-1014): it was the class's oldest eligible task, so it goes first again. It counts as
the least recently enqueued task for ``drop-lru``, and a full queue refuses it (``QueueFull``)
rather than evicting a task for it.

Full policies (``FullPolicy``), when a push finds ``capacity`` tasks queued:

- ``reject``: the newcomer is refused (``QueueFull``, code ``ADMISSION_REJECT``).
- ``drop-lru``: the least recently enqueued task, whatever its class, is evicted and the newcomer
  accepted; the victim is returned (code ``QUEUE_FULL_DROP_LRU``).
- ``shed-lower-priority``: the newest task of the least urgent non-empty class strictly less urgent
  than the newcomer's is evicted and the newcomer accepted (code ``QUEUE_SHED_LOWER_PRIORITY``);
  with no such task, the newcomer is refused as under ``reject``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from llorch.reference.core.types import FullPolicy, Priority
from llorch.reference.errors import ErrorCode, Overloaded

T = TypeVar("T")

PRIORITIES: tuple[Priority, ...] = tuple(sorted(Priority))  # most urgent first


class WouldBlock(Exception):
    """``pop_nowait`` found no eligible task (trio's name for "the nowait form cannot proceed")."""


class QueueFull(Overloaded):
    """A push found the queue full and the policy refused the newcomer (ADMISSION_REJECT)."""

    def __init__(self, message: str, *, policy: FullPolicy, retry_after_ms: int) -> None:
        super().__init__(message, code=ErrorCode.ADMISSION_REJECT, retriable=True,
                         retry_after_ms=retry_after_ms, policy_label=f"queue.{policy.value}")
        self.policy = policy


@dataclass(frozen=True, slots=True)
class Evicted(Generic[T]):
    """A task a full policy pushed out; the runtime fails it with ``code`` (QUE-1015)."""

    task_id: str
    payload: T
    priority: Priority
    code: ErrorCode
    policy_label: str


@dataclass(frozen=True, slots=True)
class Pushed(Generic[T]):
    """Answer of a successful push: the newcomer's position and any task evicted for it."""

    position: int
    evicted: Evicted[T] | None = None


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A snapshot for ``/metrics`` and capabilities (trio's ``statistics()``)."""

    capacity: int
    policy: FullPolicy
    depth: int
    depth_by_priority: Mapping[Priority, int]
    enqueued_total: int
    popped_total: int
    removed_total: int
    evicted_total: int
    rejected_total: int
    dispatch_interval_ms: int
    requeued_total: int = 0


@dataclass(slots=True)
class _Entry(Generic[T]):
    seq: int
    payload: T


class DispatchRate:
    """Exponentially weighted mean interval between pops, for ``retry_after_ms`` and predictions.

    The overload hint thus follows the observed dispatch rate, not a constant.
    """

    # req: QUE-1016

    __slots__ = ("_alpha", "_interval_ms", "_last_ms")

    def __init__(self, initial_interval_ms: int = 1000, alpha: float = 0.2) -> None:
        self._interval_ms = float(initial_interval_ms)
        self._alpha = alpha
        self._last_ms: int | None = None

    def observe(self, now_ms: int) -> None:
        if self._last_ms is not None and now_ms >= self._last_ms:
            gap = now_ms - self._last_ms
            self._interval_ms += self._alpha * (gap - self._interval_ms)
        self._last_ms = now_ms

    @property
    def interval_ms(self) -> int:
        return max(1, round(self._interval_ms))


class TaskQueue(Generic[T]):
    """Bounded priority FIFO of task ids with a payload each (the runtime's Task)."""

    def __init__(self, capacity: int, policy: FullPolicy = FullPolicy.REJECT, *,
                 initial_dispatch_interval_ms: int = 1000, max_retry_after_ms: int = 60_000) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self._capacity = capacity
        self._policy = FullPolicy(policy)
        self._classes: dict[Priority, OrderedDict[str, _Entry[T]]] = {p: OrderedDict() for p in PRIORITIES}
        self._where: dict[str, Priority] = {}
        self._seq = itertools.count()
        self._front_seq = itertools.count(-1, -1)  # requeued entries sort before every pushed one
        self._rate = DispatchRate(initial_dispatch_interval_ms)
        self._max_retry_after_ms = max_retry_after_ms
        self._enqueued = self._popped = self._removed = self._evicted = self._rejected = 0
        self._requeued = 0

    # ---- reading ---------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def policy(self) -> FullPolicy:
        return self._policy

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._where

    def get(self, task_id: str) -> T | None:
        prio = self._where.get(task_id)
        return None if prio is None else self._classes[prio][task_id].payload

    def priority_of(self, task_id: str) -> Priority | None:
        return self._where.get(task_id)

    def position(self, task_id: str) -> int:
        """Tasks ahead of ``task_id`` in its own priority class (0 = head); O(n) in the class."""
        # req: ADM-1005, QUE-1018
        prio = self._where.get(task_id)
        if prio is None:
            raise KeyError(task_id)
        for index, queued in enumerate(self._classes[prio]):
            if queued == task_id:
                return index
        raise AssertionError("index and class disagree")  # pragma: no cover

    def items(self) -> Iterator[tuple[str, T]]:
        """(task id, payload) in dispatch order, ignoring eligibility (for deadline sweeps)."""
        for prio in PRIORITIES:
            for task_id, entry in list(self._classes[prio].items()):
                yield task_id, entry.payload

    def predicted_wait_ms(self, task_id: str) -> int:
        """A rough start estimate: tasks ahead in all more-or-equally urgent classes × dispatch interval."""
        prio = self._where.get(task_id)
        if prio is None:
            raise KeyError(task_id)
        ahead = sum(len(self._classes[p]) for p in PRIORITIES if p < prio) + self.position(task_id)
        return ahead * self._rate.interval_ms

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            capacity=self._capacity, policy=self._policy, depth=len(self._where),
            depth_by_priority=MappingProxyType({p: len(self._classes[p]) for p in PRIORITIES}),
            enqueued_total=self._enqueued, popped_total=self._popped, removed_total=self._removed,
            evicted_total=self._evicted, rejected_total=self._rejected,
            dispatch_interval_ms=self._rate.interval_ms, requeued_total=self._requeued,
        )

    # ---- writing ---------------------------------------------------------------------------

    def push_nowait(self, task_id: str, payload: T, priority: Priority = Priority.NORMAL) -> Pushed[T]:
        """Enqueue at the tail of ``priority``'s class, applying the full policy if needed.

        Raises ``QueueFull`` when the policy refuses the newcomer (the queue is then unchanged).
        """
        priority = Priority(priority)
        if task_id in self._where:
            raise ValueError(f"task {task_id} is already queued")
        evicted: Evicted[T] | None = None
        # req: QUE-1009
        if len(self._where) >= self._capacity:
            evicted = self._make_room(priority)
        entry = _Entry(next(self._seq), payload)
        cls = self._classes[priority]
        cls[task_id] = entry
        self._where[task_id] = priority
        self._enqueued += 1
        return Pushed(position=len(cls) - 1, evicted=evicted)

    def requeue_nowait(self, task_id: str, payload: T, priority: Priority = Priority.NORMAL) -> None:
        """Put a popped task back at the head of ``priority``'s class.

        Raises ``QueueFull`` when the queue is full (the queue is then unchanged): a requeued task
        never evicts another.
        """
        # req: POOL-1014
        priority = Priority(priority)
        if task_id in self._where:
            raise ValueError(f"task {task_id} is already queued")
        if len(self._where) >= self._capacity:
            raise QueueFull(f"queue full ({self._capacity} tasks queued): cannot requeue {task_id}",
                            policy=self._policy, retry_after_ms=self.retry_after_ms())
        cls = self._classes[priority]
        cls[task_id] = _Entry(next(self._front_seq), payload)
        cls.move_to_end(task_id, last=False)
        self._where[task_id] = priority
        self._requeued += 1

    def _make_room(self, newcomer: Priority) -> Evicted[T]:
        victim: tuple[Priority, str] | None = None
        code = ErrorCode.ADMISSION_REJECT
        if self._policy is FullPolicy.DROP_LRU:
            # req: QUE-1012
            heads = [(next(iter(self._classes[p].values())).seq, p) for p in PRIORITIES if self._classes[p]]
            _, prio = min(heads)
            victim = (prio, next(iter(self._classes[prio])))
            code = ErrorCode.QUEUE_FULL_DROP_LRU
        elif self._policy is FullPolicy.SHED_LOWER_PRIORITY:
            # req: QUE-1013
            for prio in reversed(PRIORITIES):
                if prio <= newcomer:
                    break
                if self._classes[prio]:
                    victim = (prio, next(reversed(self._classes[prio])))
                    code = ErrorCode.QUEUE_SHED_LOWER_PRIORITY
                    break
        if victim is None:
            # req: QUE-1011, QUE-1014
            self._rejected += 1
            raise QueueFull(
                f"queue full ({self._capacity} tasks queued, policy {self._policy.value})",
                policy=self._policy, retry_after_ms=self.retry_after_ms())
        prio, task_id = victim
        entry = self._classes[prio].pop(task_id)
        del self._where[task_id]
        self._evicted += 1
        return Evicted(task_id, entry.payload, prio, code, f"queue.{self._policy.value}")

    def retry_after_ms(self) -> int:
        """How long until a place is likely to free: the observed mean dispatch interval."""
        return max(1, min(self._max_retry_after_ms, self._rate.interval_ms))

    def pop_nowait(self, eligible: Callable[[T], bool] | None = None, *,
                   now_ms: int | None = None) -> tuple[str, T]:
        """Take the oldest task of the most urgent class that is ``eligible``; ``WouldBlock`` if none.

        ``now_ms`` feeds the dispatch-rate estimate behind ``retry_after_ms``.
        """
        # req: QUE-1005, QUE-1006, QUE-1007, QUE-1008
        for prio in PRIORITIES:
            cls = self._classes[prio]
            for task_id, entry in cls.items():
                if eligible is None or eligible(entry.payload):
                    del cls[task_id]
                    del self._where[task_id]
                    self._popped += 1
                    if now_ms is not None:
                        self._rate.observe(now_ms)
                    return task_id, entry.payload
        raise WouldBlock

    def remove(self, task_id: str) -> T | None:
        """Take ``task_id`` out (cancel, expiry) in O(1); None when it is not queued."""
        # req: QUE-1017, QUE-1020
        prio = self._where.pop(task_id, None)
        if prio is None:
            return None
        self._removed += 1
        return self._classes[prio].pop(task_id).payload


__all__ = ["PRIORITIES", "DispatchRate", "Evicted", "Pushed", "QueueFull", "QueueStatistics", "TaskQueue",
           "WouldBlock"]
