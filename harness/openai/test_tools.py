"""Profile ``openai-tools``: tool calls and structured output, claimed only by targets that support
them; a target may refuse them with a proper 4xx, which is reported as *unsupported*."""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import httpx
import jsonschema
import pytest
from llorch.harness.openai.checks import CHAT, decode_stream, expect_ok, skip_if_refused
from llorch.harness.openai.conftest import OpenAITarget
from llorch.harness.openai.probes import Exchange, OpenAIProbe, StreamExchange

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITY_SCHEMA = {"type": "object",
               "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
               "required": ["city", "population"], "additionalProperties": False}
ASK = "What is the weather in Paris? Use the tool."
_CUT_LITERAL = re.compile(r"(?<=[:,\[])\s*(?:t|tr|tru|f|fa|fal|fals|n|nu|nul)$")


def _tool_body(oai: OpenAIProbe, **extra: Any) -> dict[str, Any]:
    return oai.chat_body(ASK, max_tokens=64, temperature=0, tools=[WEATHER_TOOL], tool_choice="required",
                         **extra)


@pytest.fixture(scope="module")
def tool_stream(openai_target: OpenAITarget, openai_http: httpx.Client) -> StreamExchange:
    oai = OpenAIProbe(openai_target.base_url, openai_target.model, openai_target.token, client=openai_http)
    return oai.stream(CHAT, _tool_body(oai, stream=True))


def _fragments(oai: OpenAIProbe, ex: StreamExchange) -> list[tuple[Any, dict[str, Any]]]:
    skip_if_refused(oai, ex, "tools with streaming")
    facts = decode_stream(oai, "chat", ex)
    frags = facts.choices[0].tool_fragments if 0 in facts.choices else []
    oai.check(frags, 'tool_choice "required" streamed no delta.tool_calls fragment', ex.evidence)
    return frags


@pytest.mark.req("OAI-1053")
def test_tool_fragments_carry_index(oai: OpenAIProbe, tool_stream: StreamExchange) -> None:
    for ev, frag in _fragments(oai, tool_stream):
        oai.check(isinstance(frag, dict) and isinstance(frag.get("index"), int),
                  "a delta.tool_calls fragment without an integer index",
                  partial(tool_stream.event_evidence, ev))


@pytest.mark.req("OAI-1054")
def test_first_tool_fragment_names_call(oai: OpenAIProbe, tool_stream: StreamExchange) -> None:
    seen: set[Any] = set()
    for ev, frag in _fragments(oai, tool_stream):
        if frag.get("index") in seen:
            continue
        seen.add(frag.get("index"))
        fn = frag.get("function") or {}
        oai.check(isinstance(frag.get("id"), str) and frag["id"] and frag.get("type") == "function"
                  and fn.get("name") == "get_weather",
                  'the first fragment of a tool call must carry its id, "type": "function" and function.name',
                  partial(tool_stream.event_evidence, ev))


@pytest.mark.req("OAI-1055")
def test_tool_arguments_concatenate_to_json(oai: OpenAIProbe, tool_stream: StreamExchange) -> None:
    calls: dict[Any, str] = {}
    for _ev, frag in _fragments(oai, tool_stream):
        calls[frag.get("index")] = calls.get(frag.get("index"), "") + str(
            (frag.get("function") or {}).get("arguments") or "")
    for index, arguments in calls.items():
        try:
            json.loads(arguments)
        except ValueError:
            oai.fail(f"tool call {index}: the argument fragments concatenate to {arguments!r}, not JSON",
                     tool_stream.evidence())


@pytest.mark.req("OAI-1056")
def test_tool_call_finish_reason(oai: OpenAIProbe, tool_stream: StreamExchange) -> None:
    _fragments(oai, tool_stream)
    facts = decode_stream(oai, "chat", tool_stream)
    oai.check(facts.finish_reason(0) == "tool_calls",
              f"a stream ending in tool calls reported finish_reason {facts.finish_reason(0)!r}, "
              'not "tool_calls"',
              tool_stream.evidence)


