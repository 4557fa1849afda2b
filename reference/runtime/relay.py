"""One task's event log and its subscribers: the relay from the dispatcher to the edges.

Every subscriber reads the same log through its own cursor, so two subscribers see the identical
sequence (STR-1022) and a resume from ``from_seq`` is an index into it. Backpressure without
unbounded buffers: the log holds one entry per *event*, and a token that arrives while the tail
token event has not yet been read by anyone (nor handed to the store) is merged into it
(``count`` + 1, texts concatenated). A slow reader therefore finds a few large token events
instead of a growing backlog, and a fast reader sees one event per token. An event becomes
immutable the moment it is read or persisted, so every reader and the store agree on it.

The log closes with its terminal event; nothing can be appended after it, which is what makes
cancel race-free: ``close`` and the check in ``append_token`` run on the one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llorch.reference.core.types import EventKind, TaskEvent, TokenOut


class LogClosed(Exception):
    """An append after the terminal event (the runtime drops the late event)."""


class EventLog:
    """The events of one task, seq 0, 1, 2, … with coalescing of unread token events."""

    __slots__ = ("_closed", "_events", "_frozen", "_persist", "_waiters", "task_id", "tokens_out")

    def __init__(self, task_id: str, persist: Callable[[list[TaskEvent]], None]) -> None:
        self.task_id = task_id
        self._events: list[TaskEvent] = []
        self._frozen = 0  # events[:frozen] were read or persisted: never merged into again
        self._persist = persist
        self._waiters: list[asyncio.Future[None]] = []  # one per parked subscriber
        self._closed = False
        self.tokens_out = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_timestamp_ms(self) -> int:
        return self._events[-1].timestamp_ms if self._events else 0

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():  # a subscriber cancelled while parked left a cancelled future
                    waiter.set_result(None)

    def append(self, kind: EventKind, now_ms: int) -> TaskEvent:
        """Append a non-token event (stored at once); a terminal kind closes the log."""
        if self._closed:
            raise LogClosed(self.task_id)
        # req: STR-1004, STR-1007
        event = TaskEvent(self.task_id, len(self._events), max(now_ms, self.last_timestamp_ms), kind)
        self._events.append(event)
        if event.terminal:
            # req: STR-1002
            self._closed = True
        self.freeze()  # req: PER-1300 (only token events wait, to be merged; the rest is stored at once)
        self._wake()
        return event

    def append_token(self, text: str, token_id: int, now_ms: int) -> None:
        """One token: merged into the unread tail token event, or appended as a new event."""
        if self._closed:
            raise LogClosed(self.task_id)
        ts = max(now_ms, self.last_timestamp_ms)
        events = self._events
        if len(events) > self._frozen and isinstance(tail := events[-1].kind, TokenOut):
            # req: STR-1023, STR-1024, STR-1026, STR-1300
            events[-1] = TaskEvent(self.task_id, len(events) - 1, ts,
                                   TokenOut(tail.index, tail.text + text, token_id, tail.count + 1))
        else:
            # req: STR-1005
            events.append(TaskEvent(self.task_id, len(events), ts, TokenOut(self.tokens_out, text, token_id)))
        self.tokens_out += 1
        self._wake()

    def freeze(self, upto: int | None = None) -> None:
        """Make events[:upto] immutable and hand the newly frozen ones to the store (PER-1004)."""
        end = len(self._events) if upto is None else min(upto, len(self._events))
        if end > self._frozen:
            # req: PER-1004
            self._persist(self._events[self._frozen:end])
            self._frozen = end

    def read(self, cursor: int) -> list[TaskEvent]:
        """Events from ``cursor`` on, frozen first so every reader sees the same ones."""
        if cursor >= len(self._events):
            return []
        self.freeze()
        return self._events[cursor:]

    async def wait_beyond(self, cursor: int) -> None:
        """Return once the log has more than ``cursor`` events or is closed."""
        while cursor >= len(self._events) and not self._closed:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def snapshot(self) -> list[TaskEvent]:
        return list(self._events)


__all__ = ["EventLog", "LogClosed"]
