"""``n`` and ``seed``: several choices per request, and reproducible sampling."""

from __future__ import annotations

from typing import Any

import pytest
from llorch.harness.openai.checks import (
    PATHS,
    Kind,
    body_of,
    choice_text,
    decode_stream,
    expect_ok,
    skip_if_refused,
)
from llorch.harness.openai.probes import Exchange, OpenAIProbe, is_error_envelope

KINDS: list[Kind] = ["chat", "completions"]


@pytest.mark.req("OAI-1034")
@pytest.mark.parametrize("kind", KINDS)
def test_n_choices_or_refused(oai: OpenAIProbe, kind: Kind) -> None:
    ex = oai.post(PATHS[kind], body_of(oai, kind, max_tokens=6, n=2, temperature=1.0))
    if ex.status == 400:  # refusing n > 1 explicitly is allowed; answering fewer choices silently is not
        oai.check(is_error_envelope(ex.json_or_none()),
                  "n=2 was refused with HTTP 400, but not in OpenAI's error envelope "
                  '{"error": {"message": str, "type": str, "param": …, "code": …}}', ex.evidence)
        return
    body = expect_ok(oai, ex, f"{kind} with n=2")
    choices = body.get("choices")
    indexes = sorted(c.get("index") for c in choices) if isinstance(choices, list) else choices
    oai.check(indexes == [0, 1], f"n=2 answered choices {indexes!r}, not indexes [0, 1] (nor a 400)",
              ex.evidence)


@pytest.mark.req("OAI-1035")
@pytest.mark.parametrize("kind", KINDS)
def test_n_choices_stream(oai: OpenAIProbe, kind: Kind) -> None:
    ex = oai.stream(PATHS[kind], body_of(oai, kind, max_tokens=6, n=2, temperature=1.0, stream=True))
    skip_if_refused(oai, ex, "n > 1")
    facts = decode_stream(oai, kind, ex)
    oai.check(sorted(facts.choices) == [0, 1], f"n=2 streamed choices {sorted(facts.choices)}, not [0, 1]",
              ex.evidence)
    for index, choice in facts.choices.items():
        oai.check(len(choice.finishes) == 1,
                  f"choice {index} received {len(choice.finishes)} non-null finish_reason values, not one",
                  ex.evidence)


def _twice(oai: OpenAIProbe, kind: Kind, body: dict[str, Any]) -> tuple[str, str, Exchange]:
    texts: list[str] = []
    ex: Exchange | None = None
    for _ in range(2):
        ex = oai.post(PATHS[kind], body)
        resp = expect_ok(oai, ex, kind)
        texts.append(choice_text(kind, (resp.get("choices") or [{}])[0]))
    assert ex is not None
    return texts[0], texts[1], ex


@pytest.mark.req("OAI-1036")
@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproducible(oai: OpenAIProbe, kind: Kind) -> None:
    first, second, ex = _twice(oai, kind, body_of(oai, kind, max_tokens=16, temperature=1.0, top_p=1.0,
                                                  seed=1234))
    oai.check(first == second, f"the same seed and parameters gave different text: {first!r} vs {second!r}",
              ex.evidence)


@pytest.mark.req("OAI-1037")
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_reproducible(oai: OpenAIProbe, kind: Kind) -> None:
    first, second, ex = _twice(oai, kind, body_of(oai, kind, max_tokens=16, temperature=0))
    oai.check(first == second, f"temperature 0 gave different text twice: {first!r} vs {second!r}",
              ex.evidence)
