"""``llorch spec extract`` on scratch spec trees: the maps it writes, the links it collects and the
planted faults it must reject with the file and line that caused them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from llorch.tools.cli import spec
from llorch.tools.spec import ExtractError, build_maps, fingerprint, github_anchor, write_maps

pytest_plugins = ["pytester"]

QUEUE = """
# Queue

Prose with lowercase words only.

## Capacity and full policies

- [QUE-1001] {core} The queue MUST never hold more than its capacity.
- [QUE-1002] {core} An overload answer SHOULD carry a `retry_after_ms`,
  derived from the dispatch rate.

## Cancel

- [QUE-1003] {cancel} Cancelling a queued task MUST NOT dispatch it.
- [x] an ordinary checkbox item, not a requirement

## Retired

- [QUE-1004] {retired} merged into QUE-1001.
"""

TESTS = """
import pytest

pytestmark = pytest.mark.req("QUE-1001")


@pytest.mark.req("QUE-1003")
def test_cancel():
    pass


class TestCapacity:
    pytestmark = [pytest.mark.req("QUE-1002")]

    def test_full(self):
        pass

    def helper(self):
        pass
"""

CODE = """
class Queue:
    # req: QUE-1001
    def push_nowait(self, item):
        text = "# req: QUE-9999 is inside a string, not a comment"
        return text

    def cancel(self, task_id):
        pass  # req: QUE-1003 — cancel while queued
"""

FEATURE = """
@QUE-1001
Feature: Queue capacity

  @QUE-1003
  Scenario: Cancel a queued task
    Given a queued task

  Scenario: Fill the queue
    Given a full queue
"""

BDD_MODULE = """
from pytest_bdd import scenarios

