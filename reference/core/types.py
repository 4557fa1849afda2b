"""Domain types shared by the pure core, the runtime and the edges.

They mirror the messages of ``contracts/proto/orchestrator.proto``; the edges convert them to and
from protobuf and JSON (``server/``). Frozen dataclasses: the core never mutates what it was given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llorch.reference.errors import ErrorInfo


class Priority(enum.IntEnum):
    """Lower value = more urgent. Wire names: "high", "normal", "low"."""

    HIGH = 1
    NORMAL = 2
    LOW = 3


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    STREAMING = "streaming"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.CANCELLED, TaskState.FAILED, TaskState.EXPIRED})


class FullPolicy(enum.StrEnum):
    """What the queue does when a task arrives and it is full."""

    REJECT = "reject"
    DROP_LRU = "drop-lru"
    SHED_LOWER_PRIORITY = "shed-lower-priority"


@dataclass(frozen=True, slots=True)
class SamplerParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Placement:
    pin_pool: str = ""
    pin_replica: str = ""
    prefer_pools: tuple[str, ...] = ()
    avoid_pools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking: the tenant an authenticated token maps to ("anonymous" without auth)."""

    tenant: str = "anonymous"
    token_fingerprint: str = ""
    admin: bool = True


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """A submission as the core sees it, after the edge parsed it (not yet validated)."""

    model: str
    prompt: str
    max_tokens: int
    sampler: SamplerParams = field(default_factory=SamplerParams)
    priority: Priority = Priority.NORMAL
    session_id: str = ""
    placement: Placement = field(default_factory=Placement)
    deadline_ms: int = 0
    deterministic: bool = False
    idempotency_key: str = ""
    require_real_engine: bool = False


# ---- events: queued? started? token* (end | error | cancelled) -------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    position: int


@dataclass(frozen=True, slots=True)
class Started:
    pool_id: str
    replica_id: str
    engine: str
    engine_version: str
    model_digest: str
    queue_wait_ms: int


@dataclass(frozen=True, slots=True)
class TokenOut:
    """``index`` of the first token carried; ``count`` tokens, texts concatenated (coalescing)."""

    index: int
    text: str
    token_id: int = -1
    count: int = 1


@dataclass(frozen=True, slots=True)
class Ended:
    tokens_in: int
    tokens_out: int
    decode_ms: int
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True, slots=True)
class Failed:
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class CancelledEvent:
    reason: str


EventKind = Queued | Started | TokenOut | Ended | Failed | CancelledEvent
TERMINAL_EVENTS = (Ended, Failed, CancelledEvent)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    task_id: str
    seq: int
    timestamp_ms: int
    kind: EventKind

    @property
    def terminal(self) -> bool:
        return isinstance(self.kind, TERMINAL_EVENTS)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What GetTask answers; also the row the store keeps."""

    task_id: str
    state: TaskState
    tenant: str
    model: str
    priority: Priority
    created_ms: int
    pool_id: str = ""
    replica_id: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    finished_ms: int = 0
    finish_reason: str = ""
    error: ErrorInfo | None = None
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class Admission:
    """Submit's answer for an accepted task."""

    task_id: str
    queue_position: int
    predicted_start_ms: int
