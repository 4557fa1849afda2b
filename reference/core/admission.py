"""Admission: is this request well-formed, may this tenant run it now, and what does it reserve.

``validate`` checks a ``TaskRequest`` against ``AdmissionLimits`` (built by the runtime from the
configuration) and raises ``InvalidParams`` / ``NotFound`` naming the offending field. ``Admitter``
then applies, in order, placement fail-fast (an optional ``Snapshot``), the session's turn, the
tenant's rate limit and token budget. Every check runs before anything is taken, so a refused
request consumes no rate token, budget or turn (BUD-1013, ADM-1037); ``abort`` gives everything
back when a later step (the queue) refuses the task after all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from llorch.reference.core.budgets import RateLimiter, Reservation, TokenBudgets
from llorch.reference.core.placement import Snapshot
from llorch.reference.core.sessions import Sessions
from llorch.reference.core.types import Identity, Priority, TaskRequest
from llorch.reference.errors import ErrorCode, InvalidParams, LlorchError, NotFound

_UINT64 = 1 << 64


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """What a request is checked against; ``pools`` maps each pool id to its replica ids."""

    models: frozenset[str]
    pools: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_tokens: int = 4096
    max_prompt_bytes: int = 65536
    max_stop: int = 4
    max_stop_chars: int = 64
    max_temperature: float = 2.0


def _invalid(field_name: str, problem: str) -> InvalidParams:
    # req: ADM-1015
    return InvalidParams(f"{field_name}: {problem}")


def _finite_in(value: float, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


def validate(request: TaskRequest, limits: AdmissionLimits) -> None:
    """Raise the first problem found, naming the field; return quietly when the request is valid."""
    if not request.model:
        raise _invalid("model", "required")
    # req: ADM-1010
    if not request.prompt:
        raise _invalid("prompt", "must not be empty")
    size = len(request.prompt.encode("utf-8"))
    if size > limits.max_prompt_bytes:
        # req: SEC-1015
        raise InvalidParams(f"prompt: {size} bytes exceeds the limit of {limits.max_prompt_bytes}",
                            code=ErrorCode.PAYLOAD_TOO_LARGE)
    # req: ADM-1009
    if isinstance(request.max_tokens, bool) or not 1 <= request.max_tokens <= limits.max_tokens:
        raise _invalid("max_tokens", f"must be between 1 and {limits.max_tokens}, got {request.max_tokens}")
    # req: ADM-1013
    if not isinstance(request.priority, Priority):
        raise _invalid("priority", "must be one of high, normal, low")
    if request.deadline_ms < 0:
        raise _invalid("deadline_ms", "must be 0 (none) or positive")
    _validate_sampler(request, limits)
    _validate_placement(request, limits)
    # req: ADM-1012
    if request.model not in limits.models:
        raise NotFound(f"model {request.model!r} not found", code=ErrorCode.MODEL_NOT_FOUND)


def _validate_sampler(request: TaskRequest, limits: AdmissionLimits) -> None:
    s = request.sampler
    # req: ADM-1011, ADM-1200
    if not _finite_in(s.temperature, 0.0, limits.max_temperature):
        raise _invalid("sampler.temperature", f"must be between 0 and {limits.max_temperature}")
    if not _finite_in(s.top_p, 0.0, 1.0):
        raise _invalid("sampler.top_p", "must be between 0 and 1")
    if isinstance(s.top_k, bool) or not isinstance(s.top_k, int) or s.top_k < 0:
        raise _invalid("sampler.top_k", "must be a non-negative integer (0 = disabled)")
    if not _finite_in(s.repeat_penalty, 0.0, math.inf):
        raise _invalid("sampler.repeat_penalty", "must be non-negative (0 = engine default)")
    if s.seed is not None and not 0 <= s.seed < _UINT64:
        raise _invalid("sampler.seed", "must fit an unsigned 64-bit integer")
    # req: ADM-1201
    if len(s.stop) > limits.max_stop:
        raise _invalid("sampler.stop", f"at most {limits.max_stop} sequences, got {len(s.stop)}")
    for i, stop in enumerate(s.stop):
        if not stop or len(stop) > limits.max_stop_chars:
            raise _invalid(f"sampler.stop[{i}]", f"must hold 1 to {limits.max_stop_chars} characters")


def _validate_placement(request: TaskRequest, limits: AdmissionLimits) -> None:
    where = request.placement
    # req: SCH-1008
    if where.pin_replica and not where.pin_pool:
        raise _invalid("placement.pin_replica", "needs placement.pin_pool")
    avoided = set(where.avoid_pools)
    # req: SCH-1009
    if where.pin_pool and where.pin_pool in avoided:
        raise _invalid("placement.avoid_pools", f"pool {where.pin_pool!r} is also placement.pin_pool")
    for name in where.prefer_pools:
        if name in avoided:
            raise _invalid("placement.avoid_pools", f"pool {name!r} is also in placement.prefer_pools")
    named = [("placement.pin_pool", where.pin_pool)] if where.pin_pool else []
    named += [("placement.prefer_pools", p) for p in where.prefer_pools]
    named += [("placement.avoid_pools", p) for p in where.avoid_pools]
    for field_name, pool_id in named:
        if pool_id not in limits.pools:
            # req: SCH-1007, SCH-1201
            raise NotFound(f"{field_name}: pool {pool_id!r} not found", code=ErrorCode.POOL_NOT_FOUND)
    if where.pin_replica and where.pin_replica not in limits.pools[where.pin_pool]:
        # req: SCH-1200
        raise _invalid("placement.pin_replica",
                       f"pool {where.pin_pool!r} has no replica {where.pin_replica!r}")


def estimate_prompt_tokens(prompt: str) -> int:
    """An upper bound of the prompt's token count without a tokenizer: its UTF-8 bytes.

    Byte-level tokenizers never produce more tokens than bytes (special tokens aside), so a
    reservation built on it covers what the engine will count (BUD-1002).
    """
    return len(prompt.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Admitted:
    """An accepted request and what it holds: settle or abort it exactly once."""

    request: TaskRequest
    tenant: str
    reservation: Reservation
    prompt_tokens: int
    took_rate_token: bool = True


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    admitted_total: int
    aborted_total: int
    refused_total: int
    refused_by_code: Mapping[ErrorCode, int]


class Admitter:
    """Runs the checks of one submit and takes what it needs; owned by the runtime."""

    def __init__(self, limits: AdmissionLimits, budgets: TokenBudgets, rates: RateLimiter,
                 sessions: Sessions) -> None:
        self.limits = limits
        self.budgets = budgets
        self.rates = rates
        self.sessions = sessions
        self._admitted = self._aborted = 0
        self._refused: dict[ErrorCode, int] = {}

    def admit(self, request: TaskRequest, identity: Identity, now_ms: int, *,
              snapshot: Snapshot | None = None, prompt_tokens: int | None = None) -> Admitted:
        """Validate and check everything, then reserve; raise the first typed refusal."""
        tenant = identity.tenant
        try:
            validate(request, self.limits)
            if snapshot is not None:
                snapshot.check(request)
            if request.session_id:
                self.sessions.check_turn(request.session_id, tenant, now_ms)
            self.rates.check(tenant, now_ms)
            in_tokens = estimate_prompt_tokens(request.prompt) if prompt_tokens is None else prompt_tokens
            cost = request.max_tokens + in_tokens
            self.budgets.check(tenant, cost, now_ms)
        except LlorchError as exc:
            self._refused[exc.code] = self._refused.get(exc.code, 0) + 1
            raise
        # Nothing was taken above; from here on nothing can refuse (one synchronous step).
        # req: BUD-1013, ADM-1037
        self.rates.take(tenant, now_ms)
        reservation = self.budgets.reserve(tenant, cost, now_ms)
        if request.session_id:
            self.sessions.record_turn(request.session_id, tenant, now_ms)
        self._admitted += 1
        return Admitted(request, tenant, reservation, in_tokens)

    def abort(self, admitted: Admitted, now_ms: int) -> None:
        """Undo ``admit`` (the queue refused the task): budget, rate token and session turn back."""
        self.budgets.release(admitted.reservation, now_ms)
        self.rates.refund(admitted.tenant, now_ms)
        if admitted.request.session_id:
            self.sessions.refund_turn(admitted.request.session_id, admitted.tenant)
        self._aborted += 1

    def settle(self, admitted: Admitted, tokens_in: int, tokens_out: int, now_ms: int) -> int:
        """At the task's terminal state: charge what it consumed, return the rest; session usage.

        Idempotent: a second call charges nothing. Returns the tokens charged to the budget.
        """
        charged = self.budgets.settle(admitted.reservation, tokens_in + tokens_out, now_ms)
        if admitted.request.session_id and charged:
            self.sessions.add_usage(admitted.request.session_id, tokens_in + tokens_out)
        return charged

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(self._admitted, self._aborted, sum(self._refused.values()),
                                   MappingProxyType(dict(self._refused)))


__all__ = ["AdmissionLimits", "AdmissionStatistics", "Admitted", "Admitter", "estimate_prompt_tokens",
           "validate"]