scenarios("features/queue.feature")
"""


def _tree(spec_tree, **extra: str) -> Path:
    files = {"specs/queue.md": QUEUE, "harness/suite/test_queue.py": TESTS,
             "reference/core/queue.py": CODE, "harness/bdd/features/queue.feature": FEATURE,
             "harness/bdd/test_bdd.py": BDD_MODULE}
    files.update({k.replace("__", "/").replace("_DOT_", "."): v for k, v in extra.items()})
    return spec_tree(files)


def _map(root: Path) -> dict:
    return {r["id"]: r for r in yaml.safe_load(build_maps(root)["requirements/queue.yaml"])["requirements"]}


def _problems(root: Path) -> list[str]:
    with pytest.raises(ExtractError) as info:
        build_maps(root)
    return [str(p) for p in info.value.problems]


@pytest.mark.req("HAR-1001")
def test_map_fields_per_requirement(spec_tree) -> None:
    reqs = _map(_tree(spec_tree))
    two = reqs["QUE-1002"]
    assert two["level"] == "should" and two["keyword"] == "SHOULD" and two["profile"] == "core"
    assert two["text"] == ("An overload answer SHOULD carry a `retry_after_ms`, "
                           "derived from the dispatch rate.")
    assert two["fingerprint"] == fingerprint(two["text"]) and len(two["fingerprint"]) == 12
    assert two["file"] == "specs/queue.md"
    assert (two["section"], two["anchor"]) == ("Capacity and full policies", "capacity-and-full-policies")
    assert two["status"] == "active"
    assert reqs["QUE-1003"]["level"] == "must" and reqs["QUE-1003"]["keyword"] == "MUST NOT"
    assert sorted(reqs) == ["QUE-1001", "QUE-1002", "QUE-1003", "QUE-1004"]


@pytest.mark.req("HAR-1011")
def test_retired_requirement_stays_in_map(spec_tree) -> None:
    retired = _map(_tree(spec_tree))["QUE-1004"]
    assert retired["status"] == "retired" and retired["level"] is None


@pytest.mark.req("HAR-1011")
def test_citing_a_retired_requirement_is_an_error(spec_tree) -> None:
    root = _tree(spec_tree, reference__core__extra_DOT_py="X = 1  # req: QUE-1004\n")
    assert _problems(root) == [
        "reference/core/extra.py:1: QUE-1004 is cited by code but is retired (specs/queue.md:18)"]


@pytest.mark.req("HAR-1009")
def test_links_from_markers_tags_and_comments(spec_tree) -> None:
    reqs = _map(_tree(spec_tree))
    assert reqs["QUE-1001"]["links"]["tests"] == [
        "harness/bdd/test_bdd.py::test_cancel_a_queued_task",
        "harness/bdd/test_bdd.py::test_fill_the_queue",
        "harness/suite/test_queue.py::TestCapacity::test_full",
        "harness/suite/test_queue.py::test_cancel",
    ]
    assert reqs["QUE-1002"]["links"]["tests"] == ["harness/suite/test_queue.py::TestCapacity::test_full"]
    assert reqs["QUE-1003"]["links"]["scenarios"] == [{
        "feature": "harness/bdd/features/queue.feature", "scenario": "Cancel a queued task",
        "nodeid": "harness/bdd/test_bdd.py::test_cancel_a_queued_task"}]
    assert reqs["QUE-1001"]["links"]["code"] == [
        {"file": "reference/core/queue.py", "name": "Queue.push_nowait"}]
    assert reqs["QUE-1003"]["links"]["code"] == [{"file": "reference/core/queue.py", "name": "Queue.cancel"}]


@pytest.mark.req("HAR-1009")
def test_marker_ids_from_module_constants(spec_tree) -> None:
    module = """
        import pytest

        BOTH = ("QUE-1001", "QUE-1003")
        ONE = "QUE-1002"


        @pytest.mark.req(*BOTH, ONE)
        def test_consts():
            pass


        @pytest.mark.req(*sorted(BOTH))
        def test_dynamic():
            pass


        @pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.req("QUE-1002"))])
        def test_param(n):
            pass
        """
    root = _tree(spec_tree, harness__suite__test_consts_DOT_py=module)
    assert _problems(root) == [
        "harness/suite/test_consts.py:12: req marker arguments must be string literals or "
        "module-level constants of them, so links can be collected statically"]
    fixed = textwrap.dedent(module.replace("*sorted(BOTH)", "*BOTH"))
    (root / "harness/suite/test_consts.py").write_text(fixed)
    reqs = _map(root)
    assert all("harness/suite/test_consts.py::test_consts" in reqs[r]["links"]["tests"]
               for r in ("QUE-1001", "QUE-1002", "QUE-1003"))
    assert "harness/suite/test_consts.py::test_param" in reqs["QUE-1002"]["links"]["tests"]


@pytest.mark.req("HAR-1009")
def test_links_carry_no_line_numbers(spec_tree) -> None:
    root = _tree(spec_tree)
    before = build_maps(root)
    code = root / "reference/core/queue.py"
    code.write_text("\n\n\n" + code.read_text())
    assert build_maps(root) == before


@pytest.mark.req("HAR-1002")
def test_regeneration_is_byte_identical(spec_tree) -> None:
    root = _tree(spec_tree)
    assert write_maps(root, build_maps(root)) == ["requirements/queue.yaml"]
    first = (root / "requirements/queue.yaml").read_bytes()
    assert write_maps(root, build_maps(root)) == []
    assert (root / "requirements/queue.yaml").read_bytes() == first


@pytest.mark.req("HAR-1003")
def test_check_names_each_drifted_file(spec_tree) -> None:
    root = _tree(spec_tree, specs__pools_DOT_md="# Pools\n\n- [POOL-1001] {admin} A drain MUST finish.\n")
    runner = CliRunner()
    assert runner.invoke(spec, ["extract", "--root", str(root)]).exit_code == 0
    ok = runner.invoke(spec, ["extract", "--check", "--root", str(root)])
    assert ok.exit_code == 0, ok.output
    spec_file = root / "specs/queue.md"
    spec_file.write_text(spec_file.read_text().replace("its capacity", "its configured capacity"))
    (root / "requirements/pools.yaml").unlink()
    drift = runner.invoke(spec, ["extract", "--check", "--root", str(root)])
    assert drift.exit_code == 1
    assert "requirements/queue.yaml: 4 line(s) differ" in drift.output
    assert "requirements/pools.yaml: missing" in drift.output


@pytest.mark.req("HAR-1004")
def test_duplicate_id_names_both_places(spec_tree) -> None:
    root = _tree(spec_tree, specs__queue_more_DOT_md="# More\n\n- [QUE-1002] {core} Again it MUST hold.\n")
    assert _problems(root) == [
        "specs/queue_more.md:3: duplicate requirement ID QUE-1002: first defined at specs/queue.md:8"]


@pytest.mark.req("HAR-1008")
@pytest.mark.parametrize(("path", "text", "line", "kind"), [
    ("harness/suite/test_more.py",
     'import pytest\n\n\n@pytest.mark.req("QUE-1099")\ndef test_x():\n    pass\n', 4, "test"),
    ("harness/suite/test_mod.py", 'import pytest\n\npytestmark = pytest.mark.req("QUE-1098")\n\n\n'
     'def test_y():\n    pass\n', 3, "test"),
    ("harness/bdd/features/more.feature", "Feature: More\n\n  @QUE-1097\n  Scenario: One\n    Given x\n",
     3, "scenario"),
    ("reference/core/more.py", "def f():\n    # req: QUE-1096\n    return 1\n", 2, "code"),
])
def test_undefined_citation_names_file_and_line(spec_tree, path: str, text: str, line: int,
                                                kind: str) -> None:
    root = _tree(spec_tree)
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
    [problem] = _problems(root)
    assert problem.startswith(f"{path}:{line}: QUE-10")
    assert problem.endswith(f"is cited by {kind} but no spec defines it")


@pytest.mark.req("HAR-1006")
@pytest.mark.parametrize(("item", "message"), [
    ("- [QUE-1010] {core} The queue keeps order.", "QUE-1010: no RFC 2119 level keyword"),
    ("- [QUE-1010] {core} The queue MUST keep order and SHOULD log.",
     "QUE-1010: 2 level keywords (MUST, SHOULD)"),
])
def test_missing_or_doubled_keyword(spec_tree, item: str, message: str) -> None:
    root = _tree(spec_tree, specs__queue_DOT_md=QUEUE.replace("## Retired", f"{item}\n\n## Retired"))
    [problem] = _problems(root)
    assert problem.startswith("specs/queue.md:16: " + message)


@pytest.mark.req("HAR-1005")
@pytest.mark.parametrize(("item", "message"), [
    ("- [QUE-101] {core} It MUST.", "malformed requirement ID 'QUE-101': expected PREFIX-NNNN"),
    ("- [QUX-1010] {core} It MUST.", "malformed requirement ID 'QUX-1010': prefix 'QUX' is not one of"),
    ("- [ADM-1010] {core} It MUST.",
     "ADM-1010: prefix ADM belongs to specs/admission.md, not specs/queue.md"),
    ("- [QUE-1010] The queue MUST.", "QUE-1010: missing profile in braces"),
])
def test_malformed_item(spec_tree, item: str, message: str) -> None:
    root = _tree(spec_tree, specs__queue_DOT_md=QUEUE.replace("## Retired", f"{item}\n\n## Retired"))
    [problem] = _problems(root)
    assert problem.startswith("specs/queue.md:16: " + message)


@pytest.mark.req("HAR-1008")
def test_malformed_cited_id_names_file_and_line(spec_tree) -> None:
    root = _tree(spec_tree, reference__core__bad_DOT_py="X = 1  # req: QUE-12\n")
    assert _problems(root) == [
        "reference/core/bad.py:1: malformed requirement ID 'QUE-12': expected PREFIX-NNNN (four digits)"]


@pytest.mark.req("HAR-1007")
def test_profile_outside_closed_list(spec_tree) -> None:
    item = "- [QUE-1010] {fast} The queue MUST be fast."
    root = _tree(spec_tree, specs__queue_DOT_md=QUEUE.replace("## Retired", f"{item}\n\n## Retired"))
    [problem] = _problems(root)
    assert problem.startswith("specs/queue.md:16: QUE-1010: profile 'fast' is not one of")


@pytest.mark.req("HAR-1010")
def test_configured_skips_and_only_those(spec_tree) -> None:
    planted = "import pytest\n\n\n@pytest.mark.req('QUE-1999')\ndef test_z():\n    pass\n"
    root = _tree(spec_tree, harness__faulty__test_planted_DOT_py=planted,
                 harness__faultyish__test_planted_DOT_py=planted)
    (root / "requirements/scan.yaml").write_text(
        "roots: [harness, reference]\nskip:\n  - path: harness/faulty\n    reason: planted faults\n")
    assert [p.split(":")[0] for p in _problems(root)] == ["harness/faultyish/test_planted.py"]


def test_skip_entry_needs_a_reason(spec_tree) -> None:
    root = _tree(spec_tree)
    (root / "requirements/scan.yaml").write_text("skip:\n  - path: harness/faulty\n")
    with pytest.raises(ValueError, match="needs a path and a reason"):
        build_maps(root)


def test_cli_reports_problems_with_exit_1(spec_tree) -> None:
    root = _tree(spec_tree, reference__core__more_DOT_py="# req: QUE-1096\n")
    result = CliRunner().invoke(spec, ["extract", "--root", str(root)])
    assert result.exit_code == 1
    want = "error: reference/core/more.py:1: QUE-1096 is cited by code but no spec defines it"
    assert want in result.output


def test_github_anchor() -> None:
    assert github_anchor("Cancel & expiry: `while` queued") == "cancel--expiry-while-queued"


BDD_FEATURE = """\
@QUE-1001
Feature: Queue things

  Scenario: 1st cancel, a queued task!
    Given x

  @QUE-1003
  Scenario Outline: Outline <n>
    Given <n>

    Examples:
      | n |
      | 1 |
      | 2 |
