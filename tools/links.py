"""Static collection of the links from tests, BDD scenarios and code to requirement IDs (D7, D8).

Nothing is imported or executed: Python is read with :mod:`ast` (``req`` markers on functions and
classes, ``pytestmark`` at module or class level, ``scenario``/``scenarios`` bindings) and
:mod:`tokenize` (``# req: ID`` comments, so a string that merely contains the text is ignored);
``.feature`` files are read for ``@ID`` tags; other text files for ``# req:`` / ``// req:``.

Which folders are scanned, and which are skipped and why, is ``requirements/scan.yaml``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from llorch.tools.spec import ID_LIKE, Problem, check_id

SCAN_CONFIG = "requirements/scan.yaml"
DEFAULT_ROOTS = ("harness", "reference", "tools", "llorch")
TEXT_SUFFIXES = (".proto", ".sh", ".toml", ".cfg")

# "# req: QUE-1003, QUE-1004 — optional prose after the IDs"
_COMMENT_RE = re.compile(r"(?:#|//)\s*req:\s*(?P<ids>" + ID_LIKE + r"(?:\s*,?\s*" + ID_LIKE + r")*)")
_TAG_RE = re.compile(r"@(" + ID_LIKE + r")\b")
_SCENARIO_KW = ("Scenario:", "Scenario Outline:", "Scenario Template:", "Example:")
_PY_NAME_RE = re.compile(r"\W")
_LEADING_DIGITS_RE = re.compile(r"^\d+_*")


@dataclass(frozen=True)
class Citation:
    """One place that cites a requirement.

    kind ``test``: target is the pytest node id. kind ``scenario``: file is the feature file, target
    the scenario name, nodeid the pytest-bdd test it becomes (None when no module binds it).
    kind ``code``: target is the enclosing ``Class.function`` (``<module>`` at top level).
    kind ``marker``: a ``req`` marker outside a test module; checked, not linked.
    """

    req: str
    kind: str
    file: str
    line: int
    target: str
    nodeid: str | None = None


@dataclass(frozen=True)
class ScanConfig:
    roots: tuple[str, ...]
    skip: tuple[str, ...]


def load_config(root: Path) -> ScanConfig:
    """``requirements/scan.yaml``: ``roots`` to scan and ``skip`` entries ``{path, reason}``."""
    path = root / SCAN_CONFIG
    if not path.is_file():
        return ScanConfig(DEFAULT_ROOTS, ())
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    skip = []
    for entry in data.get("skip") or []:
        if not isinstance(entry, dict) or not entry.get("path") or not entry.get("reason"):
            raise ValueError(f"{SCAN_CONFIG}: every skip entry needs a path and a reason: {entry!r}")
        skip.append(str(entry["path"]).strip("/"))
    return ScanConfig(tuple(data.get("roots") or DEFAULT_ROOTS), tuple(skip))


def _skipped(rel: str, cfg: ScanConfig) -> bool:
    return any(rel == s or rel.startswith(s + "/") for s in cfg.skip)


def iter_files(root: Path, cfg: ScanConfig) -> Iterator[tuple[Path, str]]:
    for top in cfg.roots:
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root).as_posix()
            if not _skipped(rel, cfg):
                yield path, rel


def collect(root: Path) -> tuple[list[Citation], list[Problem]]:
    """Every citation under the configured roots, and the malformed ones as problems."""
    cfg = load_config(root)
    cites: list[Citation] = []
    problems: list[Problem] = []
    bindings: dict[str, list[tuple[str, str | None, str, int]]] = {}
    features: list[tuple[Path, str]] = []
    for path, rel in iter_files(root, cfg):
        if path.suffix == ".py":
            c, p, b = _scan_python(path, rel, root)
            cites += c
            problems += p
            for feature, entries in b.items():
                bindings.setdefault(feature, []).extend(entries)
        elif path.suffix == ".feature":
            features.append((path, rel))
        elif path.suffix in TEXT_SUFFIXES:
            c, p = _scan_text(path, rel)
            cites += c
            problems += p
    for path, rel in features:
        c, p = _scan_feature(path, rel, bindings.get(rel, []))
        cites += c
        problems += p
    return cites, problems


def _ids(raw: str, rel: str, line: int, problems: list[Problem]) -> list[str]:
    out = []
    for value in re.split(r"[,\s]+", raw.strip()):
        if not value:
            continue
        bad = check_id(value)
        if bad:
            problems.append(Problem(rel, line, bad))
        else:
            out.append(value)
    return out


# --- Python -----------------------------------------------------------------------------------

def _req_marks(node: ast.expr) -> Iterator[ast.Call]:
    """``pytest.mark.req(...)`` / ``mark.req(...)`` calls anywhere in a decorator or pytestmark
    value (so ``pytest.param(..., marks=pytest.mark.req(...))`` counts too)."""
    for item in ast.walk(node):
        if (isinstance(item, ast.Call) and isinstance(item.func, ast.Attribute)
                and item.func.attr == "req" and _is_mark(item.func.value)):
            yield item


def _is_mark(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "mark") or (
        isinstance(node, ast.Attribute) and node.attr == "mark")


def _constants(tree: ast.Module) -> dict[str, list[ast.Constant]]:
    """Module-level ``NAME = "ID"`` / ``NAME = ("ID", …)`` so ``req(*NAME)`` can be resolved."""
    out: dict[str, list[ast.Constant]] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = stmt.value
            items = value.elts if isinstance(value, ast.Tuple | ast.List) else [value]
            if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
                out[stmt.targets[0].id] = [i for i in items if isinstance(i, ast.Constant)]
    return out


def _mark_ids(call: ast.Call, rel: str, problems: list[Problem],
              names: dict[str, list[ast.Constant]]) -> list[str]:
    out = []
    for arg in call.args:
        ref = arg.value if isinstance(arg, ast.Starred) else arg
        consts: list[ast.Constant] | None
        if isinstance(ref, ast.Constant) and isinstance(ref.value, str):
            consts = [ref]
        elif isinstance(ref, ast.Name):
            consts = names.get(ref.id)
        else:
            consts = None
        if consts is None:
            problems.append(Problem(rel, arg.lineno, "req marker arguments must be string literals or "
                                                     "module-level constants of them, so links can be "
                                                     "collected statically"))
            continue
        for const in consts:
            out += _ids(str(const.value), rel, arg.lineno, problems)
    return out


def _pytestmark(body: list[ast.stmt]) -> list[ast.Call]:
    out: list[ast.Call] = []
    for stmt in body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) and stmt.value:
                out += _req_marks(stmt.value)
    return out


def _str_arg(call: ast.Call, index: int | None, keyword: str) -> str | None:
    node: ast.expr | None = call.args[index] if index is not None and len(call.args) > index else None
    for kw in call.keywords:
        if kw.arg == keyword:
            node = kw.value
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _ini_features_base(root: Path) -> str | None:
    """pytest-bdd's ``bdd_features_base_dir`` ini option (relative to the rootdir), if set."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    with pyproject.open("rb") as fh:
        ini = tomllib.load(fh).get("tool", {}).get("pytest", {}).get("ini_options", {})
    value = ini.get("bdd_features_base_dir")
    return str(value) if value else None


