"""The shared half of every HTTP engine adapter (llama.cpp, OpenAI-compatible, TGI, Triton).

Each engine module only says how to build its request and how to read one SSE ``data:`` payload;
this module owns what they have in common, once: slot accounting, request-id bookkeeping,
incremental SSE parsing, the engine-error → ``reference.errors`` seam, decode timeouts, the model
digest, and upstream cancellation.

Streaming is a pump task reading the engine's body and a consumer generator yielding events. The
pump hands each parsed token over as soon as its SSE line arrives (no buffering of the body), and
cancelling the pump — on ``cancel()``, or when the consumer stops iterating — leaves the
``client.stream`` context, which closes the engine connection so the engine stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from llorch.reference.adapters.base import (
    EngineInfo,
    GenEnd,
    GenerateRequest,
    GenEvent,
    GenStarted,
    GenToken,
    Health,
    Props,
)
from llorch.reference.errors import (
    Conflict,
    EngineFailure,
    ErrorCode,
    InvalidParams,
    LlorchError,
    NotFound,
    Overloaded,
    Unavailable,
)

__all__ = [
    "Chunk",
    "EngineSettings",
    "HttpEngineAdapter",
    "check_request",
    "file_digest",
    "map_http_error",
    "sse_events",
]

_QUEUE_DEPTH = 64  # parsed tokens buffered between the socket reader and the consumer


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Where an engine is and what to report about it. ``model`` is the orchestrator's model id;
    ``engine_model`` the name the engine itself knows (a path for llama-cpp-python, a repo id for
    TGI), defaulting to ``model``."""

    base_url: str
    model: str
    engine_model: str = ""
    slots: int = 1
    engine_version: str = ""
    model_path: str = ""  # a local model file: its sha256 is the model digest
    model_digest: str = ""  # an explicit digest wins over model_path
    connect_timeout_s: float = 5.0
    decode_timeout_s: float = 30.0  # longest silence between two tokens (DECODE_TIMEOUT)
    max_tokens_limit: int = 4096
    ctx_size: int = 0
    deterministic: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def wire_model(self) -> str:
        return self.engine_model or self.model


@dataclass(frozen=True, slots=True)
class Chunk:
    """One parsed engine payload: a token's text (possibly empty), its id when reported, and the
    finish reason on the payload that ends the stream."""

    text: str = ""
    token_id: int = -1
    finish_reason: str | None = None  # "stop" | "length" once the engine says it is done
    final: bool = False  # the payload closes the stream (may carry a last token)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """``sha256:<hex>`` of a model file, cached by (path, size, mtime) — hashing 100 MB costs ~0.1 s."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = "sha256:" + h.hexdigest()
    return _DIGESTS[key]


def _error_text(body: bytes) -> str:
    """The engine's own message from the error envelopes seen in the wild (OpenAI, llama.cpp, TGI,
    Triton: ``{"error": {"message"}}`` or ``{"error": "..."}``), else the raw text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message", err))[:500]
        return str(err)[:500]
    return text[:500]


# req: ADP-1035
def map_http_error(engine: str, status: int, body: bytes, retry_after: str | None = None) -> LlorchError:
    """One seam from an engine's HTTP failure to the error tree (like httpx's exception mapping)."""
    message = f"{engine} answered HTTP {status}: {_error_text(body)}"
    if status == 404:
        return NotFound(message, code=ErrorCode.MODEL_NOT_FOUND)
    if status == 429:
        seconds = retry_after or ""
        after = int(float(seconds) * 1000) if seconds.replace(".", "", 1).isdigit() else 0
        return Overloaded(message, code=ErrorCode.RATE_LIMITED, retry_after_ms=after)
    if status == 503:
        return Unavailable(message, code=ErrorCode.POOL_UNREADY)
    if 400 <= status < 500:
        return InvalidParams(message)
    return EngineFailure(message, code=ErrorCode.ENGINE_ERROR)


def check_request(engine: str, request: GenerateRequest, *, model: str, max_tokens_limit: int,
                  deterministic: bool, slots: int, running: Mapping[str, object]) -> None:
    """The checks every real-engine adapter makes before touching its engine, so a refused
    request changes nothing (ADP-1025)."""
    # req: ADP-1022
    if not request.request_id or not request.prompt or not 1 <= request.max_tokens <= max_tokens_limit:
        raise InvalidParams("generate needs a request_id, a prompt and "
                            f"1 <= max_tokens <= {max_tokens_limit}")
    if request.model != model:  # req: ADP-1023
        raise NotFound(f"{engine} replica serves {model!r}, not {request.model!r}",
                       code=ErrorCode.MODEL_NOT_FOUND)
    if request.deterministic and not deterministic:  # req: ADP-1031
        raise Unavailable(f"{engine} replica is not configured for deterministic output",
                          code=ErrorCode.DETERMINISM_UNSUPPORTED)
    if request.request_id in running:  # req: ADP-1024
        raise Conflict(f"request {request.request_id} is already running")
    if len(running) >= slots:  # req: ADP-1005
        raise Unavailable(f"{engine}: all {slots} slots busy", code=ErrorCode.REPLICA_EXHAUSTED)


async def sse_events(resp: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) pairs of an SSE body, line by line as the bytes arrive.

    Not httpx-sse: llama.cpp's server reports a mid-stream failure as a non-standard ``error:``
    field, which a conforming SSE decoder drops; it is passed on here as an event named ``error``.
    """
    data: list[str] = []
    event = ""
    async for line in resp.aiter_lines():
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            data, event = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "error":
            yield "error", value
    if data:
        yield event or "message", "\n".join(data)


