"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it buffers and hides client disconnects).

- ``CorrelationMiddleware``: echo a well-formed ``X-Correlation-Id`` or generate one, on every
  response, and keep it in a contextvar for error envelopes.
- ``BodyLimitMiddleware``: refuse bodies over the limit with 413 before the app reads them.
"""

from __future__ import annotations

import json
from typing import Any

from llorch.reference.errors import ErrorCode, InvalidParams
from llorch.reference.server import context as ctx
from llorch.reference.server.errors import http_error
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPENAI_PREFIXES = ("/v1/models", "/v1/completions", "/v1/chat/")
TOO_LARGE_FLAG = "llorch.body_too_large"


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES)


class CorrelationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for key, value in scope.get("headers", ()):
            if key == b"x-correlation-id":
                presented = value.decode("latin-1")
                break
        cid = ctx.accept_correlation_id(presented)
        ctx.correlation_id.set(cid)
        header = (b"x-correlation-id", cid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-correlation-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                length = value
                break
        # req: SEC-1014
        if length is not None and (not length.isdigit() or int(length) > self.max):
            await self._refuse(scope, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    # The app's body parser turns this into an HTTP error; the flag makes it 413.
                    scope[TOO_LARGE_FLAG] = True
                    raise InvalidParams("request body too large", code=ErrorCode.PAYLOAD_TOO_LARGE)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = InvalidParams(f"request body over the limit of {self.max} bytes",
                              code=ErrorCode.PAYLOAD_TOO_LARGE)
        status, body, headers = http_error(error, ctx.correlation_id.get(),
                                           openai=is_openai_path(scope.get("path", "")))
        payload = json.dumps(body).encode()
        raw: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(payload)).encode()),
                                          (b"connection", b"close")]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": raw}
        await send(start)
        await send({"type": "http.response.body", "body": payload})
