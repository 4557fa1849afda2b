"""End to end on a real model (D18): SmolLM2-135M-Instruct on llama-cpp-python replicas, driven only
through the orchestrator's public API, with the same engine reached directly as the reference.

The strong check is differential: the stream through the orchestrator equals, byte for byte, the
stream the same engine gives directly for the same prompt, seed and sampler settings. Then the
metrics move by what was streamed, the engine's identity is reported, cancel stops generation,
and a mock is refused when a real engine is required.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import uuid
from typing import Any

import grpc
import httpx
import pytest
from httpx_sse import connect_sse
from llorch.harness.clients import TENANT_HEADER, adapter_stub, generate, wait_until
from llorch.harness.compare import StreamToken, first_divergence
from llorch.harness.e2e.realmodel import RealModelTarget, smollm2_path
from llorch.harness.targets import start_reference
from prometheus_client.parser import text_string_to_metric_families

from llorch.proto import common_pb2, worker_adapter_pb2

PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
          "<|im_end|>\n<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n"
          "<|im_start|>assistant\n")
SAMPLER = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.0}


def submit(client: httpx.Client, target: RealModelTarget, tenant: str, **over: Any) -> str:
    body = {"model": target.model, "prompt": PROMPT, "max_tokens": 24, "deterministic": True,
            "sampler": {**SAMPLER, "seed": 7}, **over}
    resp = client.post("/v1/tasks", json=body, headers={TENANT_HEADER: tenant})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def events(client: httpx.Client, task_id: str, tenant: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    with connect_sse(client, "GET", f"/v1/tasks/{task_id}/events", headers={TENANT_HEADER: tenant},
                     timeout=120) as source:
        for sse in source.iter_sse():
            if sse.data:
                out.append((sse.event, json.loads(sse.data)))
                if sse.event in ("end", "error", "cancelled"):
                    break
    return out


def texts(evs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [d["text"] for kind, d in evs if kind == "token"]


def direct(target: RealModelTarget, replica: str, seed: int, max_tokens: int) -> list[str]:
    """The same engine reached directly: its WorkerAdapter, same prompt, seed and sampler."""
    req = worker_adapter_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex, model=target.model, prompt=PROMPT, max_tokens=max_tokens,
        deterministic=True, sampler=common_pb2.SamplerParams(
            temperature=SAMPLER["temperature"], top_p=SAMPLER["top_p"], top_k=int(SAMPLER["top_k"]),
            repeat_penalty=SAMPLER["repeat_penalty"], seed=seed))
    with grpc.insecure_channel(target.adapter_addresses[replica]) as channel:
        evs = list(generate(adapter_stub(channel), req, timeout_s=120))
    return [e.token.text for e in evs if e.WhichOneof("kind") == "token"]


@pytest.fixture
def client(real_target: RealModelTarget) -> httpx.Client:
    return httpx.Client(base_url=real_target.http, timeout=120)


@pytest.fixture
def tenant() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


@pytest.mark.req("STR-1900", "DET-1001")
@pytest.mark.parametrize("seed", [0, 4, 11])
def test_stream_through_orchestrator_equals_the_engine_directly(real_target: RealModelTarget,
                                                                client: httpx.Client, tenant: str,
                                                                seed: int) -> None:
    replica = real_target.replica_ids[seed % 2]
    pin = {"pin_pool": real_target.pool_id, "pin_replica": replica}
    through = texts(events(client, submit(client, real_target, tenant, sampler={**SAMPLER, "seed": seed},
                                          placement=pin), tenant))
    engine = direct(real_target, replica, seed, 24)
    assert through, "no tokens streamed"
    if "".join(through) != "".join(engine):
        div = first_divergence([StreamToken(t) for t in through], [StreamToken(t) for t in engine])
        pytest.fail(f"orchestrator vs direct engine: {div.describe() if div else 'boundaries differ'}")


def _tokens_out_total(client: httpx.Client, pool: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "tokens_out_total" and sample.labels.get("pool_id", pool) == pool:
                total += sample.value
    return total


@pytest.mark.req("MET-1012")
def test_tokens_out_total_moves_by_the_tokens_streamed(real_target: RealModelTarget, client: httpx.Client,
                                                      tenant: str) -> None:
    before = _tokens_out_total(client, real_target.pool_id)
    evs = events(client, submit(client, real_target, tenant, max_tokens=12), tenant)
    streamed = sum(d.get("count", 1) or 1 for kind, d in evs if kind == "token")
    assert evs[-1][0] == "end" and evs[-1][1]["tokens_out"] == streamed
    assert wait_until(lambda: _tokens_out_total(client, real_target.pool_id) - before == streamed, 10), (
        f"tokens_out_total moved by {_tokens_out_total(client, real_target.pool_id) - before}, "
        f"streamed {streamed}")


@pytest.mark.req("STR-1008", "POOL-1010", "ADP-1039")
def test_engine_version_and_model_digest_are_the_real_ones(real_target: RealModelTarget, client: httpx.Client,
                                                          tenant: str) -> None:
    model = smollm2_path()
    assert model is not None
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    version = importlib.metadata.version("llama-cpp-python")
    evs = events(client, submit(client, real_target, tenant, max_tokens=2), tenant)
    started = next(e for e in evs if e[0] == "started")
    assert (started[1]["engine"], started[1]["engine_version"], started[1]["model_digest"]) == (
        "llama-cpp-python", version, digest)
    pools = {p["pool_id"]: p for p in client.get("/v1/pools").json()["pools"]}
    for r in pools[real_target.pool_id]["replicas"]:
        assert (r["engine_version"], r["model_digest"]) == (version, digest)


@pytest.mark.req("STR-1028", "STR-1029", "STR-1033", "POOL-1012")
def test_cancel_stops_generation_and_frees_the_slot(real_target: RealModelTarget, client: httpx.Client,
                                                   tenant: str) -> None:
    replica = real_target.replica_ids[0]
    task = submit(client, real_target, tenant, max_tokens=200,
                  placement={"pin_pool": real_target.pool_id, "pin_replica": replica})
    seen: list[tuple[str, dict[str, Any]]] = []
    cancelled_at = None
    with connect_sse(client, "GET", f"/v1/tasks/{task}/events", headers={TENANT_HEADER: tenant},
                     timeout=120) as source:
        for sse in source.iter_sse():
            if not sse.data:
                continue
            seen.append((sse.event, json.loads(sse.data)))
            if sse.event == "token" and cancelled_at is None:
                resp = client.post(f"/v1/tasks/{task}/cancel", headers={TENANT_HEADER: tenant})
                assert resp.status_code == 200 and resp.json()["state"].lower() == "cancelled"
                cancelled_at = len(seen)
            if sse.event in ("end", "error", "cancelled"):
                break
    assert seen[-1][0] == "cancelled" and seen[-1][1].get("reason") == "client"
    streamed = sum(1 for kind, _ in seen if kind == "token")
    assert streamed < 200

    def replica_free() -> bool:
        pools = {p["pool_id"]: p for p in client.get("/v1/pools").json()["pools"]}
        reps = {r["replica_id"]: r for r in pools[real_target.pool_id]["replicas"]}
        return bool(reps[replica]["free_slots"] == reps[replica]["total_slots"])

    assert wait_until(replica_free, 10), "the replica's slot was not freed after cancel"


@pytest.mark.req("ADM-1017")
def test_a_mock_is_refused_when_a_real_engine_is_required(real_target: RealModelTarget, client: httpx.Client,
                                                         tenant: str) -> None:
    task = submit(client, real_target, tenant, max_tokens=2, require_real_engine=True)
    assert events(client, task, tenant)[-1][0] == "end"
    with start_reference() as mock, httpx.Client(base_url=str(mock.info["http"]), timeout=30) as m:
        model = m.get("/v1/pools").json()["pools"][0]["model"]
        resp = m.post("/v1/tasks", json={"model": model, "prompt": "x", "max_tokens": 2,
                                         "require_real_engine": True}, headers={TENANT_HEADER: tenant})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "REAL_ENGINE_REQUIRED"


@pytest.mark.gpu
@pytest.mark.req("DET-1001")
def test_gpu_determinism_bundle(tmp_path: Any) -> None:
    """On an accelerator: a determinism run against the GPU target named by LLORCH_GPU_TARGET."""
    target = os.environ.get("LLORCH_GPU_TARGET")
    if not target:
        pytest.skip("no GPU target configured (set LLORCH_GPU_TARGET to an orchestrator over a GPU engine)")
    from click.testing import CliRunner
    from llorch.harness.determinism.cli import determinism

    result = CliRunner().invoke(determinism, [target, "--seeds", "64", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
