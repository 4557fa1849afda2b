"""Wire-level proxies in front of a real target, each breaking exactly one rule (D15).

An orchestrator proxy forwards gRPC ``OrchestratorService`` and HTTP to the upstream orchestrator;
an adapter proxy forwards ``WorkerAdapter``. A fault is a subclass that overrides one hook. The
self-test starts the real target, puts one fault in front of it, runs the suites against the proxy
and checks that they fail with the requirement ID the fault breaks (``FAULTS`` below).

Run one::

    python -m llorch.harness.faulty.proxy FAULT --upstream-grpc H:P [--upstream-http URL]

prints ``{"grpc": "127.0.0.1:P", "http": "http://127.0.0.1:Q", "pid": N}`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import grpc
import httpx
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llorch.proto import orchestrator_pb2, orchestrator_pb2_grpc, worker_adapter_pb2, worker_adapter_pb2_grpc

__all__ = ["FAULTS", "AdapterProxy", "Fault", "HttpProxy", "OrchestratorProxy", "main"]

FORWARDED_METADATA = ("authorization", "x-llorch-tenant", "x-correlation-id")
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    return tuple((m.key, m.value) for m in context.invocation_metadata() or ()
                 if m.key in FORWARDED_METADATA and isinstance(m.value, str))


async def _abort(context: grpc.aio.ServicerContext, err: grpc.aio.AioRpcError) -> None:
    """Relay an upstream error status with its trailers (grpc-status-details-bin included)."""
    trailers = tuple((k, v) for k, v in (err.trailing_metadata() or ()))
    await context.abort(err.code(), err.details() or "", trailers)


# ---- gRPC: orchestrator ------------------------------------------------------------------------


class OrchestratorProxy(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Forwards every RPC; faults override ``Cancel``, ``transform_events`` or ``Submit``."""

    UNARY: ClassVar[tuple[str, ...]] = (
        "Submit", "Cancel", "GetTask", "ListTasks", "GetCapabilities", "ListPools", "GetPoolHealth",
        "DrainPool", "ReloadPool", "CreateSession", "GetSession", "DeleteSession")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.up = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

    async def forward(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await getattr(self.up, name)(request, metadata=_metadata(context), timeout=60)
        except grpc.aio.AioRpcError as err:
            await _abort(context, err)

    async def Submit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("Submit", request, context)

    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("Cancel", request, context)

    async def GetTask(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("GetTask", request, context)

    async def ListTasks(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("ListTasks", request, context)

    async def GetCapabilities(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("GetCapabilities", request, context)

    async def ListPools(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("ListPools", request, context)

    async def GetPoolHealth(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("GetPoolHealth", request, context)

    async def DrainPool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("DrainPool", request, context)

    async def ReloadPool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("ReloadPool", request, context)

    async def CreateSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("CreateSession", request, context)

    async def GetSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("GetSession", request, context)

    async def DeleteSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("DeleteSession", request, context)

    async def StreamEvents(self, request: Any, context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[orchestrator_pb2.TaskEvent]:
        call = self.up.StreamEvents(request, metadata=_metadata(context))
        try:
            async for ev in self.transform_events(call):
                yield ev
        except grpc.aio.AioRpcError as err:
            await _abort(context, err)
        finally:
            call.cancel()

    async def transform_events(self, events: AsyncIterator[orchestrator_pb2.TaskEvent]
                               ) -> AsyncIterator[orchestrator_pb2.TaskEvent]:
        async for ev in events:
            yield ev


# ---- gRPC: adapter ---------------------------------------------------------------------------


class AdapterProxy(worker_adapter_pb2_grpc.WorkerAdapterServicer):
    """Forwards every WorkerAdapter RPC; faults override one of them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.up = worker_adapter_pb2_grpc.WorkerAdapterStub(channel)

    async def forward(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await getattr(self.up, name)(request, timeout=60)
        except grpc.aio.AioRpcError as err:
            await _abort(context, err)

    async def Health(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("Health", request, context)

    async def GetProps(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("GetProps", request, context)

    async def GetEngineInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("GetEngineInfo", request, context)

    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.forward("Cancel", request, context)

    async def Generate(self, request: worker_adapter_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[worker_adapter_pb2.GenerateEvent]:
        call = self.up.Generate(self.transform_request(request))
        try:
            async for ev in self.transform_generate(request, call):
                yield ev
        except grpc.aio.AioRpcError as err:
            await _abort(context, err)
        finally:
            call.cancel()

    def transform_request(self, request: worker_adapter_pb2.GenerateRequest
                          ) -> worker_adapter_pb2.GenerateRequest:
        return request

    async def transform_generate(self, request: worker_adapter_pb2.GenerateRequest,
                                 events: AsyncIterator[worker_adapter_pb2.GenerateEvent]
                                 ) -> AsyncIterator[worker_adapter_pb2.GenerateEvent]:
        async for ev in events:
            yield ev


# ---- HTTP --------------------------------------------------------------------------------------


class HttpProxy:
    """Forwards every HTTP request; SSE is streamed through, other bodies may be rewritten."""

    def __init__(self, upstream: str) -> None:
        self.client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(60, read=None))

    async def handle(self, request: Request) -> Response | None:
        """A fault may answer by itself; None forwards."""
        return None

    def rewrite(self, request: Request, status: int, body: bytes) -> tuple[int, bytes]:
        """A fault may change a non-streaming answer's status and body."""
        return status, body

    async def __call__(self, request: Request) -> Response:
        own = await self.handle(request)
        if own is not None:
            return own
        return await self.forward(request, await request.body())

    async def forward(self, request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        up_req = self.client.build_request(request.method, request.url.path, params=request.url.query,
                                           headers=headers, content=body)
        up = await self.client.send(up_req, stream=True)
        out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS}
        if up.headers.get("content-type", "").startswith("text/event-stream"):
            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in up.aiter_raw():
                        yield chunk
                finally:
                    await up.aclose()

            return StreamingResponse(relay(), status_code=up.status_code, headers=out_headers)
        data = await up.aread()
        await up.aclose()
        status, data = self.rewrite(request, up.status_code, data)
        return Response(data, status_code=status, headers=out_headers)


# ---- faults ------------------------------------------------------------------------------------


class Fault:
    """One broken rule: which proxies it replaces, and the IDs a correct harness must report."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "orchestrator"   # or "adapter"
    breaks: ClassVar[tuple[str, ...]] = ()
    suites: ClassVar[tuple[str, ...]] = ()  # harness paths (with ::test selectors) that must catch it
    grpc_proxy: ClassVar[type[Any] | None] = None
    http_proxy: ClassVar[type[HttpProxy] | None] = None


# -- orchestrator: streams after an acknowledged cancel
class _SwallowCancelGrpc(OrchestratorProxy):
    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return orchestrator_pb2.CancelResponse(task_id=request.task_id, state=orchestrator_pb2.CANCELLED)


class _SwallowCancelHttp(HttpProxy):
    async def handle(self, request: Request) -> Response | None:
        parts = request.url.path.strip("/").split("/")
        if (request.method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "tasks"]
                and parts[3] == "cancel"):
            return Response(json.dumps({"task_id": parts[2], "state": "cancelled"}),
                            media_type="application/json")
        return None


class StreamAfterCancel(Fault):
    name = "stream-after-cancel"
    breaks = ("STR-1028",)
    suites = ("harness/contract/test_cancel.py::test_cancel_running_task_ends_its_stream",)
    grpc_proxy = _SwallowCancelGrpc
    http_proxy = _SwallowCancelHttp


# -- orchestrator: reorders / duplicates / drops events on the gRPC stream
class _ReorderGrpc(OrchestratorProxy):
    async def transform_events(self, events: AsyncIterator[orchestrator_pb2.TaskEvent]
                               ) -> AsyncIterator[orchestrator_pb2.TaskEvent]:
        held: orchestrator_pb2.TaskEvent | None = None
        swapped = False
        async for ev in events:
            if not swapped and ev.WhichOneof("kind") == "token":
                if held is None:
                    held = ev
                    continue
                yield ev
                yield held
                swapped = True
                held = None
                continue
            if held is not None:
                yield held
                held = None
            yield ev


class ReorderEvents(Fault):
    name = "reorder-events"
    breaks = ("STR-1004", "STR-1005")
    suites = ("harness/contract/test_streams.py::test_grpc_stream_follows_the_grammar",)
    grpc_proxy = _ReorderGrpc


class _DuplicateGrpc(OrchestratorProxy):
    async def transform_events(self, events: AsyncIterator[orchestrator_pb2.TaskEvent]
                               ) -> AsyncIterator[orchestrator_pb2.TaskEvent]:
        done = False
        async for ev in events:
            yield ev
            if not done and ev.WhichOneof("kind") == "token":
                yield ev
                done = True


class DuplicateEvent(Fault):
    name = "duplicate-event"
    breaks = ("STR-1004",)
    suites = ("harness/contract/test_streams.py::test_grpc_stream_follows_the_grammar",)
    grpc_proxy = _DuplicateGrpc


class _OmitTerminalGrpc(OrchestratorProxy):
    async def transform_events(self, events: AsyncIterator[orchestrator_pb2.TaskEvent]
                               ) -> AsyncIterator[orchestrator_pb2.TaskEvent]:
        async for ev in events:
            if ev.WhichOneof("kind") in ("end", "error", "cancelled"):
                return
            yield ev


class OmitTerminal(Fault):
    name = "omit-terminal"
    breaks = ("STR-1002",)
    suites = ("harness/contract/test_streams.py::test_grpc_stream_follows_the_grammar",)
    grpc_proxy = _OmitTerminalGrpc


# -- orchestrator: accepts invalid input (cleans the body up and forwards it)
class _AcceptInvalidHttp(HttpProxy):
    FIELDS: ClassVar[set[str]] = {"model", "prompt", "max_tokens", "sampler", "priority", "session_id",
                                  "placement", "deadline_ms", "deterministic", "idempotency_key",
                                  "require_real_engine"}

    async def handle(self, request: Request) -> Response | None:
        if request.method != "POST" or request.url.path != "/v1/tasks":
            return None
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        body = {k: v for k, v in body.items() if k in self.FIELDS}
        if isinstance(body.get("sampler"), dict):
            body["sampler"] = {k: v for k, v in body["sampler"].items()
                               if k in {"temperature", "top_p", "top_k", "repeat_penalty", "seed", "stop"}}
        return await self.forward(request, json.dumps(body).encode())


class AcceptInvalid(Fault):
    name = "accept-invalid"
    breaks = ("ADM-1007",)
    suites = ("harness/contract/test_errors.py::test_invalid_submit_is_refused",)
    http_proxy = _AcceptInvalidHttp


# -- orchestrator: loses a task on overload (answers 202 for a task the upstream refused)
class _LoseOnOverloadHttp(HttpProxy):
    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.lost = 0

    def rewrite(self, request: Request, status: int, body: bytes) -> tuple[int, bytes]:
        if request.method == "POST" and request.url.path == "/v1/tasks" and status == 429:
            self.lost += 1
            return 202, json.dumps({"task_id": f"lost-{os.getpid()}-{self.lost}", "queue_position": 0,
                                    "predicted_start_ms": 0, "correlation_id": ""}).encode()
        return status, body


class LoseTaskOnOverload(Fault):
    name = "lose-task-on-overload"
    breaks = ("QUE-1001",)
    suites = ("harness/properties/test_queue_properties.py::test_overload_loses_no_accepted_task",)
    http_proxy = _LoseOnOverloadHttp


# -- orchestrator: exposes tokens_out_total with the wrong type
class _WrongMetricTypeHttp(HttpProxy):
    def rewrite(self, request: Request, status: int, body: bytes) -> tuple[int, bytes]:
        if request.url.path == "/metrics":
            body = body.replace(b"# TYPE tokens_out_total counter", b"# TYPE tokens_out_total gauge")
        return status, body


class WrongMetricType(Fault):
    name = "wrong-metric-type"
    breaks = ("MET-1002",)
    suites = ("harness/metrics/test_metrics.py::test_metrics_match_the_contract",)
    http_proxy = _WrongMetricTypeHttp


# -- orchestrator: errors in another shape than the envelope
class _WrongErrorShapeHttp(HttpProxy):
    def rewrite(self, request: Request, status: int, body: bytes) -> tuple[int, bytes]:
        if status >= 400:
            try:
                err = json.loads(body).get("error", {})
            except (ValueError, AttributeError):
                return status, body
            return status, json.dumps({"detail": err.get("message", ""), "code": err.get("code")}).encode()
        return status, body


class WrongErrorShape(Fault):
    name = "wrong-error-shape"
    breaks = ("ERR-1001",)
    suites = ("harness/contract/test_errors.py::test_invalid_submit_is_refused",)
    http_proxy = _WrongErrorShapeHttp


# -- orchestrator: a provider change (renamed response field) that pact verification must catch
class _RenameFieldHttp(HttpProxy):
    def rewrite(self, request: Request, status: int, body: bytes) -> tuple[int, bytes]:
        if request.method == "POST" and request.url.path == "/v1/tasks" and status == 202:
            data = json.loads(body)
            data["id"] = data.pop("task_id", None)
            return status, json.dumps(data).encode()
        return status, body


class RenameField(Fault):
    name = "rename-field"
    breaks = ("CTR-1500",)
    suites = ("harness/contract/test_pact_provider.py",)
    http_proxy = _RenameFieldHttp


# -- adapter: streams after an acknowledged cancel
class _AdapterSwallowCancel(AdapterProxy):
    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return worker_adapter_pb2.AdapterCancelResponse(found=True)


class AdapterStreamAfterCancel(Fault):
    name = "adapter-stream-after-cancel"
    kind = "adapter"
    breaks = ("ADP-1026",)
    suites = ("harness/adapter/test_adapter.py::test_cancel_stops_the_stream",)
    grpc_proxy = _AdapterSwallowCancel


# -- adapter: reports free slots it does not have
class _AdapterLieSlots(AdapterProxy):
    async def GetProps(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        props = await self.forward("GetProps", request, context)
        props.free_slots = props.total_slots
        return props


class AdapterLieFreeSlots(Fault):
    name = "adapter-lie-free-slots"
    kind = "adapter"
    breaks = ("ADP-1003",)
    suites = ("harness/adapter/test_adapter.py::test_free_slots_track_running_generations",)
    grpc_proxy = _AdapterLieSlots


# -- adapter: nondeterministic for a fixed seed (output depends on history, as with a prompt cache)
class _AdapterNondeterministic(AdapterProxy):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.calls = 0

    async def transform_generate(self, request: worker_adapter_pb2.GenerateRequest,
                                 events: AsyncIterator[worker_adapter_pb2.GenerateEvent]
                                 ) -> AsyncIterator[worker_adapter_pb2.GenerateEvent]:
        self.calls += 1
        flip = self.calls > 1
        async for ev in events:
            if flip and ev.WhichOneof("kind") == "token" and ev.token.index == 3:
                ev.token.text += "~"
            yield ev


class AdapterNondeterministic(Fault):
    name = "adapter-nondeterministic"
    kind = "adapter"
    breaks = ("ADP-1030",)
    suites = ("harness/adapter/test_adapter.py::test_same_seed_same_stream",)
    grpc_proxy = _AdapterNondeterministic


# -- adapter: accepts invalid input (repairs it and forwards)
class _AdapterAcceptInvalid(AdapterProxy):
    def transform_request(self, request: worker_adapter_pb2.GenerateRequest
                          ) -> worker_adapter_pb2.GenerateRequest:
        fixed = worker_adapter_pb2.GenerateRequest()
        fixed.CopyFrom(request)
        fixed.max_tokens = min(max(fixed.max_tokens, 1), 64)
        fixed.prompt = fixed.prompt or "repaired"
        fixed.request_id = fixed.request_id or f"repaired-{os.urandom(4).hex()}"
        return fixed


class AdapterAcceptInvalid(Fault):
    name = "adapter-accept-invalid"
    kind = "adapter"
    breaks = ("ADP-1022",)
    suites = ("harness/adapter/test_adapter.py::test_bad_input_is_refused",)
    grpc_proxy = _AdapterAcceptInvalid


FAULTS: dict[str, type[Fault]] = {f.name: f for f in (
    StreamAfterCancel, ReorderEvents, DuplicateEvent, OmitTerminal, AcceptInvalid, LoseTaskOnOverload,
    WrongMetricType, WrongErrorShape, RenameField, AdapterStreamAfterCancel, AdapterLieFreeSlots,
    AdapterNondeterministic, AdapterAcceptInvalid)}


# ---- serving -----------------------------------------------------------------------------------


async def serve(fault: type[Fault], upstream_grpc: str, upstream_http: str | None,
                announce: Callable[[dict[str, Any]], None]) -> None:
    channel = grpc.aio.insecure_channel(upstream_grpc)
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if fault.kind == "adapter":
        proxy_cls = fault.grpc_proxy or AdapterProxy
        worker_adapter_pb2_grpc.add_WorkerAdapterServicer_to_server(proxy_cls(channel), server)
    else:
        proxy_cls = fault.grpc_proxy or OrchestratorProxy
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(proxy_cls(channel), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    info: dict[str, Any] = {"grpc": f"127.0.0.1:{port}", "pid": os.getpid(), "fault": fault.name}

    http_server: uvicorn.Server | None = None
    http_task: asyncio.Task[None] | None = None
    if upstream_http and fault.kind == "orchestrator":
        proxy = (fault.http_proxy or HttpProxy)(upstream_http)
        async def endpoint(request: Request) -> Response:
            return await proxy(request)

        app = Starlette(routes=[Route("/{path:path}", endpoint, methods=[
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        http_server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        http_task = asyncio.create_task(http_server.serve(sockets=[sock]))
        while not http_server.started:
            if http_task.done():
                http_task.result()
            await asyncio.sleep(0.01)
        info["http"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
    announce(info)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if http_server is not None and http_task is not None:
        http_server.should_exit = True
        await http_task
    await server.stop(1)
    await channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llorch.harness.faulty.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fault", choices=sorted(FAULTS))
    parser.add_argument("--upstream-grpc", required=True, help="H:P of the real target")
    parser.add_argument("--upstream-http", default=None, help="http://H:Q of the real orchestrator")
    args = parser.parse_args(argv)

    def announce(info: dict[str, Any]) -> None:
        print(json.dumps(info), flush=True)

    asyncio.run(serve(FAULTS[args.fault], args.upstream_grpc, args.upstream_http, announce))


if __name__ == "__main__":
    main()
