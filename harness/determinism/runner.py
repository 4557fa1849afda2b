"""The determinism suite: run (prompt, seed) pairs on every replica of a pool, over the public API.

For each seed, on each replica (pinned placement, DET-1010), the suite runs the seed's prompt three
times: first, again back to back, and again after a request with another prompt ran on that
replica in between (DET-1011). Engines with a prompt/prefix cache change their output with request
history, so the repeats catch what a cross-replica comparison alone cannot. Replicas run in
parallel (one thread each); within a replica the order is fixed, so a replay reproduces the same
history. Everything goes over HTTP: ``POST /v1/tasks`` then ``GET /v1/tasks/{id}/events`` (SSE).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse
from llorch.harness.clients import TENANT_HEADER, new_tenant
from llorch.harness.determinism.bundle import BUNDLE_SCHEMA, Entry, compare_entries

from llorch import __version__

__all__ = [
    "DEFAULT_PROMPTS",
    "ReplayMismatch",
    "RunConfig",
    "SetupError",
    "TargetInfo",
    "accelerator_fingerprint",
    "config_from_manifest",
    "discover",
    "host_fingerprint",
    "new_run_id",
    "replay",
    "run_entries",
    "run_suite",
]

# Chat-formatted prompts sharing one system prefix, as real traffic does: a shared prefix is what
# a prompt cache re-uses, so these make history dependence visible (docs/determinism.md).
_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
           "<|im_end|>\n<|im_start|>user\n")
_QUESTIONS = ("Write one sentence about the sea.", "List three colours and a fruit.",
              "What is a bicycle? Answer briefly.", "Give a name for a small grey cat.")
DEFAULT_PROMPTS = tuple(f"{_SYSTEM}{q}<|im_end|>\n<|im_start|>assistant\n" for q in _QUESTIONS)
INTERLEAVE_SEED_OFFSET = 1_000_003


class SetupError(RuntimeError):
    """The target cannot run this suite (exit code 2): unreachable, or too few replicas."""


@dataclass(frozen=True)
class RunConfig:
    seeds: list[int]
    replicas: int = 2
    max_tokens: int = 16
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.0
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    model: str | None = None
    pool: str | None = None
    deterministic: bool = True
    timeout_s: float = 120.0

    def sampler(self, seed: int) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repeat_penalty": self.repeat_penalty, "seed": seed}


@dataclass
class TargetInfo:
    model: str
    pool_id: str
    replicas: list[str]
    engine: str
    engine_version: str
    model_digest: str
    build_info: dict[str, str] = field(default_factory=dict)


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = sorted(value.split())
                    break
    except OSError:
        pass
    return model, flags


def host_fingerprint() -> dict[str, Any]:
    """What a second party needs to know the host matched: CPU model and features (D19)."""
    model, flags = _cpu()
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "machine": platform.machine(), "cpu_model": model,
            "cpu_flags": flags, "cpu_count": os.cpu_count() or 1}


def accelerator_fingerprint() -> dict[str, Any]:
    """GPUs as ``nvidia-smi`` reports them; an empty list on a CPU-only host."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"gpus": [], "source": "no nvidia-smi"}
    try:
        query = "--query-gpu=name,driver_version,memory.total,uuid"
        out = subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"gpus": [], "source": f"nvidia-smi failed: {exc}"}
    names = ("name", "driver", "memory", "uuid")
    gpus = [dict(zip(names, (x.strip() for x in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]
    return {"gpus": gpus, "source": "nvidia-smi"}


def discover(client: httpx.Client, cfg: RunConfig, *, build_info: dict[str, str] | None = None) -> TargetInfo:
    """The pool to test and its replicas, from ``GET /v1/pools``; refuse too few replicas (DET-1014)."""
    try:
        resp = client.get("/v1/pools")
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise SetupError(f"cannot list the target's pools: {exc}") from exc
    pools = resp.json().get("pools", [])
    candidates = [p for p in pools if (cfg.pool is None or p["pool_id"] == cfg.pool)
                  and (cfg.model is None or p["model"] == cfg.model)]
    if not candidates:
        raise SetupError(f"no pool matches pool={cfg.pool!r} model={cfg.model!r}")
    best = max(candidates, key=lambda p: sum(1 for r in p.get("replicas", []) if r.get("ready")))
    ready = [r for r in best.get("replicas", []) if r.get("ready")]
    if len(ready) < cfg.replicas:
        # req: DET-1014
        raise SetupError(f"pool {best['pool_id']} has {len(ready)} ready replicas of {best['model']}; "
                         f"--replicas {cfg.replicas} needs that many")
    chosen = ready[: cfg.replicas]
    first = chosen[0]
    for r in chosen[1:]:
        for key in ("engine_version", "model_digest"):
            if r.get(key) != first.get(key):
                raise SetupError(f"replicas {first['replica_id']} and {r['replica_id']} report different "
                                 f"{key}: {first.get(key)!r} vs {r.get(key)!r}")
    builds = {r["replica_id"]: str(r.get("build_info") or (build_info or {}).get(r["replica_id"], ""))
              for r in chosen}
    return TargetInfo(model=best["model"], pool_id=best["pool_id"],
                      replicas=[r["replica_id"] for r in chosen], engine=str(first.get("engine", "")),
                      engine_version=str(first.get("engine_version", "")),
                      model_digest=str(first.get("model_digest", "")), build_info=builds)


SUBMIT_ATTEMPTS = 6


def _retry_after_s(resp: httpx.Response) -> float:
    try:
        return float(resp.json()["error"].get("retry_after_ms", 0)) / 1000
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0.0


def _error_code(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


def run_one(client: httpx.Client, tenant: str, cfg: RunConfig, info: TargetInfo, replica: str,
            prompt_index: int, seed: int) -> Entry:
    """Submit one pinned task and read its events to the end."""
    body = {"model": info.model, "prompt": cfg.prompts[prompt_index], "max_tokens": cfg.max_tokens,
            "sampler": cfg.sampler(seed), "deterministic": cfg.deterministic,
            "placement": {"pin_pool": info.pool_id, "pin_replica": replica}}
    headers = {TENANT_HEADER: tenant}
    entry = Entry(key=f"p{prompt_index}-s{seed}", prompt_index=prompt_index, seed=seed, repeat=0, context="")
    for attempt in range(SUBMIT_ATTEMPTS):
        resp = client.post("/v1/tasks", json=body, headers=headers)
        if resp.status_code == 202 or resp.status_code not in (429, 503) or attempt == SUBMIT_ATTEMPTS - 1:
            break
        # An overloaded or momentarily unready target says so and when to retry: not a stream result.
        time.sleep(max(_retry_after_s(resp), 0.2 * 2**attempt))
    if resp.status_code != 202:
        # Only the code is recorded: messages carry per-response correlation ids.
        entry.error = f"submit HTTP {resp.status_code} {_error_code(resp)}"
        return entry
    entry.task_id = resp.json()["task_id"]
    with connect_sse(client, "GET", f"/v1/tasks/{entry.task_id}/events", headers=headers,
                     timeout=cfg.timeout_s) as source:
        for sse in source.iter_sse():
            if not sse.data:
                continue
            data = json.loads(sse.data)
            if sse.event == "token":
                entry.tokens.append({"text": data.get("text", ""), "token_id": int(data.get("token_id", -1)),
                                     "count": int(data.get("count", 1) or 1)})
            elif sse.event == "end":
                entry.finish_reason = str(data.get("finish_reason", ""))
                entry.tokens_out = int(data.get("tokens_out", 0))
                break
            elif sse.event in ("error", "cancelled"):
                entry.error = f"{sse.event}: {data.get('code') or data.get('reason') or '?'}"
                break
    return entry


def _replica_plan(cfg: RunConfig) -> list[tuple[int, int, int, str]]:
    """(prompt index, seed, repeat, context) in the order one replica runs them; repeat -1 is an
    interleaved request of another prompt, run but not compared."""
    plan: list[tuple[int, int, int, str]] = []
    k = len(cfg.prompts)
    for seed in cfg.seeds:
        p = seed % k
        plan += [(p, seed, 0, "first"), (p, seed, 1, "back-to-back"),
                 ((p + 1) % k, seed + INTERLEAVE_SEED_OFFSET, -1, "other"), (p, seed, 2, "interleaved")]
    return plan


def run_entries(client: httpx.Client, cfg: RunConfig, info: TargetInfo,
                plan: dict[str, list[tuple[int, int, int, str]]],
                progress: Callable[[int], None] | None = None) -> dict[str, list[Entry]]:
    """Run each replica's plan in order, replicas in parallel; return the compared entries."""
    tenant = new_tenant("determinism")
    lock = threading.Lock()

    def replica_worker(replica: str) -> list[Entry]:
        out: list[Entry] = []
        for p, seed, repeat, context in plan[replica]:
            entry = run_one(client, tenant, cfg, info, replica, p, seed)
            if repeat >= 0:
                entry.repeat, entry.context = repeat, context
                out.append(entry)
            if progress is not None:
                with lock:
                    progress(1)
        return out

    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {r: pool.submit(replica_worker, r) for r in plan}
        return {r: f.result() for r, f in futures.items()}


def run_suite(http: str, cfg: RunConfig, *, target_kind: str, target_notes: str = "",
              build_info: dict[str, str] | None = None,
              progress: Callable[[int, int], Callable[[int], None]] | None = None,
              ) -> tuple[dict[str, Any], dict[str, list[Entry]], dict[str, dict[str, Any]]]:
    """Run the suite against an orchestrator's HTTP base URL: (manifest, transcripts, replica info)."""
    with httpx.Client(base_url=http, timeout=cfg.timeout_s) as client:
        info = discover(client, cfg, build_info=build_info)
        plan = {r: _replica_plan(cfg) for r in info.replicas}
        total = sum(len(p) for p in plan.values())
        tick = progress(total, len(info.replicas)) if progress else None
        transcripts = run_entries(client, cfg, info, plan, tick)
    manifest: dict[str, Any] = {
        "schema": BUNDLE_SCHEMA, "run_id": new_run_id(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tool": {"name": "llorch", "version": __version__},
        "target": {"kind": target_kind, "address": http, **({"notes": target_notes} if target_notes else {})},
        "model": info.model, "pool_id": info.pool_id, "engine": info.engine or "unknown",
        "engine_version": info.engine_version or "unknown", "model_digest": info.model_digest,
        "build_info": info.build_info,
        "sampler": {k: v for k, v in cfg.sampler(0).items() if k != "seed"},
        "max_tokens": cfg.max_tokens, "seeds": list(cfg.seeds), "prompts": list(cfg.prompts),
        "replicas": info.replicas, "host": host_fingerprint(), "accelerator": accelerator_fingerprint(),
        "deterministic_flag": cfg.deterministic,
    }
    replica_info = {r: {"pool_id": info.pool_id, "engine": info.engine, "engine_version": info.engine_version,
                        "model_digest": info.model_digest, "build_info": info.build_info.get(r, "")}
                    for r in info.replicas}
    return manifest, transcripts, replica_info


def config_from_manifest(manifest: dict[str, Any]) -> RunConfig:
    s = manifest["sampler"]
    return RunConfig(seeds=list(manifest["seeds"]), replicas=len(manifest["replicas"]),
                     max_tokens=manifest["max_tokens"], temperature=s["temperature"], top_p=s["top_p"],
                     top_k=s["top_k"], repeat_penalty=s["repeat_penalty"], prompts=tuple(manifest["prompts"]),
                     model=manifest["model"], deterministic=manifest["deterministic_flag"])


def replay(http: str, manifest: dict[str, Any], recorded: dict[str, list[Entry]],
           progress: Callable[[int, int], Callable[[int], None]] | None = None) -> list[dict[str, Any]]:
    """Re-run a bundle's requests on ``http`` in the same per-replica order and compare each new
    stream with the recorded one (DET-1026). Raises SetupError naming a mismatched engine field."""
    cfg = config_from_manifest(manifest)
    with httpx.Client(base_url=http, timeout=cfg.timeout_s) as client:
        info = discover(client, dataclasses.replace(cfg, model=None))
        for key in ("model_digest", "engine_version", "model"):
            # req: DET-1027
            if getattr(info, key) != manifest[key]:
                raise ReplayMismatch(f"target reports {key} {getattr(info, key)!r}, the bundle recorded "
                                     f"{manifest[key]!r}")
        mapping = dict(zip(manifest["replicas"], info.replicas, strict=True))
        if set(manifest["replicas"]) <= set(info.replicas):
            mapping = {r: r for r in manifest["replicas"]}
        info.replicas = [mapping[r] for r in manifest["replicas"]]
        plan = {mapping[r]: _replica_plan(cfg) for r in manifest["replicas"]}
        tick = progress(sum(len(p) for p in plan.values()), len(plan)) if progress else None
        fresh = run_entries(client, cfg, info, plan, tick)
    out: list[dict[str, Any]] = []
    for old_replica, entries in sorted(recorded.items()):
        new = {(e.key, e.repeat): e for e in fresh[mapping[old_replica]]}
        for e in entries:
            again = new.get((e.key, e.repeat))
            if again is not None:
                out.append(compare_entries(old_replica, e, mapping[old_replica], again, "replay"))
    return out


class ReplayMismatch(SetupError):
    """The replay target is not what the bundle recorded (exit 1, not a setup error)."""
