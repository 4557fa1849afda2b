"""Host any ``Adapter`` as a ``llorch.v1.WorkerAdapter`` gRPC server (``llorch adapter serve``).

This is how third parties plug engines in from any language, and how the reference's own adapters
are certified by ``llorch conform adapter``. The servicer only translates (STYLE.md §6): protobuf in,
adapter call, protobuf out; errors go out through the same status mapping as the orchestrator's
gRPC edge (status code + ``ErrorDetail`` in ``grpc-status-details-bin``). An error before the first
event is a status; after it, a final ``GenerateEvent.error``.

Cancellation: a client closing the ``Generate`` call cancels the handler, which closes the adapter's
iterator (the mock frees its slot in its ``finally``); the ``Cancel`` rpc calls ``adapter.cancel``,
after which the stream ends with status CANCELLED and no further token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeAlias, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llorch.reference.adapters.base import (
    Adapter,
    GenEnd,
    GenerateRequest,
    GenEvent,
    GenStarted,
    GenToken,
)
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import InternalError, InvalidParams, LlorchError
from llorch.reference.server.grpc.convert import error_detail
from llorch.reference.server.grpc.interceptors import abort_with_error

from llorch.proto import common_pb2 as _common
from llorch.proto import worker_adapter_pb2 as _pb
from llorch.proto import worker_adapter_pb2_grpc as _pb_grpc

log = logging.getLogger("llorch.adapter.serve")

SERVICE_NAME = _pb.DESCRIPTOR.services_by_name["WorkerAdapter"].full_name
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def sampler_from_pb(msg: _common.SamplerParams) -> SamplerParams:
    """Proto zero values mean "engine default" (common.proto): map them to the domain defaults."""
    return SamplerParams(temperature=msg.temperature, top_p=msg.top_p or 1.0, top_k=msg.top_k,
                         repeat_penalty=msg.repeat_penalty or 1.0,
                         seed=msg.seed if msg.HasField("seed") else None, stop=tuple(msg.stop))


def _metadata(context: Context, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return ""


MAX_TOKENS_PER_MESSAGE = 32
"""The most tokens one ``GenerateTokens`` message carries (the relay's own flush cap)."""

_Group: TypeAlias = "GenStarted | GenEnd | list[GenToken]"
_DONE = object()


def _event_pb(rid: str, group: _Group) -> _pb.GenerateEvent:
    """One outgoing message: a single token, a ``GenerateTokens`` batch, started or end."""
    # req: ADP-1013
    if isinstance(group, list):
        if len(group) == 1:
            t = group[0]
            return _pb.GenerateEvent(request_id=rid, token=_pb.GenerateToken(
                index=t.index, text=t.text, token_id=t.token_id))
        return _pb.GenerateEvent(request_id=rid, tokens=_pb.GenerateTokens(tokens=[
            _pb.GenerateToken(index=t.index, text=t.text, token_id=t.token_id) for t in group]))
    if isinstance(group, GenStarted):
        return _pb.GenerateEvent(request_id=rid, started=_pb.GenerateStarted(
            prompt_tokens=group.prompt_tokens))
    if isinstance(group, GenEnd):
        return _pb.GenerateEvent(request_id=rid, end=_pb.GenerateEnd(
            prompt_tokens=group.prompt_tokens, tokens_out=group.tokens_out,
            finish_reason=group.finish_reason))
    raise InternalError(f"adapter yielded {type(group).__name__}")  # the adapter broke its protocol


async def _close(stream: AsyncIterator[GenEvent]) -> None:
    # req: ADP-1028
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _single(stream: AsyncIterator[GenEvent]) -> AsyncGenerator[_Group, None]:
    """One message per event: what a client that did not ask for batches gets."""
    try:
        async for ev in stream:
            yield [ev] if isinstance(ev, GenToken) else ev
    finally:
        await _close(stream)


async def _batched(stream: AsyncIterator[GenEvent]) -> AsyncGenerator[_Group, None]:
    """Tokens that are ready while the previous message is being written go out as one message.

    A pump task pulls the adapter's events into a bounded queue; each message takes the first
    event as soon as it is there and adds only the tokens already queued behind it (at most
    ``MAX_TOKENS_PER_MESSAGE``), so no token waits for another one. The bound keeps an engine
    faster than the wire from running far ahead of it.
    """
    # req: ADP-1360
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=4 * MAX_TOKENS_PER_MESSAGE)

    async def pump() -> None:
        try:
            async for ev in stream:
                await queue.put(ev)
            await queue.put(_DONE)
        except Exception as exc:  # handed to the writer, which raises it in the handler
            await queue.put(exc)
        finally:
            await _close(stream)  # in the task that iterated it, as an async generator requires

    pumper = asyncio.get_running_loop().create_task(pump(), name="llorch-adapter-pump")
    try:
        item = await queue.get()
        while True:
            if isinstance(item, Exception):
                raise item
            if item is _DONE:
                return
            if not isinstance(item, GenToken):
                yield cast(_Group, item)
                item = await queue.get()
                continue
            group: list[GenToken] = [item]
            item = None
            while len(group) < MAX_TOKENS_PER_MESSAGE and not queue.empty():
                item = queue.get_nowait()
                if not isinstance(item, GenToken):
                    break
                group.append(item)
                item = None
            yield group
            if item is None:
                item = await queue.get()
    finally:
        pumper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumper


class WorkerAdapterServicer(_pb_grpc.WorkerAdapterServicer):
    """pb ↔ adapter; no rules of its own."""

    def __init__(self, adapter: Adapter, health_servicer: health.aio.HealthServicer | None = None) -> None:
        self.adapter = adapter
        self._health = health_servicer
        self._open: set[str] = set()  # request ids of running Generate calls
        self._cancelled: set[str] = set()  # of those, the ones the Cancel rpc stopped

    async def _abort(self, context: Context, exc: LlorchError) -> None:
        await abort_with_error(context, exc, _metadata(context, "x-correlation-id"))

    async def Health(self, request: _pb.HealthRequest, context: Context) -> _pb.HealthResponse:
        h = await self.adapter.health()
        if self._health is not None:
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING if h.ready
                                   else health_pb2.HealthCheckResponse.NOT_SERVING)
        # req: ADP-1001
        return _pb.HealthResponse(ready=h.ready, detail=h.detail or ("ok" if h.ready else "not ready"))

    async def GetProps(self, request: _pb.PropsRequest, context: Context) -> _pb.Props:
        p = await self.adapter.props()
        return _pb.Props(total_slots=p.total_slots, free_slots=p.free_slots, model=p.model,
                         ctx_size=p.ctx_size, max_tokens_limit=p.max_tokens_limit)

    async def GetEngineInfo(self, request: _pb.EngineInfoRequest, context: Context) -> _pb.EngineInfo:
        i = await self.adapter.engine_info()
        return _pb.EngineInfo(engine=i.engine, engine_version=i.engine_version, model=i.model,
                              model_digest=i.model_digest, build_info=i.build_info,
                              deterministic=i.deterministic, is_mock=i.is_mock)

    async def Generate(self, request: _pb.GenerateRequest,
                       context: Context) -> AsyncIterator[_pb.GenerateEvent]:
        rid = request.request_id
        domain = GenerateRequest(request_id=rid, model=request.model, prompt=request.prompt,
                                 max_tokens=request.max_tokens, sampler=sampler_from_pb(request.sampler),
                                 deterministic=request.deterministic)
        try:
            if not rid:
                raise InvalidParams("request_id: must not be empty")  # req: ADP-1022
            stream = self.adapter.generate(domain)
        except LlorchError as exc:
            await self._abort(context, exc)
            return
        sent = False
        ended = False
        batches = _batched(stream) if request.accept_token_batches else _single(stream)
        self._open.add(rid)
        try:
            async for group in batches:
                if rid in self._cancelled:
                    break  # tokens produced before the cancel but not yet written are dropped
                out = _event_pb(rid, group)
                ended = out.HasField("end")
                sent = True
                yield out
        except LlorchError as exc:
            if not sent:
                await self._abort(context, exc)
                return
            yield _pb.GenerateEvent(request_id=rid, error=error_detail(exc.info()))
            return
        finally:
            self._open.discard(rid)
            self._cancelled.discard(rid)
            await batches.aclose()  # closes the adapter's iterator too (ADP-1028)
        if not ended:
            # The adapter stopped without an end: it was cancelled through the Cancel rpc.
            # req: ADP-1026
            await context.abort(grpc.StatusCode.CANCELLED, f"request {rid} was cancelled")

    async def Cancel(self, request: _pb.AdapterCancelRequest, context: Context) -> _pb.AdapterCancelResponse:
        # req: ADP-1027
        found = await self.adapter.cancel(request.request_id)
        if found and request.request_id in self._open:
            self._cancelled.add(request.request_id)  # req: ADP-1026
        return _pb.AdapterCancelResponse(found=found)


class AdapterServer:
    """A running ``WorkerAdapter`` server: its bound port, and ``stop``."""

    def __init__(self, adapter: Adapter, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                 host: str, port: int, health_interval_s: float) -> None:
        self.adapter = adapter
        self.server = server
        self.health = health_servicer
        self.host = host
        self.port = port
        self._interval = health_interval_s
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _refresh_health(self) -> None:
        """Mirror the adapter's readiness into the standard health service (ADP-1011)."""
        while True:
            try:
                h = await self.adapter.health()
                status = health_pb2.HealthCheckResponse.SERVING if h.ready \
                    else health_pb2.HealthCheckResponse.NOT_SERVING
            except Exception:  # a failing probe is NOT_SERVING, never a dead loop
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set("", status)
            await self.health.set(SERVICE_NAME, status)
            await asyncio.sleep(self._interval)

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self._refresh_health(), name="llorch-adapter-health")

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve_adapter(adapter: Adapter, host: str = "127.0.0.1", port: int = 0, *,
                        credentials: grpc.ServerCredentials | None = None,
                        health_interval_s: float = 1.0) -> AdapterServer:
    """Start serving ``adapter``; port 0 picks a free port (``AdapterServer.port``)."""
    # A second server silently sharing a busy port (SO_REUSEPORT) would split the traffic.
    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    health_servicer = health.aio.HealthServicer()
    _pb_grpc.add_WorkerAdapterServicer_to_server(WorkerAdapterServicer(adapter, health_servicer), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials
                 else server.add_insecure_port(address))
    except RuntimeError as exc:  # grpc reports a failed bind (a busy port) as RuntimeError
        bound = 0
        reason = f": {exc}"
    else:
        reason = ""
    if bound == 0:
        raise OSError(f"cannot bind the adapter server on {address}{reason}")
    handle = AdapterServer(adapter, server, health_servicer, host, bound, health_interval_s)
    await handle.start()
    return handle


__all__ = ["SERVICE_NAME", "AdapterServer", "WorkerAdapterServicer", "sampler_from_pb", "serve_adapter"]
