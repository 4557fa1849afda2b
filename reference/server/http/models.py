"""Strict JSON models of the HTTP task API (request and response), exported to OpenAPI.

Requests forbid unknown fields and coerce nothing (``strict``): a bool is not an int, a string is
not a number. Violations become 400 in our envelope (``app.py``), never 422. Bounds here are the
schema's absolute caps (D14: ``max_tokens`` is bounded so fuzzing cannot start endless streams);
the configured limits, possibly lower, are enforced by admission.
"""

from __future__ import annotations

from typing import Annotated, Literal

from llorch.reference.core.types import (
    Placement,
    Priority,
    SamplerParams,
    TaskRecord,
    TaskRequest,
)
from llorch.reference.errors import ErrorInfo
from llorch.reference.runtime.api import (
    CapabilitiesInfo,
    DrainResult,
    PoolStatus,
    ReloadResult,
    SessionInfo,
)
from llorch.reference.server.errors import info_dict
from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_CAP = 4096
MAX_STOP_SEQUENCES = 4
MAX_ID = 128

PriorityName = Literal["high", "normal", "low"]
PRIORITY_IN: dict[str, Priority] = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}
PRIORITY_OUT: dict[Priority, PriorityName] = {Priority.HIGH: "high", Priority.NORMAL: "normal",
                                             Priority.LOW: "low"}
PoolId = Annotated[str, Field(max_length=MAX_ID)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SamplerIn(Strict):
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=1000)] = 0
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                    Field(max_length=MAX_STOP_SEQUENCES)] = []

    def domain(self) -> SamplerParams:
        return SamplerParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                             repeat_penalty=self.repeat_penalty, seed=self.seed, stop=tuple(self.stop))


class PlacementIn(Strict):
    pin_pool: PoolId = ""
    pin_replica: PoolId = ""
    prefer_pools: Annotated[list[PoolId], Field(max_length=16)] = []
    avoid_pools: Annotated[list[PoolId], Field(max_length=16)] = []


class SubmitIn(Strict):
    """``POST /v1/tasks``."""

    model: Annotated[str, Field(min_length=1, max_length=MAX_ID)]
    prompt: str
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_CAP)]
    sampler: SamplerIn = SamplerIn()
    priority: PriorityName = "normal"
    session_id: Annotated[str, Field(max_length=MAX_ID)] = ""
    placement: PlacementIn = PlacementIn()
    deadline_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 0
    deterministic: bool = False
    idempotency_key: Annotated[str, Field(max_length=MAX_ID)] = ""
    require_real_engine: bool = False

    def domain(self) -> TaskRequest:
        p = self.placement
        return TaskRequest(
            model=self.model, prompt=self.prompt, max_tokens=self.max_tokens,
            sampler=self.sampler.domain(), priority=PRIORITY_IN[self.priority],
            session_id=self.session_id,
            placement=Placement(pin_pool=p.pin_pool, pin_replica=p.pin_replica,
                                prefer_pools=tuple(p.prefer_pools), avoid_pools=tuple(p.avoid_pools)),
            deadline_ms=self.deadline_ms, deterministic=self.deterministic,
            idempotency_key=self.idempotency_key, require_real_engine=self.require_real_engine)


class DrainIn(Strict):
    deadline_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 0


class ReloadIn(Strict):
    model: Annotated[str, Field(min_length=1, max_length=MAX_ID)]


class SessionIn(Strict):
    ttl_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 0
    max_turns: Annotated[int, Field(ge=0, le=100_000)] = 0


# ---- responses ---------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str
    retriable: bool
    retry_after_ms: int
    correlation_id: str
    policy_label: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class SubmitOut(BaseModel):
    task_id: str
    queue_position: int
    predicted_start_ms: int
    correlation_id: str


TaskStateName = Literal["queued", "dispatched", "streaming", "completed", "cancelled", "failed", "expired"]


