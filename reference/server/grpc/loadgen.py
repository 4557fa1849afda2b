"""A minimal OrchestratorService client for load generation (``reference/bench.py``): only
``server/grpc`` may import the generated stubs, so the bench's gRPC calls live here."""

from __future__ import annotations

import time

import grpc

from llorch.proto import common_pb2 as _common
from llorch.proto import orchestrator_pb2 as _pb
from llorch.proto import orchestrator_pb2_grpc as _pb_grpc


class OrchestratorLoad:
    """Submit a task and follow its event stream, timing the first token."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = _pb_grpc.OrchestratorServiceStub(self.channel)

    async def stream(self, *, model: str, prompt: str, max_tokens: int, seed: int,
                     tenant: str = "bench") -> tuple[float, int]:
        """(seconds from submit to the first token, tokens received)."""
        meta = (("x-llorch-tenant", tenant),)
        start = time.perf_counter()
        answer = await self.stub.Submit(_pb.SubmitRequest(
            model=model, prompt=prompt, max_tokens=max_tokens,
            sampler=_common.SamplerParams(seed=seed)), metadata=meta)
        first = 0.0
        tokens = 0
        async for event in self.stub.StreamEvents(_pb.StreamEventsRequest(task_id=answer.task_id),
                                                  metadata=meta):
            if event.HasField("token"):
                if tokens == 0:
                    first = time.perf_counter() - start
                tokens += event.token.count or 1
            elif event.HasField("error") or event.HasField("cancelled"):
                raise RuntimeError(f"task {answer.task_id} did not complete: {event}")
        return first, tokens

    async def submit_only(self, *, model: str, prompt: str, max_tokens: int) -> str:
        answer = await self.stub.Submit(_pb.SubmitRequest(model=model, prompt=prompt,
                                                          max_tokens=max_tokens))
        return str(answer.task_id)

    async def aclose(self) -> None:
        await self.channel.close()
