"""Per-tenant token budgets and request rate limits, pure and clock-free (``now_ms`` passed in).

Budgets are reserve-then-settle so that concurrency cannot overspend: admission reserves the most a
task can consume (``max_tokens`` plus the prompt's tokens); the end of the task settles what it
actually consumed and returns the rest. The ledger keeps ``used + reserved ≤ limit`` at every step,
whatever the interleaving of reserves and settles.

Rate limits are a token bucket per tenant (``burst`` requests, refilled at ``requests_per_s``), kept
in integer micro-tokens so that the arithmetic, and thus ``retry_after_ms``, is exact.

Both follow the ``check`` / ``take`` split: ``check`` raises the typed refusal without changing
anything, ``take`` commits; admission checks everything first so a refused request consumes nothing
(BUD-1013).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from llorch.reference.errors import ErrorCode, Overloaded

_MICRO = 1_000_000  # micro-tokens per rate token


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A tenant's token budget: ``tokens`` per period (None = unlimited); ``period_ms`` 0 = never renews."""

    tokens: int | None = None
    period_ms: int = 0


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """A tenant's request rate: ``requests_per_s`` sustained, ``burst`` at once (None = unlimited)."""

    requests_per_s: float | None = None
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens set aside for one task; hand it back to ``settle`` exactly once."""

    reservation_id: int
    tenant: str
    tokens: int


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    tenant: str
    limit: int | None
    used: int
    reserved: int
    period_start_ms: int

    @property
    def remaining(self) -> int | None:
        """What a new reservation may still take (BUD-1009's header); None when unlimited."""
        return None if self.limit is None else max(0, self.limit - self.used - self.reserved)


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    reserved_total: int
    settled_total: int
    refused_total: int
    outstanding: int


@dataclass(slots=True)
class _Account:
    used: int = 0
    reserved: int = 0
    period_start_ms: int = 0


class BudgetExceeded(Overloaded):
    """Code ``BUDGET_EXCEEDED``, policy ``budget.tokens``."""

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        # req: BUD-1001
        super().__init__(message, code=ErrorCode.BUDGET_EXCEEDED, retriable=True,
                         retry_after_ms=retry_after_ms, policy_label="budget.tokens")


class RateLimited(Overloaded):
    """Code ``RATE_LIMITED``, policy ``rate.requests``."""

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        # req: BUD-1010
        super().__init__(message, code=ErrorCode.RATE_LIMITED, retriable=True,
                         retry_after_ms=max(1, retry_after_ms), policy_label="rate.requests")


P = TypeVar("P", BudgetPolicy, RatePolicy)


def _lookup(policy_for: Callable[[str], P] | Mapping[str, P] | P, unlimited: P) -> Callable[[str], P]:
    """One policy for all, a table by tenant (``"*"`` = everyone else), or a function."""
    if isinstance(policy_for, (BudgetPolicy, RatePolicy)):
        fixed = policy_for
        return lambda _tenant: fixed
    if isinstance(policy_for, Mapping):
        table = dict(policy_for)
        return lambda tenant: table.get(tenant, table.get("*", unlimited))
    return policy_for


class TokenBudgets:
    """The ledger of every tenant's token budget."""

    def __init__(self, policy_for: Callable[[str], BudgetPolicy] | Mapping[str, BudgetPolicy] | BudgetPolicy
                 = BudgetPolicy(),
                 *, no_period_retry_after_ms: int = 60_000) -> None:
        self._policy_for = _lookup(policy_for, BudgetPolicy())
        self._accounts: dict[str, _Account] = {}
        self._outstanding: dict[int, Reservation] = {}
        self._ids = itertools.count(1)
        self._no_period_retry_after_ms = no_period_retry_after_ms
        self._reserved_total = self._settled_total = self._refused_total = 0

    def _account(self, tenant: str, now_ms: int) -> tuple[_Account, BudgetPolicy]:
        """The tenant's account, renewed if a new period started (reservations carry over)."""
        policy = self._policy_for(tenant)
        account = self._accounts.setdefault(tenant, _Account())
        if policy.period_ms > 0:
            start = now_ms - now_ms % policy.period_ms
            if start > account.period_start_ms:
                # req: BUD-1008
                account.used = 0
                account.period_start_ms = start
        return account, policy

    def status(self, tenant: str, now_ms: int) -> BudgetStatus:
        account, policy = self._account(tenant, now_ms)
        return BudgetStatus(tenant, policy.tokens, account.used, account.reserved, account.period_start_ms)

    def check(self, tenant: str, tokens: int, now_ms: int) -> None:
        """Raise ``BudgetExceeded`` if reserving ``tokens`` now would overspend; change nothing."""
        if tokens < 0:
            raise ValueError("cannot reserve a negative number of tokens")
        account, policy = self._account(tenant, now_ms)
        if policy.tokens is None:
            return
        # req: BUD-1004, BUD-1005
        available = policy.tokens - account.used - account.reserved
        if tokens > available:
            self._refused_total += 1
            if policy.period_ms > 0:
                # req: BUD-1007
                retry = account.period_start_ms + policy.period_ms - now_ms
            else:
                retry = self._no_period_retry_after_ms
            raise BudgetExceeded(
                f"token budget of tenant {tenant!r} exceeded: {tokens} tokens asked, "
                f"{max(0, available)} of {policy.tokens} left", retry_after_ms=max(1, retry))

    def reserve(self, tenant: str, tokens: int, now_ms: int) -> Reservation:
        """Check, then set ``tokens`` aside for one task (BUD-1002)."""
        self.check(tenant, tokens, now_ms)
        account, _ = self._account(tenant, now_ms)
        account.reserved += tokens
        reservation = Reservation(next(self._ids), tenant, tokens)
        self._outstanding[reservation.reservation_id] = reservation
        self._reserved_total += 1
        return reservation

    def settle(self, reservation: Reservation, consumed: int, now_ms: int) -> int:
        """Charge what the task consumed (at most its reservation) and return the rest.

        Returns the tokens charged. Settling twice, or a reservation this ledger did not make, is a
        no-op returning 0, so every terminal path may call it without double counting.
        """
        # req: BUD-1003, BUD-1200
        if self._outstanding.pop(reservation.reservation_id, None) is None:
            return 0
        account, _ = self._account(reservation.tenant, now_ms)
        charged = max(0, min(consumed, reservation.tokens))
        account.reserved -= reservation.tokens
        account.used += charged
        self._settled_total += 1
        return charged

    def release(self, reservation: Reservation, now_ms: int) -> None:
        """Give the whole reservation back (the task was never accepted after all)."""
        self.settle(reservation, 0, now_ms)

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self._reserved_total, self._settled_total, self._refused_total,
                                len(self._outstanding))


