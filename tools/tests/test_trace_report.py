"""``llorch trace report`` and ``llorch trace review`` on scratch trees: statuses, suspect links,
waivers, the gate's exit codes, JUnit input, the three output files and report.json's schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from llorch.tools.cli import trace
from llorch.tools.spec import build_maps, write_maps
from llorch.tools.trace import TraceInputError, build_report

from llorch import resources

SPEC = """
# Queue

## Rules

- [QUE-1001] {core} The queue MUST keep order.
- [QUE-1002] {core} An overload answer SHOULD carry a retry hint.
- [QUE-1003] {cancel} Cancelling a queued task MUST NOT dispatch it.
- [QUE-1004] {core} Streams MUST be identical on a GPU.
- [QUE-1005] {core} The queue MUST report its depth.

## Retired

- [QUE-1006] {retired} folded into QUE-1001.
"""

TESTS = """
import pytest


@pytest.mark.req("QUE-1001")
def test_order():
    pass


@pytest.mark.req("QUE-1002")
def test_hint():
    pass


@pytest.mark.req("QUE-1004")
def test_gpu():
    pass


@pytest.mark.req("QUE-1005")
def test_depth():
    pass
"""
T = "harness/suite/test_queue.py::"


@pytest.fixture
def repo(spec_tree) -> Path:
    root = spec_tree({"specs/queue.md": SPEC, "harness/suite/test_queue.py": TESTS})
    write_maps(root, build_maps(root))
    return root


def _test(name: str, outcome: str, reqs: list[str], **extra: Any) -> dict[str, Any]:
    return {"nodeid": T + name, "outcome": outcome, "reqs": reqs, "duration_s": 0.01,
            "skip_reason": extra.get("skip_reason"), "message": extra.get("message"),
            "needs": extra.get("needs", [])}


def _results(root: Path, tests: list[dict[str, Any]], gpu: str | None = None) -> Path:
    path = root / "out" / "results" / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "schema": "llorch-results/1", "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:01+00:00",
        "environment": {"python": "3.11.7", "platform": "Linux", "host": "ci", "llorch": "0.1.0",
                        "gpu": gpu, "target": {"kind": "orchestrator", "engine": "mock"}},
        "tests": tests}))
    return path.parent


GOOD = [
    _test("test_order", "passed", ["QUE-1001"]),
    _test("test_hint", "failed", ["QUE-1002"], message="AssertionError: no hint"),
    _test("test_gpu", "skipped", ["QUE-1004"], skip_reason="gpu: no accelerator visible", needs=["gpu"]),
    _test("test_depth", "passed", ["QUE-1005"]),
]


def _waive(root: Path, *entries: dict[str, Any]) -> None:
    text = yaml.safe_dump({"waivers": list(entries)}, sort_keys=False)
    (root / "requirements/waivers.yaml").write_text(text)


def _status(report, rid: str) -> str:
    return next(r["status"] for r in report.requirements if r["id"] == rid)


@pytest.mark.req("HAR-1019", "HAR-1021")
def test_statuses(repo: Path) -> None:
    tests = [*GOOD[:3], _test("test_depth", "skipped", ["QUE-1005"], skip_reason="not today")]
    report = build_report([_results(repo, tests)], None, root=repo)
    assert {r["id"]: r["status"] for r in report.requirements} == {
        "QUE-1001": "passed", "QUE-1002": "failed", "QUE-1003": "untested", "QUE-1004": "skipped",
        "QUE-1005": "skipped"}
    assert [r["id"] for r in report.retired] == ["QUE-1006"]


@pytest.mark.req("HAR-1021")
def test_one_failing_test_fails_the_requirement(repo: Path) -> None:
    tests = [GOOD[0], {**GOOD[0], "nodeid": T + "test_other", "outcome": "error"}]
    assert _status(build_report([_results(repo, tests)], None, root=repo), "QUE-1001") == "failed"


@pytest.mark.req("HAR-1020")
def test_report_shows_tests_outcomes_code_and_skip_reason(repo: Path) -> None:
    (repo / "reference").mkdir()
    (repo / "reference/queue.py").write_text("def push():  # req: QUE-1001\n    pass\n")
    write_maps(repo, build_maps(repo))
    report = build_report([_results(repo, GOOD)], repo / "out/trace", root=repo)
    one = next(r for r in report.requirements if r["id"] == "QUE-1001")
    assert (one["level"], one["profile"], one["text"]) == ("must", "core", "The queue MUST keep order.")
    assert one["code"] == [{"file": "reference/queue.py", "name": "push"}]
    assert [(t["nodeid"], [r["outcome"] for r in t["runs"]]) for t in one["tests"]] == [
        (T + "test_order", ["passed"])]
    gpu = next(r for r in report.requirements if r["id"] == "QUE-1004")
    assert gpu["skip_reasons"] == ["gpu: no accelerator visible"]
    page = (repo / "out/trace/index.html").read_text()
    assert "reference/queue.py" in page and "gpu: no accelerator visible" in page and T + "test_order" in page


@pytest.mark.req("HAR-1022", "HAR-1023")
def test_review_then_text_change_makes_link_suspect(repo: Path) -> None:
    runs = [_results(repo, GOOD)]
    first = build_report(runs, None, root=repo)
    assert next(r for r in first.requirements if r["id"] == "QUE-1001")["tests"][0]["review"] == "unreviewed"
    assert _status(first, "QUE-1001") == "passed"

    result = CliRunner().invoke(trace, ["review", "QUE-1001", "--root", str(repo)])
    assert result.exit_code == 0, result.output
    reviewed = build_report(runs, None, root=repo)
    assert next(r for r in reviewed.requirements if r["id"] == "QUE-1001")["tests"][0]["review"] == "reviewed"

    spec = repo / "specs/queue.md"
    spec.write_text(spec.read_text().replace("keep order", "keep FIFO order"))
    write_maps(repo, build_maps(repo))
    changed = build_report(runs, None, root=repo)
    row = next(r for r in changed.requirements if r["id"] == "QUE-1001")
    assert row["tests"][0]["review"] == "suspect" and row["status"] == "suspect"

    assert CliRunner().invoke(trace, ["review", "QUE-1001", "--root", str(repo)]).exit_code == 0
    assert _status(build_report(runs, None, root=repo), "QUE-1001") == "passed"


def test_review_rejects_unlinked_test(repo: Path) -> None:
    result = CliRunner().invoke(trace, ["review", "QUE-1001", "--test", T + "test_hint", "--root", str(repo)])
    assert result.exit_code == 2 and "not linked to QUE-1001" in result.output


@pytest.mark.req("HAR-1030")
def test_waiver_of_passing_requirement_warns(repo: Path) -> None:
    _waive(repo, {"id": "QUE-1001", "reason": "was flaky", "issue": 12},
           {"id": "QUE-1003", "reason": "cancel lands later", "issue": 13})
    report = build_report([_results(repo, GOOD)], None, root=repo)
    assert _status(report, "QUE-1001") == "passed" and _status(report, "QUE-1003") == "waived"
    assert any(w.startswith("QUE-1001: waived (issue #12)") and "waiver can be removed" in w
               for w in report.warnings)
    assert not any("QUE-1003" in w for w in report.warnings)


@pytest.mark.req("HAR-1029")
@pytest.mark.parametrize("entry", [
    {"id": "QUE-1003", "reason": "later"}, {"id": "QUE-1003", "issue": 3}, {"reason": "x", "issue": 3}])
def test_incomplete_waiver_rejected_naming_it(repo: Path, entry: dict[str, Any]) -> None:
    _waive(repo, entry)
    with pytest.raises(TraceInputError, match=re.escape(repr(entry))):
        build_report([_results(repo, GOOD)], None, root=repo)


@pytest.mark.req("HAR-1031")
def test_waiver_of_undefined_id_fails(repo: Path) -> None:
    _waive(repo, {"id": "QUE-1999", "reason": "typo", "issue": 3})
    result = CliRunner().invoke(trace, ["report", "--results", str(_results(repo, GOOD)),
                                        "--out", str(repo / "out/trace"), "--root", str(repo)])
    assert result.exit_code == 2 and "QUE-1999" in result.output


def _gate(repo: Path, tests: list[dict[str, Any]], *args: str, gpu: str | None = None) -> Any:
    return CliRunner().invoke(trace, ["report", "--results", str(_results(repo, tests, gpu)),
                                      "--out", str(repo / "out/trace"), "--gate", "--root", str(repo), *args])


@pytest.mark.req("HAR-1027")
def test_gate_fails_on_untested_must(repo: Path) -> None:
    result = _gate(repo, GOOD)
    assert result.exit_code == 1
    assert "gate: QUE-1003 (cancel) untested: no test is linked" in result.output


@pytest.mark.req("HAR-1027")
@pytest.mark.parametrize(("outcome", "extra", "reason"), [
    ("failed", {}, "failed: " + T + "test_depth"),
    ("error", {}, "failed: " + T + "test_depth"),
    ("skipped", {"skip_reason": "not today"}, "skipped without waiver: not today"),
])
def test_gate_fails_on_must(repo: Path, outcome: str, extra: dict[str, Any], reason: str) -> None:
    _waive(repo, {"id": "QUE-1003", "reason": "later", "issue": 3})
    tests = [*GOOD[:3], _test("test_depth", outcome, ["QUE-1005"], **extra)]
    result = _gate(repo, tests)
    assert result.exit_code == 1
    assert f"gate: QUE-1005 (core) {reason}" in result.output


@pytest.mark.req("HAR-1028", "HAR-1032")
def test_gate_passes_with_failed_should_waived_must_and_gpu_skip(repo: Path) -> None:
    _waive(repo, {"id": "QUE-1003", "reason": "later", "issue": 3})
    result = _gate(repo, GOOD)
    assert result.exit_code == 0, result.output
    assert "gate passed" in result.output


@pytest.mark.req("HAR-1032")
def test_gpu_skip_on_a_gpu_machine_is_not_declared(repo: Path) -> None:
    _waive(repo, {"id": "QUE-1003", "reason": "later", "issue": 3})
    result = _gate(repo, GOOD, gpu="NVIDIA H100")
    assert result.exit_code == 1 and "gate: QUE-1004 (core) skipped without waiver" in result.output


@pytest.mark.req("HAR-1026")
def test_profile_restricts_summary_and_gate(repo: Path) -> None:
    result = _gate(repo, GOOD, "--profile", "core", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[: result.output.rindex("}") + 1])["summary"]
    assert summary["total"] == 4 and list(summary["by_profile"]) == ["core"]
    assert _gate(repo, GOOD, "--profile", "cancel").exit_code == 1
    assert _gate(repo, GOOD, "--profile", "nosuch").exit_code == 2


@pytest.mark.req("HAR-1017", "HAR-1024", "HAR-1025")
def test_outputs_and_report_json_schema(repo: Path) -> None:
    out = repo / "out/trace"
    result = CliRunner().invoke(trace, ["report", "--results", str(_results(repo, GOOD)), "--out", str(out),
                                        "--root", str(repo)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"index.html", "report.md", "report.json"}
    data = json.loads((out / "report.json").read_text())
    schema = json.loads((resources.contracts_dir() / "report" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    assert data["runs"][0]["environment"]["host"] == "ci"
    assert "NVIDIA" not in (out / "index.html").read_text()
    assert "host ci" in (out / "index.html").read_text() and "host ci" in (out / "report.md").read_text()


@pytest.mark.req("HAR-1024")
def test_schema_rejects_an_unknown_status(repo: Path) -> None:
    report = build_report([_results(repo, GOOD)], None, root=repo).to_json()
    report["requirements"][0]["status"] = "green"
    schema = json.loads((resources.contracts_dir() / "report" / "report.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, schema)


@pytest.mark.req("HAR-1018")
def test_html_is_self_contained_and_lists_every_requirement(repo: Path) -> None:
    build_report([_results(repo, GOOD)], repo / "out/trace", root=repo)
    page = (repo / "out/trace/index.html").read_text()
    for rid in ("QUE-1001", "QUE-1002", "QUE-1003", "QUE-1004", "QUE-1005"):
        assert f'<tr id="{rid}"' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert "By profile" in page and "By area" in page and 'id="q"' in page


@pytest.mark.req("HAR-1700")
def test_junit_results_use_static_links(repo: Path) -> None:
    xml = repo / "out/junit/run.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="harness.suite.test_queue" name="test_order" time="0.1"/>'
        '<testcase classname="harness.suite.test_queue" name="test_hint" time="0.1">'
        '<failure message="AssertionError: no hint">trace</failure></testcase>'
        '<testcase classname="harness.suite.test_queue" name="test_depth" time="0.1">'
        '<skipped type="pytest.skip" message="not today">skip</skipped></testcase>'
        "</testsuite></testsuites>")
    report = build_report([xml.parent], None, root=repo)
    assert [run["kind"] for run in report.runs] == ["junit"]
    statuses = [_status(report, r) for r in ("QUE-1001", "QUE-1002", "QUE-1005")]
    assert statuses == ["passed", "failed", "skipped"]


def test_junit_beside_results_json_is_the_same_run(repo: Path) -> None:
    folder = _results(repo, GOOD)
    (folder / "run.xml").write_text('<testsuites><testsuite name="pytest"/></testsuites>')
    assert [run["kind"] for run in build_report([folder], None, root=repo).runs] == ["results-json"]


@pytest.mark.req("HAR-1702")
def test_invalid_results_are_a_usage_error(repo: Path) -> None:
    bad = repo / "out/bad.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text(json.dumps({"schema": "llorch-results/1", "tests": [{"nodeid": "x", "outcome": "green"}]}))
    result = CliRunner().invoke(trace, ["report", "--results", str(bad), "--root", str(repo),
                                        "--out", str(repo / "out/trace")])
    assert result.exit_code == 2 and "does not match results.schema.json at tests/0/outcome" in result.output
