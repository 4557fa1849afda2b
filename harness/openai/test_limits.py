"""``max_tokens`` and ``stop``: the limits a client relies on to bound cost and cut output."""

from __future__ import annotations

from typing import Any

import pytest
from llorch.harness.openai.checks import PATHS, Kind, body_of, choice_text, expect_ok, read_stream
from llorch.harness.openai.probes import OpenAIProbe

KINDS: list[Kind] = ["chat", "completions"]
LONG_PROMPT = " ".join(f"Item {i} is on the list." for i in range(1, 25)) + " Now count from 1 to 50."


def _generate(oai: OpenAIProbe, kind: Kind, stream: bool, body: dict[str, Any]) -> tuple[str, Any, Any, str]:
    """(text, finish_reason, usage or None, evidence) of one greedy request."""
    if stream:
        facts = read_stream(oai, kind, {**body, "stream_options": {"include_usage": True}})
        usage = facts.usage_chunks[0][1]["usage"] if facts.usage_chunks else None
        return facts.text(0), facts.finish_reason(0), usage, facts.ex.evidence()
    ex = oai.post(PATHS[kind], body)
    resp = expect_ok(oai, ex, kind)
    choice = (resp.get("choices") or [{}])[0]
    return choice_text(kind, choice), choice.get("finish_reason"), resp.get("usage"), ex.evidence()


@pytest.mark.req("OAI-1026", "OAI-1027")
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_max_tokens_respected(oai: OpenAIProbe, kind: Kind, stream: bool) -> None:
    max_tokens = 5
    body = body_of(oai, kind, max_tokens=max_tokens)
    if stream:
        facts = read_stream(oai, kind, {**body, "stream_options": {"include_usage": True}})
        chunks = facts.choices[0].content_chunks if 0 in facts.choices else 0
        oai.check(chunks <= max_tokens,
                  f"{chunks} content chunks (at least one token each) were streamed with "
                  f"max_tokens={max_tokens}", facts.ex.evidence)
        reason = facts.finish_reason(0)
        usage = facts.usage_chunks[0][1]["usage"] if facts.usage_chunks else None
        evidence = facts.ex.evidence()
    else:
        _text, reason, usage, evidence = _generate(oai, kind, False, body)
        oai.check(isinstance(usage, dict), "no usage to compare with max_tokens", evidence)
    if not isinstance(usage, dict):
        return  # a missing usage chunk is OAI-1021's failure; the chunk count was checked
    completion = usage.get("completion_tokens")
    oai.check(isinstance(completion, int) and completion <= max_tokens,
              f"completion_tokens={completion!r} exceeds max_tokens={max_tokens}", evidence)
    if reason == "length":
        oai.check(completion == max_tokens,
                  f'finish_reason "length" with completion_tokens={completion}, not {max_tokens}', evidence)


@pytest.mark.req("OAI-1028")
@pytest.mark.parametrize("kind", KINDS)
def test_max_tokens_counts_completion_only(oai: OpenAIProbe, kind: Kind) -> None:
    max_tokens = 6
    body = (oai.chat_body(LONG_PROMPT, max_tokens=max_tokens, temperature=0) if kind == "chat"
            else oai.completion_body(LONG_PROMPT, max_tokens=max_tokens, temperature=0))
    text, _reason, usage, evidence = _generate(oai, kind, False, body)
    oai.check(isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int)
              and isinstance(usage.get("completion_tokens"), int), "no usage in the response", evidence)
    oai.check(usage["prompt_tokens"] > max_tokens,
              f"the prompt must be longer than max_tokens for this check (prompt_tokens="
              f"{usage['prompt_tokens']})", evidence)
    oai.check(text != "" and usage["completion_tokens"] >= 1,
              f"a prompt of {usage['prompt_tokens']} tokens with max_tokens={max_tokens} produced no "
              "completion: max_tokens was applied to the prompt", evidence)


