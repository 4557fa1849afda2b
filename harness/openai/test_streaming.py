"""Streamed chat and legacy completions: SSE framing, chunk fields, ``finish_reason``, ``[DONE]`` and
the usage chunk — the differences that break OpenAI clients most often.

Each stream is requested once per module and kind and checked by several tests, one requirement each.
"""

from __future__ import annotations

from functools import partial

import httpx
import pytest
from llorch.harness.openai.checks import (
    CHUNK_OBJECT,
    PATHS,
    Kind,
    body_of,
    choice_text,
    decode_stream,
    expect_ok,
)
from llorch.harness.openai.conftest import OpenAITarget
from llorch.harness.openai.probes import OpenAIProbe, StreamExchange

MAX_TOKENS = 6


def _probe(target: OpenAITarget, client: httpx.Client) -> OpenAIProbe:
    return OpenAIProbe(target.base_url, target.model, target.token, client=client)


@pytest.fixture(scope="module", params=["chat", "completions"])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plain_stream(openai_target: OpenAITarget, openai_http: httpx.Client, kind: Kind) -> StreamExchange:
    """One greedy stream without stream_options (raw; decoding is part of each test)."""
    oai = _probe(openai_target, openai_http)
    return oai.stream(PATHS[kind], body_of(oai, kind, max_tokens=MAX_TOKENS, stream=True))


@pytest.fixture(scope="module")
def usage_stream(openai_target: OpenAITarget, openai_http: httpx.Client, kind: Kind) -> StreamExchange:
    """The same request with ``stream_options.include_usage``."""
    oai = _probe(openai_target, openai_http)
    return oai.stream(PATHS[kind], body_of(oai, kind, max_tokens=MAX_TOKENS, stream=True,
                                           stream_options={"include_usage": True}))


@pytest.mark.req("OAI-1009")
def test_stream_content_type(oai: OpenAIProbe, plain_stream: StreamExchange) -> None:
    ex = plain_stream
    oai.check(ex.status == 200, f"expected HTTP 200, got {ex.status}", ex.evidence)
    media = ex.content_type.split(";")[0].strip().lower()
    oai.check(media == "text/event-stream",
              f"a stream must be served as text/event-stream, not {ex.content_type!r}", ex.evidence)


