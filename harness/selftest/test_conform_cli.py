"""``llorch conform`` usage and setup errors exit 2 before any suite runs (D10)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llorch.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["conform", *args])
    return result.exit_code, result.output


@pytest.mark.req("HAR-1048", "HAR-1036")
def test_known_failing_entry_without_reason_is_a_usage_error(tmp_path: Path) -> None:
    kf = tmp_path / "known-failing.txt"
    kf.write_text("harness/contract/test_streams.py::test_x\n")
    code, output = run("adapter", "grpc://127.0.0.1:9", "--known-failing", str(kf),
                       "--report-dir", str(tmp_path))
    assert code == 2, output
    assert "known-failing.txt:1" in output


@pytest.mark.req("HAR-1038", "HAR-1036")
def test_config_with_an_unknown_field_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "conform.yaml"
    cfg.write_text("target: grpc://127.0.0.1:9\nprofiles: [core]\nno_such_field: 1\n")
    code, output = run("--config", str(cfg), "orchestrator", "--report-dir", str(tmp_path))
    assert code == 2, output
    assert "no_such_field" in output


@pytest.mark.req("HAR-1036")
def test_unreachable_or_malformed_target_is_a_setup_error(tmp_path: Path) -> None:
    code, output = run("orchestrator", "http://not-grpc", "--report-dir", str(tmp_path))
    assert code == 2, output
    code, output = run("adapter", "grpc://127.0.0.1:9", "--report-dir", str(tmp_path))
    assert code == 2, output


@pytest.mark.req("HAR-1037")
def test_token_comes_only_from_the_named_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFORM_NO_SUCH_TOKEN", raising=False)
    code, output = run("orchestrator", "grpc://127.0.0.1:9", "--http", "http://127.0.0.1:9",
                       "--token-env", "CONFORM_NO_SUCH_TOKEN", "--report-dir", str(tmp_path))
    assert code == 2 and "CONFORM_NO_SUCH_TOKEN" in output, output


@pytest.mark.parametrize("nodeid", ["harness/openai/test_x.py::test_y[chat]",
                                    "harness/schema/test_api.py::test_fuzz[/v1/tasks]"])
def test_failure_line_shows_bracketed_node_ids_verbatim(nodeid: str) -> None:
    from llorch.harness.conform.cli import failure_line
    from llorch.harness.conform.runner import TestRecord
    from rich.console import Console

    console = Console(record=True, width=400, color_system=None)
    console.print(failure_line(TestRecord(nodeid, "failed", ["OAI-1001"], message="got [/b] back\nmore")))
    assert console.export_text().strip() == f"FAILED {nodeid} [OAI-1001]: got [/b] back"
