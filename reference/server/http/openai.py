"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Each request becomes one orchestrator task (so admission, priorities, metrics and cancel apply);
the task's events are re-shaped into OpenAI's JSON or SSE chunks. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (``server/errors.py``).

Chat messages are rendered to one prompt by a fixed, documented template::

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n … <|assistant|>\\n

Streams: chat streams open with a ``{"role": "assistant", "content": ""}`` delta, carry one chunk
per token event, then one chunk with an empty delta and the choice's only non-null
``finish_reason``; with ``stream_options.include_usage`` every chunk has ``"usage": null`` and one
last chunk has ``choices: []`` and the usage; ``data: [DONE]`` ends every stream. A client that goes
away (streaming or not) cancels the task, which frees its slot. ``n`` choices (up to
``MAX_CHOICES``) run as ``n`` tasks; with a ``seed``, choice ``i`` uses ``seed + i``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    Failed,
    Identity,
    SamplerParams,
    TaskEvent,
    TaskRequest,
    TokenOut,
)
from llorch.reference.errors import ErrorCode, ErrorInfo, InvalidParams, NotFound
from llorch.reference.server.errors import openai_body, wire_status
from llorch.reference.server.http.app import (
    CallerDep,
    Gateway,
    GatewayDep,
    sse_response,
)
from llorch.reference.server.http.models import MAX_STOP_SEQUENCES, MAX_TOKENS_CAP
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

DEFAULT_MAX_TOKENS = 256
MAX_CHOICES = 8
ROLES = ("system", "developer", "user", "assistant")
OWNER = "llorch"

router = APIRouter(tags=["openai"])


