"""A small, well-behaved OpenAI-compatible server: the control of the OpenAI suite's self-test and the
base that each ``openai_*`` faulty target breaks in exactly one place (D15: wire-level targets, no
reference internals).

Its "model" emits word pieces from a fixed vocabulary chosen by a PRNG keyed on the prompt (greedy,
``temperature`` 0) or on the seed, so limits and stop sequences can be observed; it counts prompt
tokens as whitespace-separated words. It refuses tools and structured output with a 400, which the
suite reports as *unsupported*. Each behaviour a fault may replace is one method (``done_event``,
``usage_chunk``, ``error_body``, ``error_status``, ``finish_choices``, ``token_budget``).

Run one: ``python -m llorch.harness.faulty.openai_base [NAME] --port 0`` prints
``{"http": "http://127.0.0.1:PORT", "pid": N}`` once ready (NAME: a module ``openai_NAME`` here).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["MODEL", "ClientError", "Generation", "OpenAIServer", "load", "serve_in_thread"]

MODEL = "faulty-fake-1"
VOCAB = [" alpha", " beta", " gamma", " delta", " epsilon", ",", " zeta", " eta", " theta", ".", " iota",
         " kappa", " lambda", " mu", " nu", " xi", " omicron", " pi", " rho", " sigma"]
DEFAULT_MAX_TOKENS = 16
ROLES = {"system", "developer", "user", "assistant", "tool"}


class ClientError(Exception):
    """A request the client got wrong: status, message, OpenAI error type, param and code."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


@dataclass
class Generation:
    """One choice's output: the text pieces as streamed, the finish reason and the tokens spent."""

    pieces: list[str]
    finish_reason: str
    completion_tokens: int


def _int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClientError(400, f"{name} must be an integer", name)
    if not lo <= value <= hi:
        raise ClientError(400, f"{name} must be between {lo} and {hi}", name)
    return value


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise ClientError(400, "stop must be a string or an array of up to 4 strings", "stop")


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still begin a stop sequence."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                best = max(best, n)
                break
    return best


