"""The stream-contract checker: a pure function over a task's events, returning violations.

Grammar (docs/ARCHITECTURE.md, "Event stream grammar"): ``queued? started? token* (end | error |
cancelled)`` — exactly one terminal event, last; ``token`` and ``end`` only after ``started``;
``seq`` contiguous from the first requested; token ``index`` contiguous (``next.index = index +
count``); ``end.tokens_out`` = the sum of token counts. The worker-adapter stream is the same
grammar without ``queued``/``cancelled``/``seq`` (``started token* (end | error)``).

Each violation names the requirement it breaks, so a failing test's message cites the ID and a
faulty target's self-test can check that the right ID was reported. The checker knows nothing of
gRPC, SSE or JSON: ``clients.py`` turns wire events into ``Event``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "RULES",
    "TERMINAL_KINDS",
    "Event",
    "Violation",
    "check_generate_stream",
    "check_task_stream",
    "format_violations",
]

TERMINAL_KINDS = frozenset({"end", "error", "cancelled"})
TASK_KINDS = frozenset({"queued", "started", "token"}) | TERMINAL_KINDS
ADAPTER_KINDS = frozenset({"started", "token", "end", "error"})

# rule -> requirement ID, for the orchestrator stream and the adapter stream
RULES: dict[str, str] = {
    "order": "STR-1001",              # queued? started? token* terminal
    "one-terminal": "STR-1002",       # exactly one terminal event, and nothing after it
    "before-started": "STR-1003",     # no token or end before started
    "seq": "STR-1004",                # seq 0,1,2,… (from from_seq) without gap or repeat
    "index": "STR-1005",              # token index contiguous from 0, next = index + count
    "usage": "STR-1006",              # end.tokens_out == sum of token counts
    "adapter-order": "ADP-1012",      # started token* (end | error)
    "adapter-one-terminal": "ADP-1012",
    "adapter-before-started": "ADP-1012",
    "adapter-index": "ADP-1014",      # token index 0,1,2,…
    "adapter-usage": "ADP-1015",      # end.tokens_out == number of tokens
}


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a task (or generate) stream, as far as the contract checks need it."""

    kind: str
    seq: int | None = None
    index: int | None = None
    count: int = 1
    text: str = ""
    tokens_out: int | None = None
    code: str = ""
    reason: str = ""

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    req: str
    position: int
    message: str

    def __str__(self) -> str:
        return f"[{self.req}] event {self.position}: {self.message}"


def format_violations(violations: Sequence[Violation]) -> str:
    """One line per violation, each starting with its requirement ID (what a failing test prints)."""
    return "\n".join(str(v) for v in violations)


def _grammar(events: Sequence[Event], allowed: frozenset[str], prefix: str,
             *, allow_queued: bool, require_terminal: bool, resumed: bool) -> list[Violation]:
    out: list[Violation] = []
    order_rule, terminal_rule, started_rule = (f"{prefix}order", f"{prefix}one-terminal",
                                               f"{prefix}before-started")

    def bad(rule: str, pos: int, msg: str) -> None:
        out.append(Violation(rule, RULES[rule], pos, msg))

    started = resumed
    terminal_at: int | None = None
    for pos, ev in enumerate(events):
        if ev.kind not in allowed:
            bad(order_rule, pos, f"unknown event kind {ev.kind!r}")
            continue
        if terminal_at is not None:
            bad(terminal_rule, pos, f"{ev.kind!r} after the terminal event at {terminal_at}")
            continue
        if ev.kind == "queued":
            if not allow_queued or pos != 0 or resumed:
                bad(order_rule, pos, "'queued' is allowed only as the first event")
        elif ev.kind == "started":
            if started:
                bad(order_rule, pos, "a second 'started'")
            started = True
        elif ev.kind in ("token", "end") and not started:
            bad(started_rule, pos, f"{ev.kind!r} before 'started'")
        if ev.terminal:
            terminal_at = pos
    if terminal_at is None and require_terminal:
        bad(terminal_rule, len(events), "the stream ended without a terminal event (end, error or cancelled)"
            if allow_queued else "the stream ended without a terminal event (end or error)")
    return out


def _tokens(events: Sequence[Event], index_rule: str, usage_rule: str, *, first_index: int | None,
            counted: bool) -> list[Violation]:
    out: list[Violation] = []
    expected = first_index
    total = 0
    for pos, ev in enumerate(events):
        if ev.kind == "token":
            count = ev.count if counted else 1
            if count < 1:
                out.append(Violation(index_rule, RULES[index_rule], pos, f"token count {count} < 1"))
                count = 1
            if ev.index is None:
                out.append(Violation(index_rule, RULES[index_rule], pos, "token without an index"))
            elif expected is not None and ev.index != expected:
                out.append(Violation(index_rule, RULES[index_rule], pos,
                                     f"token index {ev.index}, expected {expected}"))
            if ev.index is not None:
                expected = ev.index + count
            total += count
        elif ev.kind == "end" and ev.tokens_out is not None and ev.tokens_out != total and first_index == 0:
            out.append(Violation(usage_rule, RULES[usage_rule], pos,
                                 f"end.tokens_out {ev.tokens_out} but {total} tokens were streamed"))
    return out


def check_task_stream(events: Sequence[Event], *, from_seq: int = 0,
                      require_terminal: bool = True) -> list[Violation]:
    """Violations of the orchestrator stream contract in ``events`` (the whole stream from ``from_seq``).

    With ``from_seq`` > 0 (a resumed stream) the grammar is checked from the middle: ``started`` may
    lie before the window and token indices start wherever the first one does; usage is checked only
    on a full stream.
    """
    resumed = from_seq > 0
    out = _grammar(events, TASK_KINDS, "", allow_queued=True,
                   require_terminal=require_terminal, resumed=resumed)
    for pos, ev in enumerate(events):
        expected = from_seq + pos
        if ev.seq != expected:
            out.append(Violation("seq", RULES["seq"], pos, f"seq {ev.seq}, expected {expected}"))
            break
    out += _tokens(events, "index", "usage", first_index=None if resumed else 0, counted=True)
    return sorted(out, key=lambda v: v.position)


def check_generate_stream(events: Sequence[Event], *, require_terminal: bool = True) -> list[Violation]:
    """Violations of the WorkerAdapter ``Generate`` stream contract: started token* (end | error)."""
    out = _grammar(events, ADAPTER_KINDS, "adapter-", allow_queued=False,
                   require_terminal=require_terminal, resumed=False)
    if events and events[0].kind != "started":
        out.append(Violation("adapter-order", RULES["adapter-order"], 0,
                             f"the first event is {events[0].kind!r}, not 'started'"))
    out += _tokens(events, "adapter-index", "adapter-usage", first_index=0, counted=False)
    return sorted(out, key=lambda v: v.position)