class InvalidParam(InvalidParams):
    """A client mistake in one named request field (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"the model {model!r} does not exist", code=ErrorCode.MODEL_NOT_FOUND)
        self.param = "model"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: str
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=64)] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


StopIn = Annotated[str, Field(min_length=1, max_length=64)]


class _CommonIn(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_CAP)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: StopIn | Annotated[list[StopIn], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None


class ChatCompletionIn(_CommonIn):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_CAP)] | None = None


class CompletionIn(_CommonIn):
    prompt: str


# ---- response models (documentation for the OpenAPI contract) ---------------------------------


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": text} for code, text in {
        400: "invalid request", 401: "missing or invalid API key", 404: "unknown model",
        413: "payload too large", 429: "overloaded (Retry-After)", 500: "internal error",
        502: "engine failure", 503: "unavailable (Retry-After)", 504: "deadline unmet",
    }.items()
}
STREAM_RESPONSE = {"content": {"text/event-stream": {}},
                   "description": "with stream=true: SSE `data: {chunk}` lines ending with `data: [DONE]`"}


# ---- translation --------------------------------------------------------------------------------


def render_chat(messages: list[ChatMessage]) -> str:
    """The documented chat template (module docstring)."""
    parts: list[str] = []
    for i, msg in enumerate(messages):
        if msg.role not in ROLES:
            # req: OAI-1042
            raise InvalidParam(f"messages[{i}].role: unsupported role {msg.role!r}; "
                               f"expected one of {', '.join(ROLES)}", f"messages[{i}].role")
        if isinstance(msg.content, list):
            text = "".join(part.text for part in msg.content)
        else:
            text = msg.content or ""
        parts.append(f"<|{msg.role}|>\n{text}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class _Call:
    gw: Gateway
    who: Identity
    model: str
    prompt: str
    max_tokens: int
    body: _CommonIn

    @property
    def n(self) -> int:
        return self.body.n or 1

    def task_request(self, choice: int) -> TaskRequest:
        """Choice ``i`` of ``n`` runs as its own task; with a seed, choice ``i`` uses ``seed + i`` so
        the choices differ yet stay reproducible."""
        body = self.body
        stop: tuple[str, ...] = ()
        if isinstance(body.stop, str):
            stop = (body.stop,)
        elif body.stop:
            stop = tuple(body.stop)
        seed = None if body.seed is None else (body.seed + choice) % 2**63
        sampler = SamplerParams(temperature=1.0 if body.temperature is None else body.temperature,
                                top_p=1.0 if body.top_p is None else body.top_p,
                                seed=seed, stop=stop)
        return TaskRequest(model=self.model, prompt=self.prompt, max_tokens=self.max_tokens,
                           sampler=sampler)


def _check_common(gw: Gateway, body: _CommonIn) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value not in (None, 0, 0.0):
            raise InvalidParam(f"{name} is not supported (only 0)", name)
    if body.stream_options is not None and not body.stream:
        raise InvalidParam("stream_options is only allowed with stream: true", "stream_options")
    if body.model not in gw.orchestrator.capabilities().models:
        # req: OAI-1043
        raise UnknownModel(body.model)


def _usage(ends: list[Ended]) -> dict[str, int]:
    """One prompt, ``n`` completions: prompt tokens once, completion tokens summed."""
    prompt = ends[0].tokens_in if ends else 0
    completion = sum(end.tokens_out for end in ends)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event_error(kind: Failed | CancelledEvent) -> ErrorInfo:
    if isinstance(kind, Failed):
        return kind.error
    return ErrorInfo(ErrorCode.INTERNAL, f"the task was cancelled ({kind.reason})")


class _UpstreamError(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


async def _cancel_quietly(call: _Call, task_ids: list[str], reason: str) -> None:
    """Cancel the tasks even while our own scope is being cancelled (client went away)."""
    # req: OAI-1050, OAI-1051
    with anyio.CancelScope(shield=True):
        for task_id in task_ids:
            try:
                await call.gw.orchestrator.cancel(task_id, call.who, reason=reason)
            except Exception:  # already gone or terminal: nothing left to free
                pass


async def _submit(call: _Call) -> list[str]:
    """Submit one task per choice; if one is refused, cancel those already accepted."""
    # req: OAI-1034, OAI-1035
    task_ids: list[str] = []
    try:
        for choice in range(call.n):
            admission = await call.gw.orchestrator.submit(call.task_request(choice), call.who)
            task_ids.append(admission.task_id)
    except BaseException:
        await _cancel_quietly(call, task_ids, "client")
        raise
    return task_ids


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(call: _Call, task_id: str) -> tuple[str, Ended]:
    texts: list[str] = []
    async for event in call.gw.orchestrator.events(task_id, call.who):
        kind = event.kind
        if isinstance(kind, TokenOut):
            texts.append(kind.text)
        elif isinstance(kind, Ended):
            return "".join(texts), kind
        elif isinstance(kind, Failed | CancelledEvent):
            raise _UpstreamError(_event_error(kind))
    raise _UpstreamError(ErrorInfo(ErrorCode.INTERNAL, "event stream ended without a terminal event"))


Build = Callable[[str, int, list[tuple[str, Ended]]], dict[str, Any]]


async def _complete(request: Request, call: _Call, build: Build) -> Response:
    """Non-streaming: run the tasks to their end, cancelling them if the client goes away first."""
    task_ids = await _submit(call)
    created = int(time.time())
    collect = asyncio.ensure_future(asyncio.gather(*(_collect(call, t) for t in task_ids)))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        waiters: set[asyncio.Future[Any]] = {collect, gone}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collect.done():
            collect.cancel()
            await _cancel_quietly(call, task_ids, "disconnect")
    if collect not in done:
        return Response(status_code=499)  # nobody is listening
    try:
        results = collect.result()
    except _UpstreamError as exc:
        await _cancel_quietly(call, task_ids, "client")
        return JSONResponse(openai_body(exc.info), status_code=wire_status(exc.info).http)
    return JSONResponse(build(task_ids[0], created, list(results)))


async def _merged(call: _Call, task_ids: list[str]) -> AsyncIterator[tuple[int, TaskEvent]]:
    """The choices' events as (choice index, event); one task needs no merging."""
    if len(task_ids) == 1:
        async for event in call.gw.orchestrator.events(task_ids[0], call.who):
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TaskEvent] | BaseException] = asyncio.Queue()

    async def pump(index: int, task_id: str) -> None:
        try:
            async for event in call.gw.orchestrator.events(task_id, call.who):
                await queue.put((index, event))
        except Exception as exc:
            await queue.put(exc)

    pumps = [asyncio.ensure_future(pump(i, t)) for i, t in enumerate(task_ids)]
    try:
        open_choices = len(task_ids)
        while open_choices:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item[1].terminal:
                open_choices -= 1
            yield item
    finally:
        for task in pumps:
            task.cancel()


def _chunk(object_: str, id_: str, created: int, model: str, choices: list[dict[str, Any]],
           include_usage: bool) -> str:
    chunk: dict[str, Any] = {"id": id_, "object": object_, "created": created, "model": model,
                             "system_fingerprint": OWNER, "choices": choices}
    if include_usage:
        chunk["usage"] = None
    return json.dumps(chunk, separators=(",", ":"))