@pytest.mark.req("OAI-1010")
def test_events_are_json_objects(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    oai.check(facts.chunks, "no JSON chunk in the stream", plain_stream.evidence)


@pytest.mark.req("OAI-1011")
def test_stream_ends_with_done(oai: OpenAIProbe, plain_stream: StreamExchange) -> None:
    ex = plain_stream
    oai.check(ex.status == 200, f"expected HTTP 200, got {ex.status}", ex.evidence)
    oai.check(ex.done_index is not None, "the stream ended without `data: [DONE]`",
              lambda: ex.evidence(max(0, len(ex.raw) - 200), len(ex.raw)))


@pytest.mark.req("OAI-1012")
def test_nothing_after_done(oai: OpenAIProbe, plain_stream: StreamExchange) -> None:
    ex = plain_stream
    done = ex.done_index
    if done is None:
        pytest.skip("the stream has no `data: [DONE]` (OAI-1011's failure): nothing to check after it")
    tail = ex.raw[ex.events[done].end:]
    oai.check(tail.strip() == b"", f"{len(tail.strip())} bytes were sent after `data: [DONE]`",
              lambda: ex.evidence(ex.events[done].start, len(ex.raw)))


@pytest.mark.req("OAI-1013")
def test_chunk_object(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    for ev, chunk in facts.chunks:
        oai.check(chunk.get("object") == CHUNK_OBJECT[kind],
                  f'every chunk must have "object": {CHUNK_OBJECT[kind]!r}',
                  partial(plain_stream.event_evidence, ev))


@pytest.mark.req("OAI-1014")
def test_id_stable(oai: OpenAIProbe, kind: Kind, usage_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, usage_stream)
    oai.check(facts.chunks, "no JSON chunk in the stream", usage_stream.evidence)
    first_ev, first = facts.chunks[0]
    oai.check(isinstance(first.get("id"), str) and first["id"], 'the first chunk has no string "id"',
              lambda: usage_stream.event_evidence(first_ev))
    for ev, chunk in facts.chunks:
        oai.check(chunk.get("id") == first["id"], f'"id" changed within one stream (first {first["id"]!r})',
                  partial(usage_stream.event_evidence, ev))


@pytest.mark.req("OAI-1015")
def test_chunk_created_and_model(oai: OpenAIProbe, kind: Kind, usage_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, usage_stream)
    for ev, chunk in facts.chunks:
        oai.check(isinstance(chunk.get("created"), int) and not isinstance(chunk["created"], bool)
                  and isinstance(chunk.get("model"), str) and chunk["model"],
                  'every chunk must carry an integer "created" and a string "model"',
                  partial(usage_stream.event_evidence, ev))


@pytest.mark.req("OAI-1016")
@pytest.mark.parametrize("kind", ["chat"], indirect=True)
def test_chat_chunk_delta(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    for ev, chunk in facts.chunks:
        for choice in chunk.get("choices") or []:
            oai.check(isinstance(choice, dict) and isinstance(choice.get("index"), int)
                      and isinstance(choice.get("delta"), dict),
                      'each choice of a chat chunk must hold "index" and a "delta" object (possibly empty)',
                      partial(plain_stream.event_evidence, ev))
    oai.check(facts.text(0), "the stream carried no generated text", plain_stream.evidence)


@pytest.mark.req("OAI-1017")
@pytest.mark.parametrize("kind", ["chat"], indirect=True)
def test_first_delta_role(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    for ev, chunk in facts.chunks:
        for choice in chunk.get("choices") or []:
            if choice.get("index") == 0:
                oai.check((choice.get("delta") or {}).get("role") == "assistant",
                          'the first chunk of a choice should carry delta.role "assistant"',
                          partial(plain_stream.event_evidence, ev))
                return
    oai.fail("no chunk for choice 0", plain_stream.evidence())


@pytest.mark.req("OAI-1018")
def test_one_finish_reason_on_last_chunk(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    ex = plain_stream
    oai.check(0 in facts.choices, "no chunk for choice 0", ex.evidence)
    for index, choice in facts.choices.items():
        last = choice.last_event
        oai.check(choice.finishes, f"choice {index} never received a non-null finish_reason",
                  partial(ex.event_evidence, last) if last else ex.evidence)
        oai.check(len(choice.finishes) == 1,
                  f"choice {index} received {len(choice.finishes)} non-null finish_reason values, not one",
                  partial(ex.event_evidence, choice.finishes[-1][0]))
        event = choice.finishes[0][0]
        oai.check(event is last, f"choice {index} received chunks after its finish_reason",
                  partial(ex.event_evidence, last) if last else ex.evidence)


@pytest.mark.req("OAI-1019")
def test_stream_equals_plain(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    ex = oai.post(PATHS[kind], body_of(oai, kind, max_tokens=MAX_TOKENS))
    body = expect_ok(oai, ex, kind)
    text = choice_text(kind, (body.get("choices") or [{}])[0])
    oai.check(text == facts.text(0),
              f"greedy: streamed {facts.text(0)!r} but the non-streamed answer is {text!r}", ex.evidence)


@pytest.mark.req("OAI-1021")
def test_include_usage_chunk(oai: OpenAIProbe, kind: Kind, usage_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, usage_stream)
    ex = usage_stream
    oai.check(facts.usage_chunks, "stream_options.include_usage was set and no chunk carried usage",
              lambda: ex.evidence(max(0, len(ex.raw) - 300), len(ex.raw)))
    oai.check(len(facts.usage_chunks) == 1, f"{len(facts.usage_chunks)} chunks carried usage, not one",
              lambda: ex.event_evidence(facts.usage_chunks[1][0]))
    event, chunk = facts.usage_chunks[0]
    oai.check(chunk.get("choices") == [], 'the usage chunk must have "choices": []',
              lambda: ex.event_evidence(event))
    oai.check(facts.chunks[-1][0] is event, "the usage chunk must be the last chunk before `data: [DONE]`",
              lambda: ex.event_evidence(facts.chunks[-1][0]))


@pytest.mark.req("OAI-1022")
def test_usage_null_elsewhere(oai: OpenAIProbe, kind: Kind, usage_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, usage_stream)
    for ev, chunk in facts.chunks:
        if chunk.get("choices") == [] and chunk.get("usage"):
            continue
        oai.check("usage" in chunk and chunk["usage"] is None,
                  'with include_usage, chunks other than the usage chunk should carry "usage": null',
                  partial(usage_stream.event_evidence, ev))


@pytest.mark.req("OAI-1023")
def test_no_usage_chunk_unasked(oai: OpenAIProbe, kind: Kind, plain_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, plain_stream)
    for ev, chunk in facts.chunks:
        oai.check(not (chunk.get("choices") == [] and chunk.get("usage")),
                  "a usage chunk was sent without stream_options.include_usage",
                  partial(plain_stream.event_evidence, ev))


@pytest.mark.req("OAI-1024")
def test_streamed_usage_counts_stream(oai: OpenAIProbe, kind: Kind, usage_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, usage_stream)
    ex = usage_stream
    if not facts.usage_chunks:
        pytest.skip("the stream has no usage chunk (OAI-1021's failure): no count to compare")
    event, chunk = facts.usage_chunks[-1]
    completion = chunk["usage"].get("completion_tokens") if isinstance(chunk["usage"], dict) else None
    streamed = facts.choices[0].content_chunks if 0 in facts.choices else 0
    oai.check(isinstance(completion, int) and streamed <= completion,
              f"usage.completion_tokens={completion!r} but {streamed} content chunks (at least one token "
              "each) were streamed", partial(ex.event_evidence, event))
    # The same greedy request unstreamed: the same text must be counted the same.
    plain = oai.post(PATHS[kind], body_of(oai, kind, max_tokens=MAX_TOKENS))
    body = expect_ok(oai, plain, kind)
    if choice_text(kind, (body.get("choices") or [{}])[0]) == facts.text(0):
        other = (body.get("usage") or {}).get("completion_tokens")
        oai.check(other == completion,
                  f"the same text was counted {completion} tokens streamed and {other} unstreamed",
                  lambda: ex.event_evidence(event) + "\n" + plain.evidence())


@pytest.mark.req("OAI-1025")
def test_streamed_usage_total(oai: OpenAIProbe, kind: Kind, usage_stream: StreamExchange) -> None:
    facts = decode_stream(oai, kind, usage_stream)
    if not facts.usage_chunks:
        pytest.skip("the stream has no usage chunk (OAI-1021's failure): no total to check")
    event, chunk = facts.usage_chunks[-1]
    usage = chunk["usage"]
    oai.check(isinstance(usage, dict) and all(isinstance(usage.get(f), int) for f in
                                              ("prompt_tokens", "completion_tokens", "total_tokens"))
              and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"],
              "usage.total_tokens must equal prompt_tokens + completion_tokens",
              lambda: usage_stream.event_evidence(event))
