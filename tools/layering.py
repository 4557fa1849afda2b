"""Import-layering check (``python -m llorch.tools.layering``), over the source with ``ast``.

Rules (docs/ARCHITECTURE.md, DECISIONS D2/D3):

- ``llorch.harness`` never imports ``llorch.reference``: the harness reaches a target only over the
  wire, so it certifies third parties exactly as it certifies the reference.
- ``llorch.reference`` never imports ``llorch.harness``.
- ``llorch.reference.core`` is pure: it imports only itself, ``llorch.reference.errors`` and
  standard-library modules that do no I/O (no asyncio, sockets, files, processes, grpc, ...).
- Only ``llorch.reference.server.grpc``, ``llorch.reference.adapters.remote``,
  ``llorch.reference.adapters.serve`` and ``llorch.harness`` import ``llorch.proto`` (and test
  packages, ``*.tests``, which need a gRPC client to test the server).

Every import counts: module level, inside functions, under ``TYPE_CHECKING``, and
``importlib.import_module``/``__import__`` with a literal name. Exit 1 lists each violation as
``file:line: message``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# import name -> folder of a source checkout (setup.py's mapping)
PACKAGES = {"llorch.reference": "reference", "llorch.harness": "harness", "llorch.tools": "tools",
            "llorch": "llorch"}

PURE_STDLIB = frozenset({
    "__future__", "abc", "array", "bisect", "collections", "contextlib", "contextvars", "copy",
    "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "hmac",
    "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics", "string",
    "textwrap", "types", "typing", "typing_extensions", "uuid", "weakref", "secrets", "zlib", "base64",
    "struct", "unicodedata", "collections.abc", "time",
})
IO_MODULES = frozenset({
    "asyncio", "socket", "socketserver", "ssl", "select", "selectors", "sqlite3", "subprocess",
    "multiprocessing", "threading", "concurrent", "os", "io", "pathlib", "shutil", "tempfile", "glob",
    "fileinput", "signal", "logging", "urllib", "http", "grpc", "httpx", "fastapi", "starlette",
    "uvicorn", "anyio", "requests", "aiohttp", "sys", "builtins", "pickle", "shelve", "dbm",
})
PROTO_IMPORTERS = ("llorch.reference.server.grpc", "llorch.reference.adapters.remote",
                   "llorch.reference.adapters.serve", "llorch.harness", "llorch.proto")


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``tree``; relative imports resolved.
    ``from pkg import name`` also yields ``pkg.name`` when that is one of the ``known`` modules."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield node.lineno, f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_dynamic_import(node.func)):
            yield node.lineno, node.args[0].value


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


# req: HAR-1054, CTR-1806
def _rules(module: str, imported: str) -> Iterator[str]:
    if _within(module, "llorch.harness") and _within(imported, "llorch.reference"):
        yield f"llorch.harness must not import llorch.reference (imports {imported})"
    if _within(module, "llorch.reference") and _within(imported, "llorch.harness"):
        yield f"llorch.reference must not import llorch.harness (imports {imported})"
    if (_within(imported, "llorch.proto") and not any(_within(module, p) for p in PROTO_IMPORTERS)
            and "tests" not in module.split(".")):
        yield (f"only the gRPC server, the remote/serve adapters and the harness may import llorch.proto "
               f"(imports {imported})")
    if _within(module, "llorch.reference.core"):
        top = imported.split(".")[0]
        # the parents count too, as in `from llorch.reference import errors`
        if (_within(imported, "llorch.reference.core") or _within(imported, "llorch.reference.errors")
                or imported in {"llorch", "llorch.reference"}):
            return
        if top == "llorch":
            yield f"llorch.reference.core must import only core and errors (imports {imported})"
        elif top in IO_MODULES:
            yield f"llorch.reference.core must do no I/O (imports {imported})"
        elif imported not in PURE_STDLIB and top not in PURE_STDLIB:
            yield f"llorch.reference.core imports {imported}, outside core, errors and pure stdlib"


def check_file(path: Path, module: str, display: str, known: set[str]) -> list[Violation]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {Violation(display, line, message)
             for line, imported in _imports(tree, module, path.name == "__init__.py", known)
             for message in _rules(module, imported)}
    return sorted(found)


def _module_name(package: str, base: Path, path: Path) -> str:
    rel = path.relative_to(base).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def _sources(roots: dict[str, Path]) -> Iterator[tuple[Path, str]]:
    for package, base in sorted(roots.items()):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if package == "llorch" and rel.parts and rel.parts[0] in {"proto", *PACKAGES.values()}:
                continue  # generated stubs; and sub-roots mapped separately
            if "__pycache__" in rel.parts:
                continue
            yield path, _module_name(package, base, path)


def check(roots: dict[str, Path]) -> list[Violation]:
    """Violations in the given source roots (import name → folder)."""
    files = list(_sources(roots))
    known = {module for _, module in files}
    stubs = roots["llorch"] / "proto" if "llorch" in roots else None
    if stubs is not None and stubs.is_dir():
        known.update(_module_name("llorch", roots["llorch"], p) for p in stubs.glob("*.py"))
    found: list[Violation] = []
    for path, module in files:
        found += check_file(path, module, _display(path, roots), known)
    return sorted(found)


def _display(path: Path, roots: dict[str, Path]) -> str:
    anchor = roots.get("llorch", next(iter(roots.values()))).parent
    try:
        return str(path.relative_to(anchor))
    except ValueError:
        return str(path)


def checkout_roots(root: Path) -> dict[str, Path]:
    return {name: root / folder for name, folder in PACKAGES.items() if (root / folder).is_dir()}


def installed_roots() -> dict[str, Path]:
    """The folders the import system resolves (an installed wheel or an editable checkout)."""
    roots: dict[str, Path] = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llorch.tools.layering",
                                     description="Check the import layering of the llorch sources.")
    parser.add_argument("--root", type=Path, help="a source checkout (default: the importable llorch)")
    args = parser.parse_args(argv)
    roots = checkout_roots(args.root) if args.root else installed_roots()
    if not roots:
        print("error: no llorch sources found", file=sys.stderr)
        return 2
    violations = check(roots)
    for violation in violations:
        print(violation)
    files = len(list(_sources(roots)))
    print(f"layering: {len(violations)} violation(s) in {files} file(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
