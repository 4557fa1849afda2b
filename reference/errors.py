"""The one error tree of the reference orchestrator.

Every failure a client can see is an ``LlorchError`` carrying an ``ErrorCode`` from the contract
(``contracts/proto/common.proto``). The edges translate it in one place each
(``server/errors.py``): gRPC status + details, HTTP envelope, SSE/stream ``error`` event.
Engine errors are translated into this tree inside the adapter that saw them.

    LlorchError
    ├── InvalidParams            INVALID_PARAMS / PAYLOAD_TOO_LARGE
    ├── Unauthenticated          UNAUTHENTICATED
    ├── PermissionDenied         PERMISSION_DENIED
    ├── NotFound                 MODEL/TASK/POOL/SESSION_NOT_FOUND
    ├── Conflict                 CONFLICT, SESSION_EXPIRED
    ├── Overloaded               ADMISSION_REJECT, QUEUE_FULL_DROP_LRU, QUEUE_SHED_LOWER_PRIORITY,
    │                            BUDGET_EXCEEDED, RATE_LIMITED   (retriable, retry_after_ms)
    ├── Unavailable              POOL_UNREADY, POOL_UNAVAILABLE, REPLICA_EXHAUSTED,
    │                            REAL_ENGINE_REQUIRED, DETERMINISM_UNSUPPORTED
    ├── EngineFailure            DECODE_TIMEOUT, WORKER_RESET, ENGINE_ERROR
    ├── DeadlineUnmet            DEADLINE_UNMET
    └── InternalError            INTERNAL, ORCHESTRATOR_RESTARTED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    """Mirrors ``llorch.v1.ErrorCode``; the names are the wire strings of the HTTP surface."""

    INVALID_PARAMS = "INVALID_PARAMS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    POOL_NOT_FOUND = "POOL_NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL_DROP_LRU = "QUEUE_FULL_DROP_LRU"
    QUEUE_SHED_LOWER_PRIORITY = "QUEUE_SHED_LOWER_PRIORITY"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    REPLICA_EXHAUSTED = "REPLICA_EXHAUSTED"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    WORKER_RESET = "WORKER_RESET"
    ENGINE_ERROR = "ENGINE_ERROR"
    ORCHESTRATOR_RESTARTED = "ORCHESTRATOR_RESTARTED"
    REAL_ENGINE_REQUIRED = "REAL_ENGINE_REQUIRED"
    DETERMINISM_UNSUPPORTED = "DETERMINISM_UNSUPPORTED"
    CONFLICT = "CONFLICT"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The wire form of an error: what every edge sends (``llorch.v1.ErrorDetail``)."""

    code: ErrorCode
    message: str
    retriable: bool = False
    retry_after_ms: int = 0
    correlation_id: str = ""
    policy_label: str = ""


class LlorchError(Exception):
    """Base of every client-visible failure. Subclasses fix which codes they may carry."""

    codes: frozenset[ErrorCode] = frozenset({ErrorCode.INTERNAL})
    default_code: ErrorCode = ErrorCode.INTERNAL
    default_retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        retriable: bool | None = None,
        retry_after_ms: int = 0,
        policy_label: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        if self.code not in self.codes:
            raise ValueError(f"{type(self).__name__} cannot carry {self.code}")
        self.message = message
        self.retriable = self.default_retriable if retriable is None else retriable
        self.retry_after_ms = retry_after_ms
        self.policy_label = policy_label

    def info(self, correlation_id: str = "") -> ErrorInfo:
        return ErrorInfo(self.code, self.message, self.retriable, self.retry_after_ms,
                         correlation_id, self.policy_label)


class InvalidParams(LlorchError):
    codes = frozenset({ErrorCode.INVALID_PARAMS, ErrorCode.PAYLOAD_TOO_LARGE})
    default_code = ErrorCode.INVALID_PARAMS


class Unauthenticated(LlorchError):
    codes = frozenset({ErrorCode.UNAUTHENTICATED})
    default_code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(LlorchError):
    codes = frozenset({ErrorCode.PERMISSION_DENIED})
    default_code = ErrorCode.PERMISSION_DENIED


class NotFound(LlorchError):
    codes = frozenset({ErrorCode.MODEL_NOT_FOUND, ErrorCode.TASK_NOT_FOUND,
                       ErrorCode.POOL_NOT_FOUND, ErrorCode.SESSION_NOT_FOUND})
    default_code = ErrorCode.TASK_NOT_FOUND


class Conflict(LlorchError):
    codes = frozenset({ErrorCode.CONFLICT, ErrorCode.SESSION_EXPIRED})
    default_code = ErrorCode.CONFLICT


class Overloaded(LlorchError):
    codes = frozenset({ErrorCode.ADMISSION_REJECT, ErrorCode.QUEUE_FULL_DROP_LRU,
                       ErrorCode.QUEUE_SHED_LOWER_PRIORITY, ErrorCode.BUDGET_EXCEEDED,
                       ErrorCode.RATE_LIMITED})
    default_code = ErrorCode.ADMISSION_REJECT
    default_retriable = True


class Unavailable(LlorchError):
    codes = frozenset({ErrorCode.POOL_UNREADY, ErrorCode.POOL_UNAVAILABLE,
                       ErrorCode.REPLICA_EXHAUSTED, ErrorCode.REAL_ENGINE_REQUIRED,
                       ErrorCode.DETERMINISM_UNSUPPORTED})
    default_code = ErrorCode.POOL_UNAVAILABLE
    default_retriable = True


class EngineFailure(LlorchError):
    codes = frozenset({ErrorCode.DECODE_TIMEOUT, ErrorCode.WORKER_RESET, ErrorCode.ENGINE_ERROR})
    default_code = ErrorCode.ENGINE_ERROR
    default_retriable = True


class DeadlineUnmet(LlorchError):
    codes = frozenset({ErrorCode.DEADLINE_UNMET})
    default_code = ErrorCode.DEADLINE_UNMET


class InternalError(LlorchError):
    codes = frozenset({ErrorCode.INTERNAL, ErrorCode.ORCHESTRATOR_RESTARTED})
    default_code = ErrorCode.INTERNAL


__all__ = [
    "Conflict", "DeadlineUnmet", "EngineFailure", "ErrorCode", "ErrorInfo", "InternalError",
    "InvalidParams", "LlorchError", "NotFound", "Overloaded", "PermissionDenied", "Unauthenticated",
    "Unavailable",
]
