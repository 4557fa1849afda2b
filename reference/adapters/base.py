"""The worker-adapter protocol: the one seam between the orchestrator and an engine.

Small on purpose (like httpx's one-method transport): an adapter reports health, props and engine
info, and turns a ``GenerateRequest`` into an async iterator of events. Cancelling the consuming
task (or calling ``cancel``) must stop the engine's work; engine errors are raised as
``llorch.reference.errors.LlorchError`` subclasses, translated inside the adapter.

The same shape is on the wire as ``llorch.v1.WorkerAdapter`` (``contracts/proto/worker_adapter.proto``):
``RemoteAdapter`` speaks it as a client, ``llorch adapter serve`` hosts any adapter behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llorch.reference.core.types import SamplerParams


@dataclass(frozen=True, slots=True)
class EngineInfo:
    engine: str
    engine_version: str
    model: str
    model_digest: str
    build_info: str = ""
    deterministic: bool = False
    is_mock: bool = False


@dataclass(frozen=True, slots=True)
class Props:
    total_slots: int
    free_slots: int
    model: str
    ctx_size: int = 0
    max_tokens_limit: int = 0


@dataclass(frozen=True, slots=True)
class Health:
    ready: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    request_id: str
    model: str
    prompt: str
    max_tokens: int
    sampler: SamplerParams = field(default_factory=SamplerParams)
    deterministic: bool = False


@dataclass(frozen=True, slots=True)
class GenStarted:
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class GenToken:
    index: int
    text: str
    token_id: int = -1


@dataclass(frozen=True, slots=True)
class GenEnd:
    prompt_tokens: int
    tokens_out: int
    finish_reason: str  # "stop" | "length"


GenEvent = GenStarted | GenToken | GenEnd


@runtime_checkable
class Adapter(Protocol):
    """One engine replica. Implementations: mock, remote (gRPC), llama.cpp, OpenAI-compatible, …"""

    async def health(self) -> Health: ...

    async def props(self) -> Props: ...

    async def engine_info(self) -> EngineInfo: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        """started, token*, end. Raises LlorchError on failure; stops when the consumer is cancelled."""
        ...

    async def cancel(self, request_id: str) -> bool:
        """Stop a running generation; True if it was running. No token follows the return."""
        ...

    async def aclose(self) -> None: ...
