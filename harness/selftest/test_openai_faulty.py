"""The OpenAI suite proves its power: a correct small server passes it, and each faulty target (one
broken rule each, ``harness/faulty/openai_*.py``) is failed with the ID of the rule it breaks.

The suite runs in-process through the conform runner, against servers on loopback threads; each
faulty target runs only the suite module that owns its rule, so the whole file takes seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from llorch.harness.conform.runner import RunResult, run_suites
from llorch.harness.faulty.openai_base import MODEL, load, serve_in_thread
from llorch.harness.openai.cli import openai as openai_cmd
from llorch.harness.openai.cli import worst_exit

# fault module -> (suite module that owns the rule, IDs its failures must name)
FAULTS: dict[str, tuple[str, set[str]]] = {
    "no_done": ("test_streaming", {"OAI-1011"}),
    "usage_missing": ("test_streaming", {"OAI-1021"}),
    "usage_with_choices": ("test_streaming", {"OAI-1021"}),
    "error_object": ("test_errors", {"OAI-1038"}),
    "error_detail": ("test_errors", {"OAI-1038"}),
    "error_500": ("test_errors", {"OAI-1045"}),
    "finish_missing": ("test_streaming", {"OAI-1018"}),
    "finish_repeated": ("test_streaming", {"OAI-1018"}),
    "max_tokens_ignored": ("test_limits", {"OAI-1026", "OAI-1027"}),
}


def _run(url: str, *extra: str) -> RunResult:
    return run_suites(["openai"], [f"--openai-target={url}", f"--openai-model={MODEL}", *extra])


def _failed(result: RunResult) -> dict[str, list[str]]:
    return {r.nodeid: r.reqs for r in result.records.values() if r.outcome in ("failed", "error")}


@pytest.fixture(scope="module")
def control_url() -> Iterator[str]:
    with serve_in_thread(load("base")) as url:
        yield url


@pytest.mark.req("HAR-1055", "HAR-1042")
def test_control_passes_whole_suite(control_url: str) -> None:
    result = _run(control_url)
    assert result.collected > 50, f"the OpenAI suite collected only {result.collected} tests"
    assert _failed(result) == {}, "the correct server failed the suite"
    unsupported = [r for r in result.records.values() if r.outcome == "skipped"
                   and "unsupported: " in (r.message or "")]
    tools = [r for r in result.records.values() if "test_tools.py" in r.nodeid]
    assert tools and all(r in unsupported for r in tools), \
        "tools refused with a 400 envelope must be reported as unsupported, not passed or failed"


@pytest.mark.req("HAR-1057", "HAR-1056", "HAR-1055")
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faulty_target_fails_with_its_id(fault: str) -> None:
    module, expected = FAULTS[fault]
    with serve_in_thread(load(fault)) as url:
        result = _run(url, "-k", module)
    failed = _failed(result)
    cited = {rid for reqs in failed.values() for rid in reqs}
    assert expected <= cited, f"{fault}: expected failures citing {sorted(expected)}, got {failed}"
    messages = [r.message or "" for r in result.records.values() if r.outcome == "failed"]
    assert all("--- request" in m or "--- response" in m for m in messages), \
        f"{fault}: a failure came without its request/response evidence"


@pytest.mark.req("HAR-1055")
def test_auth_checked_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAI_SELFTEST_TOKEN", "selftest-" + "k" * 16)
    with serve_in_thread(load("base", token="selftest-" + "k" * 16)) as url:
        result = _run(url, "--token-env=OAI_SELFTEST_TOKEN", "-k", "test_bad_key or test_models_list")
    outcomes = sorted(r.outcome for r in result.records.values())
    assert outcomes == ["passed"] * 3, {r.nodeid: (r.outcome, r.message) for r in result.records.values()}


@pytest.mark.req("HAR-1040", "HAR-1036")
def test_cli_matrix_and_worst_exit(control_url: str, tmp_path: Path) -> None:
    with serve_in_thread(load("max_tokens_ignored")) as faulty_url:
        res = CliRunner().invoke(openai_cmd, [control_url, faulty_url, "--report-dir", str(tmp_path),
                                              "-k", "test_limits"])
    assert res.exit_code == 1, res.output
    matrix = json.loads((tmp_path / "matrix.json").read_text())
    verdicts = {t["url"]: t["exit_code"] for t in matrix["targets"]}
    assert verdicts == {control_url: 0, faulty_url: 1}
    row = next(r for r in matrix["requirements"] if r["id"] == "OAI-1026")
    assert row["targets"] == {control_url: "passed", faulty_url: "failed"}
    assert (tmp_path / "matrix.md").read_text().count("OAI-1026") == 1


@pytest.mark.req("HAR-1040", "HAR-1046", "HAR-1036")
def test_known_failures_per_target(control_url: str, tmp_path: Path) -> None:
    known = tmp_path / "known-failing.txt"
    known.write_text("harness/openai/test_limits.py::test_max_tokens_* this server ignores max_tokens\n")
    with serve_in_thread(load("max_tokens_ignored")) as faulty_url:
        res = CliRunner().invoke(openai_cmd, [control_url, faulty_url, "--report-dir", str(tmp_path / "r"),
                                              "--target-known-failing", f"{faulty_url}={known}",
                                              "-k", "test_limits"])
    assert res.exit_code == 3, res.output
    matrix = json.loads((tmp_path / "r" / "matrix.json").read_text())
    assert {t["url"]: t["verdict"] for t in matrix["targets"]} == {control_url: "certified",
                                                                   faulty_url: "known-failures"}


@pytest.mark.req("HAR-1043", "HAR-1042")
def test_unsupported_fails_a_claimed_must(control_url: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(openai_cmd, [control_url, "--profile", "openai-tools", "--report-dir",
                                          str(tmp_path), "-k", "test_tools"])
    cert = json.loads((tmp_path / "certification.json").read_text())
    assert cert["unsupported"], "refused tools were not listed as unsupported features"
    assert cert["per_profile"].get("openai-tools") == "failed", cert["per_profile"]
    assert res.exit_code == 1, res.output


@pytest.mark.req("HAR-1040")
@pytest.mark.parametrize(("codes", "worst"), [([0, 0], 0), ([0, 3], 3), ([3, 1, 0], 1), ([1, 2, 3], 2)])
def test_worst_exit_code(codes: list[int], worst: int) -> None:
    assert worst_exit(codes) == worst
