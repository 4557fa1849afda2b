"""Admission: field validation with precise messages, then session, rate and budget checks."""

from __future__ import annotations

import math

import pytest
from llorch.reference.core.admission import AdmissionLimits, Admitter, estimate_prompt_tokens, validate
from llorch.reference.core.budgets import BudgetPolicy, RateLimiter, RatePolicy, TokenBudgets
from llorch.reference.core.placement import PoolView, ReplicaView, Snapshot
from llorch.reference.core.sessions import Sessions
from llorch.reference.core.types import Identity, Placement, SamplerParams, TaskRequest
from llorch.reference.errors import ErrorCode, InvalidParams, LlorchError, NotFound, Overloaded

LIMITS = AdmissionLimits(models=frozenset({"m"}),
                         pools={"a": frozenset({"a-r0", "a-r1"}), "b": frozenset({"b-r0"})},
                         max_tokens=100, max_prompt_bytes=32)
ACME = Identity(tenant="acme")


def request(**kw) -> TaskRequest:
    fields = {"model": "m", "prompt": "hello", "max_tokens": 10} | kw
    return TaskRequest(**fields)


def refusal(req: TaskRequest) -> LlorchError:
    with pytest.raises(LlorchError) as info:
        validate(req, LIMITS)
    return info.value


@pytest.mark.req("ADM-1009", "ADM-1015")
@pytest.mark.parametrize("value", [0, -1, 101])
def test_max_tokens_out_of_range_names_the_field(value):
    error = refusal(request(max_tokens=value))
    assert error.code is ErrorCode.INVALID_PARAMS
    assert error.message.startswith("max_tokens:")


@pytest.mark.req("ADM-1010")
def test_empty_prompt_is_invalid():
    error = refusal(request(prompt=""))
    assert (error.code, error.message.split(":")[0]) == (ErrorCode.INVALID_PARAMS, "prompt")


@pytest.mark.req("SEC-1015")
def test_prompt_over_the_byte_limit_is_payload_too_large():
    assert refusal(request(prompt="é" * 17)).code is ErrorCode.PAYLOAD_TOO_LARGE  # 34 bytes
    validate(request(prompt="é" * 16), LIMITS)


@pytest.mark.req("ADM-1011", "ADM-1200", "ADM-1015")
@pytest.mark.parametrize(("field", "sampler"), [
    ("sampler.temperature", SamplerParams(temperature=-0.1)),
    ("sampler.temperature", SamplerParams(temperature=2.01)),
    ("sampler.temperature", SamplerParams(temperature=math.nan)),
    ("sampler.top_p", SamplerParams(top_p=1.5)),
    ("sampler.top_p", SamplerParams(top_p=-0.5)),
    ("sampler.top_k", SamplerParams(top_k=-1)),
    ("sampler.repeat_penalty", SamplerParams(repeat_penalty=-1.0)),
    ("sampler.repeat_penalty", SamplerParams(repeat_penalty=math.inf)),
    ("sampler.seed", SamplerParams(seed=-1)),
])
def test_sampler_out_of_range_names_the_field(field, sampler):
    error = refusal(request(sampler=sampler))
    assert error.code is ErrorCode.INVALID_PARAMS
    assert error.message.startswith(field + ":")


def test_sampler_edges_are_accepted():
    for sampler in (SamplerParams(temperature=2.0, top_p=0.0, top_k=0, repeat_penalty=0.0, seed=2**64 - 1),
                    SamplerParams(stop=("a" * 64,) * 4)):
        validate(request(sampler=sampler), LIMITS)


@pytest.mark.req("ADM-1201")
@pytest.mark.parametrize(("stop", "field"), [
    (("a",) * 5, "sampler.stop"), (("ok", ""), "sampler.stop[1]"), (("a" * 65,), "sampler.stop[0]"),
])
def test_stop_sequences_are_bounded(stop, field):
    error = refusal(request(sampler=SamplerParams(stop=stop)))
    assert error.code is ErrorCode.INVALID_PARAMS and error.message.startswith(field + ":")


@pytest.mark.req("ADM-1012")
def test_unknown_model_is_not_found():
    error = refusal(request(model="gpt-9"))
    assert isinstance(error, NotFound) and error.code is ErrorCode.MODEL_NOT_FOUND


@pytest.mark.req("ADM-1013")
def test_priority_outside_the_enum_is_invalid():
    error = refusal(request(priority=7))
    assert error.code is ErrorCode.INVALID_PARAMS and error.message.startswith("priority:")


def test_negative_deadline_is_invalid():
    assert refusal(request(deadline_ms=-5)).message.startswith("deadline_ms:")


