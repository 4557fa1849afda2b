"""Task events as JSON (SSE ``data`` of ``/v1/tasks/{id}/events``): one translation for every edge."""

from __future__ import annotations

from typing import Any

from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    Failed,
    Queued,
    Started,
    TaskEvent,
    TokenOut,
)
from llorch.reference.server.errors import info_dict


def event_name(event: TaskEvent) -> str:
    kind = event.kind
    if isinstance(kind, Queued):
        return "queued"
    if isinstance(kind, Started):
        return "started"
    if isinstance(kind, TokenOut):
        return "token"
    if isinstance(kind, Ended):
        return "end"
    if isinstance(kind, Failed):
        return "error"
    return "cancelled"


def event_data(event: TaskEvent) -> dict[str, Any]:
    """``{task_id, seq, timestamp_ms, …kind fields}`` (ARCHITECTURE.md, HTTP surface)."""
    data: dict[str, Any] = {"task_id": event.task_id, "seq": event.seq, "timestamp_ms": event.timestamp_ms}
    kind = event.kind
    if isinstance(kind, Queued):
        data["position"] = kind.position
    elif isinstance(kind, Started):
        data.update(pool_id=kind.pool_id, replica_id=kind.replica_id, engine=kind.engine,
                    engine_version=kind.engine_version, model_digest=kind.model_digest,
                    queue_wait_ms=kind.queue_wait_ms)
    elif isinstance(kind, TokenOut):
        data.update(index=kind.index, text=kind.text, token_id=kind.token_id,
                    count=kind.count)
    elif isinstance(kind, Ended):
        data.update(tokens_in=kind.tokens_in, tokens_out=kind.tokens_out, decode_ms=kind.decode_ms,
                    finish_reason=kind.finish_reason)
    elif isinstance(kind, Failed):
        data.update(info_dict(kind.error))
    elif isinstance(kind, CancelledEvent):
        data["reason"] = kind.reason
    return data