async def _stream(call: _Call, chat: bool) -> EventSourceResponse:
    """Streaming: submit first (so admission errors are plain HTTP errors), then relay chunks."""
    task_ids = await _submit(call)
    created = int(time.time())
    include_usage = bool(call.body.stream_options and call.body.stream_options.include_usage)
    object_ = "chat.completion.chunk" if chat else "text_completion"
    id_ = ("chatcmpl-" if chat else "cmpl-") + task_ids[0]
    model = call.model

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> ServerSentEvent:
        choice: dict[str, Any]
        if chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return ServerSentEvent(data=_chunk(object_, id_, created, model, [choice], include_usage))

    async def chunks() -> AsyncIterator[ServerSentEvent]:
        finished = False
        ends: list[Ended] = []
        try:
            if chat:
                for index in range(len(task_ids)):
                    yield chunk(index, "", None, first=True)
            async for index, event in _merged(call, task_ids):
                kind = event.kind
                if isinstance(kind, TokenOut):
                    yield chunk(index, kind.text, None)
                elif isinstance(kind, Ended):
                    # req: OAI-1018
                    ends.append(kind)
                    yield chunk(index, None, kind.finish_reason)
                elif isinstance(kind, Failed | CancelledEvent):
                    # req: OAI-1047
                    yield ServerSentEvent(data=json.dumps(openai_body(_event_error(kind))))
                    break
            finished = len(ends) == len(task_ids)
            if finished and include_usage:
                # req: OAI-1021
                usage_chunk = {"id": id_, "object": object_, "created": created, "model": model,
                               "system_fingerprint": OWNER, "choices": [], "usage": _usage(ends)}
                yield ServerSentEvent(data=json.dumps(usage_chunk, separators=(",", ":")))
            yield ServerSentEvent(data="[DONE]")
        finally:
            if not finished:
                await _cancel_quietly(call, task_ids, "disconnect")

    return sse_response(chunks())


# ---- routes -------------------------------------------------------------------------------------


@router.get("/v1/models", response_model=ModelListOut, responses=OPENAI_ERRORS)
async def list_models(who: CallerDep, gw: GatewayDep) -> ModelListOut:
    return ModelListOut(data=[ModelOut(id=name, created=0, owned_by=OWNER)
                              for name in gw.orchestrator.capabilities().models])


@router.post("/v1/chat/completions", response_model=ChatCompletionOut,
             responses={**OPENAI_ERRORS, 200: STREAM_RESPONSE})
async def chat_completions(body: ChatCompletionIn, request: Request, who: CallerDep,
                           gw: GatewayDep) -> Response:
    _check_common(gw, body)
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidParam("send max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    prompt = render_chat(body.messages)
    gw.security.limits.check_prompt(prompt)
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    call = _Call(gw, who, body.model, prompt, max_tokens, body)
    if body.stream:
        return await _stream(call, chat=True)

    def build(task_id: str, created: int, results: list[tuple[str, Ended]]) -> dict[str, Any]:
        return {"id": "chatcmpl-" + task_id, "object": "chat.completion", "created": created,
                "model": body.model, "system_fingerprint": OWNER,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": end.finish_reason}
                            for i, (text, end) in enumerate(results)],
                "usage": _usage([end for _, end in results])}

    return await _complete(request, call, build)


@router.post("/v1/completions", response_model=CompletionOut,
             responses={**OPENAI_ERRORS, 200: STREAM_RESPONSE})
async def completions(body: CompletionIn, request: Request, who: CallerDep, gw: GatewayDep) -> Response:
    _check_common(gw, body)
    gw.security.limits.check_prompt(body.prompt)
    call = _Call(gw, who, body.model, body.prompt, body.max_tokens or DEFAULT_MAX_TOKENS, body)
    if body.stream:
        return await _stream(call, chat=False)

    def build(task_id: str, created: int, results: list[tuple[str, Ended]]) -> dict[str, Any]:
        return {"id": "cmpl-" + task_id, "object": "text_completion", "created": created,
                "model": body.model, "system_fingerprint": OWNER,
                "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": end.finish_reason}
                            for i, (text, end) in enumerate(results)],
                "usage": _usage([end for _, end in results])}

    return await _complete(request, call, build)


__all__ = ["DEFAULT_MAX_TOKENS", "ROLES", "render_chat", "router"]
