"""Token pacing in the relay's ``EventLog``: parked subscribers are woken for tokens at most once
per flush interval, so a fast engine's tokens reach a client merged, never late beyond the interval,
and a terminal event is never held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from llorch.reference.core.types import CancelledEvent, Ended, TaskEvent, TokenOut
from llorch.reference.runtime.relay import EventLog

TOKENS = [f"t{i}·" for i in range(100)]  # multi-byte text: the concatenation must stay byte-exact
BOUND_S = 10.0  # a generous bound on what must happen "at once"; any hold of an hour outlasts it


async def _follow(log: EventLog) -> AsyncGenerator[TaskEvent, None]:
    """One subscriber's cursor over the log, as the runtime's ``events`` reads it."""
    cursor = 0
    while True:
        for event in log.read(cursor):
            yield event
            cursor = event.seq + 1
            if event.terminal:
                return
        await log.wait_beyond(cursor)


async def _fast_engine(log: EventLog, last: Ended | CancelledEvent) -> None:
    """One token per event-loop turn, then ``last``."""
    for i, text in enumerate(TOKENS):
        log.append_token(text, i, 0)
        await asyncio.sleep(0)
    log.append(last, 0)


async def _parked(log: EventLog) -> None:
    """Poll (bounded) until a subscriber waits for the next event, as a connected client does."""
    async def poll() -> None:
        while not log.parked:
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), BOUND_S)


async def _receive(log: EventLog, last: Ended | CancelledEvent) -> list[TaskEvent]:
    async def subscriber() -> list[TaskEvent]:
        return [event async for event in _follow(log)]

    received = asyncio.ensure_future(subscriber())
    await _parked(log)
    await _fast_engine(log, last)
    return await asyncio.wait_for(received, BOUND_S)


def _tokens(events: list[TaskEvent]) -> list[TokenOut]:
    return [e.kind for e in events if isinstance(e.kind, TokenOut)]


@pytest.mark.req("STR-1350", "STR-1024")
def test_a_fast_engine_reaches_a_parked_subscriber_merged_and_byte_exact() -> None:
    ended = Ended(tokens_in=1, tokens_out=len(TOKENS), decode_ms=0, finish_reason="length")
    received = asyncio.run(_receive(EventLog("task-1", lambda events: None, flush_interval_s=0.5,
                                           max_held_tokens=1000), ended))
    tokens = _tokens(received)
    # The first token wakes the subscriber at once; the rest arrive within one interval and merge.
    assert len(tokens) <= 3, [t.count for t in tokens]
    assert tokens[0].index == 0
    assert sum(t.count for t in tokens) == len(TOKENS)
    assert [t.index for t in tokens] == [sum(t.count for t in tokens[:i]) for i in range(len(tokens))]
    assert "".join(t.text for t in tokens).encode() == "".join(TOKENS).encode()
    assert [e.seq for e in received] == list(range(len(received)))
    assert received[-1].kind == ended


@pytest.mark.req("STR-1350")
def test_the_first_token_wakes_a_parked_subscriber_at_once() -> None:
    async def main() -> TaskEvent:
        log = EventLog("task-2", lambda events: None, flush_interval_s=3600.0)
        reader = _follow(log)
        first = asyncio.ensure_future(anext(reader))
        await _parked(log)
        log.append_token("hello", 7, 0)
        try:
            return await asyncio.wait_for(first, BOUND_S)
        finally:
            await reader.aclose()

    assert asyncio.run(main()).kind == TokenOut(0, "hello", 7, 1)


@pytest.mark.req("STR-1350")
def test_a_terminal_event_is_never_held_behind_the_interval() -> None:
    """A cancel closes the log: the held tokens and the ``cancelled`` event go out at once."""
    cancelled = CancelledEvent("client")
    log = EventLog("task-3", lambda events: None, flush_interval_s=3600.0)
    received = asyncio.run(_receive(log, cancelled))
    assert received[-1].kind == cancelled
    assert sum(t.count for t in _tokens(received)) == len(TOKENS) == log.tokens_out


@pytest.mark.req("STR-1350", "STR-1300")
def test_a_busy_reader_also_gets_tokens_merged() -> None:
    """A reader that comes back from writing the previous event (never parked) finds the tokens that
    arrived within the interval held, then all of them in one event once the log releases them."""
    async def main() -> tuple[list[TaskEvent], list[TaskEvent], list[TaskEvent]]:
        log = EventLog("task-4", lambda events: None, flush_interval_s=3600.0, max_held_tokens=1000)
        log.append_token(TOKENS[0], 0, 0)
        first = log.read(0)
        for i, text in enumerate(TOKENS[1:], start=1):
            log.append_token(text, i, 0)
        held = log.read(len(first))
        log.append(Ended(tokens_in=1, tokens_out=len(TOKENS), decode_ms=0, finish_reason="length"), 0)
        return first, held, log.read(len(first))

    first, held, rest = asyncio.run(main())
    assert [t.count for t in _tokens(first)] == [1]
    assert held == []
    assert [t.count for t in _tokens(rest)] == [len(TOKENS) - 1]
    assert "".join(t.text for t in _tokens(first + rest)) == "".join(TOKENS)


@pytest.mark.req("STR-1350")
def test_held_tokens_are_released_every_max_held_tokens() -> None:
    ended = Ended(tokens_in=1, tokens_out=len(TOKENS), decode_ms=0, finish_reason="length")
    log = EventLog("task-5", lambda events: None, flush_interval_s=3600.0, max_held_tokens=10)
    tokens = _tokens(asyncio.run(_receive(log, ended)))
    assert max(t.count for t in tokens) == 10
    assert sum(t.count for t in tokens) == len(TOKENS)
