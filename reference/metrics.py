"""Prometheus metrics, registered from the contract table ``contracts/metrics/metrics.yaml``.

The table is the source of truth (DECISIONS D11): every metric here is created from a table row
with the row's type, labels and buckets, and the typed helpers below look their metric up by a
name that must be in the table, so the code cannot expose a name the contract does not list.
Gauges that mirror state (queue depth, slots, pool readiness) are not updated by the runtime:
a collector reads them from the queue and pool statistics at scrape time, so they cannot drift
and a scrape changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import yaml
from llorch.reference.core.types import Priority
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The `<name>_created` series are not in the contract (MET-1005).
prometheus_client.disable_created_metrics()

SCRAPED_GAUGES = frozenset({"queue_depth", "slots_total", "slots_free", "pool_ready"})


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsTable:
    metrics: Mapping[str, MetricSpec]
    label_values: Mapping[str, tuple[str, ...]]


def table_path() -> Path:
    from llorch.resources import contracts_dir

    return contracts_dir() / "metrics" / "metrics.yaml"


def load_table(path: Path | None = None) -> MetricsTable:
    data = yaml.safe_load((path or table_path()).read_text(encoding="utf-8"))
    specs: dict[str, MetricSpec] = {}
    for row in data["metrics"]:
        spec = MetricSpec(name=row["name"], type=row["type"], help=row["help"],
                          labels=tuple(row.get("labels", ())),
                          buckets=tuple(float(b) for b in row.get("buckets", ())))
        if spec.type not in ("counter", "gauge", "histogram"):
            raise ValueError(f"metrics table: {spec.name} has unknown type {spec.type}")
        if spec.name in specs:
            raise ValueError(f"metrics table: duplicate {spec.name}")
        specs[spec.name] = spec
    values = {k: tuple(v) for k, v in (data.get("label_values") or {}).items()}
    return MetricsTable(specs, values)


@dataclass(frozen=True, slots=True)
class SlotSample:
    pool_id: str
    replica_id: str
    total: int
    free: int


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the scraped gauges show; the runtime provides it from queue and pool statistics."""

    queue_depth: Mapping[Priority, int]
    slots: tuple[SlotSample, ...]
    pool_ready: Mapping[str, bool]


def priority_label(priority: Priority) -> str:
    return Priority(priority).name.lower()


class _StateCollector(Collector):
    def __init__(self, table: MetricsTable, snapshot: Callable[[], StateSnapshot]) -> None:
        self._table = table
        self._snapshot = snapshot

    def _family(self, name: str) -> GaugeMetricFamily:
        spec = self._table.metrics[name]
        return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))

    def collect(self) -> Iterator[Metric]:
        # req: MET-1016, MET-1017, MET-1018
        snap = self._snapshot()
        depth = self._family("queue_depth")
        for prio in Priority:
            depth.add_metric([priority_label(prio)], snap.queue_depth.get(prio, 0))
        total, free = self._family("slots_total"), self._family("slots_free")
        for s in snap.slots:
            total.add_metric([s.pool_id, s.replica_id], s.total)
            free.add_metric([s.pool_id, s.replica_id], s.free)
        ready = self._family("pool_ready")
        for pool_id, ok in snap.pool_ready.items():
            ready.add_metric([pool_id], 1.0 if ok else 0.0)
        yield from (depth, total, free, ready)

    def describe(self) -> Iterable[Metric]:
        return [self._family(n) for n in sorted(SCRAPED_GAUGES)]