def _feature_rel(module_dir: Path, root: Path, path: str, base: str | None) -> str | None:
    """Where pytest-bdd finds ``path``: under ``features_base_dir`` when given, else under the
    ini option's folder, else beside the module."""
    if base is None:
        ini = _ini_features_base(root)
        start = root / ini if ini else module_dir
    else:
        start = root / base  # pytest-bdd joins it to the working directory: the rootdir in practice
    target = (start / path).resolve()
    try:
        return target.relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def python_name(scenario: str) -> str:
    """The test function name pytest-bdd's ``scenarios()`` gives a scenario (its make_python_name)."""
    return "test_" + _LEADING_DIGITS_RE.sub("", _PY_NAME_RE.sub("", scenario.replace(" ", "_"))).lower()


def _scan_python(path: Path, rel: str, root: Path) -> tuple[
        list[Citation], list[Problem], dict[str, list[tuple[str, str | None, str, int]]]]:
    """Markers, code comments and BDD bindings of one module.

    Bindings map a feature file (repo-relative) to ``(module, scenario name or None for all,
    test function name, line)`` entries.
    """
    source = path.read_text(encoding="utf-8")
    problems: list[Problem] = []
    cites: list[Citation] = []
    bindings: dict[str, list[tuple[str, str | None, str, int]]] = {}
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as exc:
        return [], [Problem(rel, exc.lineno or 1, f"cannot parse: {exc.msg}")], {}

    names = _constants(tree)

    # pytest collects test_*.py / *_test.py; a marker elsewhere (a shared suite module) is checked
    # for undefined IDs, but its node ids belong to the modules that import it
    kind = "test" if path.name.startswith("test_") or path.stem.endswith("_test") else "marker"

    def test_cites(ids: list[str], line: int, nodeid: str) -> None:
        cites.extend(Citation(i, kind, rel, line, nodeid) for i in ids)

    def walk(body: list[ast.stmt], prefix: str, inherited: list[tuple[list[str], int]]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                own = [(_mark_ids(c, rel, problems, names), c.lineno)
                       for d in node.decorator_list for c in _req_marks(d)]
                _bdd_decorators(node, path, root, rel, bindings)
                if node.name.startswith("test"):
                    for ids, line in inherited + own:
                        test_cites(ids, line, f"{rel}::{prefix}{node.name}")
                elif own:
                    problems.append(Problem(rel, node.lineno, f"req marker on {node.name!r}, which "
                                                              "pytest does not collect as a test"))
            elif isinstance(node, ast.ClassDef):
                own = [(_mark_ids(c, rel, problems, names), c.lineno)
                       for d in node.decorator_list for c in _req_marks(d)]
                own += [(_mark_ids(c, rel, problems, names), c.lineno) for c in _pytestmark(node.body)]
                if node.name.startswith("Test"):
                    walk(node.body, f"{prefix}{node.name}::", inherited + own)
                elif own:
                    problems.append(Problem(rel, node.lineno, f"req marker on class {node.name!r}, "
                                                              "which pytest does not collect"))
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                _bdd_scenarios_call(node.value, path, root, rel, bindings)

    module_marks = [(_mark_ids(c, rel, problems, names), c.lineno) for c in _pytestmark(tree.body)]
    walk(tree.body, "", module_marks)
    cites += _code_comments(source, tree, rel, problems)
    return cites, problems, bindings


def _bdd_decorators(node: ast.FunctionDef | ast.AsyncFunctionDef, path: Path, root: Path, rel: str,
                    bindings: dict[str, list[tuple[str, str | None, str, int]]]) -> None:
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call) and _call_name(dec) == "scenario":
            feature, name = _str_arg(dec, 0, "feature_name"), _str_arg(dec, 1, "scenario_name")
            base = _str_arg(dec, None, "features_base_dir")
            frel = _feature_rel(path.parent, root, feature, base) if feature else None
            if frel and name:
                bindings.setdefault(frel, []).append((rel, name, node.name, node.lineno))


