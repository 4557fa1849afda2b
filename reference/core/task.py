"""The task state machine: queued → dispatched → streaming → completed | cancelled | failed | expired.

A ``Task`` is the one mutable object per accepted request. The runtime drives it with the methods
below, each a named transition; any move the table does not allow raises ``InvalidTransition``, so a
task reaches exactly one terminal state and never leaves it. Time is passed in (``now_ms``): the core
never reads a clock, so tests drive it with a fake one.

    QUEUED ──dispatch──▶ DISPATCHED ──start──▶ STREAMING ──complete──▶ COMPLETED
      ▲ │ cancel/fail/expire │ │ cancel/fail       │ cancel/fail
      │ ▼                    │ ▼                   ▼
      │ CANCELLED | FAILED | EXPIRED (queued only)
      └────────requeue───────┘

The one backward move, ``requeue`` (DISPATCHED → QUEUED), is for an engine that answered
REPLICA_EXHAUSTED before the task started (POOL-1014): nothing was streamed, so the task can wait
for another slot instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from llorch.reference.core.types import TaskRecord, TaskRequest, TaskState
from llorch.reference.errors import ErrorCode, ErrorInfo, InternalError

# req: QUE-1250
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = MappingProxyType({
    TaskState.QUEUED: frozenset({TaskState.DISPATCHED, TaskState.CANCELLED, TaskState.FAILED,
                                 TaskState.EXPIRED}),
    # DISPATCHED → QUEUED: the requeue after REPLICA_EXHAUSTED (POOL-1014)
    TaskState.DISPATCHED: frozenset({TaskState.STREAMING, TaskState.QUEUED, TaskState.CANCELLED,
                                     TaskState.FAILED}),
    TaskState.STREAMING: frozenset({TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.CANCELLED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.EXPIRED: frozenset(),
})
"""Allowed moves. Terminal states map to the empty set: they are absorbing."""

FINISH_REASONS = frozenset({"stop", "length"})


class InvalidTransition(InternalError):
    """A move the state machine forbids (e.g. anything out of a terminal state).

    It is an ``InternalError``: a client never causes one directly; the runtime checks
    ``Task.terminal`` first where a race is expected (cancel of a finished task is idempotent).
    """

    def __init__(self, task_id: str, current: TaskState, target: TaskState) -> None:
        super().__init__(f"task {task_id}: invalid transition {current} -> {target}")
        self.task_id = task_id
        self.current = current
        self.target = target


def can_transition(current: TaskState, target: TaskState) -> bool:
    return target in TRANSITIONS[current]


class Task:
    """One accepted task and its progress. Not thread-safe; owned by the runtime's event loop."""

    __slots__ = ("_error", "_finish_reason", "_state", "_timestamps", "cancel_reason", "created_ms",
                 "pool_id", "replica_id", "request", "task_id", "tenant", "tokens_in", "tokens_out")

    def __init__(self, task_id: str, request: TaskRequest, tenant: str, created_ms: int) -> None:
        self.task_id = task_id
        self.request = request
        self.tenant = tenant
        self.created_ms = created_ms
        self.pool_id = ""
        self.replica_id = ""
        self.tokens_in = 0
        self.tokens_out = 0
        self.cancel_reason = ""
        self._state = TaskState.QUEUED
        self._timestamps: dict[TaskState, int] = {TaskState.QUEUED: created_ms}
        self._finish_reason = ""
        self._error: ErrorInfo | None = None

    # ---- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> TaskState:
        return self._state

    @property
    def terminal(self) -> bool:
        return self._state.terminal

    @property
    def timestamps(self) -> Mapping[TaskState, int]:
        """When each state was entered (ms); read-only view."""
        return MappingProxyType(self._timestamps)

    @property
    def finished_ms(self) -> int:
        # req: QUE-1003
        return self._timestamps[self._state] if self.terminal else 0

    @property
    def error(self) -> ErrorInfo | None:
        return self._error

    @property
    def deadline_at_ms(self) -> int | None:
        """Absolute deadline (acceptance + ``deadline_ms``), or None when the request set none."""
        return self.created_ms + self.request.deadline_ms if self.request.deadline_ms > 0 else None

    def overdue(self, now_ms: int) -> bool:
        """True once a deadline is set and ``now_ms`` has reached it (ADM-1026)."""
        deadline = self.deadline_at_ms
        return deadline is not None and now_ms >= deadline

    @property
    def queue_wait_ms(self) -> int:
        """Acceptance to dispatch (SCH-1016); 0 before dispatch."""
        dispatched = self._timestamps.get(TaskState.DISPATCHED)
        return 0 if dispatched is None else dispatched - self.created_ms

    def record(self) -> TaskRecord:
        """The frozen view that GetTask answers and the store keeps."""
        return TaskRecord(
            task_id=self.task_id, state=self._state, tenant=self.tenant, model=self.request.model,
            priority=self.request.priority, created_ms=self.created_ms, pool_id=self.pool_id,
            replica_id=self.replica_id, tokens_in=self.tokens_in, tokens_out=self.tokens_out,
            finished_ms=self.finished_ms, finish_reason=self._finish_reason, error=self._error,
            session_id=self.request.session_id,
        )

    # ---- transitions -----------------------------------------------------------------------

    def _move(self, target: TaskState, now_ms: int) -> None:
        # req: QUE-1001
        if not can_transition(self._state, target):
            raise InvalidTransition(self.task_id, self._state, target)
        # A clock that steps back must not make a later state look older than an earlier one.
        # req: QUE-1003
        self._timestamps[target] = max(now_ms, max(self._timestamps.values()))
        self._state = target

    def dispatch(self, now_ms: int, pool_id: str, replica_id: str) -> None:
        """A slot on ``pool_id``/``replica_id`` was leased for the task."""
        self._move(TaskState.DISPATCHED, now_ms)
        self.pool_id = pool_id
        self.replica_id = replica_id

    def requeue(self, now_ms: int) -> None:
        """The engine refused the dispatched task (REPLICA_EXHAUSTED) before starting it: wait again.

        The placement is forgotten and so is the dispatch time, so a later dispatch measures
        ``queue_wait_ms`` from acceptance as usual (SCH-1016).
        """
        # req: POOL-1014
        self._move(TaskState.QUEUED, now_ms)
        del self._timestamps[TaskState.DISPATCHED]
        self.pool_id = ""
        self.replica_id = ""

    def start(self, now_ms: int, tokens_in: int = 0) -> None:
        """The engine accepted the generation; the ``started`` event goes out."""
        self._move(TaskState.STREAMING, now_ms)
        self.tokens_in = tokens_in

    def add_tokens(self, count: int) -> None:
        """Account ``count`` streamed tokens (only while streaming)."""
        if self._state is not TaskState.STREAMING:
            raise InvalidTransition(self.task_id, self._state, TaskState.STREAMING)
        if count < 0:
            raise ValueError("token count must be non-negative")
        self.tokens_out += count

    def complete(self, now_ms: int, finish_reason: str, tokens_in: int | None = None,
                 tokens_out: int | None = None) -> None:
        """The engine ended the stream normally."""
        # req: QUE-1004
        if finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {sorted(FINISH_REASONS)}, not {finish_reason!r}")
        self._move(TaskState.COMPLETED, now_ms)
        self._finish_reason = finish_reason
        if tokens_in is not None:
            self.tokens_in = tokens_in
        if tokens_out is not None:
            self.tokens_out = tokens_out

    def cancel(self, now_ms: int, reason: str = "client") -> None:
        """Cancelled by the client, a disconnect, a drain, …; ``reason`` goes in the event."""
        self._move(TaskState.CANCELLED, now_ms)
        self.cancel_reason = reason

    def fail(self, now_ms: int, error: ErrorInfo) -> None:
        """Ended by an error (engine failure, eviction by a full policy, missed deadline, …)."""
        self._move(TaskState.FAILED, now_ms)
        self._error = error

    def expire(self, now_ms: int, message: str = "") -> None:
        """The deadline passed while queued (QUE-1019): EXPIRED with DEADLINE_UNMET."""
        self._move(TaskState.EXPIRED, now_ms)
        self._error = ErrorInfo(ErrorCode.DEADLINE_UNMET,
                                message or f"deadline of {self.request.deadline_ms} ms passed while queued")

    def __repr__(self) -> str:
        return f"Task({self.task_id!r}, state={self._state.value!r})"


__all__ = ["FINISH_REASONS", "TRANSITIONS", "InvalidTransition", "Task", "can_transition"]
