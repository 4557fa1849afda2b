"""Protobuf ↔ domain conversions for the gRPC edge: pure translation, no rules (STYLE.md §6)."""

from __future__ import annotations

from typing import cast

from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    Failed,
    Placement,
    Priority,
    Queued,
    SamplerParams,
    Started,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskState,
    TokenOut,
)
from llorch.reference.errors import ErrorCode, ErrorInfo
from llorch.reference.runtime.api import (
    CapabilitiesInfo,
    DrainResult,
    PoolStatus,
    ReloadResult,
    SessionInfo,
)

from llorch.proto import common_pb2 as _common
from llorch.proto import orchestrator_pb2 as _pb

_PRIORITY_IN: dict[int, Priority] = {
    _pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    _pb.PRIORITY_HIGH: Priority.HIGH,
    _pb.PRIORITY_NORMAL: Priority.NORMAL,
    _pb.PRIORITY_LOW: Priority.LOW,
}
_PRIORITY_OUT = {Priority.HIGH: _pb.PRIORITY_HIGH, Priority.NORMAL: _pb.PRIORITY_NORMAL,
                 Priority.LOW: _pb.PRIORITY_LOW}
_STATE_OUT: dict[TaskState, int] = {state: _pb.TaskState.Value(state.name) for state in TaskState}
_STATE_IN = {value: state for state, value in _STATE_OUT.items()}


def error_detail(info: ErrorInfo) -> _common.ErrorDetail:
    return _common.ErrorDetail(code=info.code.value, message=info.message,
                               retriable=info.retriable, retry_after_ms=info.retry_after_ms,
                               correlation_id=info.correlation_id, policy_label=info.policy_label)


def error_info_from_pb(detail: _common.ErrorDetail) -> ErrorInfo:
    name = _common.ErrorCode.Name(detail.code)
    code = ErrorCode(name) if name in ErrorCode.__members__ else ErrorCode.INTERNAL
    return ErrorInfo(code, detail.message, detail.retriable, detail.retry_after_ms,
                     detail.correlation_id, detail.policy_label)


def priority_in(value: int) -> Priority:
    """Unknown enum numbers (a newer client) raise KeyError; the servicer maps that to 400."""
    return _PRIORITY_IN[value]


def state_in(value: int) -> TaskState | None:
    return None if value == _pb.TASK_STATE_UNSPECIFIED else _STATE_IN[value]


def submit_request(msg: _pb.SubmitRequest) -> TaskRequest:
    sampler = msg.sampler
    return TaskRequest(
        model=msg.model,
        prompt=msg.prompt,
        max_tokens=msg.max_tokens,
        sampler=SamplerParams(
            temperature=sampler.temperature,
            top_p=sampler.top_p or 1.0,
            top_k=sampler.top_k,
            repeat_penalty=sampler.repeat_penalty or 1.0,
            seed=sampler.seed if sampler.HasField("seed") else None,
            stop=tuple(sampler.stop),
        ),
        priority=priority_in(msg.priority),
        session_id=msg.session_id,
        placement=Placement(
            pin_pool=msg.placement.pin_pool,
            pin_replica=msg.placement.pin_replica,
            prefer_pools=tuple(msg.placement.prefer_pools),
            avoid_pools=tuple(msg.placement.avoid_pools),
        ),
        deadline_ms=msg.deadline_ms,
        deterministic=msg.deterministic,
        idempotency_key=msg.idempotency_key,
        require_real_engine=msg.require_real_engine,
    )


def task_event(event: TaskEvent) -> _pb.TaskEvent:
    out = _pb.TaskEvent(task_id=event.task_id, seq=event.seq, timestamp_ms=event.timestamp_ms)
    kind = event.kind
    if isinstance(kind, Queued):
        out.queued = kind.position
    elif isinstance(kind, Started):
        out.started.CopyFrom(_pb.Started(
            pool_id=kind.pool_id, replica_id=kind.replica_id, engine=kind.engine,
            engine_version=kind.engine_version, model_digest=kind.model_digest,
            queue_wait_ms=kind.queue_wait_ms))
    elif isinstance(kind, TokenOut):
        out.token.CopyFrom(_pb.Token(index=kind.index, text=kind.text, token_id=kind.token_id,
                                     count=kind.count))
    elif isinstance(kind, Ended):
        out.end.CopyFrom(_pb.End(tokens_in=kind.tokens_in, tokens_out=kind.tokens_out,
                                 decode_ms=kind.decode_ms, finish_reason=kind.finish_reason))
    elif isinstance(kind, Failed):
        out.error.CopyFrom(error_detail(kind.error))
    elif isinstance(kind, CancelledEvent):
        out.cancelled.CopyFrom(_pb.Cancelled(reason=kind.reason))
    return out


def task(record: TaskRecord) -> _pb.Task:
    out = _pb.Task(
        task_id=record.task_id, state=record.state.name, tenant=record.tenant,
        model=record.model, priority=_PRIORITY_OUT[record.priority], pool_id=record.pool_id,
        replica_id=record.replica_id, tokens_in=record.tokens_in, tokens_out=record.tokens_out,
        created_ms=record.created_ms, finished_ms=record.finished_ms,
        finish_reason=record.finish_reason, session_id=record.session_id)
    if record.error is not None:
        out.error.CopyFrom(error_detail(record.error))
    return out


def task_state(state: TaskState) -> _pb.TaskState:
    return cast("_pb.TaskState", _STATE_OUT[state])  # the stubs type enum values as their wrapper


def pool(status: PoolStatus) -> _pb.Pool:
    return _pb.Pool(
        pool_id=status.pool_id, model=status.model, engine=status.engine, ready=status.ready,
        draining=status.draining, total_slots=status.total_slots, free_slots=status.free_slots,
        generation=status.generation,
        replicas=[_pb.Replica(replica_id=r.replica_id, ready=r.ready, total_slots=r.total_slots,
                              free_slots=r.free_slots, engine=r.engine, engine_version=r.engine_version,
                              model_digest=r.model_digest) for r in status.replicas])


def capabilities(info: CapabilitiesInfo) -> _pb.Capabilities:
    return _pb.Capabilities(
        api_version=info.api_version, server_version=info.server_version,
        queue_capacity=info.queue_capacity, full_policy=info.full_policy,
        priorities=[_PRIORITY_OUT[p] for p in info.priorities], max_tokens_limit=info.max_tokens_limit,
        max_prompt_bytes=info.max_prompt_bytes, pools=[pool(p) for p in info.pools],
        profiles=list(info.profiles), auth_required=info.auth_required, models=list(info.models))


def drain(result: DrainResult) -> _pb.DrainPoolResponse:
    return _pb.DrainPoolResponse(pool_id=result.pool_id, finished=result.finished,
                                 cancelled=result.cancelled)


def reload(result: ReloadResult) -> _pb.ReloadPoolResponse:
    out = _pb.ReloadPoolResponse(pool_id=result.pool_id, success=result.success,
                                 rolled_back=result.rolled_back, generation=result.generation)
    if isinstance(result.error, ErrorInfo):
        out.error.CopyFrom(error_detail(result.error))
    return out


def session(info: SessionInfo) -> _pb.Session:
    return _pb.Session(session_id=info.session_id, tenant=info.tenant, expires_ms=info.expires_ms,
                       turns_used=info.turns_used, max_turns=info.max_turns, tokens_used=info.tokens_used)
