"""Rules of the contracts themselves: the proto sources are hand-written in ``llorch.v1``, the
committed generated files are what regeneration produces, metrics come only from their table, and
the OpenAPI contract bounds ``max_tokens``."""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from llorch.tools.contracts import ContractError, protogen
from llorch.tools.contracts.export import EXPORTERS
from llorch.tools.contracts.regen import PROTO_SRC, STUBS, find_root, regenerate
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llorch import resources


def _checkout_root() -> Path | None:
    try:
        return find_root()
    except ContractError:
        return None


ROOT = _checkout_root()
needs_checkout = pytest.mark.skipif(ROOT is None, reason="needs a source checkout")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything `llorch contracts regen` produces, written into a scratch directory."""
    assert ROOT is not None
    out = tmp_path_factory.mktemp("regen")
    regenerate(ROOT, out)
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ---- proto -----------------------------------------------------------------------------------


@needs_checkout
@pytest.mark.req("CTR-1001")
def test_proto_sources_are_hand_written_in_llorch_v1() -> None:
    assert ROOT is not None
    proto_dir = ROOT / PROTO_SRC
    entries = sorted(p.name for p in proto_dir.iterdir() if p.name != "__pycache__")
    generated = [n for n in entries if not n.endswith(".proto")]
    assert generated == [], f"generated or foreign files under {PROTO_SRC}/: {generated}"
    for name in entries:
        head = (proto_dir / name).read_text(encoding="utf-8")[:400]
        assert protogen.HEADER.strip() not in head and "DO NOT EDIT" not in head.upper(), \
            f"{name} says it is generated"
    parsed = protogen.descriptor_set(proto_dir)
    packages = {Path(f.name).name: f.package for f in parsed.file}
    assert set(packages) == set(entries)
    assert set(packages.values()) == {"llorch.v1"}, packages


@needs_checkout
@pytest.mark.req("CTR-1002")
def test_committed_stubs_equal_a_fresh_regeneration(fresh: Path) -> None:
    assert ROOT is not None
    committed, regenerated = _files(ROOT / STUBS), _files(fresh / STUBS)
    assert sorted(committed) == sorted(regenerated), "the stub files differ from what regen writes"
    changed = [name for name in committed if committed[name] != regenerated[name]]
    assert changed == [], f"stale stubs in {STUBS}/ (run `llorch contracts regen`): {changed}"


def _exporter(name: str) -> Any:
    return next(e for e in EXPORTERS if e.name == name)


@needs_checkout
@pytest.mark.req("CTR-1003")
def test_committed_openapi_equals_the_gateway_export(fresh: Path) -> None:
    assert ROOT is not None
    openapi = _exporter("openapi")
    assert openapi.target.startswith("llorch.reference.server.http"), "not exported from the gateway"
    assert (fresh / openapi.path).is_file(), "regeneration did not export the OpenAPI document"
    assert (ROOT / openapi.path).read_bytes() == (fresh / openapi.path).read_bytes(), \
        f"{openapi.path} is stale (run `llorch contracts regen`)"


# ---- OpenAPI bounds ----------------------------------------------------------------------------


# ``max_completion_tokens`` is the OpenAI chat route's newer spelling of the same limit
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


def _max_tokens_schemas(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema of a property that limits the tokens to generate, anywhere in the document."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name in LIMIT_FIELDS:
                if isinstance(props.get(name), dict):
                    yield f"{where}/properties/{name}", props[name]
        for key, value in node.items():
            yield from _max_tokens_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _max_tokens_schemas(value, f"{where}/{i}")


def _has_maximum(schema: dict[str, Any], document: dict[str, Any]) -> bool:
    """A bound on the integer: directly, or on every non-null branch of anyOf/oneOf, or via $ref."""
    if "maximum" in schema or "exclusiveMaximum" in schema:
        return True
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        return _has_maximum(target, document)
    for key in ("anyOf", "oneOf", "allOf"):
        branches = [b for b in schema.get(key, []) if b.get("type") != "null"]
        if branches:
            return any(_has_maximum(b, document) for b in branches) if key == "allOf" \
                else all(_has_maximum(b, document) for b in branches)
    return False


@needs_checkout
@pytest.mark.req("CTR-1007")
@pytest.mark.parametrize("source", ["committed", "exported"])
def test_openapi_bounds_every_max_tokens(source: str, fresh: Path) -> None:
    assert ROOT is not None
    path = _exporter("openapi").path
    document = json.loads(((ROOT if source == "committed" else fresh) / path).read_text())
    found = dict(_max_tokens_schemas(document))
    assert len(found) >= 3, f"expected the task, chat and completion limits, found {sorted(found)}"
    unbounded = [where for where, schema in found.items() if not _has_maximum(schema, document)]
    assert unbounded == [], f"max_tokens without a maximum at {unbounded}"


# ---- metrics -----------------------------------------------------------------------------------


def _exposed(spec_name: str, kind: str) -> str:
    """The family name prometheus_client exposes (a counter's ``_total`` is a sample suffix)."""
    return spec_name.removesuffix("_total") if kind == "counter" else spec_name


def _registry_names(registry: Any) -> set[str]:
    return {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}


def _table_names(path: Path) -> set[str]:
    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {_exposed(m["name"], m["type"]) for m in table["metrics"]}


@pytest.mark.req("CTR-1006")
def test_the_running_orchestrator_registers_exactly_the_table() -> None:
    from llorch.reference.config import load_config
    from llorch.reference.server.app import build_orchestrator, metrics_registry_of

    config = load_config(resources.contracts_dir() / "conformance" / "orchestrator.yaml")

    async def names() -> set[str]:
        orchestrator = await build_orchestrator(config)
        try:
            return _registry_names(metrics_registry_of(orchestrator))
        finally:
            await orchestrator.aclose()

    table = resources.contracts_dir() / "metrics" / "metrics.yaml"
    assert asyncio.run(names()) == _table_names(table)


@pytest.mark.req("CTR-1006")
def test_metrics_follow_the_table_they_are_built_from(tmp_path: Path) -> None:
    from llorch.reference.metrics import Metrics, StateSnapshot, load_table

    data = yaml.safe_load((resources.contracts_dir() / "metrics" / "metrics.yaml").read_text())
    data["metrics"].append({"name": "selftest_added_total", "type": "counter", "help": "Added by a test.",
                            "labels": []})
    for spec in data["metrics"]:
        spec["help"] = f"edited: {spec['help']}"
    edited = tmp_path / "metrics.yaml"
    edited.write_text(yaml.safe_dump(data))
    metrics = Metrics(lambda: StateSnapshot({}, (), {}), table=load_table(edited))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert set(families) == _table_names(edited)
    assert all(f.documentation.startswith("edited: ") for f in families.values())


_METRIC_CONSTRUCTORS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "GaugeMetricFamily",
                        "CounterMetricFamily", "HistogramMetricFamily", "SummaryMetricFamily",
                        "InfoMetricFamily", "StateSetMetricFamily", "UnknownMetricFamily"}


@needs_checkout
@pytest.mark.req("CTR-1006")
def test_no_module_but_the_table_loader_defines_a_metric() -> None:
    assert ROOT is not None
    loader = ROOT / "reference" / "metrics.py"
    offenders: list[str] = []
    for path in sorted((ROOT / "reference").rglob("*.py")):
        if path == loader or "tests" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                              if a.name in _METRIC_CONSTRUCTORS]
            elif isinstance(node, ast.Attribute) and node.attr in _METRIC_CONSTRUCTORS \
                    and isinstance(node.value, ast.Name) and node.value.id == "prometheus_client":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} prometheus_client.{node.attr}")
    assert offenders == [], offenders
