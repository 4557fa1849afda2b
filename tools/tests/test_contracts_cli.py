"""``llorch contracts compat`` and ``cut-baseline``: the version rule, JSON output, git refs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from llorch.tools.contracts.cli import contracts
from llorch.tools.contracts.version import Version, judge

from llorch import resources

PROTO = resources.contracts_dir() / "proto"


def _checkout(root: Path, version: str) -> Path:
    """A minimal checkout with a baseline cut from the real protos at ``version``."""
    (root / "pyproject.toml").write_text("[project]\nname = 'llorch'\n")
    shutil.copytree(PROTO, root / "contracts" / "proto")
    shutil.copytree(PROTO, root / "contracts" / "baseline" / "proto")
    (root / "contracts" / "VERSION").write_text(f"{version}\n")
    (root / "contracts" / "baseline" / "VERSION").write_text(f"{version}\n")
    return root


def _drop_policy_label(root: Path) -> None:
    proto = root / "contracts" / "proto" / "common.proto"
    lines = [line for line in proto.read_text().splitlines(keepends=True) if "policy_label = 6;" not in line]
    assert len(lines) == len(proto.read_text().splitlines()) - 1
    proto.write_text("".join(lines))


def _compat(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(contracts, ["compat", "--root", str(root), *args])
    return result.exit_code, result.output


@pytest.mark.req("CTR-1015", "CTR-1800")
def test_breaking_change_fails_until_the_major_version_is_bumped(tmp_path: Path) -> None:
    root = _checkout(tmp_path, "1.3")
    assert _compat(root)[0] == 0
    _drop_policy_label(root)
    code, output = _compat(root)
    assert code == 1
    assert "BREAKING   proto         llorch.v1.ErrorDetail.policy_label: field 6 removed" in output
    assert "need a major version bump" in output
    (root / "contracts" / "VERSION").write_text("1.4\n")
    assert _compat(root)[0] == 1
    (root / "contracts" / "VERSION").write_text("2.0\n")
    code, output = _compat(root)
    assert code == 0 and "allowed by the major bump 1.3 -> 2.0" in output


@pytest.mark.req("CTR-1800")
def test_version_rule() -> None:
    one, two = Version(1, 0), Version(2, 0)
    assert judge(0, one, one).ok and judge(3, one, two).ok and judge(1, None, one).ok
    assert not judge(1, one, Version(1, 9)).ok
    assert not judge(0, two, one).ok  # a version never goes backwards
    assert not judge(0, one, None).ok


@pytest.mark.req("CTR-1016")
def test_json_output_lists_each_change(tmp_path: Path) -> None:
    root = _checkout(tmp_path, "1.0")
    _drop_policy_label(root)
    code, output = _compat(root, "--json")
    report = json.loads(output)
    assert code == 1 and report["ok"] is False and report["breaking"] == 1
    assert report["changes"] == [{"surface": "proto", "where": "llorch.v1.ErrorDetail.policy_label",
                                  "what": "field 6 removed", "kind": "breaking"}]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                    "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)


@pytest.mark.req("CTR-1011")
def test_against_a_git_ref(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = _checkout(tmp_path, "1.0")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "v1")
    _drop_policy_label(root)
    code, output = _compat(root, "--against", "HEAD")
    assert code == 1 and "against git ref HEAD" in output and "field 6 removed" in output
    code, output = _compat(root, "--against", "no-such-ref")
    assert code == 2 and "no-such-ref" in output


@pytest.mark.req("CTR-1805")
def test_cut_baseline_needs_a_version_bump_and_no_drift(tmp_path: Path) -> None:
    root = _checkout(tmp_path, "1.0")
    runner = CliRunner()
    assert runner.invoke(contracts, ["regen", "--root", str(root)]).exit_code == 0
    result = runner.invoke(contracts, ["cut-baseline", "--root", str(root)])
    assert result.exit_code == 2 and "must be above the baseline's (1.0)" in result.output
    (root / "contracts" / "VERSION").write_text("1.1\n")
    stub = root / "llorch" / "proto" / "common_pb2.py"
    stub.write_text(stub.read_text() + "# edited\n")
    result = runner.invoke(contracts, ["cut-baseline", "--root", str(root)])
    assert result.exit_code == 2 and "llorch/proto/common_pb2.py: differs" in result.output
    assert runner.invoke(contracts, ["regen", "--root", str(root)]).exit_code == 0
    _drop_policy_label(root)
    assert runner.invoke(contracts, ["regen", "--root", str(root)]).exit_code == 0
    result = runner.invoke(contracts, ["cut-baseline", "--root", str(root)])
    assert result.exit_code == 1 and "need a major version bump" in result.output
    (root / "contracts" / "VERSION").write_text("2.0\n")
    result = runner.invoke(contracts, ["cut-baseline", "--root", str(root)])
    assert result.exit_code == 0, result.output
    baseline = root / "contracts" / "baseline"
    assert (baseline / "VERSION").read_text() == "2.0\n"
    assert "policy_label" not in (baseline / "proto" / "common.proto").read_text()
    assert _compat(root)[0] == 0
