"""Pools: probing and readiness, slot accounting, drain with a deadline, atomic reload with rollback."""

from __future__ import annotations

import asyncio

import pytest
from llorch.reference.adapters.base import GenerateRequest
from llorch.reference.adapters.mock import ManualClock
from llorch.reference.config import ModelConfig
from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    Placement,
    Started,
    TaskRequest,
    TaskState,
    TokenOut,
)
from llorch.reference.errors import Conflict, ErrorCode, NotFound, PermissionDenied, Unavailable
from llorch.reference.pool.registry import PoolRegistry
from llorch.reference.runtime.orchestrator import MAX_REQUEUES, Orchestrator

from .runtime_support import ALICE, BOB, Engines, advance_until, check_grammar, collect, config, eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def task(max_tokens: int = 20, **kw: object) -> TaskRequest:
    return TaskRequest("m", "a prompt", max_tokens, **kw)  # type: ignore[arg-type]


@pytest.mark.req("POOL-1006", "POOL-1007", "POOL-1008", "POOL-1004")
async def test_probes_mark_replicas_unready_after_n_failures_and_ready_again():
    engines = Engines()
    reg = PoolRegistry(config(replicas=2, runtime={"unhealthy_after": 2}), factory=engines)
    await reg.start()
    try:
        assert reg.ready() and all(r.ready for r in reg.replicas())
        sick = engines.current("p-r0")
        sick.ready = False
        await reg.probe_all()
        assert reg.pools["p"].replicas["p-r0"].ready  # one failure is tolerated (unhealthy_after: 2)
        await reg.probe_all()
        assert not reg.pools["p"].replicas["p-r0"].ready and reg.pools["p"].ready
        assert reg.pools["p"].placeable_replicas() == [reg.pools["p"].replicas["p-r1"]]
        engines.current("p-r1").ready = False
        await reg.probe_all()
        await reg.probe_all()
        assert not reg.ready() and not reg.pools["p"].status().ready
        sick.ready = True
        await reg.probe_all()
        assert reg.pools["p"].replicas["p-r0"].ready and reg.ready()
    finally:
        await reg.close()


@pytest.mark.req("POOL-1005")
async def test_periodic_probing_notices_a_change_without_being_asked():
    engines = Engines()
    reg = PoolRegistry(config(runtime={"probe_interval_ms": 5}), factory=engines)
    await reg.start()
    try:
        engines.current("p-r0").ready = False
        await eventually(lambda: not reg.ready())
    finally:
        await reg.close()


@pytest.mark.req("POOL-1001", "POOL-1003", "POOL-1010", "POOL-1013", "POOL-1002")
async def test_pool_status_sums_replicas_and_reports_engine_info():
    cfg = config(pools=[{"id": "p", "model": "m", "replicas": 3, "slots_per_replica": 2},
                        {"id": "q", "model": "m2", "replicas": [{"id": "solo"}]}])
    async with Orchestrator(cfg) as orch:
        p = orch.pool("p")
        assert (p.total_slots, p.free_slots) == (6, 6)
        assert p.total_slots == sum(r.total_slots for r in p.replicas)
        assert {r.engine for r in p.replicas} == {"mock"}
        assert all(r.model_digest.startswith("sha256:") for r in p.replicas)
        assert [x.pool_id for x in orch.pools()] == ["p", "q"]
        with pytest.raises(NotFound) as nf:
            orch.pool("nope")
        assert nf.value.code is ErrorCode.POOL_NOT_FOUND


@pytest.mark.req("POOL-1011", "POOL-1012")
async def test_a_replica_never_runs_more_than_its_slots():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10, replicas=2, slots=2), adapter_factory=engines) as orch:
        ids = [(await orch.submit(task(max_tokens=3), ALICE)).task_id for _ in range(9)]
        peak = 0

        def check() -> bool:
            nonlocal peak
            for a in engines.built:
                assert a.running <= 2
            peak = max(peak, sum(a.running for a in engines.built))
            return all(orch._lookup(i).task.terminal for i in ids)  # type: ignore[union-attr]

        await advance_until(clock, check)
        assert peak == 4
        await eventually(lambda: orch.pool("p").free_slots == 4)