class _Running:
    """One generation in flight: the pump task reading the engine, and the cancel flag."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None


_END = object()


class HttpEngineAdapter:
    """Base of the HTTP engine adapters; subclasses set ``ENGINE`` and the four engine hooks."""

    ENGINE = "http"

    def __init__(self, settings: EngineSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=settings.decode_timeout_s,
                                write=settings.connect_timeout_s, pool=settings.connect_timeout_s)
        self._client = httpx.AsyncClient(base_url=settings.base_url.rstrip("/"), timeout=timeout,
                                         headers=dict(settings.headers), transport=transport)
        self._running: dict[str, _Running] = {}
        self._info: EngineInfo | None = None

    # -- engine hooks ---------------------------------------------------------------------------

    def stream_request(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the engine's streaming request."""
        raise NotImplementedError

    def parse(self, event: str, data: str) -> Chunk | None:
        """One SSE event (its name, ``message`` by default, and its data) → a Chunk, None to skip
        it. Raise LlorchError for an in-band engine error."""
        raise NotImplementedError

    async def describe(self) -> EngineInfo:
        """Ask the engine who it is (version, model); called once and cached."""
        raise NotImplementedError

    async def probe(self) -> Health:
        """The engine's readiness endpoint."""
        raise NotImplementedError

    async def count_prompt_tokens(self, prompt: str) -> int:
        """Prompt length in engine tokens where the engine offers a tokenizer; 0 when unknown."""
        return 0

    # -- shared helpers -------------------------------------------------------------------------

    async def get_json(self, path: str) -> Any:
        """GET a JSON document, mapping transport and HTTP failures to the error tree."""
        try:
            resp = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self.ENGINE} at {self.settings.base_url} unreachable: {exc}",
                              code=ErrorCode.POOL_UNREADY) from exc
        if resp.status_code != 200:
            raise map_http_error(self.ENGINE, resp.status_code, resp.content, resp.headers.get("retry-after"))
        try:
            return resp.json()
        except ValueError as exc:
            raise EngineFailure(f"{self.ENGINE} {path}: not JSON: {resp.text[:200]!r}") from exc

    def payload(self, data: str) -> dict[str, Any]:
        """A JSON object payload; anything else is a malformed answer (ENGINE_ERROR)."""
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as exc:
            raise EngineFailure(f"{self.ENGINE} sent malformed JSON: {data[:200]!r}") from exc
        if not isinstance(obj, dict):
            raise EngineFailure(f"{self.ENGINE} sent a non-object payload: {data[:200]!r}")
        return obj

    async def get_ok(self, path: str) -> Health:
        try:
            resp = await self._client.get(path)
        except httpx.HTTPError as exc:
            return Health(ready=False, detail=f"{self.ENGINE} unreachable: {exc!r}")
        if resp.status_code == 200:
            return Health(ready=True, detail="ok")
        return Health(ready=False, detail=f"{path} answered {resp.status_code}: {_error_text(resp.content)}")

    def digest(self, engine_reported_path: str = "") -> str:
        """The model digest: explicit, else the sha256 of the model file if it is readable here."""
        # req: ADP-1039
        s = self.settings
        if s.model_digest:
            return s.model_digest
        for path in (s.model_path, engine_reported_path):
            if path and Path(path).is_file():
                return file_digest(path)
        return ""

    # -- the Adapter protocol -------------------------------------------------------------------

    async def health(self) -> Health:
        return await self.probe()

    async def props(self) -> Props:
        s = self.settings
        return Props(total_slots=s.slots, free_slots=s.slots - len(self._running), model=s.model,
                     ctx_size=s.ctx_size, max_tokens_limit=s.max_tokens_limit)

    async def engine_info(self) -> EngineInfo:
        if self._info is None:
            info = await self.describe()
            if not info.model_digest.startswith("sha256:"):
                raise EngineFailure(f"{self.ENGINE}: no model digest (set model_digest or a readable "
                                    f"model_path for {self.settings.model!r})")
            self._info = info
        return self._info

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        # Checks at call time, so a refused request changes nothing (ADP-1022..1025).
        s = self.settings
        check_request(self.ENGINE, request, model=s.model, max_tokens_limit=s.max_tokens_limit,
                      deterministic=s.deterministic, slots=s.slots, running=self._running)
        running = _Running()
        self._running[request.request_id] = running
        return self._run(request, running)

    async def _run(self, request: GenerateRequest, running: _Running) -> AsyncIterator[GenEvent]:
        queue: asyncio.Queue[object] = asyncio.Queue(_QUEUE_DEPTH)
        running.pump = asyncio.create_task(self._pump(request, queue), name=f"pump-{request.request_id}")
        prompt_tokens = 0
        emitted = 0
        try:
            while True:
                if running.cancelled.is_set():
                    return  # req: ADP-1026
                item = await queue.get()
                if running.cancelled.is_set():
                    return
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, GenStarted):
                    prompt_tokens = item.prompt_tokens
                    yield item
                    continue
                assert isinstance(item, Chunk)
                if item.text:
                    # req: ADP-1033
                    yield GenToken(index=emitted, text=item.text, token_id=item.token_id)
                    emitted += 1
                limit_hit = emitted >= request.max_tokens
                if item.final or limit_hit:
                    # req: ADP-1016, ADP-1017
                    finish = "length" if limit_hit else (item.finish_reason or "stop")
                    yield GenEnd(prompt_tokens=prompt_tokens, tokens_out=emitted, finish_reason=finish)
                    return
        finally:
            # req: ADP-1038
            if running.pump is not None and not running.pump.done():
                running.pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running.pump
            self._running.pop(request.request_id, None)

    async def _pump(self, request: GenerateRequest, queue: asyncio.Queue[object]) -> None:
        """Read the engine's body, putting GenStarted, then one Chunk per payload, then _END or an error."""
        path, body = self.stream_request(request)
        counting = asyncio.create_task(self.count_prompt_tokens(request.prompt))
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    raise map_http_error(self.ENGINE, resp.status_code, await resp.aread(),
                                         resp.headers.get("retry-after"))
                try:
                    n_prompt = await counting
                except LlorchError:
                    n_prompt = 0
                await queue.put(GenStarted(prompt_tokens=n_prompt))
                final_seen = False
                async for event, data in sse_events(resp):
                    chunk = self.parse(event, data)
                    if chunk is None:
                        continue
                    await queue.put(chunk)
                    if chunk.final:
                        final_seen = True
                        break
                if not final_seen:
                    await queue.put(self.on_body_end())
            await queue.put(_END)
        except LlorchError as exc:
            await queue.put(exc)
        except httpx.ReadTimeout as exc:
            # req: ADP-1037
            await queue.put(EngineFailure(f"{self.ENGINE} sent nothing for {self.settings.decode_timeout_s}s",
                                          code=ErrorCode.DECODE_TIMEOUT))
            del exc
        except httpx.ConnectError as exc:
            await queue.put(Unavailable(f"{self.ENGINE} at {self.settings.base_url} unreachable: {exc}",
                                        code=ErrorCode.POOL_UNREADY))
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(_END)  # wake a consumer parked on an empty queue
            raise
        except httpx.TransportError as exc:
            # req: ADP-1036
            await queue.put(EngineFailure(f"{self.ENGINE} connection lost mid-stream: {exc!r}",
                                          code=ErrorCode.WORKER_RESET, retriable=True))
        finally:
            if not counting.done():
                counting.cancel()

    def on_body_end(self) -> Chunk | LlorchError:
        """What a body that ended without a final payload means; most engines always send one."""
        return EngineFailure(f"{self.ENGINE} closed the stream without a final event",
                             code=ErrorCode.WORKER_RESET, retriable=True)

    async def cancel(self, request_id: str) -> bool:
        running = self._running.get(request_id)
        if running is None:
            return False
        running.cancelled.set()
        if running.pump is not None:
            running.pump.cancel()  # leaves client.stream(): the engine connection is closed
        return True

    async def aclose(self) -> None:
        for rid in list(self._running):
            await self.cancel(rid)
        await self._client.aclose()
