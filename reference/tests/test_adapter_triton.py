"""The Triton / KServe v2 generate adapter against Triton's documented ``generate_stream``
protocol (``recordings/triton_generate.json``, see recordings/README.md), replayed chunk by chunk."""

from __future__ import annotations

import pytest
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.http_engine import EngineSettings
from llorch.reference.adapters.triton import TritonAdapter
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import EngineFailure, ErrorCode, InvalidParams

from .engine_replay import (
    ReplayServer,
    collect,
    first_token_then_cancel,
    load,
    run,
    texts,
)

T = load("triton_generate.json")
DIGEST = "sha256:" + "cd" * 32
SAMPLER = SamplerParams(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.0, seed=42)


def adapter(server: ReplayServer) -> TritonAdapter:
    return TritonAdapter(EngineSettings(base_url=server.base_url, model="smollm2", engine_model="ensemble",
                                        model_digest=DIGEST))


def req(max_tokens: int) -> GenerateRequest:
    return GenerateRequest("r1", "smollm2", "The capital of France is", max_tokens, SAMPLER)


@pytest.mark.req("ADP-1012", "ADP-1014", "ADP-1015", "ADP-1016", "ADP-1017")
@pytest.mark.parametrize(("max_tokens", "finish"), [(8, "length"), (12, "stop")])
def test_stream_ends_with_the_body_and_finish_follows_the_limit(max_tokens: int, finish: str) -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("streamed generation")
            events = await collect(adapter(server).generate(req(max_tokens)))
        want = texts(T, "streamed generation", ("text_output",))
        assert isinstance(events[0], GenStarted)
        assert [e.text for e in events if isinstance(e, GenToken)] == want
        assert isinstance(events[-1], GenEnd)
        assert (events[-1].tokens_out, events[-1].finish_reason) == (len(want), finish)
    run(body())


@pytest.mark.req("ADP-1034")
def test_request_names_every_sampler_input() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("streamed generation")
            await collect(adapter(server).generate(req(8)))
            sent = next(r.body for r in server.requests if r.path.endswith("/generate_stream"))
        assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["repetition_penalty"],
                sent["random_seed"], sent["max_tokens"], sent["stream"]) == (0.8, 0.95, 40, 1.0, 42, 8, True)
    run(body())


@pytest.mark.req("ADP-1033")
def test_first_token_before_body_end() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=1) as server:
            server.use("a longer stream")
            gen = adapter(server).generate(req(48))
            assert isinstance(await anext(gen), GenStarted)
            assert isinstance(await anext(gen), GenToken)
            assert not server.release.is_set()
            server.release.set()
            assert isinstance((await collect(gen))[-1], GenEnd)
    run(body())


@pytest.mark.req("ADP-1035")
def test_bad_request_and_inference_error() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("bad request")
            with pytest.raises(InvalidParams, match="max_tokens"):
                await collect(adapter(server).generate(req(8)))
            server.use("inference error")
            with pytest.raises(EngineFailure) as exc:
                await collect(adapter(server).generate(req(8)))
        assert exc.value.code is ErrorCode.ENGINE_ERROR and "KV cache" in exc.value.message
    run(body())


@pytest.mark.req("ADP-1038")
def test_cancel_closes_the_engine_request() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=2) as server:
            server.use("a longer stream")
            seen, hung_up = await first_token_then_cancel(adapter(server), server, req(48), by="close")
        assert hung_up and not any(isinstance(e, GenEnd) for e in seen)
    run(body())


@pytest.mark.req("ADP-1039", "ADP-1001")
def test_engine_info_and_readiness() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            a = adapter(server)
            info = await a.engine_info()
            assert (await a.health()).ready
        assert (info.engine, info.engine_version, info.model_digest) == ("triton", "2.59.0", DIGEST)
        assert "ensemble" in info.build_info
    run(body())
