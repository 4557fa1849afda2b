"""Faulty OpenAI target: streams never send a non-null ``finish_reason``."""

from __future__ import annotations

from typing import Any

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "finish_missing"

    def finish_choices(self, index: int, reason: str, chat: bool) -> list[dict[str, Any]]:
        return [{"index": index, **({"delta": {}} if chat else {"text": ""}), "finish_reason": None}]
