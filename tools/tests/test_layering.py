"""The import-layering check on planted violations in a temp source tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from llorch.tools import layering

HARNESS = "llorch.harness must not import llorch.reference"


def _tree(root: Path, files: dict[str, str]) -> Path:
    base = {
        "llorch/__init__.py": "", "llorch/proto/__init__.py": "", "llorch/proto/common_pb2.py": "",
        "reference/__init__.py": "", "reference/errors.py": "", "reference/core/__init__.py": "",
        "reference/core/types.py": "import enum\nfrom dataclasses import dataclass, field\n"
                                   "from llorch.reference.errors import ErrorInfo\n",
        "reference/runtime/__init__.py": "", "reference/server/__init__.py": "",
        "reference/server/grpc/__init__.py": "", "reference/adapters/__init__.py": "",
        "harness/__init__.py": "", "tools/__init__.py": "",
    }
    for rel, text in {**base, **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _violations(tmp_path: Path, files: dict[str, str]) -> list[str]:
    return [str(v) for v in layering.check(layering.checkout_roots(_tree(tmp_path, files)))]


def test_clean_tree_passes(tmp_path: Path) -> None:
    assert _violations(tmp_path, {
        "reference/server/grpc/servicer.py": "from llorch.proto import common_pb2\n",
        "reference/core/queue.py": "import heapq\nfrom . import types\nfrom ..errors import ErrorInfo\n"
                                   "from llorch.reference import errors\n",
        "harness/clients.py": "import llorch.proto.common_pb2\n",
    }) == []


@pytest.mark.req("HAR-1054")
def test_harness_importing_reference_is_named(tmp_path: Path) -> None:
    assert _violations(tmp_path, {
        "harness/suite.py": "import os\n\n\ndef f():\n    from llorch.reference.core import types\n",
        "harness/dyn.py": "import importlib\nimportlib.import_module('llorch.reference.runtime')\n",
    }) == [
        f"harness/dyn.py:2: {HARNESS} (imports llorch.reference.runtime)",
        f"harness/suite.py:5: {HARNESS} (imports llorch.reference.core)",
        f"harness/suite.py:5: {HARNESS} (imports llorch.reference.core.types)",
    ]


@pytest.mark.req("CTR-1806")
def test_reference_importing_harness_is_named(tmp_path: Path) -> None:
    assert _violations(tmp_path, {"reference/runtime/api.py": "\nfrom llorch import harness\n"}) == [
        "reference/runtime/api.py:2: llorch.reference must not import llorch.harness "
        "(imports llorch.harness)",
    ]


@pytest.mark.req("CTR-1806")
@pytest.mark.parametrize(("source", "message"), [
    ("import asyncio", "llorch.reference.core must do no I/O (imports asyncio)"),
    ("from os import path", "llorch.reference.core must do no I/O (imports os)"),
    ("import sqlite3", "llorch.reference.core must do no I/O (imports sqlite3)"),
    ("import grpc", "llorch.reference.core must do no I/O (imports grpc)"),
    ("from ..runtime import api", "llorch.reference.core must import only core and errors "
                                  "(imports llorch.reference.runtime)"),
    ("import pydantic", "llorch.reference.core imports pydantic, outside core, errors and pure stdlib"),
])
def test_impure_core_is_named(tmp_path: Path, source: str, message: str) -> None:
    found = _violations(tmp_path, {"reference/core/queue.py": f'"""doc"""\n{source}\n'})
    assert found[0] == f"reference/core/queue.py:2: {message}"


@pytest.mark.req("CTR-1806")
def test_only_the_grpc_edges_import_proto(tmp_path: Path) -> None:
    assert _violations(tmp_path, {
        "reference/adapters/remote.py": "from llorch.proto import common_pb2\n",
        "reference/adapters/serve.py": "from llorch.proto import common_pb2\n",
        "reference/adapters/mock.py": "from llorch.proto import common_pb2\n",
        "tools/x.py": "from llorch import proto\n",
    }) == [
        "reference/adapters/mock.py:1: only the gRPC server, the remote/serve adapters and the harness "
        "may import llorch.proto (imports llorch.proto)",
        "reference/adapters/mock.py:1: only the gRPC server, the remote/serve adapters and the harness "
        "may import llorch.proto (imports llorch.proto.common_pb2)",
        "tools/x.py:1: only the gRPC server, the remote/serve adapters and the harness "
        "may import llorch.proto (imports llorch.proto)",
    ]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = _tree(tmp_path / "clean", {})
    assert layering.main(["--root", str(clean)]) == 0
    dirty = _tree(tmp_path / "dirty", {"harness/x.py": "import llorch.reference\n"})
    assert layering.main(["--root", str(dirty)]) == 1
    assert "harness/x.py:1: llorch.harness must not import llorch.reference" in capsys.readouterr().out


def test_the_project_itself_is_layered() -> None:
    assert [str(v) for v in layering.check(layering.installed_roots())] == []
