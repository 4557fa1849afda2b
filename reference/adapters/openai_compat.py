"""OpenAI-compatible servers: llama-cpp-python's server, vLLM, TGI's messages API — ``POST
/v1/completions`` with ``stream: true``.

Wire facts (``recordings/llama_cpp_python_openai.json``, recorded here): ``data: {json}`` lines,
``choices[0].text`` per token (sometimes empty: a token held back as a possible stop), a chunk
with ``finish_reason`` (``stop`` | ``length``), then ``data: [DONE]``. No token ids. An error
before streaming is an HTTP status with ``{"error": {"message", "type", ...}}`` — llama-cpp-python
answers even a validation error with 500. The servers' defaults differ (llama-cpp-python's server
uses ``repeat_penalty`` 1.1 where its Python API uses 1.0), so every sampler parameter is sent.
Version: vLLM's ``/version`` and TGI's ``/info`` report one; llama-cpp-python's server reports none,
so it comes from the settings (the supervisor knows the installed package's version).
"""

from __future__ import annotations

from typing import Any

import httpx
from llorch.reference.adapters.base import EngineInfo, GenerateRequest, Health
from llorch.reference.adapters.http_engine import Chunk, HttpEngineAdapter
from llorch.reference.errors import EngineFailure, ErrorCode, LlorchError

__all__ = ["OpenAICompatAdapter"]


class OpenAICompatAdapter(HttpEngineAdapter):
    ENGINE = "openai-compatible"

    def stream_request(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        # req: ADP-1034
        s = request.sampler
        body: dict[str, Any] = {
            "model": self.settings.wire_model, "prompt": request.prompt, "max_tokens": request.max_tokens,
            "stream": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
            "repeat_penalty": s.repeat_penalty, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "min_p": 0.0, "n": 1, "stop": list(s.stop)}
        if s.seed is not None:
            body["seed"] = s.seed
        return "/v1/completions", body

    def parse(self, event: str, data: str) -> Chunk | None:
        if data.strip() == "[DONE]":
            return Chunk(final=True, finish_reason="stop")
        obj = self.payload(data)
        if "error" in obj:
            err = obj["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise EngineFailure(f"{self.ENGINE} failed mid-stream: {msg}", code=ErrorCode.ENGINE_ERROR)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise EngineFailure(f"{self.ENGINE} chunk without choices: {data[:200]!r}")
        if not choices:
            return None  # a usage-only chunk
        choice = choices[0]
        text = choice.get("text", "")
        if not isinstance(text, str):
            raise EngineFailure(f"{self.ENGINE} sent a non-text choice: {data[:200]!r}")
        finish = choice.get("finish_reason")
        if finish is not None:
            return Chunk(text=text, final=True, finish_reason="length" if finish == "length" else "stop")
        return Chunk(text=text)

    async def count_prompt_tokens(self, prompt: str) -> int:
        """llama-cpp-python's tokenizer extra, when present."""
        try:
            resp = await self._client.post("/extras/tokenize/count", json={"input": prompt})
            count = resp.json().get("count", 0) if resp.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, AttributeError):
            return 0
        return count if isinstance(count, int) else 0

    async def probe(self) -> Health:
        return await self.get_ok("/v1/models")

    async def _engine_version(self) -> tuple[str, str]:
        """(engine name, version) from whichever version endpoint the server has."""
        for path, engine, key in (("/version", "vllm", "version"), ("/info", "tgi", "version")):
            try:
                doc = await self.get_json(path)
            except LlorchError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get(key), str):
                return engine, doc[key]
        return "llama-cpp-python", ""

    async def describe(self) -> EngineInfo:
        models = await self.get_json("/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        ids = [m.get("id", "") for m in data or [] if isinstance(m, dict)]
        s = self.settings
        engine, version = await self._engine_version()
        if s.engine_version:
            version = s.engine_version
        engine_path = s.wire_model if s.wire_model in ids else (ids[0] if ids else "")
        return EngineInfo(engine=f"{engine} (openai-compatible)", engine_version=version or "unknown",
                          model=s.model, model_digest=self.digest(engine_path),
                          build_info=f"{engine} {version}; served models={ids}",
                          deterministic=s.deterministic, is_mock=False)
