"""Determinism proof bundles: write one, and verify one offline.

A bundle is a directory ``<out>/<run-id>/``::

    manifest.json            who/what/where: tool, target, engine, version, model digest, sampler,
                             seeds, prompts, replicas, build_info, host + accelerator fingerprint
    transcripts/<replica>.json   every stream that replica produced, token by token
    comparisons.json         every pairwise comparison, with the first diverging token
    summary.md               the same, for a person
    SHA256SUMS               sha256 of every other file (``sha256sum -c`` format)

``verify_bundle`` needs nothing but the directory: it rechecks every hash, that no file is missing
or unlisted, the manifest against ``contracts/bundle/bundle.schema.json``, and recomputes every
comparison from the transcripts with the shared comparator (``harness/compare.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from llorch.harness.compare import StreamToken, first_divergence

from llorch import resources

__all__ = [
    "BUNDLE_SCHEMA",
    "BundleError",
    "Entry",
    "VerifyReport",
    "compare_entries",
    "plan_comparisons",
    "schema_path",
    "sha256_file",
    "verify_bundle",
    "write_bundle",
]

BUNDLE_SCHEMA = "llorch-bundle/1"
SUMS = "SHA256SUMS"


class BundleError(Exception):
    """A bundle that cannot be trusted; the message names the offending file."""


def schema_path() -> Path:
    return resources.contracts_dir() / "bundle" / "bundle.schema.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Entry:
    """One stream in a replica's transcript: a (prompt, seed) request in one context."""

    key: str  # "p<prompt index>-s<seed>"
    prompt_index: int
    seed: int
    repeat: int  # 0 first run, 1 back to back, 2 after other prompts ran in between
    context: str  # "first" | "back-to-back" | "interleaved"
    task_id: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)  # {"text", "token_id"}
    finish_reason: str = ""
    tokens_out: int = 0
    error: str = ""

    def stream(self) -> list[StreamToken]:
        return [StreamToken(t["text"], int(t.get("token_id", -1))) for t in self.tokens]

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "prompt_index": self.prompt_index, "seed": self.seed,
                "repeat": self.repeat, "context": self.context, "task_id": self.task_id,
                "tokens": self.tokens, "finish_reason": self.finish_reason,
                "tokens_out": self.tokens_out, "error": self.error}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        return cls(**d)


def _ref(replica: str, e: Entry) -> dict[str, Any]:
    return {"replica": replica, "key": e.key, "repeat": e.repeat}


def compare_entries(left_replica: str, left: Entry, right_replica: str, right: Entry,
                    kind: str) -> dict[str, Any]:
    """One comparison record: identical, or where the streams first differ (DET-1019)."""
    # req: DET-1012, DET-1019
    # Byte-identical texts are identical whatever the relay's coalescing did to event boundaries
    # (DET-1004); otherwise the comparator names the first diverging token.
    same_text = "".join(t["text"] for t in left.tokens) == "".join(t["text"] for t in right.tokens)
    div = None if same_text else first_divergence(left.stream(), right.stream())
    same_end = (left.finish_reason, left.error) == (right.finish_reason, right.error)
    record: dict[str, Any] = {"kind": kind, "left": _ref(left_replica, left),
                              "right": _ref(right_replica, right),
                              "identical": same_text and same_end, "divergence": None}
    if div is not None:
        record["divergence"] = {
            "index": div.index,
            "left_text": None if div.left is None else div.left.text,
            "right_text": None if div.right is None else div.right.text,
            "left_token_id": None if div.left is None else div.left.token_id,
            "right_token_id": None if div.right is None else div.right.token_id,
            "describe": div.describe()}
    elif not same_end:
        ends = f"{left.finish_reason or left.error!r} vs {right.finish_reason or right.error!r}"
        record["divergence"] = {"index": len(left.tokens), "left_text": None, "right_text": None,
                                "left_token_id": None, "right_token_id": None,
                                "describe": f"same tokens, different end: {ends}"}
    return record


def plan_comparisons(transcripts: dict[str, list[Entry]]) -> list[dict[str, Any]]:
    """Every comparison the suite makes: each first run against the first replica's (cross-replica),
    and on each replica each repeat against that replica's first run."""
    replicas = sorted(transcripts)
    firsts = {r: {e.key: e for e in transcripts[r] if e.repeat == 0} for r in replicas}
    out: list[dict[str, Any]] = []
    base = replicas[0]
    for key, left in firsts[base].items():
        for other in replicas[1:]:
            right = firsts[other].get(key)
            if right is not None:
                out.append(compare_entries(base, left, other, right, "cross-replica"))
    for r in replicas:
        for e in transcripts[r]:
            if e.repeat > 0 and e.key in firsts[r]:
                out.append(compare_entries(r, firsts[r][e.key], r, e, e.context))
    for i, c in enumerate(out):
        c["id"] = i
    return out


