"""Regeneration and the drift check, on temp copies of the checkout's contract sources."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from llorch.tools.contracts import ContractError, regen
from llorch.tools.contracts.cli import contracts
from llorch.tools.contracts.export import (
    EXPORTERS,
    Exporter,
    ValidationFailed,
    render_json,
    validate_json_schema,
    validate_openapi,
)
from llorch.tools.contracts.regen import Drift, check_drift, find_root, regenerate, regenerate_in_place


def _checkout_root() -> Path | None:
    """This package's checkout, or (for a regular install run by nox) the one in the cwd."""
    try:
        return find_root()
    except ContractError:
        return None


ROOT = _checkout_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="needs a source checkout (regeneration writes into one)")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A minimal checkout: the proto sources, the committed stubs and exported files, a marker."""
    assert ROOT is not None
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'llorch'\n")
    shutil.copytree(ROOT / "contracts" / "proto", tmp_path / "contracts" / "proto")
    shutil.copytree(ROOT / "llorch" / "proto", tmp_path / "llorch" / "proto",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for exporter in EXPORTERS:
        if (ROOT / exporter.path).is_file():
            (tmp_path / exporter.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / exporter.path, tmp_path / exporter.path)
    return tmp_path


def _stub_drifts(root: Path) -> list[Drift]:
    return [d for d in check_drift(root)[1] if d.path.startswith("llorch/proto/")]


@pytest.mark.req("CTR-1008")
def test_planted_edit_of_a_stub_is_named(checkout: Path) -> None:
    assert _stub_drifts(checkout) == []
    stub = checkout / "llorch" / "proto" / "common_pb2.pyi"
    stub.write_text(stub.read_text().replace("retriable", "retryable", 1))
    stale = checkout / "llorch" / "proto" / "old_pb2.py"
    stale.write_text("# a stub whose .proto is gone\n")
    drifts = _stub_drifts(checkout)
    assert [(d.path, d.kind) for d in drifts] == [("llorch/proto/common_pb2.pyi", "changed"),
                                                   ("llorch/proto/old_pb2.py", "stale")]
    assert any("retryable" in line for line in drifts[0].diff)
    result = CliRunner().invoke(contracts, ["check", "--root", str(checkout)])
    assert result.exit_code == 1
    assert "DRIFT llorch/proto/common_pb2.pyi: differs from a fresh regeneration" in result.output
    assert ("DRIFT llorch/proto/old_pb2.py: is committed but regeneration no longer produces it"
            in result.output)


@pytest.mark.req("CTR-1008")
def test_a_proto_edit_without_regen_drifts_every_stub_of_that_file(checkout: Path) -> None:
    proto = checkout / "contracts" / "proto" / "common.proto"
    proto.write_text(proto.read_text() + "\nmessage Added {}\n")
    assert {d.path for d in _stub_drifts(checkout)} == {"llorch/proto/common_pb2.py",
                                                        "llorch/proto/common_pb2.pyi"}


@pytest.mark.req("CTR-1010")
def test_regen_repairs_drift_and_is_deterministic(checkout: Path, tmp_path: Path) -> None:
    stub = checkout / "llorch" / "proto" / "common_pb2.py"
    stub.write_text("# hand-edited\n")
    _, changed = regenerate_in_place(checkout)
    assert [p for p in changed if p.startswith("llorch/")] == ["llorch/proto/common_pb2.py"]
    assert _stub_drifts(checkout) == []
    assert regenerate_in_place(checkout)[1] == []
    first, second = tmp_path / "one", tmp_path / "two"
    regenerate(checkout, first)
    regenerate(checkout, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


@pytest.mark.req("CTR-1009")
def test_the_checkout_itself_has_no_drift() -> None:
    assert ROOT is not None
    steps, drifts = check_drift(ROOT)
    assert [d.message() for d in drifts] == []
    assert steps[0].status == "written"


def _fake(name: str, target: str) -> Exporter:
    return Exporter(name, f"contracts/{name}/doc.json", target, f"{name} not importable yet",
                    validate_json_schema)


@pytest.mark.req("CTR-1801")
def test_unavailable_exporter_is_skipped_unless_its_file_is_committed(checkout: Path,
                                                                      monkeypatch: Any) -> None:
    missing = _fake("future", "llorch.reference.does_not_exist:document")
    monkeypatch.setattr(regen, "EXPORTERS", (missing,))
    steps, drifts = check_drift(checkout)
    assert steps[-1].status == "skipped" and steps[-1].reason.startswith("future not importable yet")
    assert not (checkout / missing.path).exists() and drifts == []
    (checkout / missing.path).parent.mkdir(parents=True)
    (checkout / missing.path).write_text("{}\n")
    assert [(d.path, d.kind) for d in check_drift(checkout)[1]] == [(missing.path, "unverifiable")]


def bad_schema() -> dict[str, Any]:
    return {"type": 12}


def test_an_invalid_exported_document_fails_regeneration(checkout: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(regen, "EXPORTERS", (_fake("bad", f"{__name__}:bad_schema"),))
    with pytest.raises(ValidationFailed, match="invalid JSON Schema"):
        regenerate(checkout, checkout)


def test_rendering_is_canonical() -> None:
    assert render_json({"b": [2, 1], "a": "é"}) == '{\n  "a": "é",\n  "b": [\n    2,\n    1\n  ]\n}\n'


def test_stubs_from_another_protoc_say_so(checkout: Path) -> None:
    stub = checkout / "llorch" / "proto" / "common_pb2.py"
    text, count = re.subn(r"^# Protobuf Python Version: \S+$", "# Protobuf Python Version: 0.0.0",
                          stub.read_text(), flags=re.M)
    assert count == 1
    stub.write_text(text)
    [drift] = _stub_drifts(checkout)
    assert drift.path == "llorch/proto/common_pb2.py"
    assert drift.detail.startswith("committed by protoc 0.0.0, regenerated by ")


@pytest.mark.req("CTR-1004", "CTR-1005")
def test_committed_exports_validate() -> None:
    assert ROOT is not None
    validate_openapi(json.loads((ROOT / "contracts" / "openapi" / "openapi.json").read_text()))
    schema = ROOT / "contracts" / "config-schema" / "config.schema.json"
    validate_json_schema(json.loads(schema.read_text()))
