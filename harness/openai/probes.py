"""Wire probes for the OpenAI-compatible suite: every call keeps the exact request and the raw
response bytes, so a failed check can show a server's authors what was sent and the bytes that broke
the rule (issue 7: every failure carries its evidence).

The suite talks HTTP only (httpx); it never imports the reference. SSE framing is parsed here rather
than with a library decoder because the evidence needs each event's byte offset in the raw body,
which decoders throw away.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import httpx

__all__ = [
    "EXCERPT_BYTES",
    "Exchange",
    "OpenAIProbe",
    "SSEEvent",
    "StreamExchange",
    "is_error_envelope",
]

EXCERPT_BYTES = 600
_REDACTED = "Bearer <redacted>"
# How often a request is resent after a pooled connection turned out closed by the server before it
# answered a byte (one per idle connection the pool may hold is plenty).
STALE_RETRIES = 2
_STALE_MESSAGE = "without sending a response"


def _stale_connection(exc: httpx.TransportError) -> bool:
    """The server had closed a kept-alive connection before this request reached it: no byte of an
    answer came back, so the request was never processed. llama.cpp's ``llama-server`` closes the
    connection after every streamed answer while announcing ``Keep-Alive``; a pooling client sees the
    next request on it fail this way. OpenAI's SDK resends it (``max_retries``), and so does the suite,
    noting it, rather than blaming whichever check happened to send that request."""
    return isinstance(exc, httpx.RemoteProtocolError) and _STALE_MESSAGE in str(exc)


@dataclass
class Exchange:
    """One HTTP request and its complete raw answer."""

    method: str
    url: str
    request_body: bytes
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.raw)

    def json_or_none(self) -> Any:
        try:
            return self.json()
        except ValueError:
            return None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def request_text(self) -> str:
        body = self.request_body.decode("utf-8", "replace")
        return f"{self.method} {self.url}\n{body}"

    def excerpt(self, start: int | None = None, end: int | None = None) -> str:
        """Raw response bytes around ``[start, end)`` (the whole head of the body by default)."""
        if start is None:
            start, end = 0, min(len(self.raw), EXCERPT_BYTES)
        end = start if end is None else end
        lo = max(0, start - EXCERPT_BYTES // 3)
        hi = min(len(self.raw), max(end, start) + EXCERPT_BYTES // 3)
        prefix = "…" if lo > 0 else ""
        suffix = "…" if hi < len(self.raw) else ""
        return f"bytes {lo}..{hi} of {len(self.raw)}: {prefix}{self.raw[lo:hi]!r}{suffix}"

    def evidence(self, start: int | None = None, end: int | None = None) -> str:
        """Request sent plus the response status, type and the offending raw bytes."""
        return (f"--- request\n{self.request_text()}\n"
                f"--- response HTTP {self.status} content-type={self.content_type!r}\n"
                f"{self.excerpt(start, end)}")


@dataclass
class SSEEvent:
    """One server-sent event: its ``data`` text and where its bytes lie in the raw body."""

    data: str
    start: int
    end: int
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def is_done(self) -> bool:
        return self.data.strip() == "[DONE]"

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(raw: bytes) -> list[SSEEvent]:
    """Split a ``text/event-stream`` body into events (WHATWG framing: lines, blank line dispatches).

    Comment lines and events without data are dropped, as a client would drop them.
    """
    events: list[SSEEvent] = []
    data: list[str] = []
    fields: dict[str, str] = {}
    start = 0
    pos = 0
    for line in raw.splitlines(keepends=True):
        line_start, pos = pos, pos + len(line)
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text == "":
            if data:
                events.append(SSEEvent("\n".join(data), start, line_start, fields))
            data, fields, start = [], {}, pos
            continue
        if not data and not fields:
            start = line_start
        if text.startswith(":"):
            continue
        name, _, value = text.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    if data:  # an unterminated last event still counts as received bytes
        events.append(SSEEvent("\n".join(data), start, pos, fields))
    return events


@dataclass
class StreamExchange(Exchange):
    """A streamed answer: the raw body plus its parsed SSE events."""

    events: list[SSEEvent] = field(default_factory=list)
    transport_error: str | None = None  # the connection broke before the server closed the response

    @property
    def done_index(self) -> int | None:
        for i, ev in enumerate(self.events):
            if ev.is_done:
                return i
        return None

    def chunks(self) -> Iterator[tuple[SSEEvent, Any]]:
        """JSON chunks before ``[DONE]`` (all of them when there is none); a chunk that is not JSON
        is yielded with ``None`` so a check can point at it."""
        for ev in self.events:
            if ev.is_done:
                return
            try:
                yield ev, ev.json()
            except ValueError:
                yield ev, None

    def event_evidence(self, ev: SSEEvent) -> str:
        return self.evidence(ev.start, ev.end)

    def evidence(self, start: int | None = None, end: int | None = None) -> str:
        text = super().evidence(start, end)
        if self.transport_error:
            text += f"\n--- the connection broke after {len(self.raw)} bytes: {self.transport_error}"
        return text


def is_error_envelope(body: Any) -> bool:
    """OpenAI's error shape: ``{"error": {"message": str, "type": str, "param": …, "code": …}}``."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    err = body["error"]
    return (isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
            and "param" in err and "code" in err)


