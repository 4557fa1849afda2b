"""Faulty OpenAI target: each streamed choice receives its ``finish_reason`` twice."""

from __future__ import annotations

from typing import Any

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "finish_repeated"

    def finish_choices(self, index: int, reason: str, chat: bool) -> list[dict[str, Any]]:
        once = super().finish_choices(index, reason, chat)
        return once + once
