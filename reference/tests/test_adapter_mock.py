"""The deterministic mock engine: a pure function of its inputs, paced by a clock, stop sequences,
slots, bad input, cancel and failure injection."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.mock import VOCAB, ManualClock, MockAdapter, model_digest, stream_key, token_at
from llorch.reference.config import MockEngineConfig
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import Conflict, EngineFailure, ErrorCode, InvalidParams, NotFound, Unavailable

pytestmark = pytest.mark.anyio
FAST = MockEngineConfig(tokens_per_s=0, ttft_ms=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def req(rid: str = "r", prompt: str = "tell me a story", max_tokens: int = 16,
        **sampler: object) -> GenerateRequest:
    return GenerateRequest(rid, "m", prompt, max_tokens, SamplerParams(**sampler))  # type: ignore[arg-type]


async def collect(adapter: MockAdapter, request: GenerateRequest) -> list[object]:
    return [ev async for ev in adapter.generate(request)]


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, GenToken))


@pytest.mark.req("ADP-1032", "ADP-1030")
async def test_stream_is_a_pure_function_of_its_inputs_whatever_ran_before():
    a = MockAdapter("m", FAST)
    b = MockAdapter("m", FAST, replica_id="other")
    first = await collect(a, req(seed=7, temperature=0.8))
    await collect(a, req(prompt="something else", seed=1, temperature=0.8))  # history in between
    again = await collect(a, req(seed=7, temperature=0.8))
    elsewhere = await collect(b, req(seed=7, temperature=0.8))
    assert first == again == elsewhere
    assert text_of(first) != text_of(await collect(a, req(seed=8, temperature=0.8)))
    assert text_of(first) != text_of(await collect(a, req(prompt="tell me a poem", seed=7, temperature=0.8)))
    other_version = MockAdapter("m", MockEngineConfig(tokens_per_s=0, ttft_ms=0, engine_version="2"))
    assert text_of(first) != text_of(await collect(other_version, req(seed=7, temperature=0.8)))


@pytest.mark.req("ADP-1301")
@settings(max_examples=40, deadline=None)
@given(prompt=st.text(min_size=1, max_size=40), seed=st.integers(0, 2**64 - 1), n=st.integers(1, 40))
def test_shorter_max_tokens_gives_a_prefix(prompt, seed, n):
    async def tokens(max_tokens: int) -> list[tuple[int, str]]:
        m = MockAdapter("m", FAST)
        request = GenerateRequest("r", "m", prompt, max_tokens, SamplerParams(temperature=1.0, seed=seed))
        return [(e.token_id, e.text) async for e in m.generate(request) if isinstance(e, GenToken)]

    short, longer = asyncio.run(tokens(n)), asyncio.run(tokens(n + 7))
    assert len(short) == n and longer[:n] == short
    key = stream_key("m", FAST.engine_version, prompt, SamplerParams(temperature=1.0, seed=seed))
    assert longer == [token_at(key, i) for i in range(n + 7)]
    assert all(VOCAB[tid] == text for tid, text in longer)


@pytest.mark.req("ADP-1302")
async def test_greedy_sampling_ignores_the_seed():
    m = MockAdapter("m", FAST)
    assert text_of(await collect(m, req(seed=1))) == text_of(await collect(m, req(seed=2)))


@pytest.mark.req("ADP-1014", "ADP-1015", "ADP-1016")
async def test_grammar_indices_and_length_finish():
    events = await collect(MockAdapter("m", FAST), req(max_tokens=12))
    assert isinstance(events[0], GenStarted) and isinstance(events[-1], GenEnd)
    tokens = [e for e in events if isinstance(e, GenToken)]
    assert [t.index for t in tokens] == list(range(12))
    end = events[-1]
    assert isinstance(end, GenEnd)
    assert (end.tokens_out, end.finish_reason, end.prompt_tokens) == (12, "length", events[0].prompt_tokens)


@pytest.mark.req("ADP-1017", "ADP-1018")
async def test_stop_sequence_split_across_tokens_is_excluded_and_finishes_with_stop():
    m = MockAdapter("m", FAST)
    full = text_of(await collect(m, req(max_tokens=40)))
    # A stop sequence straddling a token boundary: the end of one word and the start of the next.
    words = re.findall(r" [^ ]+", full)
    boundary = len(words[0]) + len(words[1])
    stop = full[boundary - 2: boundary + 3]
    events = await collect(m, req(max_tokens=40, stop=(stop,)))
    out = text_of(events)
    assert stop not in out
    assert full.startswith(out) and len(out) < full.index(stop) + 1
    end = events[-1]
    assert isinstance(end, GenEnd) and end.finish_reason == "stop"
    assert end.tokens_out == sum(1 for e in events if isinstance(e, GenToken))


@pytest.mark.req("ADP-1019")
async def test_tokens_are_paced_by_the_clock_and_sent_as_produced():
    clock = ManualClock()
    m = MockAdapter("m", MockEngineConfig(tokens_per_s=10, ttft_ms=100), clock=clock)
    it = m.generate(req(max_tokens=3))
    assert isinstance(await anext(it), GenStarted)
    pending = asyncio.ensure_future(anext(it))
    await _until(lambda: clock.sleepers == 1)
    assert not pending.done()
    clock.advance(0.1)  # the TTFT passes: exactly the first token is due
    first = await pending
    assert isinstance(first, GenToken) and first.index == 0
    pending = asyncio.ensure_future(anext(it))
    await _until(lambda: clock.sleepers == 1)
    assert not pending.done()  # the second token is not produced before its time
    clock.advance(0.1)
    assert isinstance(await pending, GenToken)
    clock.advance(1.0)
    rest = [ev async for ev in it]
    assert isinstance(rest[-1], GenEnd) and rest[-1].tokens_out == 3


async def _until(predicate, limit: int = 1000) -> None:
    """Let the loop run until ``predicate`` holds (bounded number of turns, no timing)."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@pytest.mark.req("ADP-1003", "ADP-1004", "ADP-1005")
