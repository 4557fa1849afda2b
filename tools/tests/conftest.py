"""Shared fixtures of the tools' tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

TreeFactory = Callable[[dict[str, str]], Path]


@pytest.fixture
def spec_tree(tmp_path: Path) -> TreeFactory:
    """Build a scratch repository (specs/, requirements/, code and tests) from ``{path: text}``;
    texts are dedented, so tests can write them inline."""

    def make(files: dict[str, str]) -> Path:
        for rel, text in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        (tmp_path / "requirements").mkdir(exist_ok=True)
        return tmp_path

    return make
