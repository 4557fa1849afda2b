"""Per-request context shared by both edges: the correlation id and the caller's identity.

Kept in ``contextvars`` (STYLE.md §6, grpc's async interceptor example) so servicers and routes read
them without threading them through every call.
"""

from __future__ import annotations

import contextvars
import re
import uuid

from llorch.reference.core.types import Identity

CORRELATION_HEADER = "x-correlation-id"
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("llorch_correlation_id", default="")
identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("llorch_identity", default=None)


def accept_correlation_id(presented: str | None) -> str:
    """Echo a well-formed client id; otherwise generate one (ids end up in logs and headers)."""
    # req: STR-1036, STR-1037
    if presented and _VALID.match(presented):
        return presented
    return uuid.uuid4().hex


__all__ = ["CORRELATION_HEADER", "accept_correlation_id", "correlation_id", "identity"]
