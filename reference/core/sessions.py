"""Sessions: a tenant's conversation handle with a TTL and a turn limit, clock-free (``now_ms``).

A session expires ``ttl_ms`` after its creation (a fixed ``expires_ms``, as the create answer
reported it), and is spent once ``max_turns`` turns were taken. Submitting with a session is
two-phase so that a refused submit costs no turn (ADM-1037): ``check_turn`` raises the typed
refusal and changes nothing; ``record_turn`` commits once the task was accepted. Another tenant's
session is answered as an unknown one (ADM-1036), revealing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from llorch.reference.errors import Conflict, ErrorCode, NotFound


@dataclass(frozen=True, slots=True)
class Session:
    """The session as answered (same fields as ``runtime.api.SessionInfo``)."""

    session_id: str
    tenant: str
    expires_ms: int
    turns_used: int
    max_turns: int
    tokens_used: int


@dataclass(slots=True)
class _State:
    tenant: str
    ttl_ms: int
    max_turns: int
    expires_ms: int
    turns_used: int = 0
    tokens_used: int = 0


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    active: int
    created_total: int
    expired_refusals_total: int


class SessionExpired(Conflict):
    """Code ``SESSION_EXPIRED``: the TTL passed or the turns are spent (HTTP 409)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.SESSION_EXPIRED)


class Sessions:
    """All live sessions; ids come from the caller (the runtime generates them)."""

    def __init__(self, default_ttl_ms: int, default_max_turns: int) -> None:
        if default_ttl_ms < 1 or default_max_turns < 1:
            raise ValueError("session defaults must be positive")
        self._default_ttl_ms = default_ttl_ms
        self._default_max_turns = default_max_turns
        self._sessions: dict[str, _State] = {}
        self._created = self._expired_refusals = 0

    def create(self, session_id: str, tenant: str, now_ms: int, ttl_ms: int = 0,
               max_turns: int = 0) -> Session:
        """A new session; 0 for ``ttl_ms`` or ``max_turns`` takes the server default."""
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} already exists")
        if ttl_ms < 0 or max_turns < 0:
            raise ValueError("ttl_ms and max_turns must be non-negative")
        # req: ADM-1028, ADM-1029
        ttl = ttl_ms or self._default_ttl_ms
        state = _State(tenant, ttl, max_turns or self._default_max_turns, now_ms + ttl)
        self._sessions[session_id] = state
        self._created += 1
        return self._view(session_id, state)

    def restore(self, session: Session, ttl_ms: int) -> None:
        """Put back a session as the store kept it (after a restart), counters and expiry unchanged.

        Not a creation: ``created_total`` does not move, and a session already expired or spent is
        restored as such (its next turn is refused) until a sweep forgets it.
        """
        # req: PER-1013
        if session.session_id in self._sessions:
            raise ValueError(f"session {session.session_id} already exists")
        if ttl_ms < 1 or session.max_turns < 1 or session.turns_used < 0 or session.tokens_used < 0:
            raise ValueError("a restored session needs a positive TTL and turn limit, non-negative counters")
        self._sessions[session.session_id] = _State(
            session.tenant, ttl_ms, session.max_turns, session.expires_ms,
            min(session.turns_used, session.max_turns), session.tokens_used)

    @staticmethod
    def _view(session_id: str, state: _State) -> Session:
        return Session(session_id, state.tenant, state.expires_ms, state.turns_used, state.max_turns,
                       state.tokens_used)

    def _owned(self, session_id: str, tenant: str) -> _State:
        state = self._sessions.get(session_id)
        # req: ADM-1033, ADM-1036
        if state is None or state.tenant != tenant:
            raise NotFound(f"session {session_id!r} not found", code=ErrorCode.SESSION_NOT_FOUND)
        return state

    def get(self, session_id: str, tenant: str) -> Session:
        return self._view(session_id, self._owned(session_id, tenant))

    def delete(self, session_id: str, tenant: str) -> None:
        # req: ADM-1034
        self._owned(session_id, tenant)
        del self._sessions[session_id]

    def check_turn(self, session_id: str, tenant: str, now_ms: int) -> Session:
        """Raise if a submit may not take a turn now; change nothing."""
        state = self._owned(session_id, tenant)
        # req: ADM-1032
        if now_ms >= state.expires_ms:
            self._expired_refusals += 1
            raise SessionExpired(
                f"session {session_id!r} expired at {state.expires_ms} ms (TTL {state.ttl_ms} ms)")
        # req: ADM-1031
        if state.turns_used >= state.max_turns:
            self._expired_refusals += 1
            raise SessionExpired(f"session {session_id!r} used all {state.max_turns} turns")
        return self._view(session_id, state)

    def record_turn(self, session_id: str, tenant: str, now_ms: int) -> Session:
        """Check, then take one turn (call it once the task was accepted)."""
        self.check_turn(session_id, tenant, now_ms)
        state = self._owned(session_id, tenant)
        # req: ADM-1030
        state.turns_used += 1
        return self._view(session_id, state)

    def refund_turn(self, session_id: str, tenant: str) -> None:
        """Give back a turn taken for a task that was refused after all (ADM-1037)."""
        state = self._sessions.get(session_id)
        if state is not None and state.tenant == tenant and state.turns_used > 0:
            state.turns_used -= 1

    def add_usage(self, session_id: str, tokens: int) -> None:
        """Add a finished task's ``tokens_in + tokens_out``; a session deleted meanwhile is ignored."""
        # req: ADM-1035
        state = self._sessions.get(session_id)
        if state is not None and tokens > 0:
            state.tokens_used += tokens

    def sweep(self, now_ms: int, grace_ms: int = 0) -> list[str]:
        """Forget sessions expired for more than ``grace_ms`` (they then answer SESSION_NOT_FOUND)."""
        gone = [sid for sid, s in self._sessions.items() if now_ms >= s.expires_ms + grace_ms]
        for sid in gone:
            del self._sessions[sid]
        return gone

    def __len__(self) -> int:
        return len(self._sessions)

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(len(self._sessions), self._created, self._expired_refusals)


__all__ = ["Session", "SessionExpired", "SessionStatistics", "Sessions"]