class OpenAIServer:
    """The correct behaviour; a faulty target subclasses it and overrides one method."""

    name = "base"

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.app = Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])

    # ---- behaviours a fault may replace ----------------------------------------------------

    def error_status(self, status: int) -> int:
        return status

    def error_body(self, err: ClientError) -> dict[str, Any]:
        return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}

    def done_event(self) -> bytes:
        return b"data: [DONE]\n\n"

    def usage_chunk(self, base: dict[str, Any], usage: dict[str, int]) -> dict[str, Any] | None:
        return {**base, "choices": [], "usage": usage}

    def finish_choices(self, index: int, reason: str, chat: bool) -> list[dict[str, Any]]:
        """The choice objects that end choice ``index`` (one chunk each)."""
        return [{"index": index, **({"delta": {}} if chat else {"text": ""}), "finish_reason": reason}]

    def token_budget(self, max_tokens: int) -> int:
        return max_tokens

    # ---- routes ----------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return JSONResponse({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "llorch-faulty"}]})

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    def _auth(self, request: Request) -> Response | None:
        if self.token is None:
            return None
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._error(ClientError(401, "invalid API key", None, "invalid_api_key",
                                           "authentication_error"))
        return None

    def _error(self, err: ClientError) -> Response:
        return JSONResponse(self.error_body(err), status_code=self.error_status(err.status))

    async def _complete(self, request: Request, chat: bool) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(ClientError(400, "the body is not valid JSON"))
        try:
            return self._answer(body, chat)
        except ClientError as err:
            return self._error(err)

    def _answer(self, body: Any, chat: bool) -> Response:
        if not isinstance(body, dict):
            raise ClientError(400, "the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise ClientError(400, "model is required", "model")
        prompt = self._prompt(body, chat)
        for field in ("tools", "tool_choice", "functions"):
            if body.get(field) is not None:
                raise ClientError(400, f"{field} is not supported by this server", field, "unsupported")
        fmt = body.get("response_format")
        if fmt is not None and fmt != {"type": "text"}:
            raise ClientError(400, "response_format is not supported by this server", "response_format",
                              "unsupported")
        if model != MODEL:
            raise ClientError(404, f"the model {model!r} does not exist", "model", "model_not_found")
        limit_field = ("max_completion_tokens" if body.get("max_completion_tokens") is not None
                       else "max_tokens")
        max_tokens = _int(body, limit_field, DEFAULT_MAX_TOKENS, 1, 4096)
        n = _int(body, "n", 1, 1, 8)
        seed = _int(body, "seed", 0, -(2**63), 2**63 - 1) if body.get("seed") is not None else None
        temperature = body.get("temperature", 1.0)
        if temperature is None:
            temperature = 1.0
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise ClientError(400, "temperature must be a number", "temperature")
        if not 0 <= temperature <= 2:
            raise ClientError(400, "temperature must be between 0 and 2", "temperature")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ClientError(400, "stream must be a boolean", "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise ClientError(400, "stream_options must be an object", "stream_options")
        stops = _stops(body)
        gens = [self._generate(prompt, i, seed, float(temperature), max_tokens, stops) for i in range(n)]
        usage = {"prompt_tokens": len(prompt.split()) or 1,
                 "completion_tokens": sum(g.completion_tokens for g in gens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(8),
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model}
        if stream:
            include_usage = bool((options or {}).get("include_usage"))
            return StreamingResponse(self._sse(base, gens, usage, chat, include_usage),
                                     media_type="text/event-stream")
        choices = [{"index": i, **({"message": {"role": "assistant", "content": "".join(g.pieces)}} if chat
                                   else {"text": "".join(g.pieces)}), "finish_reason": g.finish_reason}
                   for i, g in enumerate(gens)]
        return JSONResponse({**base, "object": "chat.completion" if chat else "text_completion",
                             "choices": choices, "usage": usage})

    @staticmethod
    def _prompt(body: dict[str, Any], chat: bool) -> str:
        if not chat:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
                return " ".join(prompt)
            if not isinstance(prompt, str):
                raise ClientError(400, "prompt must be a string or an array of strings", "prompt")
            return prompt
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ClientError(400, "messages must be a non-empty array", "messages")
        parts = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES:
                raise ClientError(400, f"messages[{i}].role must be one of {sorted(ROLES)}",
                                  f"messages[{i}].role")
            content = msg.get("content")
            if content is not None and not isinstance(content, str):
                raise ClientError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
            parts.append(content or "")
        return " ".join(parts)

    def _generate(self, prompt: str, index: int, seed: int | None, temperature: float, max_tokens: int,
                  stops: list[str]) -> Generation:
        if temperature == 0:
            key = f"greedy|{prompt}"
        elif seed is not None:
            key = f"seed|{seed}|{temperature}|{prompt}|{index}"
        else:
            key = f"random|{secrets.token_hex(8)}"
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        text = ""
        sent = 0
        pieces: list[str] = []
        for produced in range(1, self.token_budget(max_tokens) + 1):
            text += rng.choice(VOCAB)
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                cut = min(hits)
                if cut > sent:
                    pieces.append(text[sent:cut])
                return Generation(pieces, "stop", produced)
            safe = len(text) - _held_back(text, stops)
            if safe > sent:
                pieces.append(text[sent:safe])
                sent = safe
        if sent < len(text):
            pieces.append(text[sent:])
        return Generation(pieces, "length", self.token_budget(max_tokens))

    async def _sse(self, base: dict[str, Any], gens: list[Generation], usage: dict[str, int], chat: bool,
                   include_usage: bool) -> AsyncIterator[bytes]:
        extra = {"usage": None} if include_usage else {}

        def event(chunk: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        for i, gen in enumerate(gens):
            if chat:
                yield event({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None}], **extra})
            for piece in gen.pieces:
                choice = {"index": i, **({"delta": {"content": piece}} if chat else {"text": piece}),
                          "finish_reason": None}
                yield event({**base, "choices": [choice], **extra})
            for choice in self.finish_choices(i, gen.finish_reason, chat):
                yield event({**base, "choices": [choice], **extra})
        if include_usage:
            chunk = self.usage_chunk(base, usage)
            if chunk is not None:
                yield event(chunk)
        yield self.done_event()


def load(name: str = "base", token: str | None = None) -> OpenAIServer:
    """The server class of ``openai_<name>`` in this package (``base``: the correct one)."""
    if name == "base":
        return OpenAIServer(token)
    module = importlib.import_module(f"llorch.harness.faulty.openai_{name}")
    server: OpenAIServer = module.Server(token)
    return server


@contextmanager
def serve_in_thread(server: OpenAIServer, timeout_s: float = 10.0) -> Iterator[str]:
    """Serve on a free loopback port in a thread; yields the base URL, waits for readiness."""
    config = uvicorn.Config(server.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name=f"openai-{server.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"faulty target {server.name!r} did not start")
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="base", help="fault: a module openai_NAME (default base)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-env", default=None, help="require the bearer token in this variable")
    args = parser.parse_args()
    token = os.environ[args.token_env] if args.token_env else None
    server = load(args.name, token)
    config = uvicorn.Config(server.app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)

    def announce() -> None:
        while not uv.started:
            time.sleep(0.01)
        port = uv.servers[0].sockets[0].getsockname()[1]
        print(json.dumps({"http": f"http://127.0.0.1:{port}", "pid": os.getpid()}), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    uv.run()


if __name__ == "__main__":
    main()
