"""Checks shared by the OpenAI-compatible suite's tests: decoding a stream into per-choice facts, the
error envelope, and the *unsupported* outcome.

Each function fails through :meth:`OpenAIProbe.fail`, so the request and the offending raw bytes
travel with the failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from llorch.harness.openai.probes import Exchange, OpenAIProbe, SSEEvent, StreamExchange, is_error_envelope

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "Kind",
    "StreamFacts",
    "body_of",
    "expect_error",
    "expect_ok",
    "read_stream",
    "skip_if_refused",
]

Kind = Literal["chat", "completions"]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PATHS: dict[Kind, str] = {"chat": CHAT, "completions": COMPLETIONS}
CHUNK_OBJECT: dict[Kind, str] = {"chat": "chat.completion.chunk", "completions": "text_completion"}
OBJECT: dict[Kind, str] = {"chat": "chat.completion", "completions": "text_completion"}

# A prompt a small instruction model answers at length, so limits (max_tokens, stop) are reached.
PROMPT = "Count from 1 to 50, separated by commas."


def body_of(oai: OpenAIProbe, kind: Kind, **extra: Any) -> dict[str, Any]:
    """A request body of ``kind`` with the suite's prompt; greedy unless ``extra`` says otherwise."""
    extra.setdefault("temperature", 0)
    if kind == "chat":
        return oai.chat_body(PROMPT, **extra)
    return oai.completion_body(PROMPT, **extra)


def choice_text(kind: Kind, choice: dict[str, Any]) -> str:
    """The generated text of a non-streamed choice."""
    if kind == "chat":
        message = choice.get("message") or {}
        return str(message.get("content") or "")
    return str(choice.get("text") or "")


def expect_ok(oai: OpenAIProbe, ex: Exchange, what: str) -> dict[str, Any]:
    """A 200 with a JSON object body; anything else fails with the response as evidence."""
    oai.check(ex.status == 200, f"{what}: expected HTTP 200, got {ex.status}", ex.evidence)
    body = ex.json_or_none()
    oai.check(isinstance(body, dict), f"{what}: the body is not a JSON object", ex.evidence)
    assert isinstance(body, dict)
    return body


def skip_if_refused(oai: OpenAIProbe, ex: Exchange, feature: str) -> None:
    """The *unsupported* outcome: a target may refuse an OPTIONAL feature with a proper 4xx error.

    Only tests of optional features call this; a 4xx on a MUST of profile ``openai`` is a failure.
    """
    if 400 <= ex.status < 500 and is_error_envelope(ex.json_or_none()):
        message = ex.json()["error"]["message"]
        pytest.skip(f"unsupported: {feature} (HTTP {ex.status}: {message[:200]})")
    oai.check(not 400 <= ex.status < 500,
              f"{feature} was refused with HTTP {ex.status}, but not in OpenAI's error envelope "
              '{"error": {"message": str, "type": str, "param": …, "code": …}}, so it is no proper refusal',
              ex.evidence)


def expect_error(oai: OpenAIProbe, ex: Exchange, status: int, what: str) -> dict[str, Any]:
    """A client mistake: never a 5xx, the expected status, and OpenAI's error envelope."""
    oai.check(ex.status < 500, f"{what}: a client mistake was answered with server error {ex.status}",
              ex.evidence)
    oai.check(ex.status == status, f"{what}: expected HTTP {status}, got {ex.status}", ex.evidence)
    body = ex.json_or_none()
    oai.check(is_error_envelope(body),
              f"{what}: the body is not OpenAI's envelope "
              '{"error": {"message": str, "type": str, "param": …, "code": …}}', ex.evidence)
    assert isinstance(body, dict)
    return dict(body["error"])


@dataclass
class ChoiceFacts:
    """What one choice index received over a stream."""

    text: str = ""
    content_chunks: int = 0
    finishes: list[tuple[SSEEvent, Any]] = field(default_factory=list)
    last_event: SSEEvent | None = None
    tool_fragments: list[tuple[SSEEvent, dict[str, Any]]] = field(default_factory=list)


@dataclass
class StreamFacts:
    """A decoded stream: JSON chunks (before ``[DONE]``), per-choice facts and usage chunks."""

    ex: StreamExchange
    chunks: list[tuple[SSEEvent, dict[str, Any]]]
    choices: dict[int, ChoiceFacts]
    usage_chunks: list[tuple[SSEEvent, dict[str, Any]]]

    def text(self, index: int = 0) -> str:
        facts = self.choices.get(index)
        return facts.text if facts else ""

    def finish_reason(self, index: int = 0) -> Any:
        facts = self.choices.get(index)
        return facts.finishes[-1][1] if facts and facts.finishes else None


def read_stream(oai: OpenAIProbe, kind: Kind, body: dict[str, Any]) -> StreamFacts:
    """Send a streaming request and decode it; fails on a non-200, a non-JSON chunk or a chunk that is
    not an object, because nothing else can be checked then."""
    ex = oai.stream(PATHS[kind], {**body, "stream": True})
    return decode_stream(oai, kind, ex)


def decode_stream(oai: OpenAIProbe, kind: Kind, ex: StreamExchange) -> StreamFacts:
    oai.check(ex.status == 200, f"stream: expected HTTP 200, got {ex.status}", ex.evidence)
    oai.check(ex.transport_error is None, "stream: the connection broke before the response ended",
              lambda: ex.evidence(max(0, len(ex.raw) - 200), len(ex.raw)))
    chunks: list[tuple[SSEEvent, dict[str, Any]]] = []
    choices: dict[int, ChoiceFacts] = {}
    usage: list[tuple[SSEEvent, dict[str, Any]]] = []
    for ev, chunk in ex.chunks():
        if not isinstance(chunk, dict):
            oai.fail("stream: a data event is neither JSON object nor [DONE]", ex.event_evidence(ev))
        assert isinstance(chunk, dict)
        if "error" in chunk:
            oai.fail("stream: the server sent an error event instead of a completion",
                     ex.event_evidence(ev))
        chunks.append((ev, chunk))
        if chunk.get("usage"):
            usage.append((ev, chunk))
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or not isinstance(choice.get("index"), int):
                oai.fail("stream: a choice without an integer index", ex.event_evidence(ev))
            facts = choices.setdefault(choice["index"], ChoiceFacts())
            facts.last_event = ev
            piece = _delta_text(kind, choice)
            if piece:
                facts.text += piece
                facts.content_chunks += 1
            delta = choice.get("delta") if kind == "chat" else None
            if isinstance(delta, dict) and delta.get("tool_calls"):
                for frag in delta["tool_calls"]:
                    facts.tool_fragments.append((ev, frag))
            if choice.get("finish_reason") is not None:
                facts.finishes.append((ev, choice["finish_reason"]))
    return StreamFacts(ex, chunks, choices, usage)


def _delta_text(kind: Kind, choice: dict[str, Any]) -> str:
    if kind == "chat":
        delta = choice.get("delta")
        return str(delta.get("content") or "") if isinstance(delta, dict) else ""
    return str(choice.get("text") or "")
