"""llama.cpp's native server (``llama-server``): ``POST /completion`` streaming, ``/props``, ``/health``.

Wire facts (FACTS.md, and ``recordings/llama_server_native.json``): one SSE ``data:`` line per
token with ``content``, ``tokens`` (ids) and ``stop: false``; the last line has ``stop: true``,
``stop_type`` (``eos`` | ``limit`` | ``word``) and ``timings``, and there is no ``[DONE]``. A
failure after the headers is a non-standard ``error: {...}`` line. ``/props`` reports
``total_slots``, ``model_path`` and ``build_info``; ``/health`` answers 503 while loading.

Determinism (D19): the prompt cache makes output depend on request history, and the server flag
``--no-cache-prompt`` is only a default that a request can override, so ``cache_prompt: false`` is
sent on every request of a deterministic replica.
"""

from __future__ import annotations

from typing import Any

from llorch.reference.adapters.base import EngineInfo, GenerateRequest, Health
from llorch.reference.adapters.http_engine import Chunk, HttpEngineAdapter
from llorch.reference.errors import EngineFailure, ErrorCode

__all__ = ["LlamaCppServerAdapter", "sampler_body"]


def sampler_body(request: GenerateRequest) -> dict[str, Any]:
    """Every sampler parameter explicit (ADP-1034): llama.cpp's own defaults (min_p 0.05,
    repeat_penalty 1.0 or 1.1 by version) never decide the output."""
    # req: ADP-1034
    s = request.sampler
    return {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
            "repeat_penalty": s.repeat_penalty, "min_p": 0.0, "typical_p": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "seed": -1 if s.seed is None else s.seed, "stop": list(s.stop)}


class LlamaCppServerAdapter(HttpEngineAdapter):
    ENGINE = "llama.cpp"

    def stream_request(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"prompt": request.prompt, "n_predict": request.max_tokens,
                                "stream": True, **sampler_body(request)}
        if request.deterministic or self.settings.deterministic:
            body["cache_prompt"] = False  # req: ADP-1040, DET-1006
        return "/completion", body

    def parse(self, event: str, data: str) -> Chunk | None:
        obj = self.payload(data)
        if event == "error" or "error" in obj:
            err = obj.get("error", obj)
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise EngineFailure(f"llama.cpp failed mid-stream: {msg}", code=ErrorCode.ENGINE_ERROR)
        tokens = obj.get("tokens") or []
        token_id = tokens[0] if len(tokens) == 1 and isinstance(tokens[0], int) else -1
        text = obj.get("content", "")
        if not isinstance(text, str):
            raise EngineFailure(f"llama.cpp sent a non-text content: {data[:200]!r}")
        if obj.get("stop") is True:
            stop_type = obj.get("stop_type") or ("limit" if obj.get("stopped_limit") else "eos")
            return Chunk(text=text, token_id=token_id, final=True,
                         finish_reason="length" if stop_type == "limit" else "stop")
        return Chunk(text=text, token_id=token_id)

    async def count_prompt_tokens(self, prompt: str) -> int:
        try:
            resp = await self._client.post("/tokenize", json={"content": prompt})
            tokens = resp.json().get("tokens", []) if resp.status_code == 200 else []
        except Exception:  # best effort: a missing tokenizer endpoint only loses the count
            return 0
        return len(tokens) if isinstance(tokens, list) else 0

    async def probe(self) -> Health:
        return await self.get_ok("/health")

    async def describe(self) -> EngineInfo:
        props = await self.get_json("/props")
        build = str(props.get("build_info", ""))
        model_path = str(props.get("model_path", ""))
        s = self.settings
        return EngineInfo(engine=self.ENGINE, engine_version=s.engine_version or build or "unknown",
                          model=s.model, model_digest=self.digest(model_path),
                          build_info=f"llama.cpp {build}; model_path={model_path}",
                          deterministic=s.deterministic, is_mock=False)