class Metrics:
    """The orchestrator's metrics: a registry built from the table, plus typed helpers."""

    def __init__(self, snapshot: Callable[[], StateSnapshot], *, table: MetricsTable | None = None,
                 pools: Mapping[str, Iterable[str]] | None = None) -> None:
        self.table = table or load_table()
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {}
        for spec in self.table.metrics.values():
            if spec.type == "counter":
                if not spec.name.endswith("_total"):
                    raise ValueError(f"counter {spec.name} must end in _total")
                self._metrics[spec.name] = Counter(spec.name.removesuffix("_total"), spec.help,
                                                   spec.labels, registry=self.registry)
            elif spec.type == "histogram":
                self._metrics[spec.name] = Histogram(spec.name, spec.help, spec.labels,
                                                     buckets=spec.buckets, registry=self.registry)
            elif spec.name not in SCRAPED_GAUGES:
                raise ValueError(f"gauge {spec.name} has no source in the reference")
        missing = SCRAPED_GAUGES - set(self.table.metrics)
        if missing:
            raise ValueError(f"metrics table lacks {sorted(missing)}")
        self.registry.register(_StateCollector(self.table, snapshot))
        self._init_series(pools or {})

    def _get(self, name: str) -> Any:
        return self._metrics[name]  # KeyError = a name the table does not list

    def _init_series(self, pools: Mapping[str, Iterable[str]]) -> None:
        """Zero-valued series for every configured pool and replica (MET-1022)."""
        prios = [priority_label(p) for p in Priority]
        for prio in prios:
            self._get("tasks_enqueued_total").labels(prio)
            self._get("tasks_expired_total").labels(prio)
        for pool_id, replicas in pools.items():
            self._get("tokens_in_total").labels(pool_id)
            self._get("tokens_out_total").labels(pool_id)
            for prio in prios:
                self._get("tasks_completed_total").labels(pool_id, prio)
            for replica_id in replicas:
                for prio in prios:
                    self._get("tasks_started_total").labels(pool_id, replica_id, prio)

    def add_pool(self, pool_id: str, replicas: Iterable[str]) -> None:
        self._init_series({pool_id: list(replicas)})

    # ---- helpers the runtime calls ------------------------------------------------------------

    def enqueued(self, priority: Priority) -> None:
        # req: MET-1008
        self._get("tasks_enqueued_total").labels(priority_label(priority)).inc()

    def rejected(self, code: str, *, backpressure: bool = False) -> None:
        # req: MET-1011, MET-1014
        self._get("tasks_rejected_total").labels(code).inc()
        if backpressure:
            self._get("admission_backpressure_events_total").labels(code.lower()).inc()

    def started(self, pool_id: str, replica_id: str, priority: Priority, tokens_in: int) -> None:
        # req: MET-1009, MET-1013
        self._get("tasks_started_total").labels(pool_id, replica_id, priority_label(priority)).inc()
        if tokens_in:
            self._get("tokens_in_total").labels(pool_id).inc(tokens_in)

    def tokens_out(self, pool_id: str, count: int) -> None:
        # req: MET-1012
        self._get("tokens_out_total").labels(pool_id).inc(count)

    def first_token(self, pool_id: str, priority: Priority, ms: float) -> None:
        # req: MET-1019
        self._get("latency_first_token_ms").labels(pool_id, priority_label(priority)).observe(ms)

    def completed(self, pool_id: str, priority: Priority, decode_ms: float | None) -> None:
        # req: MET-1010, MET-1020
        self._get("tasks_completed_total").labels(pool_id, priority_label(priority)).inc()
        if decode_ms is not None:
            self._get("latency_decode_ms").labels(pool_id).observe(decode_ms)

    def cancelled(self, priority: Priority, reason: str) -> None:
        self._get("tasks_cancelled_total").labels(priority_label(priority), reason).inc()

    def failed(self, priority: Priority, code: str) -> None:
        self._get("tasks_failed_total").labels(priority_label(priority), code).inc()

    def expired(self, priority: Priority) -> None:
        self._get("tasks_expired_total").labels(priority_label(priority)).inc()


__all__ = ["SCRAPED_GAUGES", "MetricSpec", "Metrics", "MetricsTable", "SlotSample", "StateSnapshot",
           "load_table", "priority_label", "table_path"]
