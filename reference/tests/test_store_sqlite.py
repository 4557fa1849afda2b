"""The SQLite store: WAL, one terminal state per task, usage, and recovery after a crash."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from llorch.reference.adapters.mock import ManualClock
from llorch.reference.core.types import (
    Ended,
    Failed,
    Priority,
    Queued,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskState,
    TokenOut,
)
from llorch.reference.errors import ErrorCode, NotFound
from llorch.reference.runtime.orchestrator import Orchestrator
from llorch.reference.store.sqlite import SqliteStore, StoreError, TerminalStateConflict

from .runtime_support import ALICE, Engines, advance_until, check_grammar, collect, config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(task_id: str, state: TaskState = TaskState.QUEUED, **kw: object) -> TaskRecord:
    return TaskRecord(task_id, state, kw.pop("tenant", "t"), "m", Priority.NORMAL, 1, **kw)  # type: ignore[arg-type]


@pytest.mark.req("PER-1001")
async def test_file_store_runs_in_wal_mode(tmp_path: Path):
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.req("PER-1014")
async def test_unknown_schema_or_unreadable_file_is_refused_naming_the_path(tmp_path: Path):
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.execute("CREATE TABLE other (x)")
    for path in (odd, tmp_path / "missing-dir" / "s.db"):
        store = SqliteStore(str(path))
        with pytest.raises(StoreError) as info:
            await store.open()
        assert str(path) in str(info.value)
    good = SqliteStore(str(tmp_path / "good.db"))
    await good.open()
    await good.close()
    again = SqliteStore(str(tmp_path / "good.db"))  # its own schema version opens again
    await again.open()
    await again.close()


@pytest.mark.req("PER-1003")
async def test_terminal_state_is_written_exactly_once():
    store = SqliteStore()
    await store.open()
    try:
        store.insert_task(record("a"))
        store.insert_task(record("b"))
        await store.finish_task(record("a", TaskState.COMPLETED, finished_ms=5, finish_reason="stop"))
        second = store.finish_task(record("a", TaskState.FAILED, finished_ms=6))
        other = store.finish_task(record("b", TaskState.CANCELLED, finished_ms=7))
        with pytest.raises(TerminalStateConflict):
            await second
        await other  # a conflict in the same batch does not lose the other task's write
        a, b = await store.get_task("a"), await store.get_task("b")
        assert a is not None and (a.state, a.finished_ms, a.finish_reason) == (TaskState.COMPLETED, 5, "stop")
        assert b is not None and b.state is TaskState.CANCELLED
    finally:
        await store.close()


@pytest.mark.req("PER-1015")
async def test_usage_sums_per_tenant_pool_and_state():
    store = SqliteStore()
    await store.open()
    try:
        for i, (tenant, state, tin, tout) in enumerate([("x", TaskState.COMPLETED, 3, 10),
                                                         ("x", TaskState.COMPLETED, 2, 5),
                                                         ("x", TaskState.CANCELLED, 1, 1),
                                                         ("y", TaskState.COMPLETED, 4, 4)]):
            store.insert_task(record(f"t{i}", tenant=tenant))
            await store.finish_task(record(f"t{i}", state, tenant=tenant, pool_id="p", tokens_in=tin,
                                           tokens_out=tout, finished_ms=2))
        rows = {(u.tenant, u.state): (u.tasks, u.tokens_in, u.tokens_out) for u in await store.usage()}
        assert rows == {("x", "completed"): (2, 5, 15), ("x", "cancelled"): (1, 1, 1),
                        ("y", "completed"): (1, 4, 4)}
    finally:
        await store.close()


def _snapshot_db(src: Path, dst: Path) -> None:
    """What a crash leaves on disk at this instant (the store's committed state)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


@pytest.mark.req("PER-1008", "PER-1009", "PER-1010", "PER-1011", "PER-1012", "PER-1013", "PER-1300")
async def test_restart_ends_unfinished_tasks_with_orchestrator_restarted(tmp_path: Path):
    live, crashed = tmp_path / "live.db", tmp_path / "crashed.db"
    clock = ManualClock()
    cfg = config(tokens_per_s=10, store={"path": str(live)})
    async with Orchestrator(cfg, adapter_factory=Engines(clock)) as orch:
        session = await orch.create_session(ALICE, ttl_ms=3_600_000, max_turns=5)
        done = await orch.submit(TaskRequest("m", "a finished task", 3, session_id=session.session_id), ALICE)
        finished_events = await asyncio.wait_for(_run_to_end(orch, clock, done.task_id), 5)
        running = await orch.submit(TaskRequest("m", "an interrupted task", 100, idempotency_key="k"), ALICE)
        seen: list[TaskEvent] = []

        async def reader() -> None:
            async for ev in orch.events(running.task_id, ALICE):
                seen.append(ev)

        consumer = asyncio.create_task(reader())
        await advance_until(clock, lambda: sum(isinstance(e.kind, TokenOut) for e in seen) >= 3)
        queued = await orch.submit(TaskRequest("m", "never started", 5), ALICE)
        await orch.store.flush()
        _snapshot_db(live, crashed)  # the process "dies" here
        consumer.cancel()

    cfg2 = config(tokens_per_s=0, store={"path": str(crashed)})
    async with Orchestrator(cfg2) as orch2:
        for task_id in (running.task_id, queued.task_id):
            rec = await orch2.get_task(task_id, ALICE)
            assert rec.state is TaskState.FAILED and rec.error is not None
            assert rec.error.code is ErrorCode.ORCHESTRATOR_RESTARTED
        events = await collect(orch2, running.task_id)
        check_grammar(events)
        assert events[:len(seen)] == seen  # what the client saw is kept, then one terminal error
        last = events[-1]
        assert isinstance(last.kind, Failed) and last.kind.error.code is ErrorCode.ORCHESTRATOR_RESTARTED
        assert [type(e.kind) for e in await collect(orch2, queued.task_id)] == [Queued, Failed]
        assert await collect(orch2, done.task_id) == finished_events  # finished tasks unchanged
        kept = await orch2.get_session(session.session_id, ALICE)
        assert (kept.turns_used, kept.expires_ms, kept.max_turns) == (1, session.expires_ms, 5)
        end = finished_events[-1].kind
        assert isinstance(end, Ended) and kept.tokens_used == end.tokens_in + end.tokens_out
        assert (await orch2.get_task(done.task_id, ALICE)).state is TaskState.COMPLETED
        again = await orch2.submit(TaskRequest("m", "an interrupted task", 100, idempotency_key="k"), ALICE)
        assert again.task_id == running.task_id  # the key survives the restart
        fresh = await orch2.submit(TaskRequest("m", "new", 2), ALICE)
        assert fresh.task_id not in {done.task_id, running.task_id, queued.task_id}


async def _run_to_end(orch: Orchestrator, clock: ManualClock, task_id: str) -> list[TaskEvent]:
    reader = asyncio.create_task(collect(orch, task_id))
    await advance_until(clock, reader.done)
    events = reader.result()
    assert isinstance(events[-1].kind, Ended)
    await orch.wait_terminal(task_id)
    return events


@pytest.mark.req("PER-1006")
async def test_tasks_past_retention_are_pruned_and_then_not_found():
    retention = 60_000
    async with Orchestrator(config(store={"retention_ms": retention}), adapter_factory=Engines()) as orch:
        old = await orch.submit(TaskRequest("m", "an old task", 2), ALICE)
        finished = await orch.wait_terminal(old.task_id)
        orch.sweep(finished.finished_ms + retention)  # not yet past retention
        assert (await orch.get_task(old.task_id, ALICE)).state is TaskState.COMPLETED
        orch.sweep(finished.finished_ms + retention + 1)
        with pytest.raises(NotFound) as gone:
            await orch.get_task(old.task_id, ALICE)
        assert gone.value.code is ErrorCode.TASK_NOT_FOUND
        assert await orch.store.events(old.task_id) == []
        assert [u.tasks for u in await orch.store.usage()] == [1]  # stats keep their totals


@pytest.mark.req("PER-1006")
async def test_prune_never_removes_an_unfinished_task():
    store = SqliteStore()
    await store.open()
    try:
        store.insert_task(record("running"))
        store.insert_task(record("done"))
        await store.finish_task(record("done", TaskState.COMPLETED, finished_ms=5, finish_reason="stop"))
        store.prune(10**12)
        assert await store.get_task("done") is None
        assert await store.get_task("running") is not None
    finally:
        await store.close()
