"""Faulty OpenAI target: ``stream_options.include_usage`` is accepted but no usage chunk is sent."""

from __future__ import annotations

from typing import Any

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "usage_missing"

    def usage_chunk(self, base: dict[str, Any], usage: dict[str, int]) -> dict[str, Any] | None:
        return None
