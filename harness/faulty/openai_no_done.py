"""Faulty OpenAI target: streams end without ``data: [DONE]`` (clients waiting for it hang)."""

from __future__ import annotations

from llorch.harness.faulty.openai_base import OpenAIServer


class Server(OpenAIServer):
    name = "no_done"

    def done_event(self) -> bytes:
        return b""
