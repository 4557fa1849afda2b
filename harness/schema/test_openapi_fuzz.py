"""Fuzz the target's HTTP surface from its published OpenAPI document, over the network (D14).

Every generated request must get no 5xx and an answer that conforms to the document (status code,
content type, schema). Operations that would disturb the shared target (drain, reload) or that
stream (SSE) are left out; tasks the fuzzer manages to create are cancelled at once so they do
not load the target for later tests. Bounded examples per operation for CI.

(schemathesis' lazy pytest loader does not run under pytest 9 — it sets ``node._nodeid`` — so the
operations' strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from llorch.harness.clients import new_tenant
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXCLUDED_PATHS = re.compile(r"(/drain|/reload|/events)$")
EXAMPLES = 6
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="session")
def target_schema(orchestrator: Any) -> Any:
    if not orchestrator.http:
        pytest.skip("the target has no HTTP address")
    schema = schemathesis.openapi.from_url(orchestrator.http + "/openapi.json")
    schema.config.base_url = orchestrator.http
    return schema


def _operations(schema: Any) -> list[Any]:
    ops = []
    for result in schema.get_all_operations():
        op = result.ok()
        if not EXCLUDED_PATHS.search(op.path):
            ops.append(op)
    return ops


def _fuzz(op: Any, http: Any) -> Any:
    """A hypothesis test of one operation: bounded examples, no deadline over the network."""

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def run(case: Any) -> None:
        tenant = new_tenant("fuzz")
        response = case.call(headers={"X-Llorch-Tenant": tenant}, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        finally:
            if op.method.upper() == "POST" and op.path == "/v1/tasks" and response.status_code == 202:
                task_id = response.json().get("task_id")
                if task_id:
                    http.post(f"/v1/tasks/{task_id}/cancel", headers={"X-Llorch-Tenant": tenant})

    return run


@pytest.mark.req("ERR-1023", "CTR-1021")
@pytest.mark.parametrize("area", ["task-api", "openai"])
def test_responses_conform_and_never_5xx(area: str, target_schema: Any, http: Any) -> None:
    openai_paths = ("/v1/models", "/v1/completions", "/v1/chat/completions")
    ops = [op for op in _operations(target_schema) if (op.path in openai_paths) == (area == "openai")]
    assert ops, f"the OpenAPI document lists no {area} operation"
    failures: list[str] = []
    for op in ops:
        run = _fuzz(op, http)
        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:1500]}")
    assert not failures, "[ERR-1023] [CTR-1021] " + "\n\n".join(failures)
