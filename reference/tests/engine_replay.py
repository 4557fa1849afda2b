"""Replay an engine transcript (``reference/adapters/recordings/*.json``) over real loopback HTTP.

The server streams a response body chunk by chunk with chunked transfer encoding, exactly as the
chunks were recorded, and lets a test hold the body after the first ``hold_after`` chunks until it
releases it — so a test can see a token arrive while the engine's body is still open (incremental
parsing), or cancel mid-stream and observe the connection close (upstream cancel). It records
every request it received (the sampler parameters sent) and whether a client hung up mid-body.
Not a test module: the adapter tests import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from llorch.reference.adapters import recordings

RECORDINGS = Path(recordings.__file__).parent


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDINGS / name).read_text(encoding="utf-8"))
    return data


@dataclass
class Received:
    method: str
    path: str
    body: Any


@dataclass
class ReplayServer:
    transcript: dict[str, Any]
    hold_after: int | None = None  # chunks sent before holding the body
    cut_after: int | None = None  # chunks sent before dropping the connection (engine crash)
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _routes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _server: asyncio.Server | None = None

    def __post_init__(self) -> None:
        for ex in self.transcript["exchanges"]:
            key = (ex["request"]["method"], ex["request"]["path"])
            self._routes.setdefault(key, ex)

    def use(self, note: str) -> dict[str, Any]:
        """Answer the exchange's (method, path) with the exchange whose note contains ``note``."""
        for ex in self.transcript["exchanges"]:
            if note in ex["note"]:
                self._routes[(ex["request"]["method"], ex["request"]["path"])] = ex
                return ex
        raise KeyError(note)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> ReplayServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release.set()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, json.loads(raw) if raw else None))
            ex = self._routes.get((method, path))
            if ex is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
                return
            await self._respond(ex, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            writer.close()

    async def _respond(self, ex: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        resp = ex["response"]
        ctype = resp["headers"].get("content-type", "application/json")
        writer.write(f"HTTP/1.1 {resp['status']} X\r\ncontent-type: {ctype}\r\n"
                     "transfer-encoding: chunked\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        hangup = asyncio.create_task(reader.read(1))  # b"" once the client closes its side
        try:
            for i, chunk in enumerate(resp["chunks"]):
                if self.cut_after is not None and i == self.cut_after:
                    writer.transport.abort()
                    return
                if self.hold_after is not None and i == self.hold_after:
                    self.held.set()
                    release = asyncio.create_task(self.release.wait())
                    await asyncio.wait({release, hangup}, return_when=asyncio.FIRST_COMPLETED)
                    release.cancel()
                    if hangup.done():
                        self.disconnected.set()
                        return
                data = chunk.encode()
                if data:
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            hangup.cancel()


def run(coro: Any) -> Any:
    """Run one async test body (no pytest-asyncio in this project)."""
    return asyncio.run(coro)


def texts(transcript: dict[str, Any], note: str, field_path: tuple[str, ...]) -> list[str]:
    """Token texts of an exchange's SSE payloads, read independently of any adapter: each
    ``data:`` JSON payload's field at ``field_path``, empty texts dropped."""
    ex = next(e for e in transcript["exchanges"] if note in e["note"])
    out: list[str] = []
    for line in "".join(ex["response"]["chunks"]).splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            continue
        obj: Any = json.loads(payload)
        for key in field_path:
            obj = obj[key] if isinstance(obj, dict) else obj[int(key)]
        if obj:
            out.append(obj)
    return out


async def collect(stream: Any) -> list[Any]:
    return [ev async for ev in stream]


async def first_token_then_cancel(adapter: Any, server: ReplayServer, req: Any,
                                  *, by: str) -> tuple[list[Any], bool]:
    """Read up to the first token while the engine's body is held open, then stop the call — by
    ``cancel()`` or by closing the stream — and report (events seen, engine saw the hang-up)."""
    gen = adapter.generate(req)
    seen: list[Any] = []
    async for ev in gen:
        seen.append(ev)
        if type(ev).__name__ == "GenToken":
            break
    assert server.held.is_set() and not server.release.is_set()
    if by == "cancel":
        assert await adapter.cancel(req.request_id) is True
        seen.extend([ev async for ev in gen])
    else:
        await gen.aclose()
    try:
        await asyncio.wait_for(server.disconnected.wait(), 5)
    except TimeoutError:
        return seen, False
    return seen, True
