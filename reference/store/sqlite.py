"""The embedded store: SQLite in WAL mode, through the standard library, on one worker thread.

Tables: ``tasks`` (one row per accepted task, its terminal state set exactly once), ``events``
(every event of every task, keyed by (task_id, seq)) and ``usage`` (per tenant, pool and terminal
state: tasks and tokens, for ``llorch stats``).

Writes are queued and committed in batches by a single writer coroutine that hands each batch to
the store's one thread, so a token stream costs one ``executemany`` per batch, not one commit per
token, and the event loop never blocks on disk. ``flush()`` is a barrier: it returns once everything
queued before it is committed; reads flush first, so they see every earlier write.

After a restart ``recover()`` ends every accepted-but-unfinished task as FAILED with
ORCHESTRATOR_RESTARTED and appends the matching ``error`` event, so a client that resumes the
stream sees a terminal event instead of silence.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llorch.reference.core.types import (
    CancelledEvent,
    Ended,
    EventKind,
    Failed,
    Priority,
    Queued,
    Started,
    TaskEvent,
    TaskRecord,
    TaskState,
    TokenOut,
)
from llorch.reference.errors import ErrorCode, ErrorInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    pool_id TEXT NOT NULL DEFAULT '',
    replica_id TEXT NOT NULL DEFAULT '',
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    finished_ms INTEGER NOT NULL DEFAULT 0,
    finish_reason TEXT NOT NULL DEFAULT '',
    error TEXT,
    session_id TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tasks_by_tenant ON tasks(tenant, created_ms);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    terminal INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_one_terminal ON events(task_id) WHERE terminal = 1;
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    pool_id TEXT NOT NULL,
    state TEXT NOT NULL,
    tasks INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, pool_id, state)
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    max_turns INTEGER NOT NULL,
    turns_used INTEGER NOT NULL DEFAULT 0,
    tokens_used INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS tasks_terminal_once BEFORE UPDATE ON tasks
WHEN OLD.state IN ('completed', 'cancelled', 'failed', 'expired')
BEGIN SELECT RAISE(ABORT, 'terminal state is final'); END;
"""

_TERMINAL_SQL = "('completed', 'cancelled', 'failed', 'expired')"


SCHEMA_VERSION = 1


class StoreError(RuntimeError):
    """The store file cannot be opened or holds an unknown schema (``llorch serve`` exits 2)."""


class TerminalStateConflict(Exception):
    """A second terminal state was written for one task: a runtime bug, never a client error."""


# ---- codecs ------------------------------------------------------------------------------------


def error_to_dict(error: ErrorInfo) -> dict[str, Any]:
    return {"code": error.code.value, "message": error.message, "retriable": error.retriable,
            "retry_after_ms": error.retry_after_ms, "correlation_id": error.correlation_id,
            "policy_label": error.policy_label}


def error_from_dict(data: dict[str, Any]) -> ErrorInfo:
    return ErrorInfo(ErrorCode(data["code"]), data["message"], bool(data.get("retriable", False)),
                     int(data.get("retry_after_ms", 0)), data.get("correlation_id", ""),
                     data.get("policy_label", ""))


def encode_kind(kind: EventKind) -> tuple[str, dict[str, Any]]:
    """(wire kind name, fields) of an event, the names of the SSE ``event:`` line."""
    if isinstance(kind, TokenOut):
        return "token", {"index": kind.index, "text": kind.text, "token_id": kind.token_id,
                         "count": kind.count}
    if isinstance(kind, Started):
        return "started", {"pool_id": kind.pool_id, "replica_id": kind.replica_id, "engine": kind.engine,
                           "engine_version": kind.engine_version, "model_digest": kind.model_digest,
                           "queue_wait_ms": kind.queue_wait_ms}
    if isinstance(kind, Queued):
        return "queued", {"position": kind.position}
    if isinstance(kind, Ended):
        return "end", {"tokens_in": kind.tokens_in, "tokens_out": kind.tokens_out,
                       "decode_ms": kind.decode_ms, "finish_reason": kind.finish_reason}
    if isinstance(kind, Failed):
        return "error", error_to_dict(kind.error)
    if isinstance(kind, CancelledEvent):
        return "cancelled", {"reason": kind.reason}
    raise TypeError(f"unknown event kind {kind!r}")


