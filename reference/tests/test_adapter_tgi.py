"""The TGI native adapter against TGI's documented ``generate_stream`` protocol
(``recordings/tgi_native.json``, see recordings/README.md), replayed chunk by chunk."""

from __future__ import annotations

import pytest
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.http_engine import EngineSettings
from llorch.reference.adapters.tgi import TgiAdapter
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import EngineFailure, ErrorCode, InvalidParams, Overloaded

from .engine_replay import (
    ReplayServer,
    collect,
    first_token_then_cancel,
    load,
    run,
    texts,
)

T = load("tgi_native.json")
DIGEST = "sha256:" + "ab" * 32
SAMPLER = SamplerParams(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.0, seed=42)


def adapter(server: ReplayServer) -> TgiAdapter:
    return TgiAdapter(EngineSettings(base_url=server.base_url, model="smollm2", model_digest=DIGEST))


def req(max_tokens: int = 8, sampler: SamplerParams = SAMPLER) -> GenerateRequest:
    return GenerateRequest("r1", "smollm2", "The capital of France is", max_tokens, sampler)


@pytest.mark.req("ADP-1012", "ADP-1014", "ADP-1015", "ADP-1016", "ADP-1021")
def test_stream_tokens_ids_and_details_finish() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("seeded stream")
            events = await collect(adapter(server).generate(req()))
        want = texts(T, "seeded stream", ("token", "text"))
        toks = [e for e in events if isinstance(e, GenToken)]
        assert isinstance(events[0], GenStarted)
        assert [t.text for t in toks] == want and all(t.token_id >= 0 for t in toks)
        assert isinstance(events[-1], GenEnd)
        assert (events[-1].tokens_out, events[-1].finish_reason) == (len(want), "length")
    run(body())


@pytest.mark.req("ADP-1034")
@pytest.mark.parametrize("temperature", [0.8, 0.0])
def test_parameters_are_explicit_and_valid_for_tgi(temperature: float) -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("seeded stream")
            sampler = SamplerParams(temperature=temperature, top_p=0.95, top_k=40, repeat_penalty=1.1, seed=7)
            await collect(adapter(server).generate(req(sampler=sampler)))
            p = next(r.body for r in server.requests if r.path == "/generate_stream")["parameters"]
        assert p["do_sample"] is (temperature > 0)
        assert (p["repetition_penalty"], p["seed"], p["max_new_tokens"]) == (1.1, 7, 8)
        # TGI refuses temperature 0 and top_k 0; greedy leaves them to do_sample=false.
        assert p["temperature"] == (temperature if temperature > 0 else None)
    run(body())


@pytest.mark.req("ADP-1033")
def test_first_token_before_body_end() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=1) as server:
            server.use("a longer stream")
            gen = adapter(server).generate(req(max_tokens=48))
            assert isinstance(await anext(gen), GenStarted)
            assert isinstance(await anext(gen), GenToken)
            assert not server.release.is_set()
            server.release.set()
            assert isinstance((await collect(gen))[-1], GenEnd)
    run(body())


@pytest.mark.req("ADP-1035")
def test_error_answers_map_to_the_error_tree() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("validation error")
            with pytest.raises(InvalidParams, match="strictly positive"):
                await collect(adapter(server).generate(req()))
            server.use("overloaded")
            with pytest.raises(Overloaded) as over:
                await collect(adapter(server).generate(req()))
            assert over.value.retriable
            server.use("failure mid-stream")
            with pytest.raises(EngineFailure) as mid:
                await collect(adapter(server).generate(req()))
            assert mid.value.code is ErrorCode.ENGINE_ERROR and "out of memory" in mid.value.message
    run(body())


@pytest.mark.req("ADP-1038")
def test_cancel_closes_the_engine_request() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=2) as server:
            server.use("a longer stream")
            seen, hung_up = await first_token_then_cancel(adapter(server), server, req(max_tokens=48),
                                                          by="cancel")
        assert hung_up and not any(isinstance(e, GenEnd) for e in seen)
    run(body())


@pytest.mark.req("ADP-1039", "ADP-1006")
def test_engine_info_reports_tgi_version_and_model_revision() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            info = await adapter(server).engine_info()
        assert (info.engine, info.engine_version, info.model_digest) == ("tgi", "3.3.4", DIGEST)
        assert "12fd25f7" in info.build_info
    run(body())
