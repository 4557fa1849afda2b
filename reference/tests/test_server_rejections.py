"""``tasks_rejected_total`` over the HTTP edge with the real orchestrator behind it: a submit the edge
refuses before it reaches the orchestrator counts once, like one the orchestrator refuses itself."""

from __future__ import annotations

import grpc
import httpx
import pytest
from llorch.reference.runtime.orchestrator import Orchestrator
from llorch.reference.server.grpc.server import GrpcServer
from llorch.reference.server.http.app import create_app
from llorch.reference.server.security import Authenticator, Limits, Principal, SecuritySettings

from llorch.proto import orchestrator_pb2, orchestrator_pb2_grpc

from .runtime_support import config

pytestmark = pytest.mark.anyio

TOKEN = "rejections-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rejected(orch: Orchestrator, code: str) -> float:
    return orch.metrics.registry.get_sample_value("tasks_rejected_total", {"code": code}) or 0.0


@pytest.mark.req("MET-1011")
async def test_every_refused_submit_counts_once_whichever_layer_refused_it():
    security = SecuritySettings(authenticator=Authenticator.from_tokens([(TOKEN, Principal("team-a"))]),
                                limits=Limits(max_body_bytes=2_000, max_prompt_bytes=100))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = {"model": "m", "prompt": "hello", "max_tokens": 2}
    async with Orchestrator(config()) as orch:
        app = create_app(orch, security)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            answers = [
                await c.post("/v1/tasks", json=ok),  # no token: 401
                await c.post("/v1/tasks", json={"model": "m"}, headers=auth),  # malformed: 400
                await c.post("/v1/chat/completions", json={"model": "m"}, headers=auth),  # 400
                await c.post("/v1/tasks", json={**ok, "prompt": "x" * 101}, headers=auth),  # 413
                await c.post("/v1/tasks", json={**ok, "prompt": "x" * 3_000}, headers=auth),  # body 413
                await c.post("/v1/tasks", json={**ok, "model": "nobody"}, headers=auth),  # orchestrator: 404
            ]
            not_a_submit = await c.get("/v1/pools")  # refused, but not a submit: not counted
    assert [a.status_code for a in answers] == [401, 400, 400, 413, 413, 404]
    assert not_a_submit.status_code == 401
    assert rejected(orch, "UNAUTHENTICATED") == 1
    assert rejected(orch, "INVALID_PARAMS") == 2
    assert rejected(orch, "PAYLOAD_TOO_LARGE") == 2
    assert rejected(orch, "MODEL_NOT_FOUND") == 1  # counted by the orchestrator, not again by the edge


@pytest.mark.req("MET-1011")
async def test_a_grpc_submit_refused_by_the_edge_counts_once():
    security = SecuritySettings(limits=Limits(max_prompt_bytes=10))
    async with Orchestrator(config()) as orch:
        server = GrpcServer(orch, security)
        port = server.bind("127.0.0.1", 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
                for request in (orchestrator_pb2.SubmitRequest(model="m", prompt="x" * 11, max_tokens=2),
                                orchestrator_pb2.SubmitRequest(model="nobody", prompt="x", max_tokens=2)):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.Submit(request)
        finally:
            await server.stop(0)
    assert rejected(orch, "PAYLOAD_TOO_LARGE") == 1  # refused by the servicer's prompt limit
    assert rejected(orch, "MODEL_NOT_FOUND") == 1  # refused by the orchestrator, counted once
