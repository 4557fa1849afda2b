"""The compatibility classifier on planted changes to temp copies of the real contracts."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from llorch.tools.contracts.compat import Change, compare_config_schema, compare_openapi, compare_proto
from llorch.tools.contracts.export import validate_json_schema, validate_openapi
from llorch.tools.contracts.protogen import descriptor_set

from llorch import resources

PROTO = resources.contracts_dir() / "proto"
Edit = tuple[str, str, str]  # proto file name, regex matching exactly once, replacement


def _proto_changes(tmp_path: Path, *edits: Edit) -> list[Change]:
    """Compare the real protos with a temp copy carrying ``edits``. Each pattern must match once,
    so a test cannot pass vacuously after the real contract moved on."""
    current = tmp_path / "current"
    shutil.copytree(PROTO, current)
    for name, pattern, replacement in edits:
        path = current / name
        text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
        assert count == 1, f"{pattern!r} matched {count} times in {name}"
        path.write_text(text)
    return compare_proto(descriptor_set(PROTO), descriptor_set(current))


GET_TASK = r"rpc GetTask\(GetTaskRequest\) returns \(Task\);"


@pytest.mark.req("CTR-1012")
@pytest.mark.parametrize(("edits", "where", "what"), [
    ([("common.proto", r"^\s*string policy_label = 6;.*\n", "")],
     "llorch.v1.ErrorDetail.policy_label", "field 6 removed"),
    ([("common.proto", r"string correlation_id = 5;", "string correlation_id = 7;")],
     "llorch.v1.ErrorDetail.correlation_id", "field renumbered 5 -> 7"),
    ([("common.proto", r"string correlation_id = 5;", "string correlation = 5;")],
     "llorch.v1.ErrorDetail.correlation_id", "field number 5 reused by 'correlation'"),
    ([("common.proto", r"bool retriable = 3;", "string retriable = 3;")],
     "llorch.v1.ErrorDetail.retriable", "type changed bool -> string"),
    ([("orchestrator.proto", rf"^\s*{GET_TASK}\n", "")],
     "llorch.v1.OrchestratorService.GetTask", "RPC removed"),
    ([("worker_adapter.proto", r"^message HealthRequest \{\}", "message HealthQuery {}"),
      ("worker_adapter.proto", r"rpc Health\(HealthRequest\)", "rpc Health(HealthQuery)")],
     "llorch.v1.HealthRequest", "message removed"),
], ids=["removed-field", "renumbered-field", "number-reused", "changed-type", "removed-rpc",
        "removed-message"])
def test_breaking_proto_changes(tmp_path: Path, edits: list[Edit], where: str, what: str) -> None:
    changes = _proto_changes(tmp_path, *edits)
    assert Change("proto", where, what, True) in changes


@pytest.mark.req("CTR-1802")
@pytest.mark.parametrize(("edit", "what"), [
    (("common.proto", r"bool retriable = 3;", "repeated bool retriable = 3;"),
     "cardinality changed singular -> repeated"),
    (("common.proto", r"bool retriable = 3;", "optional bool retriable = 3;"),
     "cardinality changed singular -> optional (explicit presence)"),
    (("orchestrator.proto", GET_TASK, "rpc GetTask(GetTaskRequest) returns (stream Task);"),
     "streaming changed unary -> server streaming"),
    (("orchestrator.proto", GET_TASK, "rpc GetTask(GetTaskRequest) returns (Session);"),
     "response type changed llorch.v1.Task -> llorch.v1.Session"),
], ids=["repeated", "presence", "streaming", "response-type"])
def test_breaking_shape_changes(tmp_path: Path, edit: Edit, what: str) -> None:
    [change] = _proto_changes(tmp_path, edit)
    assert change.breaking and change.what == what


@pytest.mark.req("CTR-1014")
def test_new_optional_field_is_compatible(tmp_path: Path) -> None:
    changes = _proto_changes(tmp_path, ("common.proto", r"string policy_label = 6;",
                                        "string policy_label = 6;\n  optional string hint = 7;"))
    assert changes == [Change("proto", "llorch.v1.ErrorDetail.hint", "field 7 added", False)]


@pytest.mark.req("CTR-1014")
def test_new_rpc_is_compatible(tmp_path: Path) -> None:
    changes = _proto_changes(tmp_path, ("orchestrator.proto", f"({GET_TASK})",
                                        r"\1\n  rpc GetTaskAgain(GetTaskRequest) returns (Task);"))
    assert changes == [Change("proto", "llorch.v1.OrchestratorService.GetTaskAgain", "RPC added", False)]


def test_unchanged_proto_has_no_changes() -> None:
    assert compare_proto(descriptor_set(PROTO), descriptor_set(PROTO)) == []


# ----------------------------------------------------------------------------------------- OpenAPI

def _openapi() -> dict[str, Any]:
    """A small document in FastAPI's shape: $ref components, pydantic's anyOf-null optionals."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1.0"},
        "paths": {
            "/v1/tasks": {"post": {
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/TaskRequest"}}}},
                "responses": {
                    "202": {"description": "accepted", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Accepted"}}}},
                    "429": {"description": "overloaded"},
                },
            }},
            "/v1/tasks/{task_id}": {
                "get": {"parameters": [{"name": "task_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "task"}}},
                "delete": {"parameters": [{"name": "task_id", "in": "path", "required": True,
                                           "schema": {"type": "string"}}],
                           "responses": {"200": {"description": "cancelled"}}},
            },
        },
        "components": {"schemas": {
            "TaskRequest": {"type": "object", "additionalProperties": False, "required": ["prompt"],
                            "properties": {
                                "prompt": {"type": "string"},
                                "priority": {"type": "string", "enum": ["low", "normal", "high"]},
                                "max_tokens": {"anyOf": [{"type": "integer", "maximum": 4096},
                                                         {"type": "null"}]},
                            }},
            "Accepted": {"type": "object", "required": ["task_id"],
                         "properties": {"task_id": {"type": "string"}, "position": {"type": "integer"}}},
        }},
    }


def _changed(edit: Any) -> list[Change]:
    """Apply ``edit`` to a copy, check the result is still a valid document, and classify."""
    doc = copy.deepcopy(_openapi())
    edit(doc)
    validate_openapi(doc)
    return compare_openapi(_openapi(), doc)


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]  # type: ignore[no-any-return]


def _add_required(doc: dict[str, Any]) -> None:
    _schemas(doc)["TaskRequest"]["properties"]["tenant"] = {"type": "string"}
    _schemas(doc)["TaskRequest"]["required"].append("tenant")


BODY = "POST /v1/tasks request body"
RESPONSE = "POST /v1/tasks response 202 body"


def test_fixture_document_is_valid_and_unchanged_has_no_changes() -> None:
    validate_openapi(_openapi())
    assert compare_openapi(_openapi(), _openapi()) == []


@pytest.mark.req("CTR-1013")
@pytest.mark.parametrize(("edit", "where", "what"), [
    (_add_required, f"{BODY}.tenant", "required request property added"),
    (lambda d: d["paths"].pop("/v1/tasks/{task_id}"), "/v1/tasks/{task_id}", "path removed"),
    (lambda d: d["paths"]["/v1/tasks/{task_id}"].pop("delete"), "DELETE /v1/tasks/{task_id}",
     "operation removed"),
    (lambda d: d["paths"]["/v1/tasks"]["post"]["responses"].pop("429"), "POST /v1/tasks response 429",
     "response status removed"),
    (lambda d: _schemas(d)["TaskRequest"]["properties"]["priority"]["enum"].remove("low"),
     f"{BODY}.priority", 'enum value(s) removed: "low"'),
    (lambda d: _schemas(d)["TaskRequest"]["required"].append("priority"), f"{BODY}.priority",
     "request property became required"),
], ids=["new-required-property", "removed-path", "removed-operation", "removed-status", "narrowed-enum",
        "became-required"])
def test_breaking_openapi_changes(edit: Any, where: str, what: str) -> None:
    assert _changed(edit) == [Change("openapi", where, what, True)]


@pytest.mark.req("CTR-1803")
@pytest.mark.parametrize(("edit", "where", "what"), [
    (lambda d: _schemas(d)["Accepted"]["properties"].pop("position"), f"{RESPONSE}.position",
     "response property removed"),
    (lambda d: _schemas(d)["Accepted"]["properties"].update(position={"type": "string"}),
     f"{RESPONSE}.position", "type changed ['integer'] -> ['string']"),
    (lambda d: _schemas(d)["TaskRequest"]["properties"]["max_tokens"]["anyOf"][0].update(maximum=512),
     f"{BODY}.max_tokens", "maximum tightened 4096 -> 512"),
    (lambda d: _schemas(d)["TaskRequest"]["properties"].update(
        max_tokens={"type": "integer", "maximum": 4096}),
     f"{BODY}.max_tokens", "no longer accepts null"),
], ids=["removed-response-property", "changed-type", "tightened-bound", "lost-null"])
def test_breaking_schema_changes(edit: Any, where: str, what: str) -> None:
    assert _changed(edit) == [Change("openapi", where, what, True)]


@pytest.mark.req("CTR-1014")
@pytest.mark.parametrize(("edit", "where", "what"), [
    (lambda d: _schemas(d)["TaskRequest"]["properties"].update(seed={"type": "integer"}), f"{BODY}.seed",
     "optional request property added"),
    (lambda d: d["paths"].update({"/v1/pools": {"get": {"responses": {"200": {"description": "pools"}}}}}),
     "/v1/pools", "path added"),
], ids=["new-optional-property", "new-path"])
def test_compatible_openapi_changes(edit: Any, where: str, what: str) -> None:
    assert _changed(edit) == [Change("openapi", where, what, False)]


@pytest.mark.req("CTR-1803")
def test_new_response_property_and_widened_request_enum_are_compatible() -> None:
    def edit(doc: dict[str, Any]) -> None:
        _schemas(doc)["Accepted"]["properties"]["eta_ms"] = {"type": "integer"}
        _schemas(doc)["TaskRequest"]["properties"]["priority"]["enum"].append("urgent")

    assert _changed(edit) == [
        Change("openapi", f"{BODY}.priority", 'enum value(s) added: "urgent"', False),
        Change("openapi", f"{RESPONSE}.eta_ms", "optional response property added", False),
    ]


# ------------------------------------------------------------------------------------ config schema

def _config() -> dict[str, Any]:
    return {"$defs": {"Pool": {"type": "object", "additionalProperties": False, "required": ["id"],
                               "properties": {"id": {"type": "string"}, "slots": {"type": "integer"}}}},
            "type": "object", "additionalProperties": False,
            "properties": {"pools": {"type": "array", "items": {"$ref": "#/$defs/Pool"}}}}


@pytest.mark.req("CTR-1804")
def test_config_schema_is_compared_as_input() -> None:
    new = copy.deepcopy(_config())
    pool = new["$defs"]["Pool"]
    del pool["properties"]["slots"]
    pool["properties"]["engine"] = {"type": "string"}
    pool["properties"]["weight"] = {"type": "number"}
    pool["required"].append("engine")
    validate_json_schema(new)
    assert compare_config_schema(_config(), new) == [
        Change("config-schema", "config.pools[].engine", "required request property added", True),
        Change("config-schema", "config.pools[].slots", "request property removed", True),
        Change("config-schema", "config.pools[].weight", "optional request property added", False),
    ]


@pytest.mark.req("CTR-1803")
def test_literal_and_union_members_in_requests() -> None:
    def with_kind(kind: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(_openapi())
        _schemas(doc)["TaskRequest"]["properties"].update(kind=kind, message=message)
        _schemas(doc).update(Text={"type": "object", "properties": {"text": {"type": "string"}}},
                             Image={"type": "object", "properties": {"url": {"type": "string"}}})
        validate_openapi(doc)
        return doc

    text, image = {"$ref": "#/components/schemas/Text"}, {"$ref": "#/components/schemas/Image"}
    old = with_kind({"const": "chat", "type": "string"}, {"oneOf": [text]})
    new = with_kind({"enum": ["chat", "completion"], "type": "string"}, {"oneOf": [text, image]})
    assert compare_openapi(old, new) == [
        Change("openapi", f"{BODY}.kind", 'enum value(s) added: "completion"', False),
        Change("openapi", f"{BODY}.message", "oneOf member Image added", False),
    ]
    assert compare_openapi(new, old) == [
        Change("openapi", f"{BODY}.kind", 'enum value(s) removed: "completion"', True),
        Change("openapi", f"{BODY}.message", "oneOf member Image removed", True),
    ]


@pytest.mark.req("CTR-1013")
def test_planted_changes_on_the_exported_document() -> None:
    path = resources.contracts_dir() / "openapi" / "openapi.json"
    if not path.is_file():
        pytest.skip("contracts/openapi/openapi.json is not exported yet")
    real = json.loads(path.read_text())
    assert compare_openapi(real, real) == []
    removed = copy.deepcopy(real)
    gone = sorted(removed["paths"])[0]
    del removed["paths"][gone]
    assert compare_openapi(real, removed) == [Change("openapi", gone, "path removed", True)]
    body_ref = next(op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    for item in real["paths"].values() for op in item.values()
                    if isinstance(op, dict) and "requestBody" in op)
    stricter = copy.deepcopy(real)
    schema = stricter["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    schema.setdefault("properties", {})["planted"] = {"type": "string"}
    schema.setdefault("required", []).append("planted")
    validate_openapi(stricter)
    changes = compare_openapi(real, stricter)
    assert changes and all(c.breaking and c.what == "required request property added"
                           and c.where.endswith(".planted") for c in changes)
