"""Faulty OpenAI target: errors use a web framework's default ``{"detail": …}`` body."""

from __future__ import annotations

from typing import Any

from llorch.harness.faulty.openai_base import ClientError, OpenAIServer


class Server(OpenAIServer):
    name = "error_detail"

    def error_body(self, err: ClientError) -> dict[str, Any]:
        return {"detail": err.message}
