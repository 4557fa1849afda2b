"""The WorkerAdapter gRPC pair: ``serve_adapter`` hosting a mock, ``RemoteAdapter`` driving it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.mock import ManualClock, MockAdapter
from llorch.reference.adapters.remote import RemoteAdapter, error_from_rpc
from llorch.reference.adapters.serve import AdapterServer, serve_adapter
from llorch.reference.config import MockEngineConfig
from llorch.reference.core.types import Ended, SamplerParams, TaskRequest
from llorch.reference.errors import (
    Conflict,
    EngineFailure,
    ErrorCode,
    InvalidParams,
    NotFound,
    Unavailable,
)
from llorch.reference.runtime.orchestrator import Orchestrator

from .runtime_support import ALICE, advance_until, check_grammar, collect, config, eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def served() -> AsyncIterator[tuple[MockAdapter, AdapterServer, RemoteAdapter, ManualClock]]:
    clock = ManualClock()
    mock = MockAdapter("m", MockEngineConfig(tokens_per_s=10, ttft_ms=0, max_tokens_limit=500), slots=2,
                       clock=clock)
    server = await serve_adapter(mock, "127.0.0.1", 0, health_interval_s=0.01)
    remote = RemoteAdapter(server.address)
    try:
        yield mock, server, remote, clock
    finally:
        await remote.aclose()
        await server.stop(0)


def req(rid: str, max_tokens: int = 5, model: str = "m", **sampler: object) -> GenerateRequest:
    return GenerateRequest(rid, model, "a remote prompt", max_tokens, SamplerParams(**sampler))  # type: ignore[arg-type]


async def drain(it: AsyncIterator[object], clock: ManualClock) -> list[object]:
    out: list[object] = []

    async def pull() -> None:
        async for ev in it:
            out.append(ev)

    puller = asyncio.create_task(pull())
    await advance_until(clock, puller.done)
    await puller
    return out


@pytest.mark.req("ADP-1350")
async def test_a_second_server_cannot_share_a_busy_port(served):
    _, server, _, _ = served
    with pytest.raises(OSError, match="cannot bind"):
        second = await serve_adapter(MockAdapter("m"), "127.0.0.1", server.port)
        await second.stop(0)  # pragma: no cover - only reached when the port was shared


@pytest.mark.req("ADP-1012", "ADP-1013", "ADP-1030", "ADP-1300")
async def test_remote_stream_equals_the_direct_stream(served):
    _, _, remote, clock = served
    via_grpc = await drain(remote.generate(req("a", 12, seed=3, temperature=0.7, stop=("zzz",))), clock)
    direct = MockAdapter("m", MockEngineConfig(tokens_per_s=0, ttft_ms=0, max_tokens_limit=500))
    local = [e async for e in direct.generate(req("b", 12, seed=3, temperature=0.7, stop=("zzz",)))]
    assert via_grpc == local
    assert isinstance(via_grpc[0], GenStarted) and isinstance(via_grpc[-1], GenEnd)
    info = await remote.engine_info()
    assert (info.engine, info.is_mock, info.model) == ("mock", True, "m")
    assert (await remote.props()).total_slots == 2 and (await remote.health()).ready


@pytest.mark.req("ADP-1022", "ADP-1023", "ADP-1024", "ADP-1005")
async def test_refusals_travel_as_typed_errors(served):
    mock, _, remote, clock = served
    for bad, cls, code in [(req("x", 0), InvalidParams, ErrorCode.INVALID_PARAMS),
                           (req("", 3), InvalidParams, ErrorCode.INVALID_PARAMS),
                           (req("y", 3, model="other"), NotFound, ErrorCode.MODEL_NOT_FOUND)]:
        with pytest.raises(cls) as info:
            await drain(remote.generate(bad), clock)
        assert info.value.code is code
    first = remote.generate(req("busy", 100))
    assert isinstance(await anext(first), GenStarted)
    with pytest.raises(Conflict):
        await drain(remote.generate(req("busy", 3)), clock)
    second = remote.generate(req("other", 100))
    assert isinstance(await anext(second), GenStarted)
    with pytest.raises(Unavailable) as full:
        await drain(remote.generate(req("third", 3)), clock)
    assert full.value.code is ErrorCode.REPLICA_EXHAUSTED and full.value.retriable
    await first.aclose()  # type: ignore[attr-defined]
    await second.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: mock.running == 0)


@pytest.mark.req("ADP-1026", "ADP-1027", "ADP-1029")
async def test_cancel_rpc_stops_the_stream_and_frees_the_slot(served):
    mock, _, remote, clock = served
    it = remote.generate(req("c", 100))
    seen = [await anext(it)]
    clock.advance(0.1)
    seen.append(await anext(it))
    assert isinstance(seen[-1], GenToken)
    assert await remote.cancel("c") is True
    clock.advance(100)
    rest = [e async for e in it]
    assert not any(isinstance(e, GenToken) for e in rest)
    await eventually(lambda: mock.running == 0)
    assert (await remote.props()).free_slots == 2
    assert await remote.cancel("c") is False and await remote.cancel("unknown") is False


@pytest.mark.req("ADP-1028")
async def test_closing_the_call_cancels_the_generation(served):
    mock, _, remote, _ = served
    it = remote.generate(req("d", 100))
    await anext(it)
    assert mock.running == 1
    await it.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: mock.running == 0)
    assert mock.stats.cancelled == 1


async def test_mid_stream_engine_failure_arrives_as_the_same_error():
    engine = MockEngineConfig(tokens_per_s=0, ttft_ms=0, fail_after=2, fail_code="DECODE_TIMEOUT")
    mock = MockAdapter("m", engine)
    server = await serve_adapter(mock)
    remote = RemoteAdapter(server.address)
    try:
        got: list[object] = []
        with pytest.raises(EngineFailure) as info:
            async for ev in remote.generate(req("e", 10)):
                got.append(ev)
        assert info.value.code is ErrorCode.DECODE_TIMEOUT
        assert sum(isinstance(e, GenToken) for e in got) == 2
    finally:
        await remote.aclose()
        await server.stop(0)


@pytest.mark.req("ADP-1036")
async def test_lost_connection_mid_stream_is_worker_reset(served):
    _, server, remote, clock = served
    it = remote.generate(req("f", 100))
    await anext(it)
    await server.stop(0)
    with pytest.raises(EngineFailure) as info:
        clock.advance(1)
        async for _ in it:
            clock.advance(1)
    assert info.value.code is ErrorCode.WORKER_RESET and info.value.retriable
    assert not (await remote.health()).ready


@pytest.mark.req("ADP-1011")
async def test_standard_health_service_mirrors_readiness(served):
    mock, server, _, _ = served
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING

        async def status() -> int:
            return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status

        assert await status() == serving
        mock.ready = False
        for _ in range(500):
            if await status() != serving:
                break
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_orchestrator_drives_a_remote_pool_end_to_end():
    mock = MockAdapter("m", MockEngineConfig(tokens_per_s=0, ttft_ms=0), slots=2)
    server = await serve_adapter(mock)
    try:
        cfg = config(pools=[{"id": "r", "model": "m", "engine": "remote", "slots_per_replica": 2,
                             "remote": {"address": server.address}}])
        async with Orchestrator(cfg) as orch:
            assert orch.pool("r").ready and orch.pool("r").total_slots == 2
            a = await orch.submit(TaskRequest("m", "over the wire", 30), ALICE)
            events = await collect(orch, a.task_id)
            check_grammar(events)
            assert isinstance(events[-1].kind, Ended) and events[-1].kind.tokens_out == 30
            await eventually(lambda: mock.running == 0 and orch.pool("r").free_slots == 2)
    finally:
        await server.stop(0)


async def test_reflection_lists_the_worker_adapter_and_health_services(served):
    _, server, _, _ = served
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for answer in call:
            names |= {s.name for s in answer.list_services_response.service}
        assert {"llorch.v1.WorkerAdapter", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("status, streaming, cls, code", [
    (grpc.StatusCode.UNAVAILABLE, True, EngineFailure, ErrorCode.WORKER_RESET),
    (grpc.StatusCode.UNAVAILABLE, False, Unavailable, ErrorCode.POOL_UNREADY),
    (grpc.StatusCode.DEADLINE_EXCEEDED, True, EngineFailure, ErrorCode.DECODE_TIMEOUT),
    (grpc.StatusCode.INVALID_ARGUMENT, False, InvalidParams, ErrorCode.INVALID_PARAMS),
    (grpc.StatusCode.NOT_FOUND, False, NotFound, ErrorCode.MODEL_NOT_FOUND),
    (grpc.StatusCode.INTERNAL, True, EngineFailure, ErrorCode.ENGINE_ERROR),
])
def test_bare_statuses_map_into_the_error_tree(status, streaming, cls, code):
    exc = grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")
    mapped = error_from_rpc(exc, streaming=streaming)
    assert isinstance(mapped, cls) and mapped.code is code

