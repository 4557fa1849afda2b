"""The determinism suite on the real model: it must catch the prompt cache's history dependence
(a failing, complete, verifiable bundle) and pass once the engine resets per request (D19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from llorch.harness.determinism.cli import bundle, determinism
from llorch.harness.e2e.realmodel import real_model_unavailable

pytestmark = pytest.mark.skipif(real_model_unavailable() is not None,
                                reason=f"no real-engine target: {real_model_unavailable()}")


def run(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    result = CliRunner().invoke(determinism, ["--real-model", "--seeds", "8", "--max-tokens", "32",
                                              "--out", str(tmp_path), "--json", *extra])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, Path(json.loads(result.output.strip().splitlines()[-1])["bundle"])


@pytest.mark.req("DET-1011", "DET-1900", "DET-1012", "DET-1022", "DET-1901")
def test_prompt_cache_on_is_caught_by_the_repeats(tmp_path: Path) -> None:
    code, path = run(tmp_path, "--prompt-cache")
    comps = json.loads((path / "comparisons.json").read_text())
    differing = [c for c in comps if not c["identical"]]
    assert code == 1 and differing, "history dependence with the prompt cache on went unnoticed"
    assert all(c["divergence"]["left_text"] is not None or c["divergence"]["right_text"] is not None
               for c in differing), "a difference that is not a token difference"
    verdict = CliRunner().invoke(bundle, ["verify", str(path), "--json"])
    assert verdict.exit_code == 3 and json.loads(verdict.output)["intact"] is True


@pytest.mark.req("DET-1001", "DET-1002", "DET-1008")
def test_reset_per_request_gives_identical_streams(tmp_path: Path) -> None:
    code, path = run(tmp_path)
    summary = (path / "summary.md").read_text()
    assert code == 0, summary
    manifest = json.loads((path / "manifest.json").read_text())
    assert all("reset_per_request=True" in b for b in manifest["build_info"].values())
    assert CliRunner().invoke(bundle, ["verify", str(path)]).exit_code == 0
