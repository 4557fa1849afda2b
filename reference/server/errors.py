"""The one mapping of the error tree (``reference/errors.py``) to wire forms.

Every edge translates here and nowhere else (STYLE.md §1, ``map_httpcore_exceptions``):

- HTTP task API: status + envelope ``{"error": {code, message, retriable, retry_after_ms,
  correlation_id, policy_label}}`` + ``Retry-After``/``X-Backoff-Ms`` headers;
- OpenAI routes: the same status + ``{"error": {message, type, param, code}}``;
- gRPC: a status code; the ``llorch.v1.ErrorDetail`` itself is packed by ``server/grpc/status.py``
  (only ``server/grpc`` imports the generated stubs, ARCHITECTURE.md "Packages").

The table is ARCHITECTURE.md's "Errors" table; tests pin it row by row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
from llorch.reference.errors import (
    Conflict,
    DeadlineUnmet,
    EngineFailure,
    ErrorCode,
    ErrorInfo,
    InternalError,
    InvalidParams,
    LlorchError,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)


@dataclass(frozen=True, slots=True)
class WireStatus:
    http: int
    grpc: grpc.StatusCode
    openai_type: str


# Order matters only for readability: lookups are by exact class, then by base class (MRO).
_BY_CLASS: dict[type[LlorchError], WireStatus] = {
    InvalidParams: WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    Unauthenticated: WireStatus(401, grpc.StatusCode.UNAUTHENTICATED, "authentication_error"),
    PermissionDenied: WireStatus(403, grpc.StatusCode.PERMISSION_DENIED, "permission_error"),
    NotFound: WireStatus(404, grpc.StatusCode.NOT_FOUND, "invalid_request_error"),
    Conflict: WireStatus(409, grpc.StatusCode.FAILED_PRECONDITION, "invalid_request_error"),
    Overloaded: WireStatus(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error"),
    Unavailable: WireStatus(503, grpc.StatusCode.UNAVAILABLE, "server_error"),
    EngineFailure: WireStatus(502, grpc.StatusCode.UNAVAILABLE, "server_error"),
    DeadlineUnmet: WireStatus(504, grpc.StatusCode.DEADLINE_EXCEEDED, "server_error"),
    InternalError: WireStatus(500, grpc.StatusCode.INTERNAL, "server_error"),
}
_PAYLOAD_TOO_LARGE = WireStatus(413, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error")

# Which error class carries each code: used for ErrorInfo values that arrive without an exception
# (stream ``error`` events, records of failed tasks).
_CLASS_OF_CODE: dict[ErrorCode, type[LlorchError]] = {
    code: cls for cls in _BY_CLASS for code in cls.codes
}

# OpenAI's ``code`` strings for the cases its clients branch on; others are our code, lower-cased.
_OPENAI_CODES: dict[ErrorCode, str] = {
    ErrorCode.MODEL_NOT_FOUND: "model_not_found",
    ErrorCode.UNAUTHENTICATED: "invalid_api_key",
    ErrorCode.ADMISSION_REJECT: "rate_limit_exceeded",
    ErrorCode.RATE_LIMITED: "rate_limit_exceeded",
    ErrorCode.BUDGET_EXCEEDED: "insufficient_quota",
    ErrorCode.PAYLOAD_TOO_LARGE: "payload_too_large",
}


def wire_status(error: LlorchError | ErrorInfo) -> WireStatus:
    """The HTTP/gRPC/OpenAI status of an error or of its wire form."""
    code = error.code
    if code is ErrorCode.PAYLOAD_TOO_LARGE:
        return _PAYLOAD_TOO_LARGE
    cls: type[LlorchError] = type(error) if isinstance(error, LlorchError) else _CLASS_OF_CODE[code]
    for klass in cls.__mro__:
        status = _BY_CLASS.get(klass)  # type: ignore[call-overload]
        if status is not None:
            return status
    return _BY_CLASS[InternalError]


def error_info(error: LlorchError | ErrorInfo, correlation_id: str = "") -> ErrorInfo:
    if isinstance(error, ErrorInfo):
        return error if error.correlation_id or not correlation_id else ErrorInfo(
            error.code, error.message, error.retriable, error.retry_after_ms, correlation_id,
            error.policy_label)
    return error.info(correlation_id)


def retry_headers(info: ErrorInfo) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and ``X-Backoff-Ms`` on 429/503; the 401 challenge."""
    status = wire_status(info).http
    if status == 401:
        # req: SEC-1003
        return {"WWW-Authenticate": "Bearer"}
    if status not in (429, 503):
        return {}
    # req: ERR-1019, ERR-1020
    backoff_ms = info.retry_after_ms if info.retry_after_ms > 0 else 1000
    return {"Retry-After": str(max(1, math.ceil(backoff_ms / 1000))), "X-Backoff-Ms": str(backoff_ms)}


def envelope_body(info: ErrorInfo) -> dict[str, Any]:
    """The task API's error envelope (also the ``data`` of an SSE ``error`` event, under ``error``)."""
    return {"error": info_dict(info)}


def info_dict(info: ErrorInfo) -> dict[str, Any]:
    return {
        "code": str(info.code),
        "message": info.message,
        "retriable": info.retriable,
        "retry_after_ms": info.retry_after_ms,
        "correlation_id": info.correlation_id,
        "policy_label": info.policy_label,
    }


def openai_body(info: ErrorInfo, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {
        "message": info.message,
        "type": wire_status(info).openai_type,
        "param": param,
        "code": _OPENAI_CODES.get(info.code, str(info.code).lower()),
    }}


def http_error(error: LlorchError | ErrorInfo, correlation_id: str = "", *, openai: bool = False,
               param: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) for an HTTP answer in the task-API or OpenAI shape."""
    info = error_info(error, correlation_id)
    body = openai_body(info, param) if openai else envelope_body(info)
    return wire_status(info).http, body, retry_headers(info)


__all__ = [
    "WireStatus", "envelope_body", "error_info", "http_error", "info_dict", "openai_body",
    "retry_headers", "wire_status",
]
