"""Faulty OpenAI target: the streamed usage chunk carries a non-empty ``choices`` (clients that index
``choices[0]`` of every chunk see a phantom choice)."""

from __future__ import annotations

from typing import Any

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "usage_with_choices"

    def usage_chunk(self, base: dict[str, Any], usage: dict[str, int]) -> dict[str, Any] | None:
        return {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": None}], "usage": usage}
