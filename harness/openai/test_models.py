"""``GET /v1/models``: the list every OpenAI client reads before its first request."""

from __future__ import annotations

from typing import Any

import pytest
from llorch.harness.openai.checks import CHAT, expect_ok
from llorch.harness.openai.probes import Exchange, OpenAIProbe


def _models(oai: OpenAIProbe) -> tuple[Exchange, list[Any]]:
    ex = oai.get("/v1/models")
    body = expect_ok(oai, ex, "GET /v1/models")
    oai.check(body.get("object") == "list", 'the list must have "object": "list"', ex.evidence)
    data = body.get("data")
    oai.check(isinstance(data, list) and data, '"data" must be a non-empty array of models', ex.evidence)
    assert isinstance(data, list)
    return ex, data


@pytest.mark.req("OAI-1001")
def test_models_list_shape(oai: OpenAIProbe) -> None:
    ex, data = _models(oai)
    for model in data:
        oai.check(isinstance(model, dict) and isinstance(model.get("id"), str) and model["id"]
                  and model.get("object") == "model",
                  'each model must be an object with a string "id" and "object": "model"', ex.evidence)


@pytest.mark.req("OAI-1002")
def test_models_created_owned_by(oai: OpenAIProbe) -> None:
    ex, data = _models(oai)
    for model in data:
        oai.check(isinstance(model, dict) and isinstance(model.get("created"), int)
                  and not isinstance(model.get("created"), bool) and isinstance(model.get("owned_by"), str),
                  'each model should carry an integer "created" and a string "owned_by"', ex.evidence)


@pytest.mark.req("OAI-1003")
def test_every_listed_model_is_accepted(oai: OpenAIProbe) -> None:
    _, data = _models(oai)
    for model in data:
        ex = oai.post(CHAT, {"model": model["id"], "max_tokens": 2, "temperature": 0,
                             "messages": [{"role": "user", "content": "Say hi."}]})
        expect_ok(oai, ex, f"chat with listed model {model['id']!r}")
