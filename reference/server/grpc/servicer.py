"""``llorch.v1.OrchestratorService``: protobuf in, ``OrchestratorApi`` call, protobuf out.

Thin on purpose (STYLE.md §6, grpc's cancellation example): every rule lives behind the facade;
identity, correlation id and error mapping come from ``interceptors.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from llorch.reference.core.types import Identity
from llorch.reference.errors import InvalidParams, LlorchError
from llorch.reference.runtime.api import OrchestratorApi
from llorch.reference.server import context as ctx
from llorch.reference.server.grpc import convert
from llorch.reference.server.security import Limits

from llorch.proto import orchestrator_pb2 as _pb
from llorch.proto import orchestrator_pb2_grpc as _pb_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _identity() -> Identity:
    identity = ctx.identity.get()
    if identity is None:  # the interceptor always sets it; a missing one is a wiring bug
        raise RuntimeError("OrchestratorServicer called without the OrchestratorInterceptor")
    return identity


class OrchestratorServicer(_pb_grpc.OrchestratorServiceServicer):
    def __init__(self, orchestrator: OrchestratorApi, limits: Limits) -> None:
        self._orch = orchestrator
        self._limits = limits

    async def Submit(self, request: _pb.SubmitRequest, context: Context) -> _pb.SubmitResponse:
        try:
            try:
                task_request = convert.submit_request(request)
            except KeyError as exc:
                raise InvalidParams(f"unknown enum value {exc}") from None
            self._limits.check_prompt(task_request.prompt)
        except LlorchError as exc:
            # Refused before the orchestrator saw it: still a rejected submit (MET-1011).
            count = getattr(self._orch, "count_rejection", None)
            if count is not None:
                count(exc)
            raise
        admission = await self._orch.submit(task_request, _identity())
        return _pb.SubmitResponse(task_id=admission.task_id, queue_position=admission.queue_position,
                                  predicted_start_ms=admission.predicted_start_ms,
                                  correlation_id=ctx.correlation_id.get())

    async def StreamEvents(self, request: _pb.StreamEventsRequest,
                           context: Context) -> AsyncIterator[_pb.TaskEvent]:
        # A dropped event stream does not cancel the task: the client may resume with from_seq.
        async for event in self._orch.events(request.task_id, _identity(), from_seq=request.from_seq):
            yield convert.task_event(event)

    async def Cancel(self, request: _pb.CancelRequest, context: Context) -> _pb.CancelResponse:
        record = await self._orch.cancel(request.task_id, _identity())
        return _pb.CancelResponse(task_id=record.task_id, state=convert.task_state(record.state))

    async def GetTask(self, request: _pb.GetTaskRequest, context: Context) -> _pb.Task:
        return convert.task(await self._orch.get_task(request.task_id, _identity()))

    async def ListTasks(self, request: _pb.ListTasksRequest, context: Context) -> _pb.ListTasksResponse:
        try:
            state = convert.state_in(request.state)
        except KeyError as exc:
            raise InvalidParams(f"unknown task state {exc}") from None
        records = await self._orch.list_tasks(_identity(), state=state, limit=request.limit or 100)
        return _pb.ListTasksResponse(tasks=[convert.task(r) for r in records])

    async def GetCapabilities(self, request: _pb.GetCapabilitiesRequest,
                              context: Context) -> _pb.Capabilities:
        _identity()
        return convert.capabilities(self._orch.capabilities())

    async def ListPools(self, request: _pb.ListPoolsRequest, context: Context) -> _pb.ListPoolsResponse:
        _identity()
        return _pb.ListPoolsResponse(pools=[convert.pool(p) for p in self._orch.pools()])

    async def GetPoolHealth(self, request: _pb.GetPoolHealthRequest, context: Context) -> _pb.Pool:
        _identity()
        return convert.pool(self._orch.pool(request.pool_id))

    async def DrainPool(self, request: _pb.DrainPoolRequest, context: Context) -> _pb.DrainPoolResponse:
        return convert.drain(await self._orch.drain_pool(request.pool_id, _identity(),
                                                         deadline_ms=request.deadline_ms))

    async def ReloadPool(self, request: _pb.ReloadPoolRequest,
                         context: Context) -> _pb.ReloadPoolResponse:
        return convert.reload(await self._orch.reload_pool(request.pool_id, request.model, _identity()))

    async def CreateSession(self, request: _pb.CreateSessionRequest, context: Context) -> _pb.Session:
        return convert.session(await self._orch.create_session(
            _identity(), ttl_ms=request.ttl_ms, max_turns=request.max_turns))

    async def GetSession(self, request: _pb.GetSessionRequest, context: Context) -> _pb.Session:
        return convert.session(await self._orch.get_session(request.session_id, _identity()))

    async def DeleteSession(self, request: _pb.DeleteSessionRequest,
                            context: Context) -> _pb.DeleteSessionResponse:
        await self._orch.delete_session(request.session_id, _identity())
        return _pb.DeleteSessionResponse()