async def test_slots_are_counted_and_excess_is_refused_retriably():
    m = MockAdapter("m", MockEngineConfig(tokens_per_s=0, ttft_ms=0), slots=2)
    a, b = m.generate(req("a")), m.generate(req("b"))
    assert (await m.props()).free_slots == 0
    with pytest.raises(Unavailable) as info:
        m.generate(req("c"))
    assert info.value.code is ErrorCode.REPLICA_EXHAUSTED and info.value.retriable
    _ = [e async for e in a]
    assert (await m.props()).free_slots == 1
    await b.aclose()  # type: ignore[attr-defined]
    assert (await m.props()).free_slots == 2


@pytest.mark.req("ADP-1022", "ADP-1023", "ADP-1024", "ADP-1025")
async def test_bad_requests_are_refused_before_any_event_and_change_nothing():
    m = MockAdapter("m", MockEngineConfig(tokens_per_s=0, ttft_ms=0, max_tokens_limit=50), slots=2)
    running = m.generate(req("busy"))
    for bad in (req(max_tokens=0), req(max_tokens=51), req(prompt=""), req(rid="")):
        with pytest.raises(InvalidParams):
            m.generate(bad)
    with pytest.raises(NotFound) as nf:
        m.generate(GenerateRequest("x", "other-model", "hi", 5))
    assert nf.value.code is ErrorCode.MODEL_NOT_FOUND
    with pytest.raises(Conflict):
        m.generate(req("busy"))
    assert (await m.props()).free_slots == 1
    assert isinstance((await collect_iter(running))[-1], GenEnd)


async def collect_iter(it) -> list[object]:
    return [e async for e in it]


@pytest.mark.req("ADP-1026", "ADP-1027", "ADP-1029")
async def test_cancel_stops_the_stream_before_the_next_token_and_frees_the_slot():
    clock = ManualClock()
    m = MockAdapter("m", MockEngineConfig(tokens_per_s=10, ttft_ms=0), clock=clock)
    it = m.generate(req("c", max_tokens=100))
    got = [await anext(it), await anext(it)]  # started, token 0
    assert isinstance(got[-1], GenToken)
    assert await m.cancel("c") is True
    clock.advance(100)
    rest = [e async for e in it]
    assert rest == []
    assert (await m.props()).free_slots == 1
    assert await m.cancel("c") is False and await m.cancel("never") is False
    assert m.stats.cancels == ["c", "c", "never"] and m.stats.cancelled == 1


async def test_failure_injection_raises_the_configured_code_after_n_tokens():
    m = MockAdapter("m", MockEngineConfig(tokens_per_s=0, ttft_ms=0, fail_after=3, fail_code="WORKER_RESET"))
    seen: list[object] = []
    with pytest.raises(EngineFailure) as info:
        async for ev in m.generate(req(max_tokens=10)):
            seen.append(ev)
    assert info.value.code is ErrorCode.WORKER_RESET and info.value.retriable
    assert sum(isinstance(e, GenToken) for e in seen) == 3
    assert (await m.props()).free_slots == 1 and m.stats.failed == 1


@pytest.mark.req("ADP-1006", "ADP-1007", "ADP-1008", "ADP-1009")
async def test_engine_info_reports_mock_identity_and_digest():
    m = MockAdapter("m", MockEngineConfig(engine_version="3.1"))
    info = await m.engine_info()
    assert (info.engine, info.engine_version, info.model, info.is_mock, info.deterministic) == \
        ("mock", "3.1", "m", True, True)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", info.model_digest)
    assert info.model_digest == model_digest("m", "3.1") != model_digest("m", "3.2")
    assert (await m.props()).model == info.model


@pytest.mark.req("ADP-1001")
async def test_health_reports_unready_with_a_detail():
    m = MockAdapter("m")
    assert (await m.health()).ready
    m.ready = False
    h = await m.health()
    assert not h.ready and h.detail
    wrong = MockAdapter("x", MockEngineConfig(loadable_models=["m"]))
    h = await wrong.health()
    assert not h.ready and "x" in h.detail
