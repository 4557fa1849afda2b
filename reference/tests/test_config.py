"""The strict configuration: unknown fields and coercions refused, defaults, the exported schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from llorch.reference.config import (
    Config,
    config_json_schema,
    default_config,
    load_config,
    parse_config,
)
from llorch.reference.errors import InvalidParams


def minimal(**extra: Any) -> dict[str, Any]:
    return {"pools": [{"id": "p", "model": "m"}], **extra}


@pytest.mark.req("CFG-1001")
@pytest.mark.parametrize("data, name", [
    (minimal(surprise=1), "surprise"),
    (minimal(queue={"capacity": 4, "policy": "reject"}), "policy"),
    ({"pools": [{"id": "p", "model": "m", "mock": {"tokens_per_second": 5}}]}, "tokens_per_second"),
])
def test_unknown_field_at_any_level_is_refused_naming_it(data, name):
    with pytest.raises(InvalidParams) as info:
        parse_config(data)
    assert "Extra inputs are not permitted" in info.value.message
    assert name in info.value.message


@pytest.mark.req("CFG-1002", "CFG-1003")
@pytest.mark.parametrize("section, value", [
    ({"queue": {"capacity": "8"}}, "capacity"),          # string for an integer
    ({"auth": {"allow_tenant_header": 1}}, "allow_tenant_header"),  # number for a boolean
    ({"queue": {"capacity": True}}, "capacity"),         # boolean for an integer
    ({"queue": {"capacity": 0}}, "capacity"),            # out of range
    ({"server": {"grpc_port": 70000}}, "grpc_port"),
])
def test_wrong_types_and_ranges_are_refused_without_coercion(section, value):
    with pytest.raises(InvalidParams) as info:
        parse_config(minimal(**section))
    assert value in info.value.message


@pytest.mark.req("CFG-1004")
@pytest.mark.parametrize("pools", [
    [],
    [{"id": "p", "model": "m"}, {"id": "p", "model": "n"}],
    [{"id": "p", "model": "m", "replicas": [{"id": "x"}, {"id": "x"}]}],
    [{"id": "p", "model": "m", "replicas": []}],
])
def test_bad_pool_layouts_are_refused(pools):
    with pytest.raises(InvalidParams):
        parse_config({"pools": pools})


@pytest.mark.req("CFG-1009")
def test_default_config_is_loopback_with_mock_pool():
    cfg = default_config()
    assert (cfg.server.host, cfg.server.grpc_port, cfg.server.http_port) == ("127.0.0.1", 50051, 8700)
    assert cfg.pools and all(p.engine == "mock" for p in cfg.pools)


def test_load_config_reads_yaml_and_json(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("queue:\n  capacity: 7\n  full_policy: drop-lru\npools:\n  - id: a\n    model: m\n"
                 "    replicas: 3\n", encoding="utf-8")
    cfg = load_config(y)
    assert cfg.queue.capacity == 7 and cfg.queue.full_policy == "drop-lru"
    assert [r.id for r in cfg.pools[0].replica_list()] == ["a-r0", "a-r1", "a-r2"]
    j = tmp_path / "c.json"
    j.write_text(json.dumps(minimal(limits={"max_tokens": 9})), encoding="utf-8")
    assert load_config(j).limits.max_tokens == 9


def _objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append(node)
        for v in node.values():
            found += _objects(v)
    elif isinstance(node, list):
        for v in node:
            found += _objects(v)
    return found


@pytest.mark.req("CFG-1006", "CFG-1008")
def test_schema_forbids_extra_properties_and_describes_every_field():
    schema = config_json_schema()
    objects = _objects(schema)
    assert len(objects) >= 10
    for obj in objects:
        assert obj.get("additionalProperties") is False, obj.get("title")
        for name, prop in obj["properties"].items():
            assert prop.get("description"), f"{obj.get('title')}.{name} has no description"


@pytest.mark.req("CFG-1007", "CFG-1010")
def test_default_config_validates_against_the_schema_and_defaults_match():
    schema = config_json_schema()
    dumped = default_config().model_dump(mode="json")
    jsonschema.validate(dumped, schema)
    queue = schema["$defs"]["QueueConfig"]["properties"]
    assert queue["capacity"]["default"] == Config(pools=default_config().pools).queue.capacity
    assert queue["full_policy"]["default"] == "reject"


def test_tokens_need_exactly_one_secret_source():
    with pytest.raises(InvalidParams):
        parse_config(minimal(auth={"tokens": [{"tenant": "a"}]}))
    with pytest.raises(InvalidParams):
        parse_config(minimal(auth={"tokens": [{"tenant": "a", "token_env": "X", "token_sha256": "0" * 64}]}))
    cfg = parse_config(minimal(auth={"tokens": [{"tenant": "a", "token_env": "X"}]}))
    assert cfg.auth.required
