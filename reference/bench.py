"""Relay benchmark: ``python -m llorch.reference.bench --out FILE`` (``nox -s bench``).

Measures what the orchestrator adds on top of the engine it relays (D23), in one run, on one
machine: the same mock engine is served by ``llorch adapter serve`` and reached (a) directly over
``WorkerAdapter`` gRPC — the baseline — and (b) through ``llorch serve`` (a remote pool pointing
at that adapter), over both the gRPC event stream and the OpenAI SSE surface, at 1, 16 and 64
concurrent streams. Reported per surface and concurrency:

- time to first token p50/p99, the baseline's, and the difference ("added");
- tokens relayed per orchestrator CPU-second (tokens delivered / the orchestrator process's user +
  system CPU time during the phase, read from ``/proc``), and the wall-clock token rates of both;
- RSS per 10,000 queued tasks (a separate orchestrator whose one slot is busy).

Two engine speeds: unpaced (as fast as the machine allows: ``relay``/``summary``, where the
tokens-per-CPU-second figure means something, but where the added TTFT at high concurrency is
mostly queueing behind saturated CPUs) and a real engine's per-stream rate (``--paced-tokens-per-s``:
``relay_paced_engine``/``summary_paced_engine``, closer to what a deployment sees; at 64 streams on
a small machine the relay can still be CPU-bound there, which the load average column shows).

Each concurrency level is measured ``--repeat`` times (baseline and surfaces back to back, so every
ratio compares runs under the same machine load); ``summary`` holds the medians over the repeats,
and every row records the 1-minute load average, since shared machines make single runs noisy.

Servers run as subprocesses, so their CPU time is theirs alone; the load generator is this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from llorch import __version__

MODEL = "bench-model"
PROMPT = "Benchmark the relay overhead of the orchestrator."
READY_S = 60.0


# ---- processes --------------------------------------------------------------------------------


@dataclass
class Served:
    info: dict[str, Any]
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return int(self.info["pid"])


@contextmanager
def _served(argv: list[str]) -> Iterator[Served]:
    process = subprocess.Popen([sys.executable, "-m", "llorch", *argv, "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(process.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(READY_S)
        if not line or not line[0]:
            raise RuntimeError(f"{' '.join(argv)} did not announce itself")
        yield Served(json.loads(line[0]), process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _config(pools: list[dict[str, Any]], capacity: int) -> Path:
    config = {"queue": {"capacity": capacity, "full_policy": "reject"},
              "limits": {"max_tokens": 4096, "max_body_bytes": 1 << 20, "max_prompt_bytes": 1 << 16},
              "pools": pools}
    fd, name = tempfile.mkstemp(suffix=".yaml", prefix="llorch-bench-")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    return Path(name)


# ---- measurements -----------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] * 1000

    mean = statistics.fmean(ordered) * 1000
    return {"p50": round(at(0.50), 3), "p99": round(at(0.99), 3), "mean": round(mean, 3)}


StreamFn = Callable[[int], Awaitable[tuple[float, int]]]


async def _phase(fn: StreamFn, concurrency: int, rounds: int) -> tuple[list[float], int, float]:
    """``concurrency`` workers, each running ``rounds`` streams back to back."""
    ttfts: list[float] = []
    tokens = 0

    async def worker(w: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            first, count = await fn(w * rounds + r)
            ttfts.append(first)
            tokens += count

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return ttfts, tokens, time.perf_counter() - start


async def _direct_stream(adapter: Any, max_tokens: int) -> StreamFn:
    from llorch.reference.adapters.base import GenerateRequest, GenToken
    from llorch.reference.core.types import SamplerParams

    async def run(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        first, count = 0.0, 0
        request = GenerateRequest(request_id=f"direct-{i}-{time.monotonic_ns()}", model=MODEL, prompt=PROMPT,
                                  max_tokens=max_tokens, sampler=SamplerParams(seed=i))
        async for event in adapter.generate(request):
            if isinstance(event, GenToken):
                if count == 0:
                    first = time.perf_counter() - start
                count += 1
        return first, count

    return run


def _sse_stream(http: httpx.AsyncClient, max_tokens: int) -> StreamFn:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}

    async def run(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        first, count = 0.0, 0
        async with http.stream("POST", "/v1/chat/completions", json={**body, "seed": i}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    count = int(chunk["usage"]["completion_tokens"])
                elif first == 0.0 and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
        return first, count

    return run


async def _relay(adapter_address: str, orchestrator: Served, levels: list[int], rounds: int,
                 max_tokens: int, repeat: int) -> list[dict[str, Any]]:
    from llorch.reference.adapters.remote import RemoteAdapter
    from llorch.reference.server.grpc.loadgen import OrchestratorLoad

    adapter = RemoteAdapter(adapter_address, call_timeout_s=60.0)
    load = OrchestratorLoad(orchestrator.info["grpc"])
    limits = httpx.Limits(max_connections=max(levels) + 8, max_keepalive_connections=max(levels) + 8)
    http = httpx.AsyncClient(base_url=orchestrator.info["http"], limits=limits, timeout=120.0)
    direct = await _direct_stream(adapter, max_tokens)
    surfaces: dict[str, StreamFn] = {
        "grpc": lambda i: load.stream(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, seed=i),
        "openai-sse": _sse_stream(http, max_tokens),
    }
    results: list[dict[str, Any]] = []
    try:
        for fn in (direct, *surfaces.values()):  # warm up connections and code paths
            await _phase(fn, 2, 1)
        for rep, level in ((r, lv) for r in range(repeat) for lv in levels):
            base_ttft, base_tokens, base_wall = await _phase(direct, level, rounds)
            for surface, fn in surfaces.items():
                cpu0 = cpu_seconds(orchestrator.pid)
                ttft, tokens, wall = await _phase(fn, level, rounds)
                cpu = max(cpu_seconds(orchestrator.pid) - cpu0, 1e-9)
                t, b = _percentiles(ttft), _percentiles(base_ttft)
                results.append({
                    "surface": surface, "concurrency": level, "repeat": rep, "streams": level * rounds,
                    "max_tokens": max_tokens,
                    "ttft_ms": t, "direct_ttft_ms": b,
                    "added_ttft_ms": {k: round(t[k] - b[k], 3) for k in ("p50", "p99", "mean")},
                    "tokens": tokens, "orchestrator_cpu_s": round(cpu, 3),
                    "tokens_per_orchestrator_cpu_s": round(tokens / cpu, 1),
                    "tokens_per_s": round(tokens / wall, 1),
                    "direct_tokens_per_s": round(base_tokens / base_wall, 1),
                    "throughput_ratio_vs_direct": round((tokens / wall) / (base_tokens / base_wall), 3),
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                })
                row = results[-1]
                print(f"  {surface:>10} x{level:<3} added TTFT p50 {row['added_ttft_ms']['p50']:8.2f} ms"
                      f"  p99 {row['added_ttft_ms']['p99']:8.2f} ms"
                      f"  {row['tokens_per_orchestrator_cpu_s']:10.0f} tok/CPU-s", file=sys.stderr)
    finally:
        await http.aclose()
        await load.aclose()
        await adapter.aclose()
    return results


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over the repeats of each (surface, concurrency): the figures to report."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["surface"], row["concurrency"]), []).append(row)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return [{
        "surface": surface, "concurrency": level, "repeats": len(group),
        "added_ttft_ms": {q: median([r["added_ttft_ms"][q] for r in group]) for q in ("p50", "p99")},
        "ttft_ms": {q: median([r["ttft_ms"][q] for r in group]) for q in ("p50", "p99")},
        "direct_ttft_ms": {q: median([r["direct_ttft_ms"][q] for r in group]) for q in ("p50", "p99")},
        "tokens_per_orchestrator_cpu_s": median([r["tokens_per_orchestrator_cpu_s"] for r in group]),
        "throughput_ratio_vs_direct": median([r["throughput_ratio_vs_direct"] for r in group]),
        "loadavg_1m": median([r["loadavg_1m"] for r in group]),
    } for (surface, level), group in groups.items()]


async def _queued_rss(orchestrator: Served, tasks: int) -> dict[str, Any]:
    from llorch.reference.server.grpc.loadgen import OrchestratorLoad

    load = OrchestratorLoad(orchestrator.info["grpc"])
    try:
        await load.submit_only(model=MODEL, prompt=PROMPT, max_tokens=8)  # occupies the only slot
        before = rss_mib(orchestrator.pid)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(tasks):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await load.submit_only(model=MODEL, prompt=PROMPT, max_tokens=8)

        await asyncio.gather(*(worker() for _ in range(32)))
        after = rss_mib(orchestrator.pid)
    finally:
        await load.aclose()
    return {"queued_tasks": tasks, "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1),
            "mib_per_10k_queued": round((after - before) * 10_000 / tasks, 2)}


def _measure(levels: list[int], rounds: int, max_tokens: int, repeat: int,
             engine_tokens_per_s: float) -> list[dict[str, Any]]:
    """One ``llorch adapter serve`` at ``engine_tokens_per_s`` per stream, reached directly and
    through one ``llorch serve`` (a remote pool pointing at it)."""
    slots = max(*levels, 2)  # the warm-up runs two streams at once
    with _served(["adapter", "serve", "--port", "0", "--model", MODEL, "--slots", str(slots),
                  "--tokens-per-s", str(engine_tokens_per_s)]) as adapter:
        config = _config([{"id": "bench", "model": MODEL, "engine": "remote", "slots_per_replica": slots,
                           "replicas": [{"id": "bench-r0", "address": adapter.info["grpc"]}]}],
                         capacity=4 * slots * rounds)
        try:
            with _served(["serve", "--config", str(config), "--grpc-port", "0", "--http-port", "0"]) as orch:
                rows = asyncio.run(_relay(adapter.info["grpc"], orch, levels, rounds, max_tokens, repeat))
        finally:
            config.unlink(missing_ok=True)
    for row in rows:
        row["engine_tokens_per_s"] = engine_tokens_per_s
    return rows


def run(out: Path, levels: list[int], rounds: int, max_tokens: int, queued: int, repeat: int = 3,
        paced_tokens_per_s: float = 50.0, paced_max_tokens: int = 32) -> dict[str, Any]:
    from llorch.reference.runtime.relay import TOKEN_FLUSH_INTERVAL_S

    report: dict[str, Any] = {
        "schema": "llorch-bench/2", "llorch": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "relay_settings": {"token_flush_interval_ms": TOKEN_FLUSH_INTERVAL_S * 1000, "repeat": repeat,
                           "rounds": rounds},
        "engine": {"kind": "mock", "served_by": "llorch adapter serve"},
    }
    # Throughput: an engine as fast as the machine allows, so the relay's CPU cost per token shows.
    print(f"unpaced engine, {max_tokens} tokens per stream", file=sys.stderr)
    report["relay"] = _measure(levels, rounds, max_tokens, repeat, 0.0)
    report["summary"] = summarise(report["relay"])
    if paced_tokens_per_s > 0:
        # Latency: an engine at a real engine's per-stream rate, so the added TTFT is the relay's
        # own delay rather than queueing behind a saturated CPU.
        print(f"engine at {paced_tokens_per_s:g} tokens/s per stream, {paced_max_tokens} tokens per stream",
              file=sys.stderr)
        report["relay_paced_engine"] = _measure(levels, rounds, paced_max_tokens, repeat, paced_tokens_per_s)
        report["summary_paced_engine"] = summarise(report["relay_paced_engine"])
    config = _config([{"id": "bench", "model": MODEL, "engine": "mock", "slots_per_replica": 1,
                       "mock": {"tokens_per_s": 0.1, "ttft_ms": 0}}], capacity=queued + 16)
    try:
        with _served(["serve", "--config", str(config), "--grpc-port", "0", "--http-port", "0"]) as orch:
            report["queued_rss"] = asyncio.run(_queued_rss(orch, queued))
    finally:
        config.unlink(missing_ok=True)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llorch.reference.bench",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=4, help="streams per concurrent worker")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--queued", type=int, default=10_000, help="tasks queued for the RSS figure")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per concurrency level (medians)")
    parser.add_argument("--paced-tokens-per-s", type=float, default=50.0,
                        help="per-stream rate of the engine for the latency runs (0 skips them)")
    parser.add_argument("--paced-max-tokens", type=int, default=32,
                        help="tokens per stream in the latency runs")
    args = parser.parse_args(argv)
    report = run(args.out, args.concurrency, args.rounds, args.max_tokens, args.queued, args.repeat,
                 args.paced_tokens_per_s, args.paced_max_tokens)
    print(json.dumps({"out": str(args.out), "summary": report["summary"],
                      "summary_paced_engine": report.get("summary_paced_engine"),
                      "queued_rss": report["queued_rss"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