def _bdd_scenarios_call(call: ast.Call, path: Path, root: Path, rel: str,
                        bindings: dict[str, list[tuple[str, str | None, str, int]]]) -> None:
    if _call_name(call) != "scenarios":
        return
    base = _str_arg(call, None, "features_base_dir")
    for arg in call.args:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            continue
        frel = _feature_rel(path.parent, root, arg.value, base)
        if frel is None:
            continue
        target = root / frel
        files = sorted(target.rglob("*.feature")) if target.is_dir() else [target]
        for f in files:
            bindings.setdefault(f.relative_to(root).as_posix(), []).append((rel, None, "", call.lineno))


def _enclosing(tree: ast.Module, lines: list[str], line: int) -> str:
    """Qualified name of the def/class a comment on ``line`` belongs to: the innermost one that
    contains it, or the one starting right below it (a comment just above a def)."""
    best = "<module>"

    def visit(body: list[ast.stmt], prefix: str) -> None:
        nonlocal best
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            end = node.end_lineno or node.lineno
            if start <= line <= end or _directly_above(line, start):
                best = prefix + node.name
                visit(node.body, f"{best}.")

    def _directly_above(line: int, start: int) -> bool:
        return line < start and all(not lines[k].strip() or lines[k].lstrip().startswith("#")
                                    for k in range(line, start - 1))

    visit(tree.body, "")
    return best


