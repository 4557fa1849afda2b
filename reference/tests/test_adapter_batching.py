"""Token batches on the WorkerAdapter wire: ``GenerateEvent.tokens`` for clients that accept them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from llorch.reference.adapters.base import GenerateRequest, GenEvent, GenStarted, GenToken
from llorch.reference.adapters.mock import ManualClock, MockAdapter
from llorch.reference.adapters.remote import RemoteAdapter
from llorch.reference.adapters.serve import (
    MAX_TOKENS_PER_MESSAGE,
    AdapterServer,
    WorkerAdapterServicer,
    serve_adapter,
)
from llorch.reference.config import MockEngineConfig
from llorch.reference.core.types import SamplerParams

from llorch.proto import common_pb2, worker_adapter_pb2, worker_adapter_pb2_grpc

from .runtime_support import eventually

pytestmark = pytest.mark.anyio

MODEL = "m"
PROMPT = "a batched prompt"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class BurstAdapter:
    """A mock whose whole generation is ready at once: the engine outruns the wire, so every
    token after the first is already produced while the previous message is being written."""

    def __init__(self) -> None:
        self.mock = MockAdapter(MODEL, MockEngineConfig(tokens_per_s=0, ttft_ms=0, max_tokens_limit=1000),
                                slots=4)
        self.streaming: set[str] = set()

    def __getattr__(self, name: str) -> Any:  # health, props, engine_info
        return getattr(self.mock, name)

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        return self._burst(self.mock.generate(request), request.request_id)

    async def _burst(self, inner: AsyncIterator[GenEvent], rid: str) -> AsyncIterator[GenEvent]:
        self.streaming.add(rid)
        try:
            for ev in [e async for e in inner]:
                yield ev
        finally:
            self.streaming.discard(rid)

    async def cancel(self, request_id: str) -> bool:
        return request_id in self.streaming


@pytest.fixture
async def burst() -> AsyncIterator[tuple[AdapterServer, worker_adapter_pb2_grpc.WorkerAdapterStub]]:
    server = await serve_adapter(BurstAdapter(), "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield server, worker_adapter_pb2_grpc.WorkerAdapterStub(channel)
    finally:
        await server.stop(0)


def pb_request(rid: str, max_tokens: int, batches: bool) -> worker_adapter_pb2.GenerateRequest:
    return worker_adapter_pb2.GenerateRequest(
        request_id=rid, model=MODEL, prompt=PROMPT, max_tokens=max_tokens,
        sampler=common_pb2.SamplerParams(temperature=0.8, seed=7), accept_token_batches=batches)


async def messages(stub: worker_adapter_pb2_grpc.WorkerAdapterStub,
                   request: worker_adapter_pb2.GenerateRequest) -> list[worker_adapter_pb2.GenerateEvent]:
    async with asyncio.timeout(10):
        return [ev async for ev in stub.Generate(request)]


def tokens_of(events: list[worker_adapter_pb2.GenerateEvent]) -> list[tuple[int, str, int]]:
    out: list[tuple[int, str, int]] = []
    for ev in events:
        batch = ev.tokens.tokens if ev.WhichOneof("kind") == "tokens" else \
            [ev.token] if ev.WhichOneof("kind") == "token" else []
        out += [(t.index, t.text, t.token_id) for t in batch]
    return out


@pytest.mark.req("ADP-1360", "ADP-1012", "ADP-1014")
async def test_ready_tokens_travel_in_capped_batches_with_the_same_sequence(burst):
    _, stub = burst
    n = MAX_TOKENS_PER_MESSAGE + 28
    batched = await messages(stub, pb_request("b", n, True))
    single = await messages(stub, pb_request("s", n, False))
    assert [ev.WhichOneof("kind") for ev in batched] == ["started", "tokens", "tokens", "end"]
    assert [len(ev.tokens.tokens) for ev in batched[1:3]] == [MAX_TOKENS_PER_MESSAGE, 28]
    assert tokens_of(batched) == tokens_of(single)
    assert [i for i, _, _ in tokens_of(batched)] == list(range(n))
    assert batched[-1].end.tokens_out == n and {ev.request_id for ev in batched} == {"b"}


@pytest.mark.req("ADP-1360")
async def test_a_client_that_did_not_ask_gets_single_tokens(burst):
    _, stub = burst
    events = await messages(stub, pb_request("s", 50, False))
    kinds = [ev.WhichOneof("kind") for ev in events]
    assert kinds == ["started"] + ["token"] * 50 + ["end"]


@pytest.mark.req("ADP-1360", "ADP-1019")
async def test_a_ready_token_is_sent_without_waiting_for_more():
    clock = ManualClock()
    mock = MockAdapter(MODEL, MockEngineConfig(tokens_per_s=10, ttft_ms=0), clock=clock)
    server = await serve_adapter(mock, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel, asyncio.timeout(10):
            stub = worker_adapter_pb2_grpc.WorkerAdapterStub(channel)
            call = stub.Generate(pb_request("p", 20, True))
            assert (await call.read()).WhichOneof("kind") == "started"
            first = await call.read()  # the clock stands still: no second token exists yet
            assert first.WhichOneof("kind") == "token" and first.token.index == 0
            clock.advance(0.1)
            second = await call.read()
            assert second.WhichOneof("kind") == "token" and second.token.index == 1
            call.cancel()
        await eventually(lambda: mock.running == 0)
    finally:
        await server.stop(0)


@pytest.mark.req("ADP-1361", "ADP-1300")
async def test_the_remote_client_relays_batches_as_the_direct_stream(burst):
    server, _ = burst
    remote = RemoteAdapter(server.address)
    request = GenerateRequest("r", MODEL, PROMPT, 70, SamplerParams(temperature=0.8, seed=7))
    try:
        via_grpc = [ev async for ev in remote.generate(request)]
    finally:
        await remote.aclose()
    direct = MockAdapter(MODEL, MockEngineConfig(tokens_per_s=0, ttft_ms=0, max_tokens_limit=1000))
    assert via_grpc == [ev async for ev in direct.generate(request)]


@pytest.mark.req("ADP-1361")
async def test_the_remote_client_drops_the_rest_of_a_batch_after_a_cancel(burst):
    server, _ = burst
    remote = RemoteAdapter(server.address)
    try:
        it = remote.generate(GenerateRequest("c", MODEL, PROMPT, 200, SamplerParams()))
        assert isinstance(await anext(it), GenStarted)
        assert isinstance(await anext(it), GenToken)  # the first of a batch of MAX_TOKENS_PER_MESSAGE
        await remote.cancel("c")
        assert not [ev async for ev in it]
    finally:
        await remote.aclose()


class _Aborted(Exception):
    pass


class _Context:
    """The two servicer-context calls ``Generate`` makes, for driving the servicer in-process."""

    code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code = code
        raise _Aborted(details)


@pytest.mark.req("ADP-1026", "ADP-1360")
async def test_tokens_queued_before_a_cancel_are_not_sent_after_it():
    adapter = BurstAdapter()
    servicer = WorkerAdapterServicer(adapter)  # type: ignore[arg-type]
    context = _Context()
    stream = servicer.Generate(pb_request("q", 300, True), context)  # type: ignore[arg-type]
    assert (await anext(stream)).WhichOneof("kind") == "started"
    assert (await anext(stream)).WhichOneof("kind") == "tokens"  # more are queued behind it
    found = await servicer.Cancel(worker_adapter_pb2.AdapterCancelRequest(request_id="q"), context)  # type: ignore[arg-type]
    assert found.found
    with pytest.raises(_Aborted):
        await anext(stream)
    assert context.code is grpc.StatusCode.CANCELLED
    await eventually(lambda: not adapter.streaming and adapter.mock.running == 0)