class TaskOut(BaseModel):
    task_id: str
    state: TaskStateName
    tenant: str
    model: str
    priority: PriorityName
    pool_id: str
    replica_id: str
    tokens_in: int
    tokens_out: int
    created_ms: int
    finished_ms: int
    finish_reason: str
    error: ErrorBody | None
    session_id: str

    @classmethod
    def of(cls, r: TaskRecord) -> TaskOut:
        return cls(task_id=r.task_id, state=r.state.value, tenant=r.tenant, model=r.model,
                   priority=PRIORITY_OUT[r.priority], pool_id=r.pool_id, replica_id=r.replica_id,
                   tokens_in=r.tokens_in, tokens_out=r.tokens_out, created_ms=r.created_ms,
                   finished_ms=r.finished_ms, finish_reason=r.finish_reason,
                   error=ErrorBody(**info_dict(r.error)) if r.error is not None else None,
                   session_id=r.session_id)


class TaskListOut(BaseModel):
    tasks: list[TaskOut]


class CancelOut(BaseModel):
    task_id: str
    state: TaskStateName


class ReplicaOut(BaseModel):
    replica_id: str
    ready: bool
    total_slots: int
    free_slots: int
    engine: str
    engine_version: str
    model_digest: str
    build_info: str = ""


class PoolOut(BaseModel):
    pool_id: str
    model: str
    engine: str
    ready: bool
    draining: bool
    total_slots: int
    free_slots: int
    generation: int
    replicas: list[ReplicaOut]

    @classmethod
    def of(cls, p: PoolStatus) -> PoolOut:
        return cls(pool_id=p.pool_id, model=p.model, engine=p.engine, ready=p.ready, draining=p.draining,
                   total_slots=p.total_slots, free_slots=p.free_slots, generation=p.generation,
                   replicas=[ReplicaOut(replica_id=r.replica_id, ready=r.ready, total_slots=r.total_slots,
                                        free_slots=r.free_slots, engine=r.engine,
                                        engine_version=r.engine_version, model_digest=r.model_digest,
                                        build_info=r.build_info)
                             for r in p.replicas])


class PoolListOut(BaseModel):
    pools: list[PoolOut]


class CapabilitiesOut(BaseModel):
    api_version: str
    server_version: str
    queue_capacity: int
    full_policy: str
    priorities: list[PriorityName]
    max_tokens_limit: int
    max_prompt_bytes: int
    pools: list[PoolOut]
    profiles: list[str]
    auth_required: bool
    models: list[str]

    @classmethod
    def of(cls, c: CapabilitiesInfo) -> CapabilitiesOut:
        return cls(api_version=c.api_version, server_version=c.server_version,
                   queue_capacity=c.queue_capacity, full_policy=c.full_policy,
                   priorities=[PRIORITY_OUT[p] for p in c.priorities], max_tokens_limit=c.max_tokens_limit,
                   max_prompt_bytes=c.max_prompt_bytes, pools=[PoolOut.of(p) for p in c.pools],
                   profiles=list(c.profiles), auth_required=c.auth_required, models=list(c.models))


class DrainOut(BaseModel):
    pool_id: str
    finished: int
    cancelled: int

    @classmethod
    def of(cls, d: DrainResult) -> DrainOut:
        return cls(pool_id=d.pool_id, finished=d.finished, cancelled=d.cancelled)


class ReloadOut(BaseModel):
    pool_id: str
    success: bool
    rolled_back: bool
    generation: int
    error: ErrorBody | None

    @classmethod
    def of(cls, r: ReloadResult) -> ReloadOut:
        error = ErrorBody(**info_dict(r.error)) if isinstance(r.error, ErrorInfo) else None
        return cls(pool_id=r.pool_id, success=r.success, rolled_back=r.rolled_back,
                   generation=r.generation, error=error)


class SessionOut(BaseModel):
    session_id: str
    tenant: str
    expires_ms: int
    turns_used: int
    max_turns: int
    tokens_used: int

    @classmethod
    def of(cls, s: SessionInfo) -> SessionOut:
        return cls(session_id=s.session_id, tenant=s.tenant, expires_ms=s.expires_ms,
                   turns_used=s.turns_used, max_turns=s.max_turns, tokens_used=s.tokens_used)


class UsageRowOut(BaseModel):
    tenant: str
    pool_id: str
    tasks: int
    tokens_in: int
    tokens_out: int
    by_state: dict[str, int]


class UsageOut(BaseModel):
    usage: list[UsageRowOut]


class HealthOut(BaseModel):
    status: Literal["ok", "ready", "unready"]
