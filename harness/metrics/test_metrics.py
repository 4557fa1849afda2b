"""``GET /metrics`` against the metrics contract: names, types, labels, buckets, and counter deltas."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from llorch.harness.clients import wait_until
from prometheus_client.parser import text_string_to_metric_families

from llorch import resources

QUIESCE_S = 20.0


@dataclass(frozen=True)
class Spec:
    name: str
    type: str
    labels: frozenset[str]
    buckets: tuple[float, ...] = ()

    @property
    def family(self) -> str:
        """The family name a Prometheus parser reports (counters lose their ``_total``)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


@pytest.fixture(scope="module")
def contract() -> dict[str, Spec]:
    path = resources.contracts_dir() / "metrics" / "metrics.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {m["name"]: Spec(m["name"], m["type"], frozenset(m.get("labels") or ()),
                            tuple(float(b) for b in m.get("buckets") or ())) for m in data["metrics"]}


def scrape(http: Any) -> dict[str, Any]:
    """Family name → parsed family."""
    resp = http.get("/metrics")
    assert resp.status_code == 200, f"[MET-1001] /metrics answered {resp.status_code}"
    return {fam.name: fam for fam in text_string_to_metric_families(resp.text)}


def total(families: Mapping[str, Any], spec: Spec, suffix: str = "_total", **labels: str) -> float:
    fam = families.get(spec.family)
    if fam is None:
        return 0.0
    name = spec.name if spec.type != "counter" else spec.family + suffix
    return sum(s.value for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def quiescent(http: Any, contract: Mapping[str, Spec]) -> bool:
    """No task queued or running anywhere on the target: deltas then belong to this test alone."""
    fams = scrape(http)
    return (total(fams, contract["queue_depth"]) == 0
            and total(fams, contract["slots_free"]) == total(fams, contract["slots_total"]))


def _traffic(api: Any, n: int = 3) -> int:
    streamed = 0
    for i in range(n):
        task = api.submit_ok(max_tokens=4 + i)
        events = api.sse_events(task["task_id"])
        assert events and events[-1].kind == "end", f"task did not complete: {events[-1:]}"
        streamed += sum(e.count for e in events if e.kind == "token")
    return streamed


@pytest.mark.req("MET-1001")
def test_exposition_format(http: Any) -> None:
    resp = http.get("/metrics")
    assert resp.status_code == 200, f"[MET-1001] status {resp.status_code}"
    assert resp.headers.get("content-type", "").startswith("text/plain"), (
        f"[MET-1001] content-type {resp.headers.get('content-type')!r}")
    assert "version=0.0.4" in resp.headers.get("content-type", ""), "[MET-1001] not exposition format 0.0.4"
    assert list(text_string_to_metric_families(resp.text)), "[MET-1001] no metric families"


@pytest.mark.req("MET-1002", "MET-1003", "MET-1004", "MET-1007")
def test_metrics_match_the_contract(api: Any, http: Any, contract: dict[str, Spec]) -> None:
    _traffic(api, 1)  # so that labelled series exist
    fams = scrape(http)
    by_sample_name = {s.name: fam for fam in fams.values() for s in fam.samples}
    problems: list[str] = []
    for spec in contract.values():
        fam = fams.get(spec.family)
        if fam is None or fam.type != spec.type:
            found = by_sample_name.get(spec.name) or fams.get(spec.name)
            problems.append(f"[MET-1002] {spec.name}: type {found.type if found else 'missing'}, "
                            f"contract {spec.type}")
            continue
        if spec.type != "counter" and not fam.samples:
            problems.append(f"[MET-1003] {spec.name}: no series after traffic, labels unchecked")
        for sample in fam.samples:
            labels = set(sample.labels) - {"le", "quantile"}
            if labels != spec.labels:
                problems.append(f"[MET-1003] {sample.name}: labels {sorted(labels)}, "
                                f"contract {sorted(spec.labels)}")
                break
        if spec.type == "histogram":
            les = sorted({float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")})
            if tuple(b for b in les if not math.isinf(b)) != spec.buckets:
                problems.append(f"[MET-1004] {spec.name}: buckets {les}, contract {list(spec.buckets)}")
    assert not any("canceled" in name for name in fams), "[MET-1007] a metric spells 'canceled'"
    assert not problems, "\n".join(problems)


@pytest.mark.req("MET-1021")
def test_histograms_are_consistent(api: Any, http: Any, contract: dict[str, Spec]) -> None:
    _traffic(api, 1)
    fams = scrape(http)
    for spec in (s for s in contract.values() if s.type == "histogram"):
        fam = fams.get(spec.family)
        assert fam is not None, f"[MET-1021] {spec.name} missing"
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for s in fam.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                series.setdefault(key, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                counts[key] = s.value
        for key, buckets in series.items():
            values = [v for _, v in sorted(buckets)]
            assert values == sorted(values), f"[MET-1021] {spec.name}{dict(key)} buckets decrease: {values}"
            assert counts.get(key) == values[-1], f"[MET-1021] {spec.name}{dict(key)} _count != +Inf bucket"


@pytest.mark.req("MET-1008", "MET-1009", "MET-1010", "MET-1012", "MET-1015")
def test_counters_move_exactly_with_traffic(api: Any, http: Any, contract: dict[str, Spec]) -> None:
    assert wait_until(lambda: quiescent(http, contract), QUIESCE_S), "the target never became idle"
    before = scrape(http)
    again = scrape(http)
    for name in ("tasks_enqueued_total", "tokens_out_total", "tasks_completed_total"):
        assert total(again, contract[name]) == total(before, contract[name]), (
            f"[MET-1015] a scrape moved {name}")
    streamed = _traffic(api, 3)
    assert wait_until(lambda: quiescent(http, contract), QUIESCE_S), "the target never became idle"
    after = scrape(http)

    def delta(name: str) -> float:
        return total(after, contract[name]) - total(before, contract[name])

    assert delta("tasks_enqueued_total") == 3, (
        f"[MET-1008] tasks_enqueued_total moved {delta('tasks_enqueued_total')}")
    assert delta("tasks_started_total") == 3, (
        f"[MET-1009] tasks_started_total moved {delta('tasks_started_total')}")
    assert delta("tasks_completed_total") == 3, (
        f"[MET-1010] tasks_completed_total moved {delta('tasks_completed_total')}")
    assert delta("tokens_out_total") == streamed, (
        f"[MET-1012] tokens_out_total moved {delta('tokens_out_total')}, {streamed} tokens were streamed")


@pytest.mark.req("MET-1017", "MET-1018")
def test_slot_gauges_match_pools(api: Any, http: Any, contract: dict[str, Spec]) -> None:
    assert wait_until(lambda: quiescent(http, contract), QUIESCE_S), "the target never became idle"
    pools = api.request("GET", "/v1/pools").json()["pools"]
    fams = scrape(http)
    assert any(pool.get("replicas") for pool in pools), f"GET /v1/pools lists no replica to compare: {pools}"
    for pool in pools:
        for rep in pool.get("replicas") or []:
            labels = {"pool_id": pool["pool_id"], "replica_id": rep["replica_id"]}
            assert total(fams, contract["slots_total"], **labels) == rep["total_slots"], (
                f"[MET-1017] slots_total {labels}")
            assert total(fams, contract["slots_free"], **labels) == rep["free_slots"], (
                f"[MET-1017] slots_free {labels}")
        ready = total(fams, contract["pool_ready"], pool_id=pool["pool_id"])
        assert ready == (1 if pool["ready"] else 0), f"[MET-1018] pool_ready {ready} for {pool['pool_id']}"


@pytest.mark.req("MET-1010", "MET-1012")
def test_a_cancel_moves_the_cancelled_counter_and_counts_its_tokens(
        api: Any, http: Any, orchestrator: Any, contract: dict[str, Spec]) -> None:
    assert wait_until(lambda: quiescent(http, contract), QUIESCE_S), "the target never became idle"
    before = scrape(http)
    limit = min(4000, int(orchestrator.capabilities.get("max_tokens_limit") or 4000))
    sub = api.grpc_submit(max_tokens=limit)
    col = api.collect(sub.task_id)
    try:
        assert col.wait_for(lambda evs: any(e.WhichOneof("kind") == "token" for e in evs)), (
            f"no tokens streamed: {col.kinds()}")
        assert api.cancel(sub.task_id).status_code == 200
        assert col.wait_done(QUIESCE_S), "the cancelled stream never ended"
    finally:
        col.close()
    events = col.checked()
    assert events[-1].kind == "cancelled", f"the task was not cancelled: {events[-1]}"
    streamed = sum(e.count for e in events if e.kind == "token")
    assert wait_until(lambda: quiescent(http, contract), QUIESCE_S), "the target never became idle"
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return total(after, contract[name], **labels) - total(before, contract[name], **labels)

    cancelled = delta("tasks_cancelled_total", reason="client")
    assert cancelled == 1, f"[MET-1010] tasks_cancelled_total{{reason=client}} moved {cancelled}"
    assert delta("tasks_completed_total") == 0, "[MET-1010] a cancelled task counted as completed"
    assert delta("tokens_out_total") == streamed, (
        f"[MET-1012] tokens_out_total moved {delta('tokens_out_total')}, {streamed} tokens were streamed "
        "before the cancel")
