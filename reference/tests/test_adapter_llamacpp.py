"""The llama.cpp server adapter against its transcript (``recordings/llama_server_native.json``),
replayed chunk by chunk over loopback HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.http_engine import EngineSettings
from llorch.reference.adapters.llamacpp import LlamaCppServerAdapter
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import EngineFailure, ErrorCode, InvalidParams, LlorchError, Unavailable

from .engine_replay import (
    ReplayServer,
    collect,
    first_token_then_cancel,
    load,
    run,
    texts,
)

T = load("llama_server_native.json")
SAMPLER = SamplerParams(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.0, seed=42, stop=("\n\n",))


def adapter(server: ReplayServer, tmp_path: Path | None = None, **kw: object) -> LlamaCppServerAdapter:
    params: dict = {"base_url": server.base_url, "model": "smollm2", **kw}
    if tmp_path is not None:
        model = tmp_path / "model.gguf"
        model.write_bytes(b"GGUF fake model bytes")
        params["model_path"] = str(model)
    return LlamaCppServerAdapter(EngineSettings(**params))


def req(rid: str = "r1", max_tokens: int = 8, deterministic: bool = False) -> GenerateRequest:
    return GenerateRequest(rid, "smollm2", "The capital of France is", max_tokens, SAMPLER, deterministic)


@pytest.mark.req("ADP-1012", "ADP-1014", "ADP-1015", "ADP-1016", "ADP-1021")
def test_stream_is_parsed_into_tokens_with_ids_and_length_finish() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("seeded stream")
            events = await collect(adapter(server).generate(req()))
        want = texts(T, "seeded stream", ("content",))
        assert isinstance(events[0], GenStarted) and events[0].prompt_tokens == 5
        toks = [e for e in events if isinstance(e, GenToken)]
        assert [t.text for t in toks] == want
        assert [t.index for t in toks] == list(range(len(want)))
        assert all(t.token_id >= 0 for t in toks)
        end = events[-1]
        assert isinstance(end, GenEnd)
        assert (end.tokens_out, end.prompt_tokens, end.finish_reason) == (len(want), 5, "length")
    run(body())


@pytest.mark.req("ADP-1033", "ADP-1019")
def test_first_token_arrives_while_engine_body_is_still_open() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=1) as server:
            server.use("seeded stream")
            gen = adapter(server).generate(req())
            first = [await anext(gen), await anext(gen)]
            assert isinstance(first[1], GenToken)
            assert server.held.is_set() and not server.release.is_set()
            server.release.set()
            rest = await collect(gen)
        assert isinstance(rest[-1], GenEnd)
    run(body())


@pytest.mark.req("ADP-1034", "ADP-1040", "DET-1006")
def test_every_sampler_parameter_and_cache_prompt_false_are_sent() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("seeded stream")
            await collect(adapter(server, deterministic=True).generate(req(deterministic=True)))
            sent = next(r.body for r in server.requests if r.path == "/completion")
        assert sent["cache_prompt"] is False
        assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["repeat_penalty"], sent["seed"]) == (
            0.8, 0.95, 40, 1.0, 42)
        assert sent["stop"] == ["\n\n"] and sent["n_predict"] == 8 and sent["min_p"] == 0.0
    run(body())


@pytest.mark.req("ADP-1031")
def test_deterministic_request_refused_by_a_replica_not_configured_for_it() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            a = adapter(server)
            with pytest.raises(Unavailable) as exc:
                a.generate(req(deterministic=True))
            assert exc.value.code is ErrorCode.DETERMINISM_UNSUPPORTED
            assert not [r for r in server.requests if r.path == "/completion"]
    run(body())


@pytest.mark.req("ADP-1035")
def test_engine_400_maps_to_invalid_params_and_midstream_error_to_engine_error() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            server.use("malformed request")
            with pytest.raises(InvalidParams):
                await collect(adapter(server).generate(req()))
        async with ReplayServer(T) as server:
            server.use("failure after the headers")
            seen: list = []
            with pytest.raises(EngineFailure) as exc:
                async for ev in adapter(server).generate(req()):
                    seen.append(ev)
            assert exc.value.code is ErrorCode.ENGINE_ERROR and "decode" in exc.value.message
            assert sum(isinstance(e, GenToken) for e in seen) == 1
    run(body())


@pytest.mark.req("ADP-1036")
def test_connection_lost_mid_stream_is_worker_reset() -> None:
    async def body() -> None:
        async with ReplayServer(T, cut_after=3) as server:
            server.use("seeded stream")
            with pytest.raises(EngineFailure) as exc:
                await collect(adapter(server).generate(req()))
        assert exc.value.code is ErrorCode.WORKER_RESET and exc.value.retriable
    run(body())


@pytest.mark.req("ADP-1037")
def test_silent_engine_is_decode_timeout() -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=2) as server:
            server.use("seeded stream")
            with pytest.raises(EngineFailure) as exc:
                await collect(adapter(server, decode_timeout_s=0.3).generate(req()))
        assert exc.value.code is ErrorCode.DECODE_TIMEOUT
    run(body())


@pytest.mark.req("ADP-1038", "ADP-1026", "ADP-1029")
@pytest.mark.parametrize("by", ["cancel", "close"])
def test_cancel_closes_the_engine_request(by: str) -> None:
    async def body() -> None:
        async with ReplayServer(T, hold_after=3) as server:
            server.use("a longer stream")
            a = adapter(server)
            r = req(max_tokens=48)
            seen, hung_up = await first_token_then_cancel(a, server, r, by=by)
            assert hung_up, "the engine never saw the request closed"
            assert sum(isinstance(e, GenToken) for e in seen) == 1
            assert not any(isinstance(e, GenEnd) for e in seen)
            assert (await a.props()).free_slots == 1
            assert await a.cancel(r.request_id) is False
    run(body())


@pytest.mark.req("ADP-1039", "ADP-1007", "ADP-1006", "ADP-1008", "ADP-1010")
def test_engine_info_reports_build_and_model_file_digest(tmp_path: Path) -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            info = await adapter(server, tmp_path).engine_info()
        digest = "sha256:" + hashlib.sha256((tmp_path / "model.gguf").read_bytes()).hexdigest()
        assert info.model_digest == digest
        assert info.engine == "llama.cpp" and info.engine_version == "b6612-d8359f5f"
        assert "b6612" in info.build_info and info.is_mock is False and info.model == "smollm2"
    run(body())


def test_engine_info_without_a_digest_source_is_an_error() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            with pytest.raises(LlorchError, match="digest"):
                await adapter(server).engine_info()
    run(body())


@pytest.mark.req("ADP-1001")
def test_health_reports_loading_engine_unready_with_detail() -> None:
    async def body() -> None:
        async with ReplayServer(T) as server:
            assert (await adapter(server).health()).ready
            server.use("still loading")
            h = await adapter(server).health()
        assert not h.ready and "Loading model" in h.detail
    run(body())