@pytest.mark.req("POOL-1015", "POOL-1016", "POOL-1017", "MET-1018")
async def test_drain_cancels_at_the_deadline_with_reason_drain():
    clock = ManualClock()
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=Engines(clock)) as orch:
        a = await orch.submit(task(max_tokens=1000), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        result = await asyncio.wait_for(orch.drain_pool("p", ALICE, deadline_ms=20), 5)
        assert (result.finished, result.cancelled) == (0, 1)
        assert orch.pool("p").draining and not orch.pool("p").ready
        assert orch.metrics.registry.get_sample_value("pool_ready", {"pool_id": "p"}) == 0
        last = (await collect(orch, a.task_id))[-1].kind
        assert isinstance(last, CancelledEvent) and last.reason == "drain"
        assert orch.pool("p").free_slots == 1
        with pytest.raises(Unavailable) as info:  # no placement on a draining pool (503)
            await orch.submit(task(), ALICE)
        assert info.value.retriable


@pytest.mark.req("POOL-1016", "POOL-1017")
async def test_drain_lets_running_tasks_finish_before_the_deadline():
    clock = ManualClock()
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=Engines(clock)) as orch:
        a = await orch.submit(task(max_tokens=3), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        drain = asyncio.create_task(orch.drain_pool("p", ALICE, deadline_ms=60_000))
        await advance_until(clock, drain.done)
        assert (drain.result().finished, drain.result().cancelled) == (1, 0)
        assert isinstance((await collect(orch, a.task_id))[-1].kind, Ended)


@pytest.mark.req("POOL-1018")
async def test_tasks_queued_behind_a_draining_pool_move_to_another_pool():
    clock = ManualClock()
    cfg = config(tokens_per_s=10, pools=[
        {"id": "a", "model": "m", "mock": {"tokens_per_s": 10, "ttft_ms": 0}},
        {"id": "b", "model": "m", "mock": {"tokens_per_s": 10, "ttft_ms": 0}}])
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        first = await orch.submit(task(max_tokens=1000), ALICE)
        second = await orch.submit(task(max_tokens=1000), ALICE)
        await eventually(lambda: orch.pool("a").free_slots == 0 and orch.pool("b").free_slots == 0)
        waiting = await orch.submit(task(max_tokens=2, placement=_prefer("a")), ALICE)
        draining_pool = (await orch.get_task(first.task_id, ALICE)).pool_id
        other = "b" if draining_pool == "a" else "a"
        drain = asyncio.create_task(orch.drain_pool(draining_pool, ALICE, deadline_ms=10))
        await eventually(drain.done)
        await orch.cancel(second.task_id, ALICE)  # frees the other pool
        await advance_until(clock, lambda: orch._lookup(waiting.task_id).task.terminal)  # type: ignore[union-attr]
        assert (await orch.get_task(waiting.task_id, ALICE)).pool_id == other


def _prefer(pool_id: str) -> Placement:
    return Placement(prefer_pools=(pool_id,))


@pytest.mark.req("POOL-1020", "POOL-1022", "POOL-1300")
async def test_reload_switches_model_atomically_and_bumps_generation():
    clock = ManualClock()
    cfg = config(tokens_per_s=10).model_copy(update={"models": _models("m", "m2")})
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        old = await orch.submit(task(max_tokens=5), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        old_digest = orch.pool("p").replicas[0].model_digest
        result = await orch.reload_pool("p", "m2", ALICE)
        assert (result.success, result.rolled_back, result.generation) == (True, False, 1)
        assert orch.pool("p").model == "m2"
        assert orch.pool("p").free_slots == 0  # the old task still holds the replica's one slot
        new = await orch.submit(TaskRequest("m2", "a prompt", 3), ALICE)
        await advance_until(clock, lambda: all(orch._lookup(t).task.terminal  # type: ignore[union-attr]
                                               for t in (old.task_id, new.task_id)))
        started_old = next(e.kind for e in await collect(orch, old.task_id) if isinstance(e.kind, Started))
        started_new = next(e.kind for e in await collect(orch, new.task_id) if isinstance(e.kind, Started))
        assert started_old.model_digest == old_digest != started_new.model_digest
        assert orch.pool("p").free_slots == 1


@pytest.mark.req("POOL-1021", "POOL-1025")
async def test_failed_or_unknown_reload_leaves_the_pool_unchanged():
    cfg = config(pools=[{"id": "p", "model": "m", "mock": {"loadable_models": ["m"]}}])
    cfg = cfg.model_copy(update={"models": _models("m", "m2")})
    async with Orchestrator(cfg) as orch:
        before = orch.pool("p")
        failed = await orch.reload_pool("p", "m2", ALICE)  # the engine cannot load m2
        assert (failed.success, failed.rolled_back) == (False, True) and failed.error is not None
        unknown = await orch.reload_pool("p", "nobody-knows", ALICE)
        assert (unknown.success, unknown.rolled_back) == (False, False)
        after = orch.pool("p")
        assert (after.model, after.generation, after.ready) == (before.model, before.generation, True)
        events = await collect(orch, (await orch.submit(task(max_tokens=2), ALICE)).task_id)
        assert isinstance(events[-1].kind, Ended)
        with pytest.raises(PermissionDenied):
            await orch.reload_pool("p", "m", BOB)


@pytest.mark.req("POOL-1250")
async def test_reload_is_refused_while_a_drain_has_not_answered_and_allowed_after():
    clock = ManualClock()
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=Engines(clock)) as orch:
        running = await orch.submit(task(max_tokens=5), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        drain = asyncio.create_task(orch.drain_pool("p", ALICE, deadline_ms=60_000))
        await eventually(lambda: orch.pool("p").draining)
        with pytest.raises(Conflict):
            await orch.reload_pool("p", "m", ALICE)
        await advance_until(clock, drain.done)
        assert (await orch.wait_terminal(running.task_id)).state is TaskState.COMPLETED
        assert (await orch.reload_pool("p", "m", ALICE)).success


@pytest.mark.req("POOL-1251", "POOL-1252", "POOL-1018", "SCH-1013")
async def test_a_reload_brings_a_drained_pool_back_and_runs_what_stayed_queued():
    clock = ManualClock()
    cfg = config(pools=[{"id": "p", "model": "m",
                         "mock": {"tokens_per_s": 10, "ttft_ms": 0, "loadable_models": ["m"]}}])
    cfg = cfg.model_copy(update={"models": _models("m", "m2")})
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        await orch.submit(task(max_tokens=1000), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        waiting = await orch.submit(task(max_tokens=2, placement=Placement(pin_pool="p")), ALICE)
        await orch.drain_pool("p", ALICE, deadline_ms=10)
        with pytest.raises(Unavailable) as refused:
            await orch.submit(task(max_tokens=2), ALICE)
        assert refused.value.code is ErrorCode.POOL_UNREADY  # drained, not gone
        failed = await orch.reload_pool("p", "m2", ALICE)  # the engine cannot load m2
        assert not failed.success and orch.pool("p").draining and not orch.pool("p").ready
        assert (await orch.get_task(waiting.task_id, ALICE)).state is TaskState.QUEUED
        back = await orch.reload_pool("p", "m", ALICE)
        assert back.success and not orch.pool("p").draining and orch.pool("p").ready
        await advance_until(clock, lambda: orch._lookup(waiting.task_id).task.terminal)  # type: ignore[union-attr]
        record = await orch.wait_terminal(waiting.task_id)
        assert (record.state, record.pool_id) == (TaskState.COMPLETED, "p")


def _models(*ids: str) -> list[ModelConfig]:
    return [ModelConfig(id=i) for i in ids]


async def test_cancel_during_streaming_keeps_counts_consistent_under_many_tasks():
    """Many tasks, cancels sprinkled in: every task ends once and every slot comes back."""
    clock = ManualClock()
    cfg = config(tokens_per_s=20, replicas=2, slots=2)
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        ids = [(await orch.submit(task(max_tokens=5), ALICE)).task_id for _ in range(12)]
        for t in ids[::3]:
            await orch.cancel(t, ALICE)
        await advance_until(clock, lambda: all(orch._lookup(i).task.terminal  # type: ignore[union-attr]
                                               for i in ids))
        states = [(await orch.wait_terminal(i)).state for i in ids]
        assert states.count(TaskState.CANCELLED) == 4 and states.count(TaskState.COMPLETED) == 8
        for i in ids:
            events = await collect(orch, i)
            assert sum(e.terminal for e in events) == 1
            assert sum(e.kind.count for e in events if isinstance(e.kind, TokenOut)) == \
                (await orch.get_task(i, ALICE)).tokens_out
        await eventually(lambda: orch.pool("p").free_slots == 4)


async def test_tasks_queued_for_a_model_reloaded_away_fail_with_model_not_found():
    clock = ManualClock()
    cfg = config(tokens_per_s=10).model_copy(update={"models": _models("m", "m2")})
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        await orch.submit(task(max_tokens=1000), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        stranded = await orch.submit(task(), ALICE)
        assert (await orch.reload_pool("p", "m2", ALICE)).success
        record = await orch.get_task(stranded.task_id, ALICE)
        assert record.state is TaskState.FAILED and record.error is not None
        assert record.error.code is ErrorCode.MODEL_NOT_FOUND
        assert len(orch.queue) == 0


class _GatedEngines(Engines):
    """New adapters answer their first health probe only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gated = False

    def __call__(self, pool, replica, model):  # type: ignore[no-untyped-def]
        adapter = super().__call__(pool, replica, model)
        if self.gated:
            original = adapter.health
            gate = self.gate

            async def health():  # type: ignore[no-untyped-def]
                await gate.wait()
                return await original()

            adapter.health = health  # type: ignore[method-assign]
        return adapter


@pytest.mark.req("POOL-1024", "POOL-1004")
async def test_tasks_submitted_during_a_reload_wait_and_run_after_it():
    engines = _GatedEngines()
    cfg = config(runtime={"probe_timeout_ms": 10_000})
    async with Orchestrator(cfg, adapter_factory=engines) as orch:
        engines.gated = True
        reload = asyncio.create_task(orch.reload_pool("p", "m", ALICE))
        await eventually(lambda: orch.registry.pools["p"].reloading)
        assert not orch.pool("p").ready
        during = await orch.submit(task(max_tokens=3), ALICE)
        assert (await orch.get_task(during.task_id, ALICE)).state is TaskState.QUEUED
        engines.gate.set()
        assert (await reload).success
        record = await asyncio.wait_for(orch.wait_terminal(during.task_id), 5)
        assert record.state is TaskState.COMPLETED
        assert record.replica_id == "p-r0" and orch.pool("p").generation == 1
        new_adapter = engines.current("p-r0")
        assert during.task_id in [r.request_id for r in new_adapter.stats.requests]


@pytest.mark.req("POOL-1014", "QUE-1250")
async def test_a_task_the_engine_refuses_as_exhausted_is_requeued_not_failed():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        engine = engines.current("p-r0")
        # Someone else uses the engine's only slot, unknown to the orchestrator's leases.
        outside = engine.generate(GenerateRequest("outside", "m", "elsewhere", 1))
        refused = await orch.submit(task(max_tokens=2), ALICE)
        await eventually(lambda: orch._lookup(refused.task_id).requeues == 1)  # type: ignore[union-attr]
        assert (await orch.get_task(refused.task_id, ALICE)).state is TaskState.QUEUED
        assert orch.pool("p").free_slots == 0  # the engine is believed until it shows a free slot
        await outside.aclose()  # type: ignore[attr-defined]
        await orch.registry.probe_all()  # props now report the slot free
        await advance_until(clock, lambda: orch._lookup(refused.task_id).task.terminal)  # type: ignore[union-attr]
        record = await orch.wait_terminal(refused.task_id)
        assert (record.state, record.pool_id, record.tokens_out) == (TaskState.COMPLETED, "p", 2)
        events = await collect(orch, refused.task_id)
        check_grammar(events)  # one queued event, then started, tokens, end: the retry is invisible
        assert [r.request_id for r in engine.stats.requests] == ["outside", refused.task_id]


@pytest.mark.req("POOL-1014")
async def test_a_task_refused_again_and_again_fails_with_replica_exhausted():
    engines = Engines(ManualClock())
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        engine = engines.current("p-r0")
        outside = engine.generate(GenerateRequest("outside", "m", "elsewhere", 1))
        refused = await orch.submit(task(max_tokens=2), ALICE)
        replica = orch.registry.pools["p"].replicas["p-r0"]
        for attempt in range(1, MAX_REQUEUES + 1):
            await eventually(lambda n=attempt: orch._lookup(refused.task_id).requeues == n)  # type: ignore[misc,union-attr]
            replica.exhausted = False  # as a release on the replica would: the orchestrator tries again
            orch._schedule_dispatch()
        record = await orch.wait_terminal(refused.task_id)
        assert record.state is TaskState.FAILED
        assert record.error is not None and record.error.code is ErrorCode.REPLICA_EXHAUSTED
        await outside.aclose()  # type: ignore[attr-defined]