class OpenAIProbe:
    """Sends requests to one OpenAI-compatible base URL (``…/v1``'s parent) and keeps the raw bytes.

    ``record`` receives every evidence text a failing check produces (``record_property`` in tests),
    so the results file shows it as well as the assertion message.
    """

    def __init__(self, base_url: str, model: str, token: str | None = None, *,
                 timeout: float = 60.0, record: Callable[[str, str], None] | None = None,
                 client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.token = token
        self.timeout = timeout
        self._record = record
        self._client = client

    @contextmanager
    def _session(self) -> Iterator[httpx.Client]:
        """The shared client when one was given (connection reuse), else a fresh one."""
        if self._client is not None:
            yield self._client
            return
        with httpx.Client(timeout=self.timeout) as client:
            yield client

    def headers(self, token: str | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        tok = token if token is not None else self.token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        return h

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def get(self, path: str) -> Exchange:
        with self._session() as client:
            r = client.get(self.url(path), headers=self.headers())
            return Exchange("GET", self.url(path), b"", r.status_code, dict(r.headers), r.content)

    def _note_stale(self, path: str, exc: httpx.TransportError) -> None:
        if self._record is not None:
            self._record("transport_retry", f"POST {path}: resent after {type(exc).__name__}: {exc} "
                                            "(a kept-alive connection the server had closed unannounced)")

    def _no_answer(self, path: str, payload: bytes, exc: httpx.TransportError) -> NoReturn:
        """No answer at all: fail with what was sent (never an exception without evidence)."""
        no_answer = Exchange("POST", self.url(path), payload, 0, {}, b"")
        self.fail(f"POST {path}: no answer ({type(exc).__name__}: {exc})", no_answer.evidence())

    def _send(self, client: httpx.Client, path: str, payload: bytes, token: str | None, *,
              stream: bool) -> httpx.Response:
        """Send one POST; a request lost on a stale kept-alive connection is resent (see
        :func:`_stale_connection`), any other transport failure fails the check with its evidence."""
        for attempt in range(STALE_RETRIES + 1):
            request = client.build_request("POST", self.url(path), content=payload,
                                           headers=self.headers(token))
            try:
                return client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt < STALE_RETRIES and _stale_connection(exc):
                    self._note_stale(path, exc)
                    continue
                self._no_answer(path, payload, exc)
        raise AssertionError("unreachable")  # the loop returns or fails

    def post(self, path: str, body: dict[str, Any] | bytes, *, token: str | None = None) -> Exchange:
        """POST a JSON body (or raw bytes, for malformed input) and read the whole answer."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self._session() as client:
            r = self._send(client, path, payload, token, stream=False)
            return Exchange("POST", self.url(path), payload, r.status_code, dict(r.headers), r.content)

    def stream(self, path: str, body: dict[str, Any]) -> StreamExchange:
        """POST a streaming request and read every byte until the server closes the response."""
        payload = json.dumps(body).encode()
        with self._session() as client:
            r = self._send(client, path, payload, None, stream=True)
            parts: list[bytes] = []
            error = None
            try:
                for part in r.iter_raw():
                    parts.append(part)
            except httpx.TransportError as exc:  # the bytes received so far are the evidence
                error = f"{type(exc).__name__}: {exc}"
            finally:
                r.close()
            return _stream_exchange(self.url(path), payload, r.status_code, dict(r.headers), b"".join(parts),
                                    error)

    async def astream(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> StreamExchange:
        """The async form of :meth:`stream`, for concurrent streams on one client."""
        payload = json.dumps(body).encode()
        r: httpx.Response | None = None
        for attempt in range(STALE_RETRIES + 1):
            request = client.build_request("POST", self.url(path), content=payload, headers=self.headers())
            try:
                r = await client.send(request, stream=True)
                break
            except httpx.TransportError as exc:
                if attempt < STALE_RETRIES and _stale_connection(exc):
                    self._note_stale(path, exc)
                    continue
                self._no_answer(path, payload, exc)
        assert r is not None
        parts: list[bytes] = []
        error = None
        try:
            async for part in r.aiter_raw():
                parts.append(part)
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            await r.aclose()
        return _stream_exchange(self.url(path), payload, r.status_code, dict(r.headers), b"".join(parts),
                                error)

    def chat_body(self, content: str, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": content}], **extra}

    def completion_body(self, prompt: str, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "prompt": prompt, **extra}

    def fail(self, message: str, evidence: str) -> NoReturn:
        """Fail the running check with its evidence, in the message and in the results file."""
        if self._record is not None:
            self._record("evidence", f"{message}\n{evidence}")
        raise AssertionError(f"{message}\n{evidence}")

    def check(self, condition: object, message: str, evidence: str | Callable[[], str]) -> None:
        if not condition:
            self.fail(message, evidence() if callable(evidence) else evidence)


def _stream_exchange(url: str, payload: bytes, status: int, headers: dict[str, str],
                     raw: bytes, transport_error: str | None = None) -> StreamExchange:
    ex = StreamExchange("POST", url, payload, status, headers, raw, transport_error=transport_error)
    if status < 300:
        ex.events = parse_sse(raw)
    return ex
