"""Sessions: defaults, TTL and turn limits, tenant isolation, usage, on a fake clock."""

from __future__ import annotations

import pytest
from llorch.reference.core.sessions import Session, SessionExpired, Sessions
from llorch.reference.errors import Conflict, ErrorCode, NotFound


def store() -> Sessions:
    return Sessions(default_ttl_ms=60_000, default_max_turns=5)


@pytest.mark.req("ADM-1028", "ADM-1029")
def test_create_applies_server_defaults_for_zero():
    s = store().create("s1", "acme", now_ms=1_000)
    assert (s.expires_ms, s.max_turns, s.turns_used, s.tokens_used) == (61_000, 5, 0, 0)
    custom = store().create("s2", "acme", now_ms=1_000, ttl_ms=10, max_turns=2)
    assert (custom.expires_ms, custom.max_turns) == (1_010, 2)


@pytest.mark.req("ADM-1030", "ADM-1031")
def test_each_turn_counts_once_and_the_last_one_is_refused():
    sessions = store()
    sessions.create("s", "acme", 0, max_turns=2)
    assert sessions.record_turn("s", "acme", 1).turns_used == 1
    assert sessions.record_turn("s", "acme", 2).turns_used == 2
    with pytest.raises(Conflict) as info:
        sessions.record_turn("s", "acme", 3)
    assert info.value.code is ErrorCode.SESSION_EXPIRED
    assert sessions.get("s", "acme").turns_used == 2


@pytest.mark.req("ADM-1032")
def test_a_session_past_its_expiry_is_refused():
    sessions = store()
    sessions.create("s", "acme", 0, ttl_ms=100)
    sessions.record_turn("s", "acme", 99)
    with pytest.raises(SessionExpired):
        sessions.check_turn("s", "acme", 100)


@pytest.mark.req("ADM-1033", "ADM-1036")
def test_unknown_and_foreign_sessions_look_the_same():
    sessions = store()
    sessions.create("s", "acme", 0)
    for sid, tenant in (("nope", "acme"), ("s", "other")):
        for call, args in ((sessions.get, ()), (sessions.check_turn, (1,)), (sessions.delete, ())):
            with pytest.raises(NotFound) as info:
                call(sid, tenant, *args)  # type: ignore[operator]
            assert info.value.code is ErrorCode.SESSION_NOT_FOUND
    assert sessions.get("s", "acme").turns_used == 0


@pytest.mark.req("ADM-1034")
def test_deleted_sessions_are_not_found():
    sessions = store()
    sessions.create("s", "acme", 0)
    sessions.delete("s", "acme")
    with pytest.raises(NotFound):
        sessions.get("s", "acme")


@pytest.mark.req("ADM-1037")
def test_check_takes_nothing_and_refund_gives_a_turn_back():
    sessions = store()
    sessions.create("s", "acme", 0, max_turns=1)
    sessions.check_turn("s", "acme", 1)
    sessions.check_turn("s", "acme", 2)
    sessions.record_turn("s", "acme", 3)
    sessions.refund_turn("s", "acme")
    assert sessions.record_turn("s", "acme", 4).turns_used == 1


@pytest.mark.req("ADM-1035")
def test_usage_adds_up():
    sessions = store()
    sessions.create("s", "acme", 0)
    sessions.add_usage("s", 7)
    sessions.add_usage("s", 5)
    sessions.add_usage("gone", 9)  # a deleted session is ignored
    assert sessions.get("s", "acme").tokens_used == 12


def test_sweep_forgets_long_expired_sessions():
    sessions = store()
    sessions.create("old", "acme", 0, ttl_ms=10)
    sessions.create("new", "acme", 0, ttl_ms=1_000)
    assert sessions.sweep(now_ms=20, grace_ms=5) == ["old"]
    assert len(sessions) == 1
    assert sessions.statistics().created_total == 2


@pytest.mark.req("PER-1013")
def test_restore_puts_a_session_back_as_stored_without_creating_one():
    sessions = Sessions(default_ttl_ms=1_000, default_max_turns=5)
    sessions.restore(Session("s1", "acme", expires_ms=9_000, turns_used=2, max_turns=3, tokens_used=40),
                     ttl_ms=8_000)
    sessions.restore(Session("spent", "acme", expires_ms=9_000, turns_used=3, max_turns=3, tokens_used=0),
                     ttl_ms=8_000)
    assert sessions.get("s1", "acme") == Session("s1", "acme", 9_000, 2, 3, 40)
    assert sessions.statistics().created_total == 0
    assert sessions.record_turn("s1", "acme", 8_999).turns_used == 3  # the last turn left
    with pytest.raises(SessionExpired):
        sessions.check_turn("spent", "acme", 1_000)  # spent before the restart, still spent
    with pytest.raises(ValueError):
        sessions.restore(Session("s1", "acme", 9_000, 0, 3, 0), ttl_ms=8_000)
    with pytest.raises(NotFound):
        sessions.get("s1", "other")