def decode_kind(name: str, body: dict[str, Any]) -> EventKind:
    if name == "token":
        return TokenOut(index=body["index"], text=body["text"], token_id=body.get("token_id", -1),
                        count=body.get("count", 1))
    if name == "started":
        return Started(**body)
    if name == "queued":
        return Queued(position=body["position"])
    if name == "end":
        return Ended(**body)
    if name == "error":
        return Failed(error_from_dict(body))
    if name == "cancelled":
        return CancelledEvent(reason=body["reason"])
    raise ValueError(f"unknown stored event kind {name!r}")


def _record_from_row(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        task_id=row["task_id"], state=TaskState(row["state"]), tenant=row["tenant"], model=row["model"],
        priority=Priority(row["priority"]), created_ms=row["created_ms"], pool_id=row["pool_id"],
        replica_id=row["replica_id"], tokens_in=row["tokens_in"], tokens_out=row["tokens_out"],
        finished_ms=row["finished_ms"], finish_reason=row["finish_reason"],
        error=error_from_dict(json.loads(row["error"])) if row["error"] else None,
        session_id=row["session_id"],
    )


@dataclass(frozen=True, slots=True)
class UsageRecord:
    tenant: str
    pool_id: str
    state: str
    tasks: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    tenant: str
    created_ms: int
    expires_ms: int
    max_turns: int
    turns_used: int
    tokens_used: int


# ---- the store ---------------------------------------------------------------------------------

_Op = tuple[str, Any]  # ("sql", (statement, params)) | ("many", (statement, rows)) | ("barrier", future)