@dataclass(slots=True)
class _Bucket:
    level: int  # micro-tokens
    at_ms: int


@dataclass(frozen=True, slots=True)
class RateStatistics:
    allowed_total: int
    refused_total: int
    tenants: int


class RateLimiter:
    """Token buckets per tenant: ``check`` raises ``RateLimited`` with the exact wait; ``take`` spends."""

    def __init__(self, policy_for: Callable[[str], RatePolicy] | Mapping[str, RatePolicy] | RatePolicy
                 = RatePolicy()) -> None:
        self._policy = _lookup(policy_for, RatePolicy())
        self._buckets: dict[str, _Bucket] = {}
        self._allowed = self._refused = 0

    @staticmethod
    def _shape(policy: RatePolicy) -> tuple[int, int] | None:
        """(capacity in micro-tokens, refill in micro-tokens per ms), or None when unlimited."""
        if policy.requests_per_s is None:
            return None
        # req: BUD-1201
        burst = policy.burst if policy.burst is not None else max(1, round(policy.requests_per_s))
        refill = max(1, round(policy.requests_per_s * _MICRO / 1000))
        return burst * _MICRO, refill

    def _bucket(self, tenant: str, now_ms: int, shape: tuple[int, int]) -> _Bucket:
        capacity, refill = shape
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(capacity, now_ms)
        elif now_ms > bucket.at_ms:
            bucket.level = min(capacity, bucket.level + (now_ms - bucket.at_ms) * refill)
            bucket.at_ms = now_ms
        return bucket

    def check(self, tenant: str, now_ms: int) -> None:
        """Raise ``RateLimited`` when the tenant's bucket holds less than one request; change nothing."""
        shape = self._shape(self._policy(tenant))
        if shape is None:
            return
        # req: BUD-1011, BUD-1012
        bucket = self._bucket(tenant, now_ms, shape)
        if bucket.level < _MICRO:
            self._refused += 1
            wait = -(-(_MICRO - bucket.level) // shape[1])  # ceil
            raise RateLimited(f"request rate of tenant {tenant!r} exceeded", retry_after_ms=wait)

    def take(self, tenant: str, now_ms: int) -> None:
        """Check, then spend one request from the tenant's bucket."""
        self.check(tenant, now_ms)
        shape = self._shape(self._policy(tenant))
        self._allowed += 1
        if shape is not None:
            self._buckets[tenant].level -= _MICRO

    def refund(self, tenant: str, now_ms: int) -> None:
        """Give one request back (the queue refused the task after admission took the token)."""
        shape = self._shape(self._policy(tenant))
        if shape is not None:
            bucket = self._bucket(tenant, now_ms, shape)
            bucket.level = min(shape[0], bucket.level + _MICRO)

    def statistics(self) -> RateStatistics:
        return RateStatistics(self._allowed, self._refused, len(self._buckets))


__all__ = ["BudgetExceeded", "BudgetPolicy", "BudgetStatistics", "BudgetStatus", "RateLimited", "RateLimiter",
           "RatePolicy", "RateStatistics", "Reservation", "TokenBudgets"]
