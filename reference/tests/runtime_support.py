"""Shared pieces of the runtime, pool and store tests: mock engines on a manual clock, bounded
waiting on observable state, and an event-grammar check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from llorch.reference.adapters.mock import ManualClock, MockAdapter
from llorch.reference.config import Config, MockEngineConfig, PoolConfig, ReplicaConfig, parse_config
from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    Failed,
    Identity,
    Queued,
    Started,
    TaskEvent,
    TokenOut,
)
from llorch.reference.runtime.orchestrator import Orchestrator

ALICE = Identity(tenant="alice")
BOB = Identity(tenant="bob", admin=False)


class Engines:
    """Adapter factory that keeps every mock it built (the sideband tests inspect)."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.built: list[MockAdapter] = []

    def __call__(self, pool: PoolConfig, replica: ReplicaConfig, model: str) -> MockAdapter:
        adapter = MockAdapter(model, pool.mock, slots=pool.slots_per_replica, clock=self.clock,
                              replica_id=replica.id)
        self.built.append(adapter)
        return adapter

    def current(self, replica_id: str) -> MockAdapter:
        return [a for a in self.built if a.replica_id == replica_id][-1]

    def requests(self) -> list[str]:
        """Request ids in the order the engines received them."""
        return [r.request_id for a in self.built for r in a.stats.requests]


def config(*, tokens_per_s: float = 0, ttft_ms: int = 0, replicas: int = 1, slots: int = 1,
           pools: list[dict[str, Any]] | None = None, **sections: Any) -> Config:
    mock = MockEngineConfig(tokens_per_s=tokens_per_s, ttft_ms=ttft_ms).model_dump()
    data: dict[str, Any] = {
        "pools": pools or [{"id": "p", "model": "m", "replicas": replicas, "slots_per_replica": slots,
                            "mock": mock}],
        "runtime": {"probe_interval_ms": 60_000, "disconnect_grace_ms": 0, "cancel_grace_ms": 2000},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_config(data)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll an observable state until it holds, within a bounded deadline (never a fixed sleep)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.001)


async def advance_until(clock: ManualClock, predicate: Callable[[], bool], step_s: float = 0.1,
                        limit: int = 1000) -> None:
    """Advance the manual clock one step at a time until ``predicate`` holds."""
    for _ in range(limit):
        if predicate():
            return
        clock.advance(step_s)
        for _ in range(20):
            await asyncio.sleep(0)
    raise AssertionError("condition not reached while advancing the clock")


async def collect(orch: Orchestrator, task_id: str, identity: Identity = ALICE,
                  from_seq: int = 0) -> list[TaskEvent]:
    return [ev async for ev in orch.events(task_id, identity, from_seq)]


def text(events: list[TaskEvent]) -> str:
    return "".join(e.kind.text for e in events if isinstance(e.kind, TokenOut))


def check_grammar(events: list[TaskEvent]) -> None:
    """queued? started? token* (end | error | cancelled), seq 0.., contiguous token indices."""
    assert [e.seq for e in events] == list(range(len(events)))
    assert len({e.task_id for e in events}) == 1
    stamps = [e.timestamp_ms for e in events]
    assert stamps == sorted(stamps)
    kinds = [type(e.kind) for e in events]
    i = 0
    if i < len(kinds) and kinds[i] is Queued:
        i += 1
    started = i < len(kinds) and kinds[i] is Started
    if started:
        i += 1
    index = 0
    while i < len(kinds) and kinds[i] is TokenOut:
        assert started, "token before started"
        tok = events[i].kind
        assert isinstance(tok, TokenOut) and tok.index == index
        index += tok.count
        i += 1
    assert i == len(kinds) - 1, f"expected exactly one terminal event at the end, got {kinds[i:]}"
    assert kinds[i] in (Ended, Failed, CancelledEvent)
    last = events[i].kind
    if isinstance(last, Ended):
        assert started and last.tokens_out == index


__all__ = ["ALICE", "BOB", "Engines", "advance_until", "check_grammar", "collect", "config", "eventually",
           "text"]
