"""Faulty OpenAI target: client mistakes are answered 500 (clients retry them), with a correct body."""

from __future__ import annotations

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "error_500"

    def error_status(self, status: int) -> int:
        return 500 if status == 400 else status
