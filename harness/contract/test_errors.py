"""Admission validation and the one error model, over HTTP and gRPC (envelope, codes, mapping)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from llorch.harness.clients import error_detail

from llorch.proto import common_pb2

ENVELOPE_FIELDS = {"code", "message", "retriable", "retry_after_ms", "correlation_id", "policy_label"}


def assert_envelope(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The task API error envelope with the expected status and code; returns the error object."""
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text[:300]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), (
        f"[ERR-1018] error content-type {resp.headers.get('content-type')!r}")
    body = resp.json()
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict) and ENVELOPE_FIELDS <= set(err), f"[ERR-1001] not the error envelope: {body}"
    assert err["code"] == code, f"expected code {code}, got {err['code']}"
    assert err["code"] in common_pb2.ErrorCode.keys() and err["code"] != "ERROR_CODE_UNSPECIFIED", (
        f"[ERR-1002] {err['code']!r} is not an ErrorCode name")
    return err


INVALID = [
    pytest.param({"conform_unknown": 1}, id="unknown-field", marks=pytest.mark.req("ADM-1007")),
    pytest.param({"sampler": {"temperature": 0.5, "conform_unknown": 1}}, id="unknown-nested-field",
                 marks=pytest.mark.req("ADM-1007")),
    pytest.param({"max_tokens": True}, id="bool-as-int", marks=pytest.mark.req("ADM-1008")),
    pytest.param({"max_tokens": "8"}, id="string-as-int", marks=pytest.mark.req("ADM-1008")),
    pytest.param({"max_tokens": 0}, id="max-tokens-zero", marks=pytest.mark.req("ADM-1009")),
    pytest.param({"prompt": ""}, id="empty-prompt", marks=pytest.mark.req("ADM-1010")),
    pytest.param({"sampler": {"temperature": -1.0}}, id="negative-temperature",
                 marks=pytest.mark.req("ADM-1011")),
    pytest.param({"sampler": {"top_p": 1.5}}, id="top-p-above-1", marks=pytest.mark.req("ADM-1011")),
    pytest.param({"priority": "urgent"}, id="unknown-priority", marks=pytest.mark.req("ADM-1013")),
]


@pytest.mark.req("ERR-1001", "ERR-1007", "ERR-1022", "ADM-1016")
@pytest.mark.parametrize("override", INVALID)
def test_invalid_submit_is_refused(api: Any, override: dict[str, Any]) -> None:
    resp = api.submit(**override)
    assert resp.status_code != 202, f"invalid submit {override} was accepted: {resp.text[:200]}"
    err = assert_envelope(resp, 400, "INVALID_PARAMS")
    assert err["retriable"] is False, "[ERR-1022] a 400 must not be retriable"
    listed = api.request("GET", "/v1/tasks").json().get("tasks", [])
    assert listed == [], f"[ADM-1016] a rejected submit created a task: {listed}"


@pytest.mark.req("ADM-1009")
def test_max_tokens_over_the_limit(api: Any, orchestrator: Any) -> None:
    limit = int(orchestrator.capabilities.get("max_tokens_limit") or 0)
    if not limit:
        pytest.fail("capabilities report no max_tokens_limit")
    assert_envelope(api.submit(max_tokens=limit + 1), 400, "INVALID_PARAMS")


@pytest.mark.req("ADM-1014", "ERR-1001")
def test_body_that_is_not_json(api: Any) -> None:
    resp = api.request("POST", "/v1/tasks", content=b"{not json",
                       headers={"Content-Type": "application/json"})
    assert_envelope(resp, 400, "INVALID_PARAMS")


@pytest.mark.req("ADM-1012", "ERR-1011")
def test_unknown_model(api: Any) -> None:
    assert_envelope(api.submit(model="conform-no-such-model"), 404, "MODEL_NOT_FOUND")


@pytest.mark.req("ERR-1003", "ERR-1004", "ERR-1007")
def test_grpc_error_carries_the_same_detail(api: Any) -> None:
    http_err = assert_envelope(api.submit(max_tokens=0), 400, "INVALID_PARAMS")
    with pytest.raises(grpc.RpcError) as info:
        api.grpc_submit(max_tokens=0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"[ERR-1007] gRPC {info.value.code()}"
    detail = error_detail(info.value)
    assert detail is not None, "[ERR-1003] no llorch.v1.ErrorDetail in grpc-status-details-bin"
    assert (common_pb2.ErrorCode.Name(detail.code), detail.retriable, detail.policy_label) == (
        http_err["code"], http_err["retriable"], http_err["policy_label"]), (
        f"[ERR-1004] gRPC {detail} vs HTTP {http_err}")


@pytest.mark.req("ERR-1024")
def test_unknown_route_and_wrong_method(api: Any) -> None:
    resp = api.request("GET", "/v1/conform-no-such-route")
    assert resp.status_code == 404, f"[ERR-1024] unknown route answered {resp.status_code}"
    assert isinstance(resp.json().get("error"), dict), f"[ERR-1024] not the envelope: {resp.text[:200]}"
    resp = api.request("DELETE", "/v1/capabilities")
    assert resp.status_code == 405, f"[ERR-1024] wrong method answered {resp.status_code}"
    assert isinstance(resp.json().get("error"), dict), f"[ERR-1024] not the envelope: {resp.text[:200]}"


@pytest.mark.req("STR-1036", "STR-1038", "STR-1039")
def test_correlation_ids(api: Any) -> None:
    resp = api.request("POST", "/v1/tasks", json=api.task_body(),
                       headers={"X-Correlation-Id": "conform-corr-1"})
    assert resp.headers.get("x-correlation-id") == "conform-corr-1", "[STR-1036] correlation id not echoed"
    assert resp.json().get("correlation_id") == "conform-corr-1", "[STR-1038] body correlation_id differs"
    a = api.request("GET", "/v1/capabilities").headers.get("x-correlation-id")
    b = api.request("GET", "/v1/capabilities").headers.get("x-correlation-id")
    assert a and b and a != b, f"[STR-1036] [STR-1039] generated ids {a!r}, {b!r}"
    err = api.request("POST", "/v1/tasks", json=api.task_body(max_tokens=0))
    assert err.json()["error"]["correlation_id"] == err.headers.get("x-correlation-id"), (
        "[STR-1038] error envelope correlation_id differs from the header")
