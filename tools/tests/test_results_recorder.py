"""The results recorder (``--llorch-results``) driven through a real inner pytest run, and node id
normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from llorch.harness.results import normalise_nodeid

from llorch import resources

pytest_plugins = ["pytester"]

SUITE = """
import pytest

pytestmark = pytest.mark.req("QUE-1001")


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")


class TestThings:
    pytestmark = pytest.mark.req("QUE-1002")

    @pytest.mark.req("QUE-1003")
    def test_pass(self):
        assert True

    def test_fail(self):
        assert 1 == 2, "one is not two"


def test_with_evidence(record_property):
    record_property("evidence", "POST /v1/chat/completions -> 500")
    record_property("evidence", "body: {}")
    assert False


def test_teardown_error(broken_teardown):
    pass


def test_setup_error(broken_setup):
    pass


@pytest.mark.gpu
def test_needs_gpu():
    pytest.skip("gpu: no accelerator visible")


@pytest.mark.skip(reason="not today")
def test_marked_skip():
    pass


@pytest.mark.xfail(reason="known gap")
def test_xfail():
    assert False


@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    pass


@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n


@pytest.fixture(autouse=True)
def _target(request):
    request.config.stash.setdefault(TARGET_INFO, {}).update({"kind": "orchestrator", "engine": "mock"})
"""


@pytest.fixture
def results(pytester: pytest.Pytester) -> dict:
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs an accelerator\n")
    pytester.makepyfile(test_suite="from llorch.harness.results import TARGET_INFO\n" + SUITE)
    out = pytester.path / "out" / "results.json"
    pytester.runpytest_inprocess(f"--llorch-results={out}", "-p", "no:randomly")
    return json.loads(out.read_text())


def _by_name(results: dict) -> dict[str, dict]:
    return {t["nodeid"].split("::", 1)[1]: t for t in results["tests"]}


@pytest.mark.req("HAR-1012", "HAR-1013")
def test_document_validates_and_has_every_field(results: dict) -> None:
    schema = json.loads((resources.contracts_dir() / "report" / "results.schema.json").read_text())
    jsonschema.validate(results, schema)
    assert results["schema"] == "llorch-results/1" and results["started"] and results["finished"]
    for test in results["tests"]:
        assert {"nodeid", "outcome", "reqs", "duration_s", "skip_reason", "message"} <= test.keys()


@pytest.mark.req("HAR-1013", "HAR-1701")
def test_outcomes(results: dict) -> None:
    tests = _by_name(results)
    assert {name: t["outcome"] for name, t in tests.items()} == {
        "TestThings::test_pass": "passed", "TestThings::test_fail": "failed",
        "test_teardown_error": "error", "test_setup_error": "error", "test_needs_gpu": "skipped",
        "test_marked_skip": "skipped", "test_xfail": "xfailed", "test_xpass": "xpassed",
        "test_param[1]": "passed", "test_param[2]": "passed", "test_with_evidence": "failed",
    }
    assert "one is not two" in tests["TestThings::test_fail"]["message"]
    assert "teardown" in tests["test_teardown_error"]["message"]
    assert tests["test_marked_skip"]["skip_reason"] == "not today"
    assert tests["test_needs_gpu"]["skip_reason"] == "gpu: no accelerator visible"
    assert tests["test_needs_gpu"]["needs"] == ["gpu"]
    assert tests["test_xfail"]["skip_reason"] == "known gap"


def test_evidence_is_copied_per_test(results: dict) -> None:
    tests = _by_name(results)
    assert tests["test_with_evidence"]["evidence"] == "POST /v1/chat/completions -> 500\n\nbody: {}"
    assert "evidence" not in tests["TestThings::test_fail"]


@pytest.mark.req("HAR-1016")
def test_reqs_closest_first_with_inherited(results: dict) -> None:
    tests = _by_name(results)
    assert tests["TestThings::test_pass"]["reqs"] == ["QUE-1003", "QUE-1002", "QUE-1001"]
    assert tests["TestThings::test_fail"]["reqs"] == ["QUE-1002", "QUE-1001"]
    assert tests["test_param[1]"]["reqs"] == ["QUE-1001"]


@pytest.mark.req("HAR-1014")
def test_environment(results: dict) -> None:
    env = results["environment"]
    assert env["python"].count(".") == 2 and env["platform"] and env["host"] and env["llorch"]
    assert "gpu" in env
    assert env["target"] == {"kind": "orchestrator", "engine": "mock"}


@pytest.mark.req("HAR-1015")
def test_nodeids_relative_to_inner_rootdir(results: dict) -> None:
    assert all(t["nodeid"].startswith("test_suite.py::") for t in results["tests"])


@pytest.mark.req("HAR-1015")
@pytest.mark.parametrize(("raw", "want"), [
    ("../../venv/lib/python3.11/site-packages/llorch/harness/metrics/test_m.py::test_x[a/b]",
     "harness/metrics/test_m.py::test_x[a/b]"),
    ("/usr/lib/python3/dist-packages/llorch/tests/test_wheel.py::test_w",
     "llorch/tests/test_wheel.py::test_w"),
    ("/home/u/llorch/harness/bdd/test_b.py::TestC::test_y", "harness/bdd/test_b.py::TestC::test_y"),
    ("/home/u/llorch/llorch/tests/test_cli.py::test_c", "llorch/tests/test_cli.py::test_c"),
    ("work/main/reference/tests/test_q.py::test_q", "reference/tests/test_q.py::test_q"),
    ("tools/tests/test_t.py::test_t", "tools/tests/test_t.py::test_t"),
])
def test_normalise_nodeid_from_text(raw: str, want: str) -> None:
    assert normalise_nodeid(raw) == want


@pytest.mark.req("HAR-1015")
def test_normalise_nodeid_through_the_installed_package() -> None:
    """A path found on disk maps through where the llorch packages really are, from any rootdir."""
    here = Path(__file__).resolve()
    rel_to_root = here.relative_to(here.parents[3]).as_posix()
    assert normalise_nodeid(f"{rel_to_root}::test_x", here.parents[3]) == f"tools/tests/{here.name}::test_x"


@pytest.mark.req("HAR-1014")
def test_gpu_from_nvidia_smi_or_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llorch.harness import results as recorder

    monkeypatch.setenv("PATH", str(tmp_path))
    assert recorder._gpu() is None
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=name ] && "
                    "printf 'NVIDIA H100 80GB HBM3\\nNVIDIA H100 80GB HBM3\\n'\n")
    fake.chmod(0o755)
    assert recorder._gpu() == "NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert recorder._gpu() is None
