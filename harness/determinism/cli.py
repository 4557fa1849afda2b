"""``llorch determinism`` and ``llorch bundle verify``.

Exit codes. ``determinism``: 0 every comparison identical, 1 some differ (the bundle is written
anyway), 2 setup error (unreachable target, too few replicas). ``bundle verify``: 0 the bundle is
intact and records identical streams, 1 it is not intact (altered, missing or unlisted file,
comparison disagreeing with its transcripts) or a replay differs / names another engine or model,
2 usage or setup error, 3 intact but the run it records found differences.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from llorch.harness.determinism.bundle import BundleError, Entry, verify_bundle, write_bundle
from llorch.harness.determinism.runner import (
    ReplayMismatch,
    RunConfig,
    SetupError,
    replay,
    run_suite,
)
from llorch.harness.targets import TargetError, http_base, start_reference
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["bundle", "determinism"]

EMBEDDED = "embedded"
EMBEDDED_REAL = "embedded-real-model"


def _progress(enabled: bool) -> tuple[Progress | None, Callable[[int, int], Callable[[int], None]] | None]:
    if not enabled:
        return None, None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=None, transient=True, redirect_stderr=False)

    def start(total: int, replicas: int) -> Callable[[int], None]:
        task = bar.add_task(f"requests on {replicas} replicas", total=total)
        return lambda n: bar.advance(task, n)

    return bar, start


@contextlib.contextmanager
def _target(target: str | None, *, real_model: bool, prompt_cache: bool, replicas: int,
            threads: int) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """(http base, target kind, notes, build_info per replica) — starting an embedded one if asked."""
    if target in (None, EMBEDDED) and not real_model:
        # req: DET-1013
        with start_reference() as served:
            yield http_base(str(served.info["http"])), "embedded-mock", "conformance config", {}
        return
    if target in (None, EMBEDDED_REAL) or real_model:
        from llorch.harness.e2e.realmodel import start_real_model

        with start_real_model(replicas, prompt_cache=prompt_cache, threads=threads) as real:
            cache = "ON (no reset per request)" if prompt_cache else "off (reset per request)"
            notes = (f"llama-cpp-python in-process, SmolLM2-135M-Instruct, 1 slot, {threads} thread(s), "
                     f"prompt cache {cache}")
            yield real.http, "embedded-real-model", notes, _adapter_builds(real.adapter_addresses)
        return
    assert target is not None
    yield http_base(target), "remote", "", {}


def _adapter_builds(addresses: dict[str, str]) -> dict[str, str]:
    """build_info straight from each replica's WorkerAdapter (the orchestrator does not relay it)."""
    import grpc
    from llorch.harness.clients import adapter_stub

    from llorch.proto import worker_adapter_pb2

    out: dict[str, str] = {}
    for replica, address in addresses.items():
        with grpc.insecure_channel(address) as channel:
            info = adapter_stub(channel).GetEngineInfo(worker_adapter_pb2.EngineInfoRequest(), timeout=10)
            out[replica] = info.build_info
    return out


@click.command("determinism")
@click.argument("target", required=False)
@click.option("--seeds", type=click.IntRange(1), default=64, show_default=True, help="Seeds 0..N-1.")
@click.option("--replicas", type=click.IntRange(1), default=2, show_default=True,
              help="Replicas of the pool to compare (each seed runs on each, pinned).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/bundles"),
              show_default=True, help="The bundle goes to OUT/<run-id>/.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Tokens per stream.")
@click.option("--temperature", type=click.FloatRange(0), default=0.8, show_default=True,
              help="Sampler temperature (sampling, not greedy, is what the seeds must fix).")
@click.option("--top-p", type=click.FloatRange(0, 1), default=0.95, show_default=True, help="Sampler top_p.")
@click.option("--top-k", type=click.IntRange(0), default=40, show_default=True, help="Sampler top_k.")
@click.option("--model", default=None, help="Model to test (default: the pool with most ready replicas).")
@click.option("--pool", default=None, help="Pool to test.")
@click.option("--real-model", is_flag=True,
              help="No TARGET: start SmolLM2 on llama-cpp-python replicas behind the reference.")
