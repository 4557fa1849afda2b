"""The HTTP gateway: task API (JSON + SSE), pools, sessions, probes, metrics, OpenAI routes.

``create_app`` builds a FastAPI app over an ``OrchestratorApi`` without starting anything (the
OpenAPI exporter calls it too). Routes only translate JSON ↔ domain; errors are mapped once, in
``server/errors.py``: the task API answers in our envelope, the OpenAI routes in OpenAI's shape.
Request validation failures are 400 (never 422), unknown routes 404 and unexpected failures 500,
all in the same envelope.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from llorch.reference.core.types import Identity, TaskState
from llorch.reference.errors import (
    ErrorCode,
    InternalError,
    InvalidParams,
    LlorchError,
    NotFound,
)
from llorch.reference.runtime.api import OrchestratorApi
from llorch.reference.server import context as ctx
from llorch.reference.server.errors import http_error
from llorch.reference.server.events import event_data, event_name
from llorch.reference.server.http import models as m
from llorch.reference.server.http.middleware import (
    TOO_LARGE_FLAG,
    BodyLimitMiddleware,
    CorrelationMiddleware,
    is_openai_path,
)
from llorch.reference.server.security import TENANT_HEADER, SecuritySettings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Scope, Send

from llorch.resources import contract_version

log = logging.getLogger("llorch.server.http")

SSE_SEPARATOR = "\n"
SSE_PING_S = 15


@dataclass
class Gateway:
    """What the routes need, kept on ``app.state.gateway``."""

    orchestrator: OrchestratorApi
    security: SecuritySettings = field(default_factory=SecuritySettings)
    metrics_registry: CollectorRegistry | None = None
    shutting_down: bool = False  # set first on shutdown: /readyz answers 503 from then on


_bearer = HTTPBearer(auto_error=False, description="Bearer token; required when auth is configured")


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def caller(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                 gw: GatewayDep) -> Identity:
    """Resolve the caller: the token's tenant with auth, else ``X-Llorch-Tenant`` or anonymous."""
    # req: SEC-1001, SEC-1006
    identity = gw.security.authenticator.identify(request.headers.get("authorization"),
                                                  request.headers.get(TENANT_HEADER))
    ctx.identity.set(identity)
    return identity


CallerDep = Annotated[Identity, Depends(caller)]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": m.ErrorEnvelope, "description": text} for code, text in {
        400: "invalid request", 401: "missing or invalid bearer token", 403: "not allowed",
        404: "not found", 409: "conflict", 413: "payload too large", 429: "overloaded (Retry-After)",
        500: "internal error", 502: "engine failure", 503: "unavailable (Retry-After)",
        504: "deadline unmet",
    }.items()
}


SUBMIT_PATHS = frozenset({"/v1/tasks", "/v1/completions", "/v1/chat/completions"})


def count_rejected_submit(orchestrator: OrchestratorApi, method: str, path: str, error: LlorchError) -> None:
    """A refused submit counts in ``tasks_rejected_total`` even when the edge refused it first.

    The orchestrator's helper counts each error once, so the submits it refused itself (and already
    counted) are not counted twice. Orchestrators without the helper (test doubles) are skipped.
    """
    if method != "POST" or path not in SUBMIT_PATHS or error.code is ErrorCode.INTERNAL:
        return  # an internal failure is not a refusal
    count = getattr(orchestrator, "count_rejection", None)
    if count is not None:
        # req: MET-1011
        count(error)