@pytest.mark.req("OAI-1057")
def test_tool_call_message(oai: OpenAIProbe) -> None:
    ex = oai.post(CHAT, _tool_body(oai))
    skip_if_refused(oai, ex, "tools")
    body = expect_ok(oai, ex, "chat with tools")
    message = ((body.get("choices") or [{}])[0]).get("message") or {}
    calls: Any = message.get("tool_calls")
    oai.check(isinstance(calls, list) and calls, 'tool_choice "required" answered without message.tool_calls',
              ex.evidence)
    for call in calls:
        fn: Any = call.get("function") or {}
        try:
            json.loads(fn.get("arguments"))
            parsed = True
        except (TypeError, ValueError):
            parsed = False
        oai.check(isinstance(call.get("id"), str) and call.get("type") == "function"
                  and fn.get("name") == "get_weather" and parsed,
                  'each tool call must carry id, "type": "function", function.name and JSON '
                  "function.arguments",
                  ex.evidence)


def json_object_prefix(text: str) -> bool:
    """Whether ``text`` is the beginning of a JSON object cut short: it opens with ``{`` and the only
    syntax error is at its very end (an unterminated string is closed, a cut literal dropped, to see
    past them)."""
    if not text.lstrip().startswith("{"):
        return False
    for candidate in (text, text + '"', _CUT_LITERAL.sub("", text)):
        try:
            json.loads(candidate)
            return True
        except json.JSONDecodeError as exc:
            if exc.pos >= len(candidate.rstrip()):
                return True
    return False


def _content(oai: OpenAIProbe, ex: Exchange, feature: str) -> Any:
    """The answer's content parsed as JSON (None when it is not JSON). An answer that the suite's own
    ``max_tokens`` cut inside a well-formed JSON object cannot be complete, so nothing can be concluded
    from it: skipped with that reason rather than failed (llama-server's grammar-constrained output hit
    the limit while still valid)."""
    skip_if_refused(oai, ex, feature)
    body = expect_ok(oai, ex, f"chat with {feature}")
    choice = (body.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content")
    if not isinstance(content, str):
        return None
    try:
        return json.loads(content)
    except ValueError:
        if choice.get("finish_reason") == "length" and json_object_prefix(content):
            pytest.skip(f"inconclusive: max_tokens cut the answer inside a well-formed JSON object "
                        f"({len(content)} characters, finish_reason length)")
        return None


@pytest.mark.req("OAI-1058")
def test_response_format_json_schema(oai: OpenAIProbe) -> None:
    ex = oai.post(CHAT, oai.chat_body(
        "Name a large city and its population as JSON.", max_tokens=96, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}))
    value = _content(oai, ex, "response_format json_schema")
    try:
        jsonschema.validate(value, CITY_SCHEMA)
    except jsonschema.ValidationError as exc:
        oai.fail(f"the content does not match the requested schema: {exc.message}", ex.evidence())


@pytest.mark.req("OAI-1059")
def test_response_format_json_object(oai: OpenAIProbe) -> None:
    ex = oai.post(CHAT, oai.chat_body("Describe Paris as a JSON object.", max_tokens=96, temperature=0,
                                      response_format={"type": "json_object"}))
    value = _content(oai, ex, "response_format json_object")
    oai.check(isinstance(value, dict), "the content is not a JSON object", ex.evidence)


@pytest.mark.req("OAI-1060")
def test_tool_result_message_accepted(oai: OpenAIProbe) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ex = oai.post(CHAT, {"model": oai.model, "max_tokens": 16, "temperature": 0, "tools": [WEATHER_TOOL],
                         "messages": [{"role": "user", "content": ASK},
                                      {"role": "assistant", "content": None, "tool_calls": [call]},
                                      {"role": "tool", "tool_call_id": "call_1",
                                       "content": '{"temp_c": 21}'}]})
    skip_if_refused(oai, ex, "tool messages")
    expect_ok(oai, ex, "chat with a tool result message")