@click.option("--prompt-cache", is_flag=True,
              help="With --real-model: leave the engine's prompt cache on (expected to fail).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="With --real-model: threads per engine.")
@click.option("--no-deterministic-flag", is_flag=True,
              help="Submit without deterministic: true (to test engines that do not claim it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line: bundle path and result.")
def determinism(target: str | None, seeds: int, replicas: int, out: Path, max_tokens: int, temperature: float,
                top_p: float, top_k: int, model: str | None, pool: str | None, real_model: bool,
                prompt_cache: bool, threads: int, no_deterministic_flag: bool, as_json: bool) -> None:
    """Run the determinism suite against TARGET (an orchestrator's HTTP base URL; none: an embedded
    reference with mock replicas) and write a proof bundle.

    Each seed's prompt runs on every replica three times: first, back to back, and after another
    prompt (interleaved). Exit 0 when every comparison is identical, 1 when any differs, 2 on a
    setup error.
    """
    # req: DET-1010, DET-1011, DET-1012
    cfg = RunConfig(seeds=list(range(seeds)), replicas=replicas, max_tokens=max_tokens,
                    temperature=temperature, top_p=top_p, top_k=top_k, model=model, pool=pool,
                    deterministic=not no_deterministic_flag and not prompt_cache)
    bar, progress = _progress(not as_json and sys.stderr.isatty())
    try:
        with _target(target, real_model=real_model, prompt_cache=prompt_cache, replicas=replicas,
                     threads=threads) as (http, kind, notes, builds):
            with bar or contextlib.nullcontext():
                manifest, transcripts, replica_info = run_suite(
                    http, cfg, target_kind=kind, target_notes=notes, build_info=builds, progress=progress)
    except (SetupError, TargetError) as exc:
        click.echo(f"llorch determinism: {exc}", err=True)
        sys.exit(2)
    path, comparisons = write_bundle(out, manifest, transcripts, replica_info)
    differing = [c for c in comparisons if not c["identical"]]
    if as_json:
        click.echo(json.dumps({"bundle": str(path), "comparisons": len(comparisons),
                               "differing": len(differing), "passed": not differing}))
    else:
        click.echo((path / "summary.md").read_text(encoding="utf-8"))
        click.echo(f"bundle: {path}")
    sys.exit(1 if differing else 0)


def _bundle_dir(path: Path) -> Path:
    """DIR itself, or the one run directory inside it."""
    if (path / "manifest.json").is_file() or (path / "SHA256SUMS").is_file():
        return path
    runs = [p for p in path.iterdir() if p.is_dir() and (p / "manifest.json").is_file()]
    if len(runs) == 1:
        return runs[0]
    raise click.UsageError(f"{path}: not a bundle directory (no manifest.json)")


@click.group("bundle")
def bundle() -> None:
    """Determinism proof bundles."""


@bundle.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--replay", "replay_target", default=None,
              help="Re-run the bundle on TARGET (an HTTP base URL, 'embedded' or 'embedded-real-model').")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line with the verdict.")
def verify(directory: Path, replay_target: str | None, as_json: bool) -> None:
    """Recheck a bundle offline (hashes, schema, every comparison); optionally replay it.

    DIRECTORY is the bundle, or a folder holding exactly one. Exit 0 intact with identical
    streams, 3 intact but recording differing streams, 1 invalid bundle or a replay that differs
    or does not match, 2 replay setup error.
    """
    path = _bundle_dir(directory)
    result: dict[str, Any] = {"bundle": str(path)}
    try:
        report = verify_bundle(path)
    except BundleError as exc:
        # req: DET-1024
        _finish(as_json, {**result, "intact": False, "error": str(exc)}, f"bundle INVALID: {exc}", 1)
        return
    result.update(intact=True, comparisons=len(report.comparisons), differing=len(report.differing))
    m = report.manifest
    msg = (f"bundle intact: {len(report.comparisons)} comparisons rechecked, {len(report.differing)} "
           f"differing (run {m['run_id']}, {m['engine']} {m['engine_version']})")
    if replay_target is None:
        _finish(as_json, result, msg, 3 if report.differing else 0)
        return
    recorded: dict[str, list[Entry]] = {}
    for rel in report.manifest["transcripts"]:
        doc = json.loads((path / rel).read_text(encoding="utf-8"))
        recorded[doc["replica"]] = [Entry.from_json(e) for e in doc["entries"]]
    real = replay_target == EMBEDDED_REAL
    notes = report.manifest["target"].get("notes", "")
    try:
        with _target(replay_target, real_model=real, prompt_cache="prompt cache ON" in notes,
                     replicas=len(report.manifest["replicas"]), threads=1) as (http, _kind, _notes, _b):
            comparisons = replay(http, report.manifest, recorded)
    except ReplayMismatch as exc:
        # req: DET-1027
        _finish(as_json, {**result, "replay": "mismatch", "error": str(exc)}, f"replay refused: {exc}", 1)
        return
    except (SetupError, TargetError) as exc:
        _finish(as_json, {**result, "replay": "setup-error", "error": str(exc)}, f"replay failed: {exc}", 2)
        return
    differ = [c for c in comparisons if not c["identical"]]
    lines = [msg, f"replay on {replay_target}: {len(comparisons)} streams re-run, {len(differ)} differ"]
    lines += [f"  {c['left']['replica']} {c['left']['key']} repeat {c['left']['repeat']}: "
              f"{c['divergence']['describe']}" for c in differ[:20]]
    _finish(as_json, {**result, "replay": "identical" if not differ else "differs",
                      "replayed": len(comparisons), "replay_differing": len(differ),
                      "first_divergence": differ[0]["divergence"] if differ else None},
            "\n".join(lines), 1 if differ else 0)


def _finish(as_json: bool, result: dict[str, Any], message: str, code: int) -> None:
    click.echo(json.dumps(result) if as_json else message)
    sys.exit(code)
