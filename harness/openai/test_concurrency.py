"""Several streams at once: each must arrive whole — a proxy that mixes or truncates them under
load corrupts every client behind it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from llorch.harness.openai.checks import PATHS, body_of, decode_stream
from llorch.harness.openai.conftest import OpenAITarget
from llorch.harness.openai.probes import OpenAIProbe, StreamExchange

STREAMS = 8


@pytest.fixture(scope="module")
def concurrent_streams(openai_target: OpenAITarget) -> list[StreamExchange]:
    """STREAMS identical greedy chat streams started together on one async client."""
    oai = OpenAIProbe(openai_target.base_url, openai_target.model, openai_target.token)
    body = {**body_of(oai, "chat", max_tokens=12), "stream": True}

    async def run() -> list[StreamExchange]:
        async with httpx.AsyncClient(timeout=oai.timeout,
                                     limits=httpx.Limits(max_connections=STREAMS)) as client:
            return await asyncio.gather(*(oai.astream(client, PATHS["chat"], body) for _ in range(STREAMS)))

    return asyncio.run(run())


@pytest.mark.req("OAI-1049")
def test_concurrent_streams_complete_intact(oai: OpenAIProbe,
                                            concurrent_streams: list[StreamExchange]) -> None:
    for i, ex in enumerate(concurrent_streams):
        facts = decode_stream(oai, "chat", ex)
        done = ex.done_index
        oai.check(done is not None and done == len(ex.events) - 1,
                  f"stream {i} of {STREAMS} did not end with `data: [DONE]`", ex.evidence)
        oai.check(list(facts.choices) == [0] and len(facts.choices[0].finishes) == 1,
                  f"stream {i} of {STREAMS} did not carry exactly one choice with one finish_reason",
                  ex.evidence)
        oai.check(facts.text(0), f"stream {i} of {STREAMS} carried no text", ex.evidence)


@pytest.mark.req("OAI-1020")
def test_concurrent_streams_distinct_ids(oai: OpenAIProbe, concurrent_streams: list[StreamExchange]) -> None:
    ids: dict[str, int] = {}
    for i, ex in enumerate(concurrent_streams):
        first = next((chunk for _ev, chunk in ex.chunks() if isinstance(chunk, dict)), None)
        if first is None:
            pytest.skip(f"stream {i} carried no JSON chunk (OAI-1049's failure): no id to compare")
        stream_id = str(first.get("id"))
        oai.check(stream_id not in ids, f"streams {ids.get(stream_id)} and {i} both used id {stream_id!r}",
                  ex.evidence)
        ids[stream_id] = i


BURST = 32


@pytest.mark.req("OAI-1052")
def test_429_carries_retry_after(oai: OpenAIProbe) -> None:
    """A burst of small requests; whatever 429 the target answers must say when to retry. A target
    that absorbs the burst without a 429 cannot be checked this way (skipped, with the reason)."""
    body = oai.chat_body("Say hi.", max_tokens=1, temperature=0)

    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        limits = httpx.Limits(max_connections=BURST)
        async with httpx.AsyncClient(timeout=oai.timeout, limits=limits) as client:
            async def one() -> tuple[int, dict[str, str], bytes]:
                r = await client.post(oai.url(PATHS["chat"]), json=body, headers=oai.headers())
                return r.status_code, dict(r.headers), r.content
            return await asyncio.gather(*(one() for _ in range(BURST)))

    answers = asyncio.run(run())
    limited = [a for a in answers if a[0] == 429]
    if not limited:
        pytest.skip(f"no 429 in a burst of {BURST} requests: the target absorbed it")
    for status, headers, raw in limited:
        oai.check("retry-after" in headers, "a 429 answer without a Retry-After header",
                  f"--- request\nPOST {oai.url(PATHS['chat'])} (x{BURST} concurrently)\n"
                  f"--- response HTTP {status} headers={headers}\n{raw[:400]!r}")