def _split_stop(oai: OpenAIProbe, kind: Kind) -> tuple[str, str, str]:
    """Pick a stop string that spans a chunk boundary of a greedy stream, with what must precede it.

    Returns (stop, text_before_stop, full_text)."""
    facts = read_stream(oai, kind, body_of(oai, kind, max_tokens=24))
    ex = facts.ex
    pieces: list[str] = []
    for _ev, chunk in facts.chunks:
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if kind == "chat" else choice.get("text")
            if choice.get("index") == 0 and piece:
                pieces.append(str(piece))
    full = "".join(pieces)
    for k in range(max(1, len(pieces) // 2), len(pieces)):
        left, right = pieces[k - 1], pieces[k]
        stop = left[-2:] + right[:2]
        if len(stop.strip()) >= 2:
            return stop, full[: full.find(stop)], full
    oai.fail("the greedy stream is too short to place a stop sequence across two chunks", ex.evidence())


def _stop_run(oai: OpenAIProbe, answers: dict[Any, Any], kind: Kind,
              stream: bool) -> tuple[str, str, str, Any, str]:
    """(stop, text before it, output, finish_reason, evidence): one run with a stop sequence serves the
    exclusion test and the finish_reason test."""
    key = ("stop", kind, stream)
    if key not in answers:
        stop, before, _full = _split_stop(oai, kind)
        text, reason, _usage, evidence = _generate(
            oai, kind, stream, body_of(oai, kind, max_tokens=24, stop=[stop]))
        answers[key] = (stop, before, text, reason, evidence)
    run: tuple[str, str, str, Any, str] = answers[key]
    return run


@pytest.mark.req("OAI-1030", "OAI-1031")
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_stop_excluded_across_tokens(oai: OpenAIProbe, openai_answers: dict[Any, Any], kind: Kind,
                                     stream: bool) -> None:
    stop, before, text, _reason, evidence = _stop_run(oai, openai_answers, kind, stream)
    oai.check(stop not in text,
              f"the output contains the stop sequence {stop!r} (it spans two streamed chunks)", evidence)
    oai.check(not text.startswith(before + stop[:1]),
              f"output continued into the stop sequence {stop!r}: {text!r}", evidence)


@pytest.mark.req("OAI-1030")
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_stop_ends_right_before(oai: OpenAIProbe, openai_answers: dict[Any, Any], kind: Kind,
                                stream: bool) -> None:
    stop, before, text, _reason, evidence = _stop_run(oai, openai_answers, kind, stream)
    if not before.startswith(text):
        pytest.skip(f"the output diverged from the first run before the stop sequence {stop!r}")
    oai.check(text == before,
              f"the output stops {len(before) - len(text)} characters short of the stop sequence {stop!r}: "
              f"{before[len(text):]!r} is missing before it", evidence)


@pytest.mark.req("OAI-1032")
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_stop_finish_reason(oai: OpenAIProbe, openai_answers: dict[Any, Any], kind: Kind,
                            stream: bool) -> None:
    stop, before, text, reason, evidence = _stop_run(oai, openai_answers, kind, stream)
    if not before.startswith(text):
        pytest.skip(f"the output diverged from the first run before the stop sequence {stop!r}")
    oai.check(reason == "stop", f"the output was cut at the stop sequence {stop!r} but "
              f"finish_reason={reason!r}", evidence)


@pytest.mark.req("OAI-1033")
@pytest.mark.parametrize("kind", KINDS)
def test_stop_as_string(oai: OpenAIProbe, kind: Kind) -> None:
    stop, _before, _full = _split_stop(oai, kind)
    ex = oai.post(PATHS[kind], body_of(oai, kind, max_tokens=24, stop=stop))
    resp = expect_ok(oai, ex, f"{kind} with stop as a plain string")
    text = choice_text(kind, (resp.get("choices") or [{}])[0])
    oai.check(stop not in text, f"stop given as a string {stop!r} was not applied", ex.evidence)


@pytest.mark.req("OAI-1029")
def test_max_completion_tokens(oai: OpenAIProbe) -> None:
    ex = oai.post(PATHS["chat"], body_of(oai, "chat", max_completion_tokens=4))
    resp = expect_ok(oai, ex, "chat with max_completion_tokens")
    completion = (resp.get("usage") or {}).get("completion_tokens")
    oai.check(isinstance(completion, int) and completion <= 4,
              f"max_completion_tokens=4 gave completion_tokens={completion!r}", ex.evidence)
