"""One task's event log and its subscribers: the relay from the dispatcher to the edges.

Every subscriber reads the same log through its own cursor, so two subscribers see the identical
sequence (STR-1022) and a resume from ``from_seq`` is an index into it. Backpressure without
unbounded buffers: the log holds one entry per *event*, and a token that arrives while the tail
token event has not yet been read by anyone (nor handed to the store) is merged into it
(``count`` + 1, texts concatenated). A slow reader therefore finds a few large token events
instead of a growing backlog, and a fast reader sees one event per token. An event becomes
immutable the moment it is read or persisted, so every reader and the store agree on it.

Pacing (STR-1350): new tokens become visible to readers at most once per ``flush_interval_s``. A
token that arrives sooner is held (merged with those that follow) until the interval is over, so a
fast engine costs each edge one socket write per interval instead of one per token, whether its
reader is parked or busy writing the previous event; the first token, a token after a quiet
interval, and every non-token event (the terminal one included) release everything at once, and
so does the ``max_held_tokens``-th held token (one event stays small, and an engine driven by a
manual clock in tests still yields a token event every so many tokens).

The log closes with its terminal event; nothing can be appended after it, which is what makes
cancel race-free: ``close`` and the check in ``append_token`` run on the one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llorch.reference.core.types import EventKind, TaskEvent, TokenOut

#: New tokens become visible to readers at most once per this interval (measured in
#: ``reference/bench.py``). An engine slower than 100 tokens/s per stream never waits for it.
TOKEN_FLUSH_INTERVAL_S = 0.010
#: ... or as soon as this many tokens are held.
MAX_HELD_TOKENS = 32


class LogClosed(Exception):
    """An append after the terminal event (the runtime drops the late event)."""


class EventLog:
    """The events of one task, seq 0, 1, 2, … with coalescing of unread token events."""

    __slots__ = ("_closed", "_events", "_flush_s", "_frozen", "_held", "_max_held", "_persist",
                 "_released_at", "_timer", "_visible", "_waiters", "task_id", "tokens_out")

    def __init__(self, task_id: str, persist: Callable[[list[TaskEvent]], None], *,
                 flush_interval_s: float = TOKEN_FLUSH_INTERVAL_S,
                 max_held_tokens: int = MAX_HELD_TOKENS) -> None:
        self.task_id = task_id
        self._events: list[TaskEvent] = []
        self._frozen = 0  # events[:frozen] were read or persisted: never merged into again
        self._persist = persist
        self._waiters: list[asyncio.Future[None]] = []  # one per parked subscriber
        self._closed = False
        self.tokens_out = 0
        self._flush_s = flush_interval_s
        self._visible = 0  # events[:visible] may be read; the rest are held tokens (pacing)
        self._held = 0  # tokens in events[visible:]
        self._max_held = max_held_tokens
        self._released_at = float("-inf")  # loop time at which held tokens were last released
        self._timer: asyncio.TimerHandle | None = None  # the paced release of held tokens

    def __len__(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def parked(self) -> int:
        """Subscribers waiting in ``wait_beyond`` for the next event."""
        return len(self._waiters)

    @property
    def last_timestamp_ms(self) -> int:
        return self._events[-1].timestamp_ms if self._events else 0

    def _release(self) -> None:
        """Make every event visible and wake the parked subscribers."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._visible = len(self._events)
        self._held = 0
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
        self._release()
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
        if self._visible < len(events):
            self._held += 1
            if self._timer is None or self._held >= self._max_held:  # else it rides along
                self._release_tokens()

    def _release_tokens(self) -> None:
        """Release the new tokens now, or once the interval since the last release is over."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop, hence no parked reader to pace
            self._release()
            return
        now = loop.time()
        due = self._released_at + self._flush_s
        if now < due and self._held < self._max_held:
            # req: STR-1350 (tokens arriving meanwhile merge into the held tail event)
            if self._timer is None:
                self._timer = loop.call_at(due, self._timed_release)
            return
        self._released_at = now
        self._release()

    def _timed_release(self) -> None:
        self._timer = None
        self._released_at = asyncio.get_running_loop().time()
        self._release()

    def freeze(self, upto: int | None = None) -> None:
        """Make events[:upto] immutable and hand the newly frozen ones to the store (PER-1004)."""
        end = len(self._events) if upto is None else min(upto, len(self._events))
        if end > self._frozen:
            # req: PER-1004
            self._persist(self._events[self._frozen:end])
            self._frozen = end

    def read(self, cursor: int) -> list[TaskEvent]:
        """Visible events from ``cursor`` on, frozen first so every reader sees the same ones."""
        end = self._visible
        if cursor >= end:
            return []
        self.freeze(end)
        return self._events[cursor:end]

    async def wait_beyond(self, cursor: int) -> None:
        """Return once more than ``cursor`` events are visible or the log is closed."""
        while cursor >= self._visible and not self._closed:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def snapshot(self) -> list[TaskEvent]:
        return list(self._events)


__all__ = ["EventLog", "LogClosed"]
