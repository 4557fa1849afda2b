"""NVIDIA Triton / KServe v2 generate extension: ``POST /v2/models/{m}/generate_stream``.

Wire facts (Triton's ``protocol/extension_generate.md``; ``recordings/triton_generate.json`` is
written from that documented protocol for a TensorRT-LLM ``ensemble`` model, since Triton cannot
run on this machine — see recordings/README.md): the request is one JSON object whose keys are
the model's inputs (``text_input``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
``repetition_penalty``, ``random_seed``, ``stop_words``, ``stream``); the answer is SSE, one
``data: {"model_name", "model_version", "text_output", ...}`` per response; an inference error is
``data: {"error": "..."}`` and the stream ends; before streaming, 400 with ``{"error": "..."}``.
The protocol has no finish reason and no end marker beyond the end of the body: a body that ends
after ``max_tokens`` outputs stopped at the limit, otherwise the model stopped.
Server version: ``GET /v2``; model readiness: ``GET /v2/models/{m}/ready``.
"""

from __future__ import annotations

from typing import Any

from llorch.reference.adapters.base import EngineInfo, GenerateRequest, Health
from llorch.reference.adapters.http_engine import Chunk, HttpEngineAdapter
from llorch.reference.errors import EngineFailure, ErrorCode, LlorchError

__all__ = ["TritonAdapter"]


class TritonAdapter(HttpEngineAdapter):
    ENGINE = "triton"

    def stream_request(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        # req: ADP-1034
        s = request.sampler
        body: dict[str, Any] = {
            "text_input": request.prompt, "max_tokens": request.max_tokens, "stream": True,
            "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
            "repetition_penalty": s.repeat_penalty, "random_seed": 0 if s.seed is None else s.seed,
            "stop_words": list(s.stop), "bad_words": []}
        return f"/v2/models/{self.settings.wire_model}/generate_stream", body

    def parse(self, event: str, data: str) -> Chunk | None:
        obj = self.payload(data)
        if "error" in obj:
            raise EngineFailure(f"triton inference error: {obj['error']}", code=ErrorCode.ENGINE_ERROR)
        text = obj.get("text_output")
        if not isinstance(text, str):
            raise EngineFailure(f"triton response without text_output: {data[:200]!r}")
        return Chunk(text=text)

    def on_body_end(self) -> Chunk | LlorchError:
        # The body's end is the protocol's only end marker; _run reports length when the limit was hit.
        return Chunk(final=True, finish_reason="stop")

    async def probe(self) -> Health:
        return await self.get_ok(f"/v2/models/{self.settings.wire_model}/ready")

    async def describe(self) -> EngineInfo:
        server = await self.get_json("/v2")
        model = await self.get_json(f"/v2/models/{self.settings.wire_model}")
        s = self.settings
        version = s.engine_version or str(server.get("version", "")) or "unknown"
        return EngineInfo(engine=self.ENGINE, engine_version=version, model=s.model,
                          model_digest=self.digest(),
                          build_info=f"triton {version}; model {model.get('name')} "
                                     f"versions={model.get('versions')} platform={model.get('platform')}",
                          deterministic=s.deterministic, is_mock=False)
