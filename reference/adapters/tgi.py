"""Hugging Face Text Generation Inference, native API: ``POST /generate_stream``, ``/info``, ``/health``.

Wire facts (TGI's OpenAPI and docs; ``recordings/tgi_native.json`` is written from that documented
protocol, since TGI cannot run on this CPU-only machine — see recordings/README.md): one SSE
``data:{"index", "token": {"id", "text", "logprob", "special"}, "generated_text": null,
"details": null}`` per token; the last one carries ``generated_text`` and ``details`` with
``finish_reason`` (``length`` | ``eos_token`` | ``stop_sequence``); a failure mid-stream is
``data:{"error": "...", "error_type": "generation"}``; before streaming, 422 (validation), 424,
429 (overloaded) with ``{"error", "error_type"}``. ``/info`` reports ``model_id``, ``model_sha``,
``version`` and ``max_concurrent_requests``.

TGI validates parameters strictly (temperature and top_k must be positive, top_p < 1): greedy is
``do_sample: false`` and a neutral value is sent as the engine's own neutral (left unset), with
``do_sample`` always explicit so TGI's defaults never choose the sampling mode.
"""

from __future__ import annotations

from typing import Any

from llorch.reference.adapters.base import EngineInfo, GenerateRequest, Health
from llorch.reference.adapters.http_engine import Chunk, HttpEngineAdapter
from llorch.reference.errors import EngineFailure, ErrorCode, Overloaded

__all__ = ["TgiAdapter"]


class TgiAdapter(HttpEngineAdapter):
    ENGINE = "tgi"

    def stream_request(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        # req: ADP-1034
        s = request.sampler
        sampling = s.temperature > 0
        params: dict[str, Any] = {
            "max_new_tokens": request.max_tokens, "do_sample": sampling,
            "repetition_penalty": s.repeat_penalty, "stop": list(s.stop), "details": True,
            "return_full_text": False, "watermark": False,
            "temperature": s.temperature if sampling else None,
            "top_p": s.top_p if sampling and s.top_p < 1.0 else None,
            "top_k": s.top_k if sampling and s.top_k > 0 else None,
            "seed": s.seed}
        return "/generate_stream", {"inputs": request.prompt, "parameters": params}

    def parse(self, event: str, data: str) -> Chunk | None:
        obj = self.payload(data)
        if "error" in obj:
            if obj.get("error_type") == "overloaded":
                raise Overloaded(f"tgi: {obj['error']}", code=ErrorCode.RATE_LIMITED)
            raise EngineFailure(f"tgi failed mid-stream ({obj.get('error_type')}): {obj['error']}",
                                code=ErrorCode.ENGINE_ERROR)
        token = obj.get("token")
        if not isinstance(token, dict):
            raise EngineFailure(f"tgi chunk without a token: {data[:200]!r}")
        text = "" if token.get("special") else str(token.get("text", ""))
        token_id = token.get("id", -1)
        details = obj.get("details")
        if isinstance(details, dict):
            finish = details.get("finish_reason")
            return Chunk(text=text, token_id=token_id, final=True,
                         finish_reason="length" if finish == "length" else "stop")
        return Chunk(text=text, token_id=token_id)

    async def probe(self) -> Health:
        return await self.get_ok("/health")

    async def describe(self) -> EngineInfo:
        info = await self.get_json("/info")
        s = self.settings
        version = s.engine_version or str(info.get("version", "")) or "unknown"
        model_id, sha = str(info.get("model_id", "")), str(info.get("model_sha", ""))
        return EngineInfo(engine=self.ENGINE, engine_version=version, model=s.model,
                          model_digest=self.digest(),
                          build_info=f"tgi {version} sha={info.get('sha', '')} "
                                     f"model={model_id}@{sha} dtype={info.get('model_dtype', '')}",
                          deterministic=s.deterministic, is_mock=False)