@pytest.mark.req("SCH-1007", "SCH-1008", "SCH-1009", "SCH-1200", "SCH-1201")
@pytest.mark.parametrize(("placement", "code", "field"), [
    (Placement(pin_pool="zz"), ErrorCode.POOL_NOT_FOUND, "placement.pin_pool"),
    (Placement(pin_replica="a-r0"), ErrorCode.INVALID_PARAMS, "placement.pin_replica"),
    (Placement(pin_pool="a", avoid_pools=("a",)), ErrorCode.INVALID_PARAMS, "placement.avoid_pools"),
    (Placement(prefer_pools=("b",), avoid_pools=("b",)), ErrorCode.INVALID_PARAMS, "placement.avoid_pools"),
    (Placement(pin_pool="b", pin_replica="a-r0"), ErrorCode.INVALID_PARAMS, "placement.pin_replica"),
    (Placement(prefer_pools=("a", "zz")), ErrorCode.POOL_NOT_FOUND, "placement.prefer_pools"),
    (Placement(avoid_pools=("zz",)), ErrorCode.POOL_NOT_FOUND, "placement.avoid_pools"),
])
def test_placement_names_are_checked(placement, code, field):
    error = refusal(request(placement=placement))
    assert error.code is code and error.message.startswith(field + ":")


def admitter(*, tokens: int | None = None, rate: RatePolicy | None = None) -> Admitter:
    return Admitter(LIMITS, TokenBudgets(BudgetPolicy(tokens=tokens)), RateLimiter(rate or RatePolicy()),
                    Sessions(default_ttl_ms=10_000, default_max_turns=3))


@pytest.mark.req("BUD-1002")
def test_admit_reserves_max_tokens_plus_the_prompt():
    adm = admitter(tokens=1_000)
    admitted = adm.admit(request(prompt="hello", max_tokens=10), ACME, now_ms=0)
    assert admitted.reservation.tokens == 10 + estimate_prompt_tokens("hello")
    assert adm.admit(request(), ACME, 0, prompt_tokens=2).reservation.tokens == 12
    assert adm.budgets.status("acme", 0).reserved == 15 + 12


@pytest.mark.req("BUD-1013", "ADM-1037")
@pytest.mark.parametrize("cause", ["budget", "rate", "invalid", "session"])
def test_a_refused_submit_consumes_nothing(cause):
    adm = admitter(tokens=30, rate=RatePolicy(requests_per_s=1, burst=2))
    adm.sessions.create("s", "acme", 0, max_turns=1 if cause == "session" else 3)
    if cause == "rate":
        adm.admit(request(), ACME, 0)
        adm.admit(request(), ACME, 0)
    if cause == "session":
        adm.admit(request(session_id="s"), ACME, 0)

    def state() -> tuple[object, ...]:
        rates = adm.rates.statistics().allowed_total
        return adm.budgets.status("acme", 0), adm.sessions.get("s", "acme"), rates

    before = state()
    bad = {"budget": request(max_tokens=40, session_id="s"), "rate": request(session_id="s"),
           "invalid": request(max_tokens=0, session_id="s"), "session": request(session_id="s")}[cause]
    with pytest.raises(LlorchError) as info:
        adm.admit(bad, ACME, 0)
    expected = {"budget": ErrorCode.BUDGET_EXCEEDED, "rate": ErrorCode.RATE_LIMITED,
                "invalid": ErrorCode.INVALID_PARAMS, "session": ErrorCode.SESSION_EXPIRED}[cause]
    assert info.value.code is expected
    assert state() == before
    assert adm.statistics().refused_by_code[expected] == 1


@pytest.mark.req("ADM-1030", "ADM-1035", "BUD-1003")
def test_turns_usage_and_settlement_follow_the_task():
    adm = admitter(tokens=100)
    adm.sessions.create("s", "acme", 0)
    admitted = adm.admit(request(prompt="hi", max_tokens=20, session_id="s"), ACME, 0)
    assert adm.sessions.get("s", "acme").turns_used == 1
    assert adm.settle(admitted, tokens_in=2, tokens_out=5, now_ms=10) == 7
    assert adm.settle(admitted, tokens_in=2, tokens_out=5, now_ms=11) == 0  # once only
    assert adm.sessions.get("s", "acme").tokens_used == 7
    status = adm.budgets.status("acme", 11)
    assert (status.used, status.reserved) == (7, 0)


@pytest.mark.req("ADM-1037", "BUD-1013")
def test_abort_gives_back_budget_rate_token_and_turn():
    adm = admitter(tokens=22, rate=RatePolicy(requests_per_s=1, burst=1))
    adm.sessions.create("s", "acme", 0, max_turns=1)
    admitted = adm.admit(request(prompt="hi", max_tokens=20, session_id="s"), ACME, 0)
    adm.abort(admitted, 0)  # e.g. the queue refused it
    again = adm.admit(request(prompt="hi", max_tokens=20, session_id="s"), ACME, 0)
    assert again.reservation.tokens == 22
    assert adm.statistics().aborted_total == 1


def test_snapshot_fail_fast_happens_before_anything_is_taken():
    adm = admitter(tokens=100)
    down = Snapshot([PoolView("a", "m", False, (ReplicaView("a-r0", False, 1),))])
    with pytest.raises(LlorchError) as info:
        adm.admit(request(), ACME, 0, snapshot=down)
    assert info.value.code is ErrorCode.POOL_UNREADY
    assert adm.budgets.status("acme", 0).reserved == 0


def test_budget_refusal_is_an_overload_with_its_label():
    adm = admitter(tokens=5)
    with pytest.raises(Overloaded) as info:
        adm.admit(request(max_tokens=10), ACME, 0)
    assert info.value.policy_label == "budget.tokens" and info.value.retry_after_ms > 0
    with pytest.raises(InvalidParams):
        adm.admit(request(max_tokens=0), ACME, 0)