"""

BDD_STEPS = """\
from pytest_bdd import given, parsers, scenario, scenarios

scenarios("features")


@scenario("features/q.feature", "1st cancel, a queued task!")
def test_explicit():
    pass


@given("x")
def x():
    pass


@given(parsers.parse("{n}"))
def n(n):
    pass
"""


@pytest.mark.req("HAR-1009")
def test_bdd_links_name_the_nodeids_pytest_bdd_collects(pytester: pytest.Pytester) -> None:
    root = pytester.path
    for rel, text in {"specs/queue.md": QUEUE, "harness/bdd/features/q.feature": BDD_FEATURE,
                      "harness/bdd/test_q.py": BDD_STEPS}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text.lstrip("\n"))
    pytester.makeini("[pytest]\n")  # the temp tree is its own rootdir, even inside a checkout
    result = pytester.runpytest_inprocess("--collect-only", "-q", "harness/bdd")
    collected = {line.split("[")[0] for line in result.outlines if "::" in line}
    linked = set(_map(root)["QUE-1001"]["links"]["tests"])
    assert linked == collected == {"harness/bdd/test_q.py::test_explicit",
                                   "harness/bdd/test_q.py::test_outline_n",
                                   "harness/bdd/test_q.py::test_st_cancel_a_queued_task"}
    assert _map(root)["QUE-1003"]["links"]["tests"] == ["harness/bdd/test_q.py::test_outline_n"]
