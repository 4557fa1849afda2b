"""The metrics registry is built from the contract table and shows nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from llorch.reference.core.types import Priority
from llorch.reference.metrics import Metrics, SlotSample, StateSnapshot, load_table
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

SNAP = StateSnapshot({Priority.HIGH: 2}, (SlotSample("p", "p-r0", 4, 3),), {"p": True})


def families(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def exposed_name(name: str, kind: str) -> str:
    return name.removesuffix("_total") if kind == "counter" else name


@pytest.mark.req("MET-1001", "MET-1002", "MET-1003", "MET-1004", "MET-1005")
def test_exposition_matches_the_table_exactly():
    metrics = Metrics(lambda: SNAP, pools={"p": ["p-r0"]})
    metrics.first_token("p", Priority.LOW, 3.0)
    metrics.completed("p", Priority.LOW, 12.0)
    metrics.rejected("RATE_LIMITED", backpressure=True)
    table = load_table()
    found = families(metrics)
    expected = {exposed_name(s.name, s.type): s for s in table.metrics.values()}
    assert set(found) == set(expected)  # nothing missing, nothing extra (no *_created series)
    for name, fam in found.items():
        spec = expected[name]
        assert fam.type == spec.type  # type: ignore[attr-defined]
        for sample in fam.samples:  # type: ignore[attr-defined]
            labels = set(sample.labels) - {"le"}
            if sample.labels or spec.labels:
                assert labels == set(spec.labels), (name, sample)
        if spec.type == "histogram":
            les = sorted({float(s.labels["le"]) for s in fam.samples if "le" in s.labels})  # type: ignore[attr-defined]
            assert les[:-1] == list(spec.buckets) and les[-1] == float("inf")


@pytest.mark.req("MET-1015", "MET-1016", "MET-1017", "MET-1018")
def test_state_gauges_are_read_at_scrape_time_and_a_scrape_changes_nothing():
    state = {"snap": SNAP}
    metrics = Metrics(lambda: state["snap"], pools={"p": ["p-r0"]})
    first = generate_latest(metrics.registry)
    assert first == generate_latest(metrics.registry)
    reg = metrics.registry
    assert reg.get_sample_value("queue_depth", {"priority": "high"}) == 2
    assert reg.get_sample_value("queue_depth", {"priority": "low"}) == 0
    assert reg.get_sample_value("slots_free", {"pool_id": "p", "replica_id": "p-r0"}) == 3
    assert reg.get_sample_value("pool_ready", {"pool_id": "p"}) == 1
    state["snap"] = StateSnapshot({}, (SlotSample("p", "p-r0", 4, 4),), {"p": False})
    assert reg.get_sample_value("slots_free", {"pool_id": "p", "replica_id": "p-r0"}) == 4
    assert reg.get_sample_value("pool_ready", {"pool_id": "p"}) == 0


@pytest.mark.req("MET-1022")
def test_series_of_configured_pools_exist_before_traffic():
    metrics = Metrics(lambda: SNAP, pools={"p": ["p-r0", "p-r1"]})
    reg = metrics.registry
    assert reg.get_sample_value("tokens_out_total", {"pool_id": "p"}) == 0
    assert reg.get_sample_value("tasks_started_total",
                                {"pool_id": "p", "replica_id": "p-r1", "priority": "normal"}) == 0


def test_a_name_outside_the_table_cannot_be_registered(tmp_path: Path):
    table = tmp_path / "m.yaml"
    table.write_text("metrics:\n  - {name: surprise_gauge, type: gauge, help: x, labels: []}\n",
                     encoding="utf-8")
    with pytest.raises(ValueError, match="surprise_gauge"):
        Metrics(lambda: SNAP, table=load_table(table))
    metrics = Metrics(lambda: SNAP)
    with pytest.raises(KeyError):
        metrics._get("tasks_unknown_total")


@pytest.mark.req("MET-1006")
def test_label_values_come_from_closed_lists():
    table = load_table()
    metrics = Metrics(lambda: SNAP, pools={"p": ["p-r0"]})
    metrics.cancelled(Priority.HIGH, "drain")
    metrics.failed(Priority.LOW, "ENGINE_ERROR")
    metrics.rejected("BUDGET_EXCEEDED", backpressure=True)
    for fam in families(metrics).values():
        for sample in fam.samples:  # type: ignore[attr-defined]
            for label, value in sample.labels.items():
                if label in table.label_values:
                    assert value in table.label_values[label], (label, value)
