"""Non-streamed chat and legacy completions: the response object every client parses."""

from __future__ import annotations

from typing import Any

import pytest
from llorch.harness.openai.checks import OBJECT, PATHS, Kind, body_of, choice_text, expect_ok
from llorch.harness.openai.probes import Exchange, OpenAIProbe

KINDS: list[Kind] = ["chat", "completions"]


def _answer(oai: OpenAIProbe, kind: Kind) -> tuple[Exchange, dict[str, Any]]:
    ex = oai.post(PATHS[kind], body_of(oai, kind, max_tokens=8))
    return ex, expect_ok(oai, ex, kind)


@pytest.mark.parametrize("kind", [pytest.param("chat", marks=pytest.mark.req("OAI-1004")),
                                  pytest.param("completions", marks=pytest.mark.req("OAI-1005"))])
def test_response_shape(oai: OpenAIProbe, kind: Kind) -> None:
    ex, body = _answer(oai, kind)
    oai.check(isinstance(body.get("id"), str) and body["id"], '"id" must be a non-empty string', ex.evidence)
    oai.check(body.get("object") == OBJECT[kind], f'"object" must be {OBJECT[kind]!r}', ex.evidence)
    oai.check(isinstance(body.get("created"), int) and not isinstance(body["created"], bool),
              '"created" must be an integer (Unix seconds)', ex.evidence)
    oai.check(isinstance(body.get("model"), str) and body["model"], '"model" must be a string', ex.evidence)
    choices: Any = body.get("choices")
    oai.check(isinstance(choices, list) and len(choices) == 1, '"choices" must hold exactly one choice',
              ex.evidence)
    choice = choices[0]
    oai.check(isinstance(choice, dict) and choice.get("index") == 0, "the choice must have index 0",
              ex.evidence)
    oai.check("finish_reason" in choice, 'the choice must carry "finish_reason"', ex.evidence)
    if kind == "chat":
        message = choice.get("message")
        oai.check(isinstance(message, dict) and message.get("role") == "assistant"
                  and isinstance(message.get("content"), str),
                  'a chat choice must carry {"message": {"role": "assistant", "content": str}}', ex.evidence)
    else:
        oai.check(isinstance(choice.get("text"), str), 'a completion choice must carry "text"', ex.evidence)
    oai.check(choice_text(kind, choice) != "", "8 tokens were asked for and no text came back", ex.evidence)


@pytest.mark.req("OAI-1008")
@pytest.mark.parametrize("kind", KINDS)
def test_finish_reason_value(oai: OpenAIProbe, kind: Kind) -> None:
    ex, body = _answer(oai, kind)
    reasons = [c.get("finish_reason") for c in body.get("choices") or [] if isinstance(c, dict)]
    oai.check(reasons and all(r in ("stop", "length") for r in reasons),
              f'finish_reason must be "stop" or "length" for a plain request, got {reasons!r}', ex.evidence)


@pytest.mark.req("OAI-1006")
@pytest.mark.parametrize("kind", KINDS)
def test_usage_totals(oai: OpenAIProbe, kind: Kind) -> None:
    ex, body = _answer(oai, kind)
    usage: Any = body.get("usage")
    oai.check(isinstance(usage, dict), 'a non-streamed response must carry "usage"', ex.evidence)
    fields = ("prompt_tokens", "completion_tokens", "total_tokens")
    oai.check(all(isinstance(usage.get(f), int) and usage[f] >= 0 for f in fields),
              f"usage must have non-negative integers {fields}", ex.evidence)
    oai.check(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"],
              "usage.total_tokens must equal prompt_tokens + completion_tokens", ex.evidence)


@pytest.mark.req("OAI-1007")
@pytest.mark.parametrize("kind", KINDS)
def test_model_echoed(oai: OpenAIProbe, kind: Kind) -> None:
    ex, body = _answer(oai, kind)
    oai.check(body.get("model") == oai.model,
              f'the answer names model {body.get("model")!r}, the request {oai.model!r}', ex.evidence)
