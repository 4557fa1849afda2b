"""Client mistakes: OpenAI's error envelope with the right 4xx status, never a 5xx — clients branch on
``error.type``/``error.code`` and retry 5xx, so a wrong status or shape turns a typo into a retry storm."""

from __future__ import annotations

from typing import Any

import pytest
from llorch.harness.openai.checks import CHAT, COMPLETIONS, expect_error
from llorch.harness.openai.conftest import OpenAITarget
from llorch.harness.openai.probes import Exchange, OpenAIProbe, is_error_envelope

Build = Any  # model id -> request body (dict) or raw bytes


def _chat(**extra: Any) -> Build:
    return lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


# (case id, requirement, path, body builder, offending field): requests a client can get wrong. Each
# carries a small max_tokens where that is not the mistake, so a server that accepts it answers fast.
_MISTAKES: list[tuple[str, str, str, Build, str | None]] = [
    ("malformed-json", "OAI-1039", CHAT,
     lambda m: b'{"model": "' + m.encode() + b'", "messages": [{"role": "user",', None),
    ("completions-malformed-json", "OAI-1039", COMPLETIONS,
     lambda m: b'{"model": "' + m.encode() + b'", "prompt": ', None),
    ("missing-messages", "OAI-1040", CHAT, lambda m: {"model": m, "max_tokens": 2}, "messages"),
    ("missing-model", "OAI-1040", CHAT,
     lambda m: {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, "model"),
    ("completions-missing-prompt", "OAI-1040", COMPLETIONS, lambda m: {"model": m, "max_tokens": 2},
     "prompt"),
    ("messages-object", "OAI-1041", CHAT,
     lambda m: {"model": m, "messages": {"role": "user"}, "max_tokens": 2}, "messages"),
    ("max-tokens-string", "OAI-1041", CHAT, _chat(max_tokens="ten"), "max_tokens"),
    ("temperature-string", "OAI-1041", CHAT, _chat(temperature="hot"), "temperature"),
    ("completions-prompt-object", "OAI-1041", COMPLETIONS,
     lambda m: {"model": m, "prompt": {"t": "hi"}, "max_tokens": 2}, "prompt"),
    ("unknown-role", "OAI-1042", CHAT,
     lambda m: {"model": m, "messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2}, "messages"),
    ("max-tokens-zero", "OAI-1048", CHAT, _chat(max_tokens=0), "max_tokens"),
    ("max-tokens-negative", "OAI-1048", CHAT, _chat(max_tokens=-5), "max_tokens"),
    ("temperature-above-2", "OAI-1048", CHAT, _chat(temperature=3.5), "temperature"),
]


def _unknown_model(path: str) -> Build:
    if path == CHAT:
        return lambda m: {"model": "no-such-model-" + m, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]}
    return lambda m: {"model": "no-such-model-" + m, "prompt": "hi", "max_tokens": 2}


# (case id, requirement, expected status, path, body builder) for the status and envelope checks
_STATUS_CASES: list[tuple[str, str, int, str, Build]] = [
    *[(case, req, 400, path, build) for case, req, path, build, _field in _MISTAKES],
    ("unknown-model", "OAI-1043", 404, CHAT, _unknown_model(CHAT)),
    ("completions-unknown-model", "OAI-1043", 404, COMPLETIONS, _unknown_model(COMPLETIONS)),
]


def _cases(*also: str, own: bool = True) -> list[Any]:
    """The status cases as parameters citing ``also`` and, when ``own``, each case's requirement: a
    check cites only the rules it judges (a 200 for a mistake breaks OAI-1040, not OAI-1045)."""
    return [pytest.param(case, path, build, status, id=case,
                         marks=pytest.mark.req(*((req,) if own else ()), *also))
            for case, req, status, path, build in _STATUS_CASES]


def _answer(oai: OpenAIProbe, answers: dict[Any, Any], case: str, path: str, build: Build) -> Exchange:
    """One request per case for the status, envelope and field checks: it matters on servers that
    accept a mistake such as max_tokens 0 and then generate without limit."""
    key = ("mistake", case)
    if key not in answers:
        answers[key] = oai.post(path, build(oai.model))
    answer: Exchange = answers[key]
    return answer


@pytest.mark.parametrize(("case", "path", "build", "status"), _cases("OAI-1045", own=False))
def test_client_mistake_not_5xx(oai: OpenAIProbe, openai_answers: dict[Any, Any], case: str, path: str,
                                build: Build, status: int) -> None:
    ex = _answer(oai, openai_answers, case, path, build)
    oai.check(ex.status < 500, f"POST {path}: a client mistake was answered with server error {ex.status}",
              ex.evidence)


@pytest.mark.parametrize(("case", "path", "build", "status"), _cases())
def test_client_mistake_status(oai: OpenAIProbe, openai_answers: dict[Any, Any], case: str, path: str,
                               build: Build, status: int) -> None:
    ex = _answer(oai, openai_answers, case, path, build)
    oai.check(ex.status == status, f"POST {path}: expected HTTP {status}, got {ex.status}", ex.evidence)


@pytest.mark.parametrize(("case", "path", "build", "status"), _cases("OAI-1038"))
def test_client_mistake_envelope(oai: OpenAIProbe, openai_answers: dict[Any, Any], case: str, path: str,
                                 build: Build, status: int) -> None:
    ex = _answer(oai, openai_answers, case, path, build)
    if ex.status < 400:
        pytest.skip(f"answered {ex.status}, not an error (test_client_mistake_status's failure)")
    oai.check(is_error_envelope(ex.json_or_none()),
              f"POST {path}: the HTTP {ex.status} body is not OpenAI's envelope "
              '{"error": {"message": str, "type": str, "param": …, "code": …}}', ex.evidence)


@pytest.mark.req("OAI-1046")
@pytest.mark.parametrize(("case", "path", "build", "field"),
                         [pytest.param(case, path, build, field, id=case)
                          for case, _req, path, build, field in _MISTAKES if field])
def test_400_names_type_and_param(oai: OpenAIProbe, openai_answers: dict[Any, Any], case: str, path: str,
                                  build: Build, field: str) -> None:
    ex = _answer(oai, openai_answers, case, path, build)
    if ex.status != 400 or not is_error_envelope(ex.json_or_none()):
        pytest.skip(f"answered {ex.status} without a 400 envelope: the status and shape are checked by "
                    "test_client_mistake_status and test_client_mistake_envelope")
    err = ex.json()["error"]
    oai.check(err.get("type") == "invalid_request_error",
              f'error.type should be "invalid_request_error", got {err.get("type")!r}', ex.evidence)
    param = err.get("param")
    oai.check(isinstance(param, str) and param.split(".")[0].split("[")[0] == field,
              f"error.param should name {field!r}, got {param!r}", ex.evidence)


@pytest.mark.req("OAI-1043")
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS], ids=["chat", "completions"])
def test_unknown_model_code(oai: OpenAIProbe, path: str) -> None:
    ex = oai.post(path, _unknown_model(path)(oai.model))
    oai.check(ex.status == 404, f"POST {path} for an unknown model: expected HTTP 404, got {ex.status}",
              ex.evidence)
    body = ex.json_or_none()
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    oai.check(code == "model_not_found", f'error.code must be "model_not_found", got {code!r}', ex.evidence)


@pytest.mark.req("OAI-1044", "OAI-1038")
@pytest.mark.parametrize("key", ["wrong", "missing"])
def test_bad_key_is_401(oai: OpenAIProbe, openai_target: OpenAITarget, key: str) -> None:
    if not openai_target.auth_configured:
        pytest.skip("target has no auth configured (no --token-env): a bad key cannot be told apart")
    token = "not-the-key-" + "0" * 16 if key == "wrong" else ""
    ex = oai.post(CHAT, oai.chat_body("hi", max_tokens=2), token=token)
    expect_error(oai, ex, 401, f"a request with a {key} bearer token")
