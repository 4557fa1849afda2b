"""Faulty OpenAI target: ``max_tokens`` is ignored; it generates a fixed 24 tokens and reports them."""

from __future__ import annotations

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "max_tokens_ignored"

    def token_budget(self, max_tokens: int) -> int:
        return 24