def _summary(manifest: dict[str, Any], comparisons: Sequence[dict[str, Any]]) -> str:
    # req: DET-1020
    differing = [c for c in comparisons if not c["identical"]]
    by_kind: dict[str, list[int]] = {}
    for c in comparisons:
        stats = by_kind.setdefault(c["kind"], [0, 0])
        stats[0] += 1
        stats[1] += 0 if c["identical"] else 1
    lines = [
        f"# Determinism run {manifest['run_id']}", "",
        f"- verdict: **{'PASS' if not differing else 'FAIL'}**",
        f"- target: {manifest['target']['kind']} {manifest['target']['address']}",
        f"- engine: {manifest['engine']} {manifest['engine_version']}, model {manifest['model']} "
        f"({manifest['model_digest']})",
        f"- seeds: {len(manifest['seeds'])}, prompts: {len(manifest['prompts'])}, "
        f"replicas: {len(manifest['replicas'])}, max_tokens: {manifest['max_tokens']}",
        f"- sampler: {json.dumps(manifest['sampler'], sort_keys=True)}",
        f"- comparisons: {len(comparisons)}, differing: {len(differing)}", "",
        "| comparison kind | compared | differing |", "|---|---|---|",
        *(f"| {k} | {v[0]} | {v[1]} |" for k, v in sorted(by_kind.items())), ""]
    if differing:
        lines += ["## First divergence of each differing pair", ""]
        for c in differing:
            lines.append(f"- #{c['id']} {c['kind']}: {c['left']['replica']} {c['left']['key']} "
                         f"(repeat {c['left']['repeat']}) vs {c['right']['replica']} {c['right']['key']} "
                         f"(repeat {c['right']['repeat']}): {c['divergence']['describe']}")
        lines.append("")
    return "\n".join(lines)


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_bundle(root: Path, manifest: dict[str, Any], transcripts: dict[str, list[Entry]],
                 replica_info: dict[str, dict[str, Any]]) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``root/<run_id>/`` completely, passing or not (DET-1022); returns (dir, comparisons)."""
    # req: DET-1015, DET-1021, DET-1022
    out = root / manifest["run_id"]
    out.mkdir(parents=True, exist_ok=False)
    comparisons = plan_comparisons(transcripts)
    differing = sum(1 for c in comparisons if not c["identical"])
    files = []
    for replica, entries in sorted(transcripts.items()):
        rel = f"transcripts/{replica}.json"
        _dump(out / rel, {"replica": replica, **replica_info.get(replica, {}),
                          "entries": [e.as_json() for e in entries]})
        files.append(rel)
    manifest = {**manifest, "transcripts": files, "comparisons_file": "comparisons.json",
                "result": {"comparisons": len(comparisons), "differing": differing, "passed": differing == 0}}
    jsonschema.validate(manifest, json.loads(schema_path().read_text(encoding="utf-8")))
    _dump(out / "comparisons.json", comparisons)
    (out / "summary.md").write_text(_summary(manifest, comparisons), encoding="utf-8")
    _dump(out / "manifest.json", manifest)
    listed = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    (out / SUMS).write_text("".join(f"{sha256_file(out / rel)}  {rel}\n" for rel in listed), encoding="utf-8")
    return out, comparisons


@dataclass
class VerifyReport:
    bundle: Path
    manifest: dict[str, Any]
    comparisons: list[dict[str, Any]]

    @property
    def differing(self) -> list[dict[str, Any]]:
        return [c for c in self.comparisons if not c["identical"]]


def _read_json(bundle: Path, rel: str) -> Any:
    try:
        return json.loads((bundle / rel).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{rel}: unreadable: {exc}") from exc


def _check_sums(bundle: Path) -> None:
    # req: DET-1023, DET-1024, DET-1025
    sums = bundle / SUMS
    if not sums.is_file():
        raise BundleError(f"{SUMS}: missing")
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise BundleError(f"{SUMS}: line {n} is not '<sha256>  <file>'")
        listed[rel] = digest
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {SUMS}
    for rel in sorted(set(listed) - present):
        raise BundleError(f"{rel}: listed in {SUMS} but missing")
    for rel in sorted(present - set(listed)):
        raise BundleError(f"{rel}: present but not listed in {SUMS}")
    for rel, digest in sorted(listed.items()):
        if sha256_file(bundle / rel) != digest:
            raise BundleError(f"{rel}: sha256 does not match {SUMS} (the file was altered)")


def _same(recorded: Iterable[dict[str, Any]], recomputed: Iterable[dict[str, Any]]) -> str | None:
    rec, new = list(recorded), list(recomputed)
    if len(rec) != len(new):
        return f"{len(rec)} recorded comparisons, {len(new)} recomputed"
    for a, b in zip(rec, new, strict=True):
        if a != b:
            return f"comparison #{a.get('id')} disagrees with the transcripts it names"
    return None


def verify_bundle(bundle: Path) -> VerifyReport:
    """Recheck a bundle offline; raise BundleError naming the first file that fails."""
    _check_sums(bundle)
    manifest = _read_json(bundle, "manifest.json")
    try:
        jsonschema.validate(manifest, json.loads(schema_path().read_text(encoding="utf-8")))
    except jsonschema.ValidationError as exc:
        # req: DET-1017
        raise BundleError(f"manifest.json: does not match the bundle schema: {exc.message}") from exc
    transcripts: dict[str, list[Entry]] = {}
    for rel in manifest["transcripts"]:
        doc = _read_json(bundle, rel)
        try:
            transcripts[doc["replica"]] = [Entry.from_json(e) for e in doc["entries"]]
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{rel}: not a transcript: {exc!r}") from exc
    recorded = _read_json(bundle, manifest["comparisons_file"])
    recomputed = plan_comparisons(transcripts)
    problem = _same(recorded, recomputed)
    if problem:
        raise BundleError(f"{manifest['comparisons_file']}: {problem}")
    differing = sum(1 for c in recomputed if not c["identical"])
    result = manifest["result"]
    if (result["comparisons"], result["differing"], result["passed"]) != (len(recomputed), differing,
                                                                          differing == 0):
        raise BundleError("manifest.json: result does not match the recomputed comparisons")
    return VerifyReport(bundle, manifest, recomputed)
