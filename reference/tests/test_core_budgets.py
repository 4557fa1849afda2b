"""Token budgets (reserve, settle, renew) and per-tenant rate limits, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llorch.reference.core.budgets import (
    BudgetExceeded,
    BudgetPolicy,
    RateLimited,
    RateLimiter,
    RatePolicy,
    Reservation,
    TokenBudgets,
)
from llorch.reference.errors import ErrorCode, Overloaded

# One step of an interleaving: reserve N tokens for tenant T, or settle the k-th open reservation
# having consumed a fraction of it, or let time pass.
steps = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from("ab"), st.integers(0, 60)),
    st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 120)),
    st.tuples(st.just("tick"), st.integers(0, 400), st.just(0)),
), max_size=60)


@pytest.mark.req("BUD-1004", "BUD-1005", "BUD-1006", "BUD-1200")
@settings(max_examples=150, deadline=None)
@given(steps, st.sampled_from([0, 1000]))
def test_no_interleaving_of_reserves_and_settles_overspends(ops, period_ms):
    limit = 100
    budgets = TokenBudgets(BudgetPolicy(tokens=limit, period_ms=period_ms))
    now = 0
    open_: list[Reservation] = []
    charged: dict[tuple[str, int], int] = {}  # (tenant, period) -> tokens charged in it
    for op, x, y in ops:
        if op == "tick":
            now += x
        elif op == "reserve":
            before_other = budgets.status("b" if x == "a" else "a", now)
            try:
                open_.append(budgets.reserve(x, y, now))
            except BudgetExceeded as exc:
                assert exc.code is ErrorCode.BUDGET_EXCEEDED and exc.retry_after_ms > 0
            after_other = budgets.status("b" if x == "a" else "a", now)
            assert after_other == before_other  # one tenant never moves another's budget
        elif open_:
            reservation = open_.pop(x % len(open_))
            got = budgets.settle(reservation, y, now)
            assert got == min(y, reservation.tokens)
            period = now // period_ms if period_ms else 0
            key = (reservation.tenant, period)
            charged[key] = charged.get(key, 0) + got
        for tenant in "ab":
            status = budgets.status(tenant, now)
            assert status.used + status.reserved <= limit
    assert all(total <= limit for total in charged.values())


@pytest.mark.req("BUD-1001", "BUD-1002", "BUD-1003")
def test_reserve_then_settle_returns_the_unused_part():
    budgets = TokenBudgets({"acme": BudgetPolicy(tokens=100)})
    first = budgets.reserve("acme", 60, now_ms=0)
    with pytest.raises(Overloaded) as info:
        budgets.reserve("acme", 50, now_ms=0)  # 60 held + 50 > 100
    assert info.value.policy_label == "budget.tokens"
    assert budgets.settle(first, 20, now_ms=1) == 20
    budgets.reserve("acme", 50, now_ms=2)  # 20 used + 50 held <= 100
    status = budgets.status("acme", 2)
    assert (status.used, status.reserved, status.remaining) == (20, 50, 30)


def test_settle_is_idempotent_and_release_charges_nothing():
    budgets = TokenBudgets(BudgetPolicy(tokens=10))
    r = budgets.reserve("t", 10, 0)
    assert budgets.settle(r, 4, 0) == 4
    assert budgets.settle(r, 4, 0) == 0
    r2 = budgets.reserve("t", 6, 0)
    budgets.release(r2, 0)
    assert budgets.status("t", 0).used == 4
    assert budgets.statistics().outstanding == 0


@pytest.mark.req("BUD-1007", "BUD-1008")
def test_budget_renews_each_period_and_refusal_says_when():
    budgets = TokenBudgets(BudgetPolicy(tokens=10, period_ms=1000))
    budgets.settle(budgets.reserve("t", 10, 100), 10, 200)
    with pytest.raises(BudgetExceeded) as info:
        budgets.reserve("t", 1, 300)
    assert info.value.retry_after_ms == 700
    budgets.reserve("t", 10, 1000)  # a new period


def test_unlimited_tenants_are_never_refused_but_still_hold_reservations():
    budgets = TokenBudgets({"capped": BudgetPolicy(tokens=1)})
    r = budgets.reserve("free", 10**9, 0)
    assert budgets.status("free", 0).remaining is None
    assert budgets.settle(r, 5, 0) == 5


@pytest.mark.req("BUD-1010", "BUD-1011")
def test_rate_limit_refuses_over_the_burst_with_the_exact_wait():
    rates = RateLimiter({"slow": RatePolicy(requests_per_s=2, burst=2)})
    rates.take("slow", 0)
    rates.take("slow", 0)
    with pytest.raises(RateLimited) as info:
        rates.take("slow", 0)
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert info.value.policy_label == "rate.requests"
    assert info.value.retry_after_ms == 500  # one request refills in 1/2 s
    for _ in range(50):
        rates.take("other", 0)  # unlimited tenant, unaffected
    with pytest.raises(RateLimited):
        rates.take("slow", 499)
    rates.take("slow", 500)


@pytest.mark.req("BUD-1012")
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=40), st.integers(1, 5), st.sampled_from([1, 3, 10]))
def test_requests_within_any_window_never_exceed_burst_plus_refill(gaps, burst, rate):
    rates = RateLimiter(RatePolicy(requests_per_s=rate, burst=burst))
    now, allowed = 0, []
    for gap in gaps:
        now += gap
        try:
            rates.take("t", now)
            allowed.append(now)
        except RateLimited as exc:
            assert exc.retry_after_ms > 0
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            span = allowed[j] - start
            assert j - i + 1 <= burst + span * rate // 1000


@pytest.mark.req("BUD-1013")
def test_a_refused_request_takes_no_rate_token_and_refund_gives_one_back():
    rates = RateLimiter(RatePolicy(requests_per_s=1, burst=1))
    rates.take("t", 0)
    with pytest.raises(RateLimited):
        rates.check("t", 0)
    rates.refund("t", 0)
    rates.take("t", 0)
    assert rates.statistics().allowed_total == 2


@pytest.mark.req("BUD-1201")
def test_burst_defaults_to_the_rate_per_second():
    rates = RateLimiter(RatePolicy(requests_per_s=3))
    for _ in range(3):
        rates.take("t", 0)
    with pytest.raises(RateLimited):
        rates.take("t", 0)
