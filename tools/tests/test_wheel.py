"""A regular (non-editable) install works (DECISIONS D2): build the wheel from a copy of the
checkout, install it into a scratch venv, import every ``llorch`` module from there (a module that needs an
optional engine must import it lazily) and find
the shipped data (specs, requirement maps, contracts) through ``llorch.resources``.

The build runs on a copy so that it leaves no ``build/`` or egg-info churn in the checkout, and
without build isolation (setuptools comes from the dev environment), so it works offline. The
scratch venv gets the wheel with ``--no-deps`` and sees the dev environment's dependencies
through a ``.pth`` line; editable-install hooks there are not run, so only the wheel provides
``llorch``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from llorch.tools.contracts import ContractError
from llorch.tools.contracts.regen import find_root


def _checkout_root() -> Path | None:
    """This package's checkout, or (for a regular install run by nox) the one in the cwd."""
    try:
        return find_root()
    except ContractError:
        return None


ROOT = _checkout_root()

PROBE = r"""
import importlib, json, pkgutil, sys
import llorch
from llorch import resources
failed = {}
imported = []
def walk_error(name):
    failed[name] = "walk_packages could not import it"
for info in pkgutil.walk_packages(llorch.__path__, "llorch.", onerror=walk_error):
    leaf = info.name.rsplit(".", 1)[-1]
    # __main__ runs the CLI; pytest modules (test_*, conftest) need a running pytest to import
    if leaf != "__main__" and not leaf.startswith("test_") and leaf != "conftest":
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "llorch": llorch.__file__, "imported": imported, "failed": failed,
    "specs": sorted(p.name for p in resources.specs_dir().glob("*.md")),
    "specs_dir": str(resources.specs_dir()),
    "requirements": sorted(p.name for p in resources.requirements_dir().glob("*.yaml")),
    "contracts": sorted(str(p.relative_to(resources.contracts_dir()))
                        for p in resources.contracts_dir().rglob("*") if p.is_file()),
    "contracts_dir": str(resources.contracts_dir()),
    "repo_root": str(resources.repo_root()),
    "files": sorted(str(p.relative_to(llorch.__path__[0])) for p in __import__("pathlib").Path(
        llorch.__path__[0]).rglob("*") if p.is_file() and "__pycache__" not in p.parts),
}))
"""


def _sources(root: Path) -> list[str]:
    """The checkout's files as git sees them (tracked and untracked, minus ignored)."""
    command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    out = subprocess.run(command, check=True, capture_output=True).stdout.decode()
    return [name for name in out.split("\0") if name and (root / name).is_file()]


CODE_FOLDERS = {"llorch": "", "reference": "reference/", "harness": "harness/", "tools": "tools/"}


def _installed_name(name: str) -> str | None:
    """Where a checkout file of a code folder lands inside the installed ``llorch`` package; None
    for files that do not ship (tests run from the checkout, developer READMEs)."""
    folder, _, rest = name.partition("/")
    parts = rest.split("/")
    if folder not in CODE_FOLDERS or not rest or "tests" in parts or parts[-1] == "README.md":
        return None
    return CODE_FOLDERS[folder] + rest


@pytest.mark.req("CTR-1807")
@pytest.mark.skipif(ROOT is None, reason="needs a source checkout to build from")
def test_wheel_installs_and_imports(tmp_path: Path) -> None:
    assert ROOT is not None
    if importlib.util.find_spec("build") is None or shutil.which("git") is None:
        pytest.skip("the build tool (python -m build) or git is missing")
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is missing")
    src = tmp_path / "src"
    sources = _sources(ROOT)
    for name in sources:
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)]
    subprocess.run(build, check=True, capture_output=True)
    [wheel] = dist.glob("llorch-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "-q", "--offline", "--no-deps", "--python", str(python), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "llorch-dev-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    run = subprocess.run([str(python), "-I", "-c", PROBE], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    probe = json.loads(run.stdout)
    assert Path(probe["llorch"]).is_relative_to(venv), probe["llorch"]
    assert probe["failed"] == {}
    assert {"llorch.reference", "llorch.harness", "llorch.tools", "llorch.proto",
            "llorch.reference.core"} <= set(probe["imported"])
    assert probe["repo_root"] == "None"
    assert Path(probe["specs_dir"]).is_relative_to(venv)
    assert Path(probe["contracts_dir"]).is_relative_to(venv)
    assert probe["specs"] == sorted(p.name for p in (ROOT / "specs").glob("*.md"))
    assert probe["requirements"] == sorted(p.name for p in (ROOT / "requirements").glob("*.yaml"))
    assert {"proto/common.proto", "proto/orchestrator.proto", "proto/worker_adapter.proto",
            "VERSION"} <= set(probe["contracts"])
    shipped = set(probe["files"])
    missing = [name for name in sources if _installed_name(name) and _installed_name(name) not in shipped]
    assert not missing, f"missing from the wheel (package_data in setup.py?): {missing}"
    cli = subprocess.run([str(python), "-I", "-m", "llorch", "--help"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "contracts" in cli.stdout, cli.stderr
