"""The orchestrator end to end in-process: submit → events → end, cancel, queue policies, deadlines,
coalescing, resume, disconnect, failures, idempotency, sessions and tenancy."""

from __future__ import annotations

import asyncio

import pytest
from llorch.reference.adapters.base import GenerateRequest, GenToken
from llorch.reference.adapters.mock import ManualClock, MockAdapter
from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    Failed,
    Priority,
    Queued,
    Started,
    TaskRequest,
    TaskState,
    TokenOut,
)
from llorch.reference.errors import Conflict, ErrorCode, NotFound, Overloaded
from llorch.reference.runtime.orchestrator import Orchestrator

from .runtime_support import (
    ALICE,
    BOB,
    Engines,
    advance_until,
    check_grammar,
    collect,
    config,
    eventually,
    text,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def task(prompt: str = "tell me a story", max_tokens: int = 20, **kw: object) -> TaskRequest:
    return TaskRequest(model="m", prompt=prompt, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def sample(orch: Orchestrator, name: str, **labels: str) -> float:
    return orch.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.req("STR-1001", "STR-1002", "STR-1003", "STR-1004", "STR-1005", "STR-1006", "STR-1007",
                 "STR-1008", "STR-1010", "QUE-1021", "PER-1002")
async def test_submit_stream_end_relays_the_engine_stream_exactly():
    engines = Engines()
    async with Orchestrator(config(), adapter_factory=engines) as orch:
        admission = await orch.submit(task(max_tokens=25), ALICE)
        stored = await orch.store.get_task(admission.task_id)
        assert stored is not None and stored.tenant == "alice"  # recorded before the answer
        events = await collect(orch, admission.task_id)
        check_grammar(events)
        queued, started, end = events[0].kind, events[1].kind, events[-1].kind
        assert isinstance(queued, Queued) and queued.position == admission.queue_position
        assert isinstance(started, Started) and started.pool_id == "p" and started.replica_id == "p-r0"
        assert (started.engine, started.engine_version) == ("mock", "1.0.0")
        assert isinstance(end, Ended) and end.tokens_out == 25 and end.finish_reason == "length"
        direct = MockAdapter("m", engines.built[0].config)
        expected = "".join([e.text async for e in direct.generate(
            GenerateRequest("x", "m", "tell me a story", 25)) if isinstance(e, GenToken)])
        assert text(events) == expected
        record = await orch.get_task(admission.task_id, ALICE)
        assert (record.state, record.tokens_in, record.tokens_out, record.finish_reason) == \
            (TaskState.COMPLETED, end.tokens_in, 25, "length")


@pytest.mark.req("STR-1009", "STR-1011")
async def test_stop_sequence_finishes_with_stop_and_never_reaches_the_stream():
    async with Orchestrator(config()) as orch:
        full = text(await collect(orch, (await orch.submit(task(max_tokens=30), ALICE)).task_id))
        stop = full.split()[3]
        from llorch.reference.core.types import SamplerParams
        a = await orch.submit(task(max_tokens=30, sampler=SamplerParams(stop=(stop,))), ALICE)
        events = await collect(orch, a.task_id)
        end = events[-1].kind
        assert isinstance(end, Ended) and end.finish_reason == "stop" and end.tokens_out < 30
        assert stop not in text(events)


@pytest.mark.req("STR-1027", "STR-1028", "STR-1029", "STR-1033", "STR-1035", "POOL-1012")
async def test_cancel_is_race_free_reaches_the_engine_and_frees_the_slot():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        a = await orch.submit(task(max_tokens=1000), ALICE)
        seen: list = []

        async def reader() -> None:
            async for ev in orch.events(a.task_id, ALICE):
                seen.append(ev)

        consumer = asyncio.create_task(reader())
        await advance_until(clock, lambda: sum(isinstance(e.kind, TokenOut) for e in seen) >= 3)
        clock.advance(0.35)  # more tokens are now due but the runner has not run yet
        record = await orch.cancel(a.task_id, ALICE)  # no await happened between advance and cancel
        assert record.state is TaskState.CANCELLED
        clock.advance(100)
        await asyncio.wait_for(consumer, 5)
        check_grammar(seen)
        last = seen[-1].kind
        assert isinstance(last, CancelledEvent) and last.reason == "client"
        delivered = sum(e.kind.count for e in seen if isinstance(e.kind, TokenOut))
        assert (await orch.get_task(a.task_id, ALICE)).tokens_out == delivered
        assert a.task_id in engines.built[0].stats.cancels  # the cancel reached the engine
        await eventually(lambda: orch.pool("p").free_slots == 1)
        assert engines.built[0].running == 0
        assert sample(orch, "tasks_cancelled_total", priority="normal", reason="client") == 1


@pytest.mark.req("STR-1030", "STR-1031", "STR-1032")
async def test_cancel_is_idempotent_and_leaves_finished_tasks_unchanged():
    async with Orchestrator(config()) as orch:
        a = await orch.submit(task(), ALICE)
        events = await collect(orch, a.task_id)
        assert (await orch.cancel(a.task_id, ALICE)).state is TaskState.COMPLETED
        assert await collect(orch, a.task_id) == events
        with pytest.raises(NotFound) as nf:
            await orch.cancel("nope", ALICE)
        assert nf.value.code is ErrorCode.TASK_NOT_FOUND


@pytest.mark.req("QUE-1017", "QUE-1018", "QUE-1020")
async def test_cancel_while_queued_removes_it_and_moves_the_others_up():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        running = await orch.submit(task(), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        b = await orch.submit(task(), ALICE)
        c = await orch.submit(task(), ALICE)
        assert (b.queue_position, c.queue_position) == (0, 1)
        await orch.cancel(b.task_id, ALICE)
        assert orch.queue.position(c.task_id) == 0 and len(orch.queue) == 1
        events = await collect(orch, b.task_id)
        assert [type(e.kind) for e in events] == [Queued, CancelledEvent]
        await advance_until(clock, lambda: orch.queue.statistics().depth == 0 and
                            orch._lookup(c.task_id).task.terminal)  # type: ignore[union-attr]
        assert b.task_id not in engines.requests()
        assert engines.requests() == [running.task_id, c.task_id]


@pytest.mark.req("QUE-1005", "QUE-1006", "QUE-1007", "QUE-1008")
async def test_one_slot_serves_by_priority_then_fifo():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        first = await orch.submit(task(max_tokens=2), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        order = [("low-1", Priority.LOW), ("normal-1", Priority.NORMAL), ("high-1", Priority.HIGH),
                 ("normal-2", Priority.NORMAL), ("high-2", Priority.HIGH), ("low-2", Priority.LOW)]
        ids = {}
        for name, prio in order:
            ids[(await orch.submit(task(max_tokens=2, priority=prio), ALICE)).task_id] = name
        await advance_until(clock, lambda: len(engines.requests()) == 7 and not orch._runs)
        served = [ids.get(r, "first") for r in engines.requests()]
        assert served == ["first", "high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
        assert first.task_id == engines.requests()[0]


@pytest.mark.req("QUE-1019", "ADM-1026")
async def test_queued_task_past_its_deadline_expires_without_dispatch():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        await orch.submit(task(), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        late = await orch.submit(task(deadline_ms=30), ALICE)
        record = await asyncio.wait_for(orch.wait_terminal(late.task_id), 5)
        assert record.state is TaskState.EXPIRED and record.error is not None
        assert record.error.code is ErrorCode.DEADLINE_UNMET
        events = await collect(orch, late.task_id)
        assert [type(e.kind) for e in events] == [Queued, Failed]
        assert late.task_id not in engines.requests()
        assert sample(orch, "tasks_expired_total", priority="normal") == 1


@pytest.mark.req("QUE-1012", "QUE-1015")
async def test_drop_lru_fails_the_oldest_queued_task():
    clock = ManualClock()
    async with Orchestrator(config(tokens_per_s=10, queue={"capacity": 2, "full_policy": "drop-lru"}),
                            adapter_factory=Engines(clock)) as orch:
        await orch.submit(task(), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        oldest = await orch.submit(task(), ALICE)
        await orch.submit(task(), ALICE)
        await orch.submit(task(), ALICE)
        record = await orch.get_task(oldest.task_id, ALICE)
        assert record.state is TaskState.FAILED and record.error is not None
        assert record.error.code is ErrorCode.QUEUE_FULL_DROP_LRU
        last = (await collect(orch, oldest.task_id))[-1].kind
        assert isinstance(last, Failed) and last.error.code is ErrorCode.QUEUE_FULL_DROP_LRU


@pytest.mark.req("QUE-1011", "MET-1011", "MET-1014", "ADM-1016")
async def test_reject_policy_answers_overloaded_and_counts_it():
    clock = ManualClock()
    cfg = config(tokens_per_s=10, queue={"capacity": 1})
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        await orch.submit(task(), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        await orch.submit(task(), ALICE)
        with pytest.raises(Overloaded) as info:
            await orch.submit(task(), ALICE)
        assert info.value.code is ErrorCode.ADMISSION_REJECT and info.value.retriable
        assert info.value.policy_label == "queue.reject"
        assert len(await orch.list_tasks(ALICE)) == 2
        assert sample(orch, "tasks_rejected_total", code="ADMISSION_REJECT") == 1
        assert sample(orch, "admission_backpressure_events_total", reason="admission_reject") == 1


@pytest.mark.req("STR-1023", "STR-1024", "STR-1026", "STR-1300")
async def test_slow_reader_gets_coalesced_tokens_with_the_exact_text():
    async with Orchestrator(config()) as orch:
        fast = await orch.submit(task(max_tokens=300), ALICE)
        reference = await collect(orch, fast.task_id)
        slow = await orch.submit(task(max_tokens=300), ALICE)
        it = orch.events(slow.task_id, ALICE)
        first = await anext(it)  # the reader takes one event, then stalls until the engine is done
        await orch.wait_terminal(slow.task_id)
        rest = [ev async for ev in it]
        events = [first, *rest]
        check_grammar(events)
        tokens = [e for e in events if isinstance(e.kind, TokenOut)]
        assert len(tokens) < 10 and max(t.kind.count for t in tokens) > 1
        assert text(events) == text(reference)
        assert await collect(orch, slow.task_id) == events  # every later reader sees the same


@pytest.mark.req("STR-1019", "STR-1021", "STR-1022")
async def test_concurrent_subscribers_and_resume_see_identical_events():
    clock = ManualClock()
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=Engines(clock)) as orch:
        a = await orch.submit(task(max_tokens=8), ALICE)
        readers = [asyncio.create_task(collect(orch, a.task_id)) for _ in range(2)]
        await advance_until(clock, lambda: all(r.done() for r in readers))
        one, two = (r.result() for r in readers)
        assert one == two
        check_grammar(one)
        assert await collect(orch, a.task_id, from_seq=3) == one[3:]
        orch._finished.clear()  # force the replay from the store
        assert await collect(orch, a.task_id, from_seq=2) == one[2:]


@pytest.mark.req("STR-1034", "POOL-1012")
async def test_last_subscriber_leaving_cancels_upstream_with_reason_disconnect():
    clock = ManualClock()
    engines = Engines(clock)
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=engines) as orch:
        a = await orch.submit(task(max_tokens=1000), ALICE)
        seen: list = []

        async def reader() -> None:
            async for ev in orch.events(a.task_id, ALICE):
                seen.append(ev)

        consumer = asyncio.create_task(reader())
        await advance_until(clock, lambda: any(isinstance(e.kind, TokenOut) for e in seen))
        consumer.cancel()  # the client goes away
        record = await asyncio.wait_for(orch.wait_terminal(a.task_id), 5)
        assert record.state is TaskState.CANCELLED
        last = (await collect(orch, a.task_id))[-1].kind
        assert isinstance(last, CancelledEvent) and last.reason == "disconnect"
        await eventually(lambda: orch.pool("p").free_slots == 1 and engines.built[0].running == 0)


@pytest.mark.req("POOL-1012", "MET-1010")
async def test_engine_failure_ends_with_an_error_event_and_frees_the_slot():
    mock = {"tokens_per_s": 0, "ttft_ms": 0, "fail_after": 2}
    cfg = config(pools=[{"id": "p", "model": "m", "mock": mock}])
    async with Orchestrator(cfg) as orch:
        a = await orch.submit(task(), ALICE)
        events = await collect(orch, a.task_id)
        check_grammar(events)
        last = events[-1].kind
        assert isinstance(last, Failed) and last.error.code is ErrorCode.ENGINE_ERROR and last.error.retriable
        assert sum(e.kind.count for e in events if isinstance(e.kind, TokenOut)) == 2
        record = await orch.wait_terminal(a.task_id)
        assert record.state is TaskState.FAILED and record.tokens_out == 2
        await eventually(lambda: orch.pool("p").free_slots == 1)
        assert sample(orch, "tasks_failed_total", priority="normal", code="ENGINE_ERROR") == 1


@pytest.mark.req("MET-1008", "MET-1009", "MET-1012", "MET-1013", "MET-1019", "MET-1020")
async def test_counters_move_by_exactly_the_traffic():
    async with Orchestrator(config(replicas=2)) as orch:
        ends = []
        for n in (5, 7, 11):
            a = await orch.submit(task(max_tokens=n), ALICE)
            ends.append((await collect(orch, a.task_id))[-1].kind)
        assert sample(orch, "tasks_enqueued_total", priority="normal") == 3
        started = sum(sample(orch, "tasks_started_total", pool_id="p", replica_id=r, priority="normal")
                      for r in ("p-r0", "p-r1"))
        assert started == 3
        assert sample(orch, "tokens_out_total", pool_id="p") == 23
        assert sample(orch, "tokens_in_total", pool_id="p") == sum(e.tokens_in for e in ends)
        assert sample(orch, "latency_first_token_ms_count", pool_id="p", priority="normal") == 3
        assert sample(orch, "latency_decode_ms_count", pool_id="p") == 3
        assert sample(orch, "tasks_completed_total", pool_id="p", priority="normal") == 3


@pytest.mark.req("ADM-1023", "ADM-1024", "ADM-1025")
async def test_idempotency_key_returns_the_first_task_per_tenant():
    async with Orchestrator(config()) as orch:
        a = await orch.submit(task(idempotency_key="k1"), ALICE)
        again = await orch.submit(task(idempotency_key="k1"), ALICE)
        other = await orch.submit(task(idempotency_key="k1"), BOB)
        assert again.task_id == a.task_id != other.task_id
        with pytest.raises(Conflict):
            await orch.submit(task(prompt="different", idempotency_key="k1"), ALICE)
        assert len(await orch.list_tasks(ALICE)) == 1


@pytest.mark.req("ADM-1020", "ADM-1022")
async def test_tenants_see_only_their_own_tasks():
    async with Orchestrator(config()) as orch:
        a = await orch.submit(task(), ALICE)
        await orch.submit(task(), BOB)
        assert [r.task_id for r in await orch.list_tasks(ALICE)] == [a.task_id]
        for call in (orch.get_task(a.task_id, BOB), orch.cancel(a.task_id, BOB)):
            with pytest.raises(NotFound):
                await call
        with pytest.raises(NotFound):
            await collect(orch, a.task_id, BOB)


@pytest.mark.req("ADM-1030", "ADM-1035")
async def test_session_turns_and_tokens_are_counted():
    async with Orchestrator(config()) as orch:
        s = await orch.create_session(ALICE, max_turns=2)
        ends = []
        for _ in range(2):
            a = await orch.submit(task(max_tokens=4, session_id=s.session_id), ALICE)
            ends.append((await collect(orch, a.task_id))[-1].kind)
            await orch.wait_terminal(a.task_id)
        info = await orch.get_session(s.session_id, ALICE)
        assert info.turns_used == 2
        assert info.tokens_used == sum(e.tokens_in + e.tokens_out for e in ends)


async def test_shutdown_cancels_what_is_still_running():
    clock = ManualClock()
    orch = Orchestrator(config(tokens_per_s=10), adapter_factory=Engines(clock))
    await orch.start()
    a = await orch.submit(task(), ALICE)
    await eventually(lambda: orch.pool("p").free_slots == 0)
    run = orch._lookup(a.task_id)
    await orch.aclose()
    assert run is not None and run.task.state is TaskState.CANCELLED
    assert isinstance(run.log.snapshot()[-1].kind, CancelledEvent)


@pytest.mark.req("STR-1301")
async def test_a_task_nobody_subscribed_to_is_not_cancelled_for_disconnect():
    clock = ManualClock()
    async with Orchestrator(config(tokens_per_s=10), adapter_factory=Engines(clock)) as orch:
        a = await orch.submit(task(max_tokens=5), ALICE)
        await eventually(lambda: orch.pool("p").free_slots == 0)
        await advance_until(clock, lambda: orch._lookup(a.task_id).task.terminal)  # type: ignore[union-attr]
        assert (await orch.wait_terminal(a.task_id)).state is TaskState.COMPLETED


@pytest.mark.req("STR-1021", "PER-1005")
async def test_finished_tasks_beyond_the_memory_cache_replay_from_the_store():
    async with Orchestrator(config(runtime={"finished_event_cache": 5})) as orch:
        first = await orch.submit(task(max_tokens=30), ALICE)
        events = await collect(orch, first.task_id)
        for _ in range(3):
            await collect(orch, (await orch.submit(task(max_tokens=30), ALICE)).task_id)
        assert orch._lookup(first.task_id) is None  # evicted from memory
        assert await collect(orch, first.task_id) == events
        assert (await orch.get_task(first.task_id, ALICE)).tokens_out == 30
        assert (await orch.cancel(first.task_id, ALICE)).state is TaskState.COMPLETED


async def test_sweep_forgets_long_expired_sessions_and_old_idempotency_keys():
    async with Orchestrator(config()) as orch:
        s = await orch.create_session(ALICE, ttl_ms=10)
        a = await orch.submit(task(idempotency_key="old"), ALICE)
        later = s.expires_ms + 2 * 3_600_000 + orch.config.runtime.idempotency_retention_ms
        orch.sweep(later)
        with pytest.raises(NotFound):
            await orch.get_session(s.session_id, ALICE)
        assert ("alice", "old") not in orch._idempotency
        assert not [r for r in await orch.store.sessions() if r.session_id == s.session_id]
        assert (await orch.get_task(a.task_id, ALICE)).task_id == a.task_id


@pytest.mark.req("BUD-1002", "BUD-1250")
async def test_budget_reservation_counts_prompt_tokens_where_the_engines_can_tell():
    prompt = "one two three"  # 3 tokens for the mock engine, 13 UTF-8 bytes
    budget = {"default": {"tokens": 3 + 2}}  # exactly the prompt's tokens plus max_tokens
    mock = config(budgets=budget)
    async with Orchestrator(mock, adapter_factory=Engines(ManualClock())) as orch:
        accepted = await orch.submit(TaskRequest("m", prompt, 2), ALICE)  # a byte bound would refuse
        status = orch.admitter.budgets.status("alice", 0)
        assert status.reserved + status.used == 5
        await orch.wait_terminal(accepted.task_id)
    # Remote engines offer no tokenizer: the reservation uses the byte count, an upper bound.
    remote = config(budgets=budget, pools=[{"id": "p", "model": "m", "engine": "remote",
                                            "replicas": [{"id": "p-r0", "address": "127.0.0.1:1"}]}])
    async with Orchestrator(remote, adapter_factory=Engines(ManualClock())) as orch:
        with pytest.raises(Overloaded) as refused:
            await orch.submit(TaskRequest("m", prompt, 2), ALICE)
        assert refused.value.code is ErrorCode.BUDGET_EXCEEDED
