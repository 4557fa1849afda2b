"""In-process checks of what the wire cannot show: events reach the store no later than a reader,
bearer tokens are compared in constant time, and deterministic tasks avoid non-deterministic
replicas."""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Sequence
from typing import Any

import pytest
from llorch.reference.adapters.base import EngineInfo
from llorch.reference.adapters.mock import MockAdapter
from llorch.reference.config import PoolConfig, ReplicaConfig
from llorch.reference.core.types import Placement, Started, TaskEvent, TaskRequest
from llorch.reference.errors import ErrorCode, Unauthenticated, Unavailable
from llorch.reference.runtime.orchestrator import Orchestrator
from llorch.reference.server.security import Authenticator, Principal

from .runtime_support import ALICE, Engines, collect, config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def task(max_tokens: int = 20, **kw: Any) -> TaskRequest:
    return TaskRequest(model="m", prompt="what the store saw", max_tokens=max_tokens, **kw)


@pytest.mark.req("PER-1004")
async def test_every_event_is_recorded_before_a_reader_sees_it() -> None:
    async with Orchestrator(config(tokens_per_s=400, ttft_ms=1)) as orch:
        recorded: dict[tuple[str, int], TaskEvent] = {}
        persist = orch.store.append_events

        def spy(events: Sequence[TaskEvent]) -> None:
            for ev in events:
                recorded[(ev.task_id, ev.seq)] = ev
            persist(events)

        orch.store.append_events = spy  # type: ignore[method-assign]
        admission = await orch.submit(task(max_tokens=40), ALICE)
        seen = 0
        async for ev in orch.events(admission.task_id, ALICE):
            seen += 1
            stored = recorded.get((ev.task_id, ev.seq))
            assert stored is not None, f"[PER-1004] seq {ev.seq} reached the reader before the store"
            assert stored == ev, f"[PER-1004] the store holds {stored}, the reader got {ev}"
        assert seen >= 3 and len(recorded) == seen
        stored_events = await orch.store.events(admission.task_id)
        assert [e.seq for e in stored_events] == list(range(seen)), "[PER-1004] the store lacks events"


@pytest.mark.req("SEC-1005")
def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = ["first-token-aaaaaaaa", "second-token-b", "third"]
    auth = Authenticator.from_tokens([(t, Principal(f"tenant{i}")) for i, t in enumerate(tokens)])
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for presented in (tokens[0], tokens[2], "wrong", "first-token-aaaaaaab"):
        calls.clear()
        try:
            identity = auth.identify(f"Bearer {presented}")
            assert identity.tenant == f"tenant{tokens.index(presented)}"
        except Unauthenticated:
            assert presented not in tokens
        assert len(calls) == len(tokens), (
            f"[SEC-1005] {len(calls)} constant-time comparisons for {len(tokens)} tokens (early exit?)")
        lengths = {len(x) for pair in calls for x in pair}
        assert len(lengths) == 1, f"[SEC-1005] compared values of different lengths {lengths}"
        assert all(presented.encode() not in pair for pair in calls), "[SEC-1005] raw token compared"


class _MixedEngines(Engines):
    """Mock replicas, one of which reports that it does not guarantee determinism."""

    def __init__(self, nondeterministic: set[str]) -> None:
        super().__init__()
        self.nondeterministic = nondeterministic

    def __call__(self, pool: PoolConfig, replica: ReplicaConfig, model: str) -> MockAdapter:
        adapter = super().__call__(pool, replica, model)
        if replica.id in self.nondeterministic:
            plain = adapter.engine_info

            async def engine_info() -> EngineInfo:
                return dataclasses.replace(await plain(), deterministic=False)

            adapter.engine_info = engine_info  # type: ignore[method-assign]
        return adapter


@pytest.mark.req("DET-1005")
async def test_deterministic_tasks_only_run_on_deterministic_replicas() -> None:
    engines = _MixedEngines({"p-r0"})
    async with Orchestrator(config(replicas=2, slots=4), adapter_factory=engines) as orch:
        plain = [await orch.submit(task(max_tokens=2), ALICE) for _ in range(4)]
        plain_replicas = set()
        for admission in plain:
            started = [e.kind for e in await collect(orch, admission.task_id) if isinstance(e.kind, Started)]
            plain_replicas.add(started[0].replica_id)
        assert "p-r0" in plain_replicas, "ordinary tasks never used p-r0: the check could not fail"
        det = [await orch.submit(task(max_tokens=2, deterministic=True), ALICE) for _ in range(4)]
        for admission in det:
            events = await collect(orch, admission.task_id)
            started = [e.kind for e in events if isinstance(e.kind, Started)]
            assert started and started[0].replica_id == "p-r1", (
                f"[DET-1005] a deterministic task ran on {started[0].replica_id if started else None}")
        with pytest.raises(Unavailable) as refused:
            await orch.submit(task(max_tokens=2, deterministic=True,
                                   placement=Placement(pin_pool="p", pin_replica="p-r0")), ALICE)
        assert refused.value.code is ErrorCode.DETERMINISM_UNSUPPORTED, (
            f"[DET-1005] pinned to a non-deterministic replica: {refused.value.code}")