class _SubmitCountingBodyLimit(BodyLimitMiddleware):
    """The body limit, counting a refused submit before it reaches the app (MET-1011)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, orchestrator: OrchestratorApi) -> None:
        super().__init__(app, max_body_bytes)
        self.orchestrator = orchestrator

    async def _refuse(self, scope: Scope, send: Send) -> None:
        count_rejected_submit(self.orchestrator, scope.get("method", ""), scope.get("path", ""),
                              InvalidParams("request body too large", code=ErrorCode.PAYLOAD_TOO_LARGE))
        await super()._refuse(scope, send)


def error_response(request: Request, error: LlorchError, param: str | None = None) -> JSONResponse:
    """The one error path of the HTTP edge: the envelope (or OpenAI's shape) and the rejection count."""
    count_rejected_submit(gateway(request).orchestrator, request.method, request.url.path, error)
    openai = is_openai_path(request.url.path)
    status, body, headers = http_error(error, ctx.correlation_id.get(), openai=openai, param=param)
    headers["X-Correlation-Id"] = ctx.correlation_id.get()
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    msg = first.get("msg", "invalid value")
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    async def on_llorch_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LlorchError)
        return error_response(request, exc, param=getattr(exc, "param", None))

    async def on_validation(request: Request, exc: Exception) -> Response:
        # req: ERR-1023, ADM-1007, ADM-1008
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return error_response(request, InvalidParams(message), param=param)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.scope.get(TOO_LARGE_FLAG):
            return error_response(request, InvalidParams("request body too large",
                                                         code=ErrorCode.PAYLOAD_TOO_LARGE))
        error: LlorchError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            # Method not allowed on an existing path: a client mistake, reported as 400 in our envelope.
            error = InvalidParams(f"method {request.method} not allowed on {request.url.path}")
        elif 400 <= exc.status_code < 500:
            error = InvalidParams(str(exc.detail))
        else:
            error = InternalError(str(exc.detail))
        response = error_response(request, error)
        if exc.status_code == 405:
            response.status_code = 405
        return response

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, InternalError("internal error"))

    app.add_exception_handler(LlorchError, on_llorch_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def keep_alive() -> ServerSentEvent:
    # req: STR-1018
    return ServerSentEvent(comment="keep-alive")


def sse_response(event_iter: AsyncIterator[ServerSentEvent]) -> EventSourceResponse:
    """SSE with ``\\n`` separators, a ``: keep-alive`` comment when idle, and no proxy buffering."""
    return EventSourceResponse(event_iter, sep=SSE_SEPARATOR, ping=SSE_PING_S,
                               ping_message_factory=keep_alive,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _serve_frozen_openapi(app: FastAPI) -> None:
    """``GET /openapi.json`` serves the document that ``contracts/openapi/`` freezes (CTR-1020)."""
    from llorch.reference.server.http.openapi import without_validation_errors

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_validation_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(orchestrator: OrchestratorApi, security: SecuritySettings | None = None, *,
               metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the HTTP gateway; nothing starts until an ASGI server runs it."""
    from llorch.reference.server.http.openai import router as openai_router

    security = security or SecuritySettings()
    app = FastAPI(title="llorch", version=contract_version(),
                  description="llorch reference orchestrator: task API, SSE events, pools, sessions, "
                              "probes, metrics and OpenAI-compatible routes.",
                  responses=ERROR_RESPONSES)
    app.state.gateway = Gateway(orchestrator, security, metrics_registry)
    _serve_frozen_openapi(app)
    install_error_handlers(app)
    app.add_middleware(_SubmitCountingBodyLimit, max_body_bytes=security.limits.max_body_bytes,
                       orchestrator=orchestrator)
    app.add_middleware(CorrelationMiddleware)

    # ---- tasks --------------------------------------------------------------------------------

    @app.post("/v1/tasks", status_code=202, response_model=m.SubmitOut, tags=["tasks"])
    async def submit(body: m.SubmitIn, who: CallerDep, gw: GatewayDep, response: Response) -> m.SubmitOut:
        gw.security.limits.check_prompt(body.prompt)
        admission = await gw.orchestrator.submit(body.domain(), who)
        response.headers["Location"] = f"/v1/tasks/{admission.task_id}"
        return m.SubmitOut(task_id=admission.task_id, queue_position=admission.queue_position,
                           predicted_start_ms=admission.predicted_start_ms,
                           correlation_id=ctx.correlation_id.get())

    @app.get("/v1/tasks", response_model=m.TaskListOut, tags=["tasks"])
    async def list_tasks(who: CallerDep, gw: GatewayDep,
                         state: m.TaskStateName | None = None,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> m.TaskListOut:
        records = await gw.orchestrator.list_tasks(who, state=TaskState(state) if state else None,
                                                   limit=limit)
        return m.TaskListOut(tasks=[m.TaskOut.of(r) for r in records])

    @app.get("/v1/tasks/{task_id}", response_model=m.TaskOut, tags=["tasks"])
    async def get_task(task_id: str, who: CallerDep, gw: GatewayDep) -> m.TaskOut:
        return m.TaskOut.of(await gw.orchestrator.get_task(task_id, who))

    @app.post("/v1/tasks/{task_id}/cancel", response_model=m.CancelOut, tags=["tasks"])
    async def cancel(task_id: str, who: CallerDep, gw: GatewayDep) -> m.CancelOut:
        record = await gw.orchestrator.cancel(task_id, who)
        return m.CancelOut(task_id=record.task_id, state=record.state.value)

    @app.get("/v1/tasks/{task_id}/events", tags=["tasks"],
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "SSE: id = seq, event = kind, data = JSON"}})
    async def events(task_id: str, who: CallerDep, gw: GatewayDep,
                     from_seq: Annotated[int, Query(ge=0)] = 0,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                     ) -> EventSourceResponse:
        # req: STR-1012, STR-1019, STR-1020
        start = from_seq
        if last_event_id is not None:
            if not last_event_id.strip().isdigit():
                raise InvalidParams("Last-Event-ID must be the seq of the last event received")
            start = max(start, int(last_event_id) + 1)
        await gw.orchestrator.get_task(task_id, who)  # 404/403 before the stream starts
        source = gw.orchestrator.events(task_id, who, from_seq=start)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            # A dropped SSE connection does not cancel the task here: the client may resume. Closing
            # ``source`` tells the runtime this subscriber left (its disconnect grace, STR-1034).
            try:
                async with contextlib.aclosing(source):
                    async for event in source:
                        yield ServerSentEvent(data=json.dumps(event_data(event), separators=(",", ":")),
                                              event=event_name(event), id=str(event.seq))
            except LlorchError as exc:
                # After the stream began the status stays 200; the error ends the stream.
                _, body, _ = http_error(exc, ctx.correlation_id.get())
                yield ServerSentEvent(data=json.dumps({"task_id": task_id, **body["error"]}),
                                      event="error")

        return sse_response(stream())

    # ---- capabilities, pools, sessions, usage -------------------------------------------------

    @app.get("/v1/capabilities", response_model=m.CapabilitiesOut, tags=["admin"])
    async def capabilities(who: CallerDep, gw: GatewayDep) -> m.CapabilitiesOut:
        return m.CapabilitiesOut.of(gw.orchestrator.capabilities())

    @app.get("/v1/pools", response_model=m.PoolListOut, tags=["admin"])
    async def pools(who: CallerDep, gw: GatewayDep) -> m.PoolListOut:
        return m.PoolListOut(pools=[m.PoolOut.of(p) for p in gw.orchestrator.pools()])

    @app.get("/v1/pools/{pool_id}", response_model=m.PoolOut, tags=["admin"])
    async def pool(pool_id: str, who: CallerDep, gw: GatewayDep) -> m.PoolOut:
        return m.PoolOut.of(gw.orchestrator.pool(pool_id))

    @app.post("/v1/pools/{pool_id}/drain", response_model=m.DrainOut, tags=["admin"])
    async def drain(pool_id: str, who: CallerDep, gw: GatewayDep,
                    body: m.DrainIn | None = None) -> m.DrainOut:
        deadline = body.deadline_ms if body is not None else 0
        return m.DrainOut.of(await gw.orchestrator.drain_pool(pool_id, who, deadline_ms=deadline))

    @app.post("/v1/pools/{pool_id}/reload", response_model=m.ReloadOut, tags=["admin"])
    async def reload(pool_id: str, body: m.ReloadIn, who: CallerDep, gw: GatewayDep) -> m.ReloadOut:
        return m.ReloadOut.of(await gw.orchestrator.reload_pool(pool_id, body.model, who))

    @app.post("/v1/sessions", status_code=201, response_model=m.SessionOut, tags=["sessions"])
    async def create_session(who: CallerDep, gw: GatewayDep,
                             body: m.SessionIn | None = None) -> m.SessionOut:
        body = body or m.SessionIn()
        return m.SessionOut.of(await gw.orchestrator.create_session(
            who, ttl_ms=body.ttl_ms, max_turns=body.max_turns))

    @app.get("/v1/sessions/{session_id}", response_model=m.SessionOut, tags=["sessions"])
    async def get_session(session_id: str, who: CallerDep, gw: GatewayDep) -> m.SessionOut:
        return m.SessionOut.of(await gw.orchestrator.get_session(session_id, who))

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["sessions"])
    async def delete_session(session_id: str, who: CallerDep, gw: GatewayDep) -> Response:
        await gw.orchestrator.delete_session(session_id, who)
        return Response(status_code=204)

    @app.get("/v1/usage", response_model=m.UsageOut, tags=["admin"])
    async def usage(who: CallerDep, gw: GatewayDep) -> m.UsageOut:
        rows = await gw.orchestrator.usage()
        if not who.admin:
            rows = [r for r in rows if r.tenant == who.tenant]
        return m.UsageOut(usage=[m.UsageRowOut(tenant=r.tenant, pool_id=r.pool_id, tasks=r.tasks,
                                               tokens_in=r.tokens_in, tokens_out=r.tokens_out,
                                               by_state=dict(r.by_state)) for r in rows])

    # ---- probes and metrics (no auth) ---------------------------------------------------------

    @app.get("/healthz", response_model=m.HealthOut, tags=["probes"])
    async def healthz() -> m.HealthOut:
        return m.HealthOut(status="ok")

    @app.get("/readyz", response_model=m.HealthOut, tags=["probes"],
             responses={503: {"model": m.HealthOut, "description": "no pool has a ready replica"}})
    async def readyz(gw: GatewayDep) -> Response:
        # req: CFG-1401
        ready = not gw.shutting_down and gw.orchestrator.ready()
        return JSONResponse({"status": "ready" if ready else "unready"}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics(request: Request, gw: GatewayDep) -> Response:
        # req: SEC-1009
        gw.security.authenticator.identify(request.headers.get("authorization"))
        from prometheus_client import REGISTRY

        registry = gw.metrics_registry or REGISTRY
        # req: MET-1001
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    app.include_router(openai_router)
    return app


__all__ = ["ERROR_RESPONSES", "Gateway", "create_app", "error_response"]
