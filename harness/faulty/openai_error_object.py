"""Faulty OpenAI target: errors use vLLM's old ``{"object": "error", …}`` shape, not ``{"error": {…}}``."""

from __future__ import annotations

from typing import Any

from llorch.harness.faulty.openai_base import ClientError, OpenAIServer


class Server(OpenAIServer):
    name = "error_object"

    def error_body(self, err: ClientError) -> dict[str, Any]:
        return {"object": "error", "message": err.message, "type": err.kind, "param": err.param,
                "code": err.status}
