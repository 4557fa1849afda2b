"""The OpenAI-compatible adapter against a real llama-cpp-python server's recorded stream
(``recordings/llama_cpp_python_openai.json``), replayed chunk by chunk over loopback HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.http_engine import EngineSettings
from llorch.reference.adapters.openai_compat import OpenAICompatAdapter
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import EngineFailure, ErrorCode

from .engine_replay import (
    ReplayServer,
    collect,
    first_token_then_cancel,
    load,
    run,
    texts,
)

T = load("llama_cpp_python_openai.json")
ENGINE_MODEL = T["exchanges"][1]["request"]["json"]["model"]
SAMPLER = SamplerParams(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.0, seed=42)


def adapter(server: ReplayServer, **kw: object) -> OpenAICompatAdapter:
    params: dict = {"base_url": server.base_url, "model": "smollm2", "engine_model": ENGINE_MODEL, **kw}
    return OpenAICompatAdapter(EngineSettings(**params))


def req(rid: str = "r1", max_tokens: int = 8, prompt: str = "The capital of France is",
        sampler: SamplerParams = SAMPLER) -> GenerateRequest:
    return GenerateRequest(rid, "smollm2", prompt, max_tokens, sampler)


@pytest.mark.req("ADP-1012", "ADP-1014", "ADP-1015", "ADP-1016")
def test_recorded_stream_is_parsed_with_length_finish() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("seeded streaming")
            events = await collect(adapter(server).generate(req()))
        want = texts(T, "seeded streaming", ("choices", "0", "text"))
        assert isinstance(events[0], GenStarted)
        toks = [e for e in events if isinstance(e, GenToken)]
        assert [t.text for t in toks] == want and [t.index for t in toks] == list(range(len(want)))
        assert all(t.token_id == -1 for t in toks)  # this protocol reports no ids (ADP-1021)
        assert isinstance(events[-1], GenEnd)
        assert (events[-1].tokens_out, events[-1].finish_reason) == (len(want), "length")
    run(body())


@pytest.mark.req("ADP-1017")
def test_engine_stop_is_finish_stop_and_empty_held_tokens_are_not_streamed() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("stop sequence")
            stop = SamplerParams(temperature=0.0, top_k=0, seed=1, stop=(" six",))
            request = req(max_tokens=16, prompt="Count:", sampler=stop)
            events = await collect(adapter(server).generate(request))
        toks = [e.text for e in events if isinstance(e, GenToken)]
        assert toks == texts(T, "stop sequence", ("choices", "0", "text")) and "" not in toks
        assert isinstance(events[-1], GenEnd) and events[-1].finish_reason == "stop"
    run(body())


@pytest.mark.req("ADP-1034")
def test_sampler_parameters_are_sent_explicitly() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("seeded streaming")
            await collect(adapter(server).generate(req()))
            sent = next(r.body for r in server.requests if r.path == "/v1/completions")
        # llama-cpp-python's server defaults repeat_penalty to 1.1: ours must be on the wire.
        assert sent["repeat_penalty"] == 1.0 and sent["temperature"] == 0.8 and sent["top_p"] == 0.95
        assert sent["top_k"] == 40 and sent["seed"] == 42 and sent["model"] == ENGINE_MODEL
        assert sent["stream"] is True and sent["max_tokens"] == 8
    run(body())


@pytest.mark.req("ADP-1033", "ADP-1019")
def test_tokens_are_yielded_before_the_body_ends() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=2) as server:
            server.use("a longer stream")
            gen = adapter(server).generate(req(max_tokens=48))
            assert isinstance(await anext(gen), GenStarted)
            assert isinstance(await anext(gen), GenToken)
            assert not server.release.is_set()
            server.release.set()
            assert isinstance((await collect(gen))[-1], GenEnd)
    run(body())


@pytest.mark.req("ADP-1035")
def test_recorded_500_validation_answer_is_engine_error() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("malformed request")
            with pytest.raises(EngineFailure) as exc:
                await collect(adapter(server).generate(req()))
        assert exc.value.code is ErrorCode.ENGINE_ERROR and "max_tokens" in exc.value.message
    run(body())


@pytest.mark.req("ADP-1038", "ADP-1028")
@pytest.mark.parametrize("by", ["cancel", "close"])
def test_stopping_the_call_closes_the_engine_request(by: str) -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=4) as server:
            server.use("a longer stream")
            a = adapter(server)
            seen, hung_up = await first_token_then_cancel(a, server, req(max_tokens=48), by=by)
            assert hung_up and not any(isinstance(e, GenEnd) for e in seen)
            assert (await a.props()).free_slots == 1
    run(body())


@pytest.mark.req("ADP-1039", "ADP-1007")
def test_engine_info_hashes_the_served_model_file(tmp_path: Path) -> None:
    async def body() -> None:
        model = tmp_path / "m.gguf"
        model.write_bytes(b"weights")
        async with ReplayServer(T) as server:
            info = await adapter(server, model_path=str(model), engine_version="0.3.36").engine_info()
        assert info.model_digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
        assert info.engine_version == "0.3.36" and info.is_mock is False
        assert ENGINE_MODEL in info.build_info
    run(body())


@pytest.mark.req("ADP-1001")
def test_health_follows_the_model_list() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            a = adapter(server)
            assert (await a.health()).ready
        h = await a.health()  # the engine is gone
        assert not h.ready and h.detail
    run(body())
