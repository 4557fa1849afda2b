"""What the edges (gRPC servicer, HTTP gateway, OpenAI routes) may call: the orchestrator facade.

``runtime/orchestrator.py`` implements it over the pure core, the pool registry, the adapters and
the store. The edges only translate wire formats to these calls and back; every rule lives behind
this protocol. Every method raises ``LlorchError`` subclasses for client-visible failures.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

from llorch.reference.core.types import (
    Admission,
    Identity,
    Priority,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskState,
)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica_id: str
    ready: bool
    total_slots: int
    free_slots: int
    engine: str
    engine_version: str
    model_digest: str
    build_info: str = ""  # the engine's own build description (HTTP only; the proto has no field)


@dataclass(frozen=True, slots=True)
class PoolStatus:
    pool_id: str
    model: str
    engine: str
    ready: bool
    draining: bool
    total_slots: int
    free_slots: int
    generation: int
    replicas: tuple[ReplicaStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class CapabilitiesInfo:
    api_version: str
    server_version: str
    queue_capacity: int
    full_policy: str
    priorities: tuple[Priority, ...]
    max_tokens_limit: int
    max_prompt_bytes: int
    pools: tuple[PoolStatus, ...]
    profiles: tuple[str, ...]
    auth_required: bool
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DrainResult:
    pool_id: str
    finished: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class ReloadResult:
    pool_id: str
    success: bool
    rolled_back: bool
    generation: int
    error: object | None = None  # ErrorInfo when rolled back


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    tenant: str
    expires_ms: int
    turns_used: int
    max_turns: int
    tokens_used: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant: str
    pool_id: str
    tasks: int
    tokens_in: int
    tokens_out: int
    by_state: dict[str, int] = field(default_factory=dict)


class OrchestratorApi(Protocol):
    async def submit(self, request: TaskRequest, identity: Identity) -> Admission: ...

    def events(self, task_id: str, identity: Identity, from_seq: int = 0) -> AsyncGenerator[TaskEvent, None]:
        """Replays stored events from ``from_seq`` then follows live ones until the terminal event."""
        ...

    async def cancel(self, task_id: str, identity: Identity, reason: str = "client") -> TaskRecord:
        """Returns once no further token can be emitted; idempotent on terminal tasks."""
        ...

    async def get_task(self, task_id: str, identity: Identity) -> TaskRecord: ...

    async def list_tasks(self, identity: Identity, state: TaskState | None = None,
                         limit: int = 100) -> list[TaskRecord]: ...

    def capabilities(self) -> CapabilitiesInfo: ...

    def pools(self) -> list[PoolStatus]: ...

    def pool(self, pool_id: str) -> PoolStatus: ...

    async def drain_pool(self, pool_id: str, identity: Identity, deadline_ms: int = 0) -> DrainResult: ...

    async def reload_pool(self, pool_id: str, model: str, identity: Identity) -> ReloadResult: ...

    async def create_session(self, identity: Identity, ttl_ms: int = 0,
                             max_turns: int = 0) -> SessionInfo: ...

    async def get_session(self, session_id: str, identity: Identity) -> SessionInfo: ...

    async def delete_session(self, session_id: str, identity: Identity) -> None: ...

    async def usage(self) -> list[UsageRow]: ...

    def ready(self) -> bool:
        """True once at least one pool has a ready replica (``/readyz``)."""
        ...
