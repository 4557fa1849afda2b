"""`llorch determinism` and `llorch bundle verify`, end to end over the wire.

One run against the embedded reference (mock replicas) gives the passing bundle the tamper tests
copy; a wire-level faulty target whose streams depend on request history gives the failing one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner, Result
from llorch.harness.determinism.bundle import schema_path, sha256_file
from llorch.harness.determinism.cli import bundle, determinism
from llorch.harness.faulty.history_dependent import HistoryDependentTarget

SEEDS = 3


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(determinism if args[0] == "determinism" else bundle, list(args[1:]))


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def passing_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    result = run_cli("determinism", "--seeds", str(SEEDS), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["passed"] is True
    return only_run(out)


@pytest.fixture(scope="module")
def failing_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("failing")
    with HistoryDependentTarget() as target:
        result = run_cli("determinism", target.url, "--seeds", str(SEEDS), "--out", str(out), "--json")
    assert result.exit_code == 1, result.output
    return only_run(out)


@pytest.mark.req("DET-1013", "DET-1015", "DET-1016", "DET-1017", "DET-1021")
def test_embedded_run_writes_a_complete_schema_valid_bundle(passing_bundle: Path) -> None:
    files = sorted(p.relative_to(passing_bundle).as_posix() for p in passing_bundle.rglob("*") if p.is_file())
    manifest = json.loads((passing_bundle / "manifest.json").read_text())
    assert set(files) == {"SHA256SUMS", "comparisons.json", "manifest.json", "summary.md",
                          *manifest["transcripts"]}
    jsonschema.validate(manifest, json.loads(schema_path().read_text()))
    assert manifest["target"]["kind"] == "embedded-mock" and manifest["seeds"] == list(range(SEEDS))
    assert manifest["model_digest"].startswith("sha256:") and manifest["host"]["cpu_count"] >= 1
    assert "accelerator" in manifest and manifest["engine_version"]
    sums = (passing_bundle / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ", 1)[1] for line in sums) == sorted(set(files) - {"SHA256SUMS"})


@pytest.mark.req("DET-1010", "DET-1011", "DET-1900", "DET-1018")
def test_each_seed_runs_on_each_replica_first_back_to_back_and_interleaved(passing_bundle: Path) -> None:
    manifest = json.loads((passing_bundle / "manifest.json").read_text())
    assert len(manifest["transcripts"]) == len(manifest["replicas"]) == 2
    for rel in manifest["transcripts"]:
        doc = json.loads((passing_bundle / rel).read_text())
        seen = {(e["seed"], e["context"]) for e in doc["entries"]}
        assert seen == {(s, c) for s in range(SEEDS) for c in ("first", "back-to-back", "interleaved")}
        for e in doc["entries"]:
            assert e["tokens"] and e["finish_reason"] == "length"
            assert e["tokens_out"] == sum(t["count"] for t in e["tokens"])
            assert all({"text", "token_id"} <= set(t) for t in e["tokens"])


@pytest.mark.req("DET-1023")
def test_verify_accepts_the_untouched_bundle(passing_bundle: Path) -> None:
    result = run_cli("bundle", "verify", str(passing_bundle), "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["intact"] and verdict["differing"] == 0 and verdict["comparisons"] == SEEDS * 5


@pytest.mark.req("DET-1024")
@pytest.mark.parametrize("victim", ["manifest.json", "comparisons.json", "summary.md", "transcripts/"])
def test_one_altered_byte_is_rejected_naming_the_file(passing_bundle: Path, tmp_path: Path,
                                                      victim: str) -> None:
    copy = Path(shutil.copytree(passing_bundle, tmp_path / "b"))
    transcript = sorted((copy / "transcripts").glob("*.json"))[0]
    path = transcript if victim.endswith("/") else copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = run_cli("bundle", "verify", str(copy))
    assert result.exit_code == 1
    assert path.relative_to(copy).as_posix() in result.output and "altered" in result.output


@pytest.mark.req("DET-1025")
def test_missing_unlisted_and_rehashed_forgery_are_rejected(passing_bundle: Path, tmp_path: Path) -> None:
    missing = Path(shutil.copytree(passing_bundle, tmp_path / "missing"))
    (missing / "summary.md").unlink()
    assert "summary.md: listed" in run_cli("bundle", "verify", str(missing)).output

    extra = Path(shutil.copytree(passing_bundle, tmp_path / "extra"))
    (extra / "notes.txt").write_text("x")
    result = run_cli("bundle", "verify", str(extra))
    assert result.exit_code == 1 and "notes.txt: present but not listed" in result.output

    # A forger flips a comparison to "identical" and recomputes SHA256SUMS: verify recomputes it.
    forged = Path(shutil.copytree(passing_bundle, tmp_path / "forged"))
    comps = json.loads((forged / "comparisons.json").read_text())
    comps[0]["identical"] = False
    (forged / "comparisons.json").write_text(json.dumps(comps))
    lines = [f"{sha256_file(forged / rel)}  {rel}" for rel in
             (ln.split("  ", 1)[1] for ln in (forged / "SHA256SUMS").read_text().splitlines())]
    (forged / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    result = run_cli("bundle", "verify", str(forged))
    assert result.exit_code == 1 and "comparisons.json" in result.output and "disagrees" in result.output


@pytest.mark.req("DET-1012", "DET-1019", "DET-1020", "DET-1022", "DET-1900", "DET-1901")
def test_history_dependent_target_fails_with_a_complete_bundle(failing_bundle: Path) -> None:
    comps = json.loads((failing_bundle / "comparisons.json").read_text())
    differing = [c for c in comps if not c["identical"]]
    # Back-to-back repeats hit the "cache"; first runs and interleaved repeats do not.
    assert differing and {c["kind"] for c in differing} == {"back-to-back"}
    d = differing[0]["divergence"]
    assert d["left_text"] != d["right_text"] and 0 <= d["index"] < 16
    summary = (failing_bundle / "summary.md").read_text()
    assert "FAIL" in summary and f"differing: {len(differing)}" in summary
    assert "| back-to-back |" in summary and "| interleaved |" in summary and "| cross-replica |" in summary
    assert f"streams diverge at token {d['index']}" in summary
    result = run_cli("bundle", "verify", str(failing_bundle), "--json")
    assert result.exit_code == 3 and json.loads(result.output)["intact"] is True


@pytest.mark.req("DET-1014")
def test_too_few_replicas_is_a_setup_error() -> None:
    with HistoryDependentTarget(replicas=("only-r0",)) as target:
        result = run_cli("determinism", target.url, "--replicas", "2", "--seeds", "1", "--out", "unused")
    assert result.exit_code == 2 and "1 ready replicas" in result.output


@pytest.mark.req("DET-1026")
def test_replay_reruns_and_reports_first_divergence(passing_bundle: Path) -> None:
    ok = run_cli("bundle", "verify", str(passing_bundle), "--replay", "embedded", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["replay"] == "identical"


@pytest.mark.req("DET-1026")
def test_replay_on_a_history_dependent_target_differs(tmp_path: Path) -> None:
    out = tmp_path / "clean"
    with HistoryDependentTarget(history=False) as clean:
        assert run_cli("determinism", clean.url, "--seeds", "2", "--out", str(out)).exit_code == 0
    with HistoryDependentTarget(history=True) as faulty:
        result = run_cli("bundle", "verify", str(only_run(out)), "--replay", faulty.url, "--json")
    verdict = json.loads(result.output)
    assert result.exit_code == 1 and verdict["replay"] == "differs"
    first = verdict["first_divergence"]
    assert first["left_text"] != first["right_text"] and first["index"] >= 0


@pytest.mark.req("DET-1027")
def test_replay_refuses_a_target_with_another_model_digest(passing_bundle: Path) -> None:
    with HistoryDependentTarget(history=False, digest="sha256:" + "f" * 64) as other:
        result = run_cli("bundle", "verify", str(passing_bundle), "--replay", other.url)
    assert result.exit_code == 1 and "model_digest" in result.output