class SqliteStore:
    """Tasks, events and usage in one SQLite database (``":memory:"`` for a throwaway one)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llorch-store")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Op] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="llorch-store-writer")

    def _connect(self) -> None:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        if version != SCHEMA_VERSION and (version != 0 or tables != 0):
            conn.close()
            # req: PER-1014
            raise StoreError(f"the store {self.path} has schema version {version}, expected {SCHEMA_VERSION}")
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")  # req: PER-1001
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._conn = conn

    async def close(self) -> None:
        if self._closed:
            return
        await self.flush()
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- the writer ----------------------------------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        if self._closed:
            raise RuntimeError("store is closed")
        self._pending.append(op)
        self._wake.set()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            barriers = [op[1] for op in batch if op[0] == "barrier"]
            try:
                conflicts = await loop.run_in_executor(self._executor, self._apply, batch)
            except Exception as exc:  # a failed batch is reported to whoever waits on it
                self._failure = exc
                for fut in barriers:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for kind, arg in batch:
                if kind == "finish" and arg[1] is not None and not arg[1].done():
                    task_id = arg[0].task_id
                    if task_id in conflicts:
                        arg[1].set_exception(TerminalStateConflict(f"task {task_id} already finished"))
                    else:
                        arg[1].set_result(None)
            for fut in barriers:
                if not fut.done():
                    fut.set_result(None)

    def _apply(self, batch: Sequence[_Op]) -> set[str]:
        """One transaction per batch; a second terminal write is refused without aborting the rest."""
        conn = self._require()
        conflicts: set[str] = set()
        conn.execute("BEGIN")
        try:
            for kind, arg in batch:
                if kind == "sql":
                    conn.execute(*arg)
                elif kind == "many":
                    conn.executemany(*arg)
                elif kind == "finish" and not self._apply_finish(conn, arg[0]):
                    conflicts.add(arg[0].task_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conflicts

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def flush(self) -> None:
        """Barrier: returns once every write queued before the call is committed."""
        if self._closed:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(("barrier", fut))
        await fut

    async def _read(self, fn: Any, *args: Any) -> Any:
        await self.flush()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- writes --------------------------------------------------------------------------------

    def insert_task(self, record: TaskRecord, idempotency_key: str = "") -> None:
        self._enqueue(("sql", (
            "INSERT INTO tasks (task_id, tenant, model, priority, state, created_ms, session_id,"
            " idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.task_id, record.tenant, record.model, int(record.priority), record.state.value,
             record.created_ms, record.session_id, idempotency_key))))

    def update_progress(self, record: TaskRecord) -> None:
        """Non-terminal state changes (dispatched, streaming) with placement and token counts."""
        self._enqueue(("sql", (
            f"UPDATE tasks SET state = ?, pool_id = ?, replica_id = ?, tokens_in = ?, tokens_out = ?"
            f" WHERE task_id = ? AND state NOT IN {_TERMINAL_SQL}",
            (record.state.value, record.pool_id, record.replica_id, record.tokens_in, record.tokens_out,
             record.task_id))))

    def append_events(self, events: Sequence[TaskEvent]) -> None:
        rows = []
        for ev in events:
            name, body = encode_kind(ev.kind)
            rows.append((ev.task_id, ev.seq, ev.timestamp_ms, name, json.dumps(body, separators=(",", ":")),
                         1 if ev.terminal else 0))
        if rows:
            self._enqueue(("many", (
                "INSERT INTO events (task_id, seq, timestamp_ms, kind, body, terminal)"
                " VALUES (?, ?, ?, ?, ?, ?)", rows)))

    def finish_task(self, record: TaskRecord) -> asyncio.Future[None]:
        """Record the terminal state and usage, exactly once per task: the returned future fails
        with ``TerminalStateConflict`` when the task was already finished."""
        if not record.state.terminal:
            raise ValueError(f"finish_task needs a terminal state, not {record.state}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(("finish", (record, fut)))
        return fut

    @staticmethod
    def _apply_finish(conn: sqlite3.Connection, record: TaskRecord) -> bool:
        # req: PER-1003
        cur = conn.execute(
            f"UPDATE tasks SET state = ?, pool_id = ?, replica_id = ?, tokens_in = ?, tokens_out = ?,"
            f" finished_ms = ?, finish_reason = ?, error = ?"
            f" WHERE task_id = ? AND state NOT IN {_TERMINAL_SQL}",
            (record.state.value, record.pool_id, record.replica_id, record.tokens_in, record.tokens_out,
             record.finished_ms, record.finish_reason,
             json.dumps(error_to_dict(record.error)) if record.error else None, record.task_id))
        if cur.rowcount != 1:
            return False
        conn.execute(
            "INSERT INTO usage (tenant, pool_id, state, tasks, tokens_in, tokens_out)"
            " VALUES (?, ?, ?, 1, ?, ?)"
            " ON CONFLICT (tenant, pool_id, state) DO UPDATE SET tasks = tasks + 1,"
            " tokens_in = tokens_in + excluded.tokens_in, tokens_out = tokens_out + excluded.tokens_out",
            (record.tenant, record.pool_id, record.state.value, record.tokens_in, record.tokens_out))
        return True

    def save_session(self, row: SessionRow) -> None:
        # req: PER-1013
        self._enqueue(("sql", (
            "INSERT INTO sessions (session_id, tenant, created_ms, expires_ms, max_turns, turns_used,"
            " tokens_used) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
            " turns_used = excluded.turns_used, tokens_used = excluded.tokens_used",
            (row.session_id, row.tenant, row.created_ms, row.expires_ms, row.max_turns, row.turns_used,
             row.tokens_used))))

    def delete_session(self, session_id: str) -> None:
        self._enqueue(("sql", ("DELETE FROM sessions WHERE session_id = ?", (session_id,))))

    def prune(self, finished_before_ms: int) -> None:
        """Forget tasks that finished before ``finished_before_ms``, with their events (PER-1006).

        Unfinished tasks are never pruned, and ``usage`` keeps its totals (``llorch stats``).
        """
        # req: PER-1006
        finished = f"state IN {_TERMINAL_SQL} AND finished_ms < ?"
        pruned = f"SELECT task_id FROM tasks WHERE {finished}"
        self._enqueue(("sql", (f"DELETE FROM events WHERE task_id IN ({pruned})", (finished_before_ms,))))
        self._enqueue(("sql", (f"DELETE FROM tasks WHERE {finished}", (finished_before_ms,))))

    async def sessions(self) -> list[SessionRow]:
        rows = await self._read(self._fetch_all, "SELECT * FROM sessions ORDER BY created_ms", ())
        return [SessionRow(r["session_id"], r["tenant"], r["created_ms"], r["expires_ms"], r["max_turns"],
                           r["turns_used"], r["tokens_used"]) for r in rows]

    async def commit_terminal(self, record: TaskRecord, events: Sequence[TaskEvent]) -> None:
        """Events (the terminal one last) and the terminal state, durable when this returns."""
        self.append_events(events)
        await self.finish_task(record)

    # ---- reads ---------------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskRecord | None:
        row = await self._read(self._fetch_one, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return None if row is None else _record_from_row(row)

    async def find_idempotent(self, tenant: str, key: str, since_ms: int) -> str | None:
        row = await self._read(
            self._fetch_one,
            "SELECT task_id FROM tasks WHERE tenant = ? AND idempotency_key = ? AND created_ms >= ?"
            " ORDER BY created_ms DESC LIMIT 1", (tenant, key, since_ms))
        return None if row is None else str(row["task_id"])

    async def list_tasks(self, tenant: str | None, state: TaskState | None = None,
                         limit: int = 100) -> list[TaskRecord]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_ms DESC, rowid DESC LIMIT ?"
        rows = await self._read(self._fetch_all, sql, (*params, limit))
        return [_record_from_row(r) for r in rows]

    async def events(self, task_id: str, from_seq: int = 0) -> list[TaskEvent]:
        rows = await self._read(
            self._fetch_all,
            "SELECT seq, timestamp_ms, kind, body FROM events WHERE task_id = ? AND seq >= ? ORDER BY seq",
            (task_id, from_seq))
        return [TaskEvent(task_id, r["seq"], r["timestamp_ms"], decode_kind(r["kind"], json.loads(r["body"])))
                for r in rows]

    async def usage(self) -> list[UsageRecord]:
        rows = await self._read(self._fetch_all,
                                "SELECT * FROM usage ORDER BY tenant, pool_id, state", ())
        return [UsageRecord(r["tenant"], r["pool_id"], r["state"], r["tasks"], r["tokens_in"],
                            r["tokens_out"]) for r in rows]

    def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._require().execute(sql, params).fetchone()
        return row

    def _fetch_all(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self._require().execute(sql, params).fetchall()

    # ---- recovery ------------------------------------------------------------------------------

    async def recover(self, now_ms: int) -> list[str]:
        """Fail every unfinished task with ORCHESTRATOR_RESTARTED; returns their ids."""
        await self.flush()
        return list(await asyncio.get_running_loop().run_in_executor(self._executor, self._recover, now_ms))

    def _recover(self, now_ms: int) -> list[str]:
        # req: PER-1008, PER-1009
        conn = self._require()
        rows = conn.execute(f"SELECT * FROM tasks WHERE state NOT IN {_TERMINAL_SQL}").fetchall()
        recovered = []
        conn.execute("BEGIN")
        try:
            for row in rows:
                task_id = row["task_id"]
                last = conn.execute("SELECT MAX(seq) AS s, MAX(timestamp_ms) AS t FROM events"
                                    " WHERE task_id = ?", (task_id,)).fetchone()
                next_seq = 0 if last["s"] is None else last["s"] + 1
                ts = max(now_ms, last["t"] or 0)
                error = ErrorInfo(ErrorCode.ORCHESTRATOR_RESTARTED,
                                  "the orchestrator restarted before this task finished", retriable=True)
                conn.execute("INSERT INTO events (task_id, seq, timestamp_ms, kind, body, terminal)"
                             " VALUES (?, ?, ?, 'error', ?, 1)",
                             (task_id, next_seq, ts, json.dumps(error_to_dict(error))))
                tokens_out = conn.execute(
                    "SELECT COALESCE(SUM(json_extract(body, '$.count')), 0) AS n FROM events"
                    " WHERE task_id = ? AND kind = 'token'", (task_id,)).fetchone()["n"]
                record = _record_from_row(row)
                self._apply_finish(conn, TaskRecord(
                    task_id=task_id, state=TaskState.FAILED, tenant=record.tenant, model=record.model,
                    priority=record.priority, created_ms=record.created_ms, pool_id=record.pool_id,
                    replica_id=record.replica_id, tokens_in=record.tokens_in, tokens_out=int(tokens_out),
                    finished_ms=ts, error=error, session_id=record.session_id))
                recovered.append(task_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return recovered


__all__ = ["SCHEMA_VERSION", "SessionRow", "SqliteStore", "StoreError", "TerminalStateConflict",
           "UsageRecord", "decode_kind", "encode_kind", "error_from_dict", "error_to_dict"]
