"""Where the shipped data lives: specs, requirement maps and contracts.

They are package data of the wheel (see setup.py), so a regular install finds them inside
``llorch/``; an editable install or a source checkout finds them at the repository root.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent


def _dir(name: str) -> Path:
    installed = _PACKAGE_ROOT / name
    if installed.is_dir():
        return installed
    checkout = _PACKAGE_ROOT.parent / name
    if checkout.is_dir() and (_PACKAGE_ROOT.parent / "pyproject.toml").is_file():
        return checkout
    spec = importlib.util.find_spec(f"llorch.{name}")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise RuntimeError(f"llorch is installed without its data folder {name!r}; reinstall it")


def specs_dir() -> Path:
    return _dir("specs")


def requirements_dir() -> Path:
    return _dir("requirements")


def contracts_dir() -> Path:
    return _dir("contracts")


def repo_root() -> Path | None:
    """The source checkout this package runs from, if any (None for a regular install)."""
    root = _PACKAGE_ROOT.parent
    return root if (root / "pyproject.toml").is_file() and (root / "specs").is_dir() else None


def contract_version() -> str:
    """The version of the wire contracts (``contracts/VERSION``, MAJOR.MINOR), which the HTTP
    gateway reports as its OpenAPI ``info.version``."""
    return (contracts_dir() / "VERSION").read_text().strip()
