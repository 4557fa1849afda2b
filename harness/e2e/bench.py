"""Tokens/s and TTFT on the real model: through the orchestrator versus the engine directly.

``python -m llorch.harness.e2e.bench [--requests N] [--max-tokens M]`` starts the embedded
real-model target, then alternates the same seeded request (pinned to one replica) between the
orchestrator's public API (``POST /v1/tasks`` + SSE events) and that replica's engine reached
directly (its ``WorkerAdapter`` gRPC ``Generate``), and prints one JSON object with the medians.
Alternating keeps both paths on the same warm engine and the same machine load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import grpc
import httpx
from httpx_sse import connect_sse
from llorch.harness.clients import TENANT_HEADER, adapter_stub
from llorch.harness.e2e.realmodel import RealModelTarget, start_real_model

from llorch.proto import common_pb2, worker_adapter_pb2

PROMPT = "<|im_start|>user\nTell me a short story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n"


def _rates(t0: float, stamps: list[float]) -> dict[str, float]:
    n = len(stamps)
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else 0.0
    return {"ttft_ms": (stamps[0] - t0) * 1000, "tokens": n, "decode_tok_s": decode,
            "e2e_tok_s": n / (stamps[-1] - t0)}


def through(client: httpx.Client, target: RealModelTarget, replica: str, seed: int,
            max_tokens: int) -> dict[str, float]:
    tenant = "bench"
    body = {"model": target.model, "prompt": PROMPT, "max_tokens": max_tokens, "deterministic": True,
            "sampler": {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.0, "seed": seed},
            "placement": {"pin_pool": target.pool_id, "pin_replica": replica}}
    t0 = time.perf_counter()
    task = client.post("/v1/tasks", json=body, headers={TENANT_HEADER: tenant}).json()["task_id"]
    stamps: list[float] = []
    with connect_sse(client, "GET", f"/v1/tasks/{task}/events", headers={TENANT_HEADER: tenant}) as src:
        for sse in src.iter_sse():
            if sse.event == "token":
                now = time.perf_counter()
                stamps += [now] * int(json.loads(sse.data).get("count", 1) or 1)
            elif sse.event in ("end", "error", "cancelled"):
                break
    return _rates(t0, stamps)


def direct(stub: Any, target: RealModelTarget, seed: int, max_tokens: int) -> dict[str, float]:
    req = worker_adapter_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex, model=target.model, prompt=PROMPT, max_tokens=max_tokens,
        deterministic=True, sampler=common_pb2.SamplerParams(temperature=0.8, top_p=0.95, top_k=40,
                                                             repeat_penalty=1.0, seed=seed))
    t0 = time.perf_counter()
    stamps = [time.perf_counter() for ev in stub.Generate(req, timeout=120)
              if ev.WhichOneof("kind") == "token"]
    return _rates(t0, stamps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with start_real_model(1, threads=args.threads) as target:
        replica = target.replica_ids[0]
        runs: dict[str, list[dict[str, float]]] = {"orchestrator": [], "direct": []}
        with httpx.Client(base_url=target.http, timeout=120) as client, \
                grpc.insecure_channel(target.adapter_addresses[replica]) as channel:
            stub = adapter_stub(channel)
            direct(stub, target, 0, 8)  # warm-up
            for i in range(args.requests):
                runs["orchestrator"].append(through(client, target, replica, i, args.max_tokens))
                runs["direct"].append(direct(stub, target, i, args.max_tokens))
        out: dict[str, Any] = {"requests": args.requests, "max_tokens": args.max_tokens,
                               "threads": args.threads}
        for path, rs in runs.items():
            out[path] = {k: round(statistics.median(r[k] for r in rs), 2)
                         for k in ("ttft_ms", "decode_tok_s", "e2e_tok_s", "tokens")}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
