"""Reading what ``llorch trace report`` works from: test results (results JSON or JUnit XML), the
requirement maps, waivers and reviews. Inputs are validated here so the report logic can trust them.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET  # our own pytest JUnit output, not untrusted input
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from llorch.harness.results import normalise_nodeid

_PARAMS_RE = re.compile(r"\[.*\]$")


class TraceInputError(Exception):
    """A results file, waiver or review entry is unreadable or invalid (exit code 2)."""


@dataclass(frozen=True)
class TestResult:
    nodeid: str
    outcome: str
    reqs: tuple[str, ...] = ()
    duration_s: float = 0.0
    skip_reason: str | None = None
    message: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        """Node id without pytest parameters: what the maps link to."""
        return base_nodeid(self.nodeid)


@dataclass
class Run:
    """One results file: where it came from, the environment it ran in and its tests."""

    source: str
    kind: str
    environment: dict[str, Any] | None
    started: str | None = None
    finished: str | None = None
    tests: list[TestResult] = field(default_factory=list)


@dataclass(frozen=True)
class Waiver:
    id: str
    reason: str
    issue: int


def base_nodeid(nodeid: str) -> str:
    head, sep, tail = nodeid.rpartition("::")
    return f"{head}{sep}{_PARAMS_RE.sub('', tail)}" if sep else nodeid


def schema_path(name: str) -> Path:
    from llorch import resources

    return resources.contracts_dir() / "report" / name


def _validate(data: Any, name: str, where: str) -> None:
    schema = json.loads(schema_path(name).read_text(encoding="utf-8"))
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        loc = "/".join(str(p) for p in exc.absolute_path)
        raise TraceInputError(f"{where}: does not match {name} at {loc or '<root>'}: {exc.message}") from exc


def load_runs(paths: list[Path]) -> list[Run]:
    """Results JSON (``llorch-results/1``) and JUnit XML files, or folders of them (where a JUnit
    file beside a results JSON of the same name is the same run and is skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".xml") and p.is_file())
            # nox writes <name>.json and <name>.xml for one run: the JSON says more, read only it
            files += [p for p in found if p.suffix == ".json" or p.with_suffix(".json") not in found]
        elif path.is_file():
            files.append(path)
        else:
            raise TraceInputError(f"{path}: no such results file or folder")
    if not files:
        raise TraceInputError(f"no results (*.json, *.xml) in {', '.join(map(str, paths))}")
    return [_load_json(f) if f.suffix == ".json" else _load_junit(f) for f in files]


def _load_json(path: Path) -> Run:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TraceInputError(f"{path}: not readable JSON: {exc}") from exc
    _validate(data, "results.schema.json", str(path))
    env = data.get("environment")
    tests = [TestResult(nodeid=normalise_nodeid(t["nodeid"]), outcome=t["outcome"],
                        reqs=tuple(t.get("reqs") or ()), duration_s=float(t.get("duration_s") or 0.0),
                        skip_reason=t.get("skip_reason"), message=t.get("message"),
                        needs=tuple(t.get("needs") or ()))
             for t in data["tests"]]
    return Run(str(path), "results-json", env, data.get("started"), data.get("finished"), tests)


def _junit_nodeid(case: ET.Element) -> str:
    """pytest writes ``classname="harness.x.test_y.TestC" name="test_z[p]"`` (and sometimes
    ``file``); rebuild ``harness/x/test_y.py::TestC::test_z[p]``."""
    name = case.get("name", "")
    parts = case.get("classname", "").split(".")
    file_attr = case.get("file")
    if file_attr:
        module = Path(file_attr).with_suffix("").as_posix().split("/")
        return normalise_nodeid("::".join(["/".join(module) + ".py", *parts[len(module):], name]))
    # module path ends at the first component that looks like a class (pytest's Test* default)
    cut = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))
    classes = parts[cut:]
    return normalise_nodeid("::".join(["/".join(parts[:cut]) + ".py", *classes, name]))


def _load_junit(path: Path) -> Run:
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        raise TraceInputError(f"{path}: not readable JUnit XML: {exc}") from exc
    tests: list[TestResult] = []
    for case in tree.getroot().iter("testcase"):
        outcome, reason, message = "passed", None, None
        for child in case:
            if child.tag == "failure":
                outcome, message = "failed", child.get("message")
            elif child.tag == "error":
                outcome, message = "error", child.get("message")
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, reason = ("xfailed" if xfail else "skipped"), child.get("message")
        reqs: tuple[str, ...] = ()
        for prop in case.iter("property"):
            if prop.get("name") == "llorch_reqs":
                reqs = tuple((prop.get("value") or "").split())
        tests.append(TestResult(_junit_nodeid(case), outcome, reqs,
                                float(case.get("time") or 0.0), reason, message))
    return Run(str(path), "junit", None, tests=tests)


def load_waivers(requirements_dir: Path) -> dict[str, Waiver]:
    path = requirements_dir / "waivers.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, Waiver] = {}
    for entry in data.get("waivers") or []:
        if (not isinstance(entry, dict) or not isinstance(entry.get("id"), str)
                or not str(entry.get("reason") or "").strip() or not isinstance(entry.get("issue"), int)):
            raise TraceInputError(f"{path}: each waiver needs id, reason and issue (a number): {entry!r}")
        if entry["id"] in out:
            raise TraceInputError(f"{path}: {entry['id']} is waived twice")
        out[entry["id"]] = Waiver(entry["id"], str(entry["reason"]).strip(), entry["issue"])
    return out


def load_reviews(requirements_dir: Path) -> dict[str, dict[str, str]]:
    path = requirements_dir / "reviews.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    reviews = data.get("reviews") or {}
    if not isinstance(reviews, dict) or not all(isinstance(v, dict) for v in reviews.values()):
        raise TraceInputError(f"{path}: 'reviews' must map requirement IDs to {{nodeid: fingerprint}}")
    return {str(k): {str(n): str(f) for n, f in v.items()} for k, v in reviews.items()}