def _code_comments(source: str, tree: ast.Module, rel: str, problems: list[Problem]) -> list[Citation]:
    lines = source.splitlines()
    out: list[Citation] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return out
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        m = _COMMENT_RE.search(tok.string)
        if m:
            line = tok.start[0]
            name = _enclosing(tree, lines, line)
            out += [Citation(i, "code", rel, line, name) for i in _ids(m.group("ids"), rel, line, problems)]
    return out


# --- other files ------------------------------------------------------------------------------

def _scan_text(path: Path, rel: str) -> tuple[list[Citation], list[Problem]]:
    problems: list[Problem] = []
    cites = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = _COMMENT_RE.search(line)
        if m:
            cites += [Citation(i, "code", rel, n, "<file>") for i in _ids(m.group("ids"), rel, n, problems)]
    return cites, problems


def _scan_feature(path: Path, rel: str, binds: list[tuple[str, str | None, str, int]]) -> tuple[
        list[Citation], list[Problem]]:
    """Tags on Feature and Rule apply to every scenario below; tags right above a scenario (or its
    Examples) to that scenario."""
    problems: list[Problem] = []
    cites: list[Citation] = []
    pending: list[tuple[str, int]] = []
    feature_tags: list[tuple[str, int]] = []
    rule_tags: list[tuple[str, int]] = []
    current: tuple[str, int] | None = None

    def tags_of(text: str, n: int) -> list[tuple[str, int]]:
        out = []
        for tag in _TAG_RE.findall(text):
            bad = check_id(tag)
            if bad:
                problems.append(Problem(rel, n, bad))
            else:
                out.append((tag, n))
        return out

    def add(name: str, tags: list[tuple[str, int]]) -> None:
        nodeids: list[str | None] = list(_bdd_nodeids(name, binds)) or [None]
        cites.extend(Citation(t, "scenario", rel, n, name, nodeid) for t, n in tags for nodeid in nodeids)

    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("@"):
            pending += tags_of(line.split(" #")[0], n)
        elif line.startswith("Feature:"):
            feature_tags, pending = pending, []
        elif line.startswith("Rule:"):
            rule_tags, pending = pending, []
        elif line.startswith(_SCENARIO_KW):
            name = line.split(":", 1)[1].strip()
            current = (name, n)
            add(name, feature_tags + rule_tags + pending)
            pending = []
        elif line.startswith(("Examples:", "Scenarios:")):
            if current is not None and pending:
                add(current[0], pending)
            pending = []
    return cites, problems


def _bdd_nodeids(name: str, binds: list[tuple[str, str | None, str, int]]) -> list[str]:
    """The pytest-bdd tests a scenario becomes: each explicit ``@scenario`` binding, plus the
    generated ``test_<name>`` of a ``scenarios()`` call that no explicit binding in the same module
    precedes (pytest-bdd skips scenarios already bound when ``scenarios()`` runs)."""
    out = [f"{module}::{func}" for module, scenario, func, _ in binds if scenario == name]
    for module, scenario, _, line in binds:
        if scenario is None and not any(m == module and s == name and ln < line for m, s, _, ln in binds):
            out.append(f"{module}::{python_name(name)}")
    return sorted(set(out))
