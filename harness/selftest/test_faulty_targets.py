"""Each faulty target must be failed by ``llorch conform`` (exit 1) with its broken requirement's ID.

One real target (the embedded reference, or ``llorch adapter serve``) is started per session; each
fault is a proxy in front of it (``harness/faulty/proxy.py``). Only the tests that matter for a
fault run (``--suite`` and ``-k``), so the whole self-test stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llorch.harness import targets
from llorch.harness.faulty.proxy import FAULTS, Fault

CONFORM_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Any]]:
    """Real targets started lazily: the proxies forward to them."""
    started: dict[str, Any] = {}

    def get(kind: str) -> dict[str, Any]:
        if kind not in started:
            started[kind] = targets.start_reference() if kind == "orchestrator" else targets.start_adapter()
        info: dict[str, Any] = started[kind].info
        return info

    yield {"get": get}
    for served in started.values():
        served.stop()


@pytest.fixture(scope="module")
def table(report_dir: Path) -> Iterator[dict[str, str]]:
    """The self-test table (fault → failing IDs), written to ``faulty-targets.md`` in the report dir."""
    rows: dict[str, str] = {}
    yield rows
    lines = ["| fault | breaks | conform exit | IDs in failure messages | failing tests cite |",
             "|---|---|---|---|---|"]
    lines += [rows[name] for name in sorted(rows)]
    (report_dir / "faulty-targets.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _selection(fault: type[Fault]) -> tuple[list[str], str]:
    suites = sorted({s.split("/")[1] for s in fault.suites})
    names = [s.split("::", 1)[1] for s in fault.suites if "::" in s]
    files = [Path(s.split("::", 1)[0]).stem for s in fault.suites if "::" not in s]
    return suites, " or ".join(names + files)


def run_conform_against(fault: type[Fault], upstream: dict[str, Any],
                        report: Path) -> tuple[int, dict[str, Any]]:
    argv = [sys.executable, "-m", "llorch.harness.faulty.proxy", fault.name,
            "--upstream-grpc", targets.grpc_address(upstream["grpc"])]
    if upstream.get("http"):
        argv += ["--upstream-http", upstream["http"]]
    suites, keyword = _selection(fault)
    with targets.ServedProcess.start(argv) as proxy:
        cmd = [sys.executable, "-m", "llorch", "conform", fault.kind, f"grpc://{proxy.info['grpc']}"]
        if fault.kind == "orchestrator" and proxy.info.get("http"):
            cmd += ["--http", proxy.info["http"]]
        for suite in suites:
            cmd += ["--suite", suite]
        cmd += ["-k", keyword, "--report-dir", str(report)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CONFORM_TIMEOUT_S, check=False)
    cert_path = report / "certification.json"
    cert = json.loads(cert_path.read_text()) if cert_path.is_file() else {}
    cert["_output"] = done.stdout[-3000:] + done.stderr[-3000:]
    return done.returncode, cert


@pytest.mark.req("HAR-1055", "HAR-1056")
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_conform_fails_the_faulty_target_with_its_id(name: str, upstreams: dict[str, Any],
                                                      tmp_path: Path, table: dict[str, str]) -> None:
    fault = FAULTS[name]
    code, cert = run_conform_against(fault, upstreams["get"](fault.kind), tmp_path)
    failed = cert.get("unexpected_failures", []) + cert.get("advisory_failures", [])
    cited_all = sorted({r for f in failed for r in f["reqs"]})
    named = sorted({m for f in failed for m in re.findall(r"\[([A-Z]{2,5}-\d{4})\]", f["message"] or "")})
    table[name] = (f"| {name} | {', '.join(fault.breaks)} | {code} | {', '.join(named)} | "
                   f"{', '.join(cited_all)} |")
    assert code == 1, f"conform exit code {code} against {name} (want 1):\n{cert['_output']}"
    failures = cert.get("unexpected_failures", []) + cert.get("advisory_failures", [])
    cited = {rid for f in failures for rid in f["reqs"]}
    missing = set(fault.breaks) - cited
    assert not missing, (f"{name}: no failing test cites {sorted(missing)}; failures cited {sorted(cited)}\n"
                         f"{cert['_output']}")
