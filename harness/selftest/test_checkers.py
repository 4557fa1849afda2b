"""The harness's pure parts on planted inputs: the stream checker, the comparator, the known-failing
patterns and the certification verdict (exit codes of D10)."""

from __future__ import annotations

import pytest
from llorch.harness.compare import StreamToken, first_divergence
from llorch.harness.conform.certify import certify
from llorch.harness.conform.knownfailing import KnownFailingError, parse
from llorch.harness.conform.runner import TestRecord as Record
from llorch.harness.plugin import RequirementInfo
from llorch.harness.streamcheck import Event, check_generate_stream, check_task_stream

pytest_plugins = ["pytester"]


def good_stream(n: int = 3) -> list[Event]:
    events = [Event("queued", seq=0), Event("started", seq=1)]
    events += [Event("token", seq=2 + i, index=i, text=f" t{i}") for i in range(n)]
    events.append(Event("end", seq=2 + n, tokens_out=n))
    return events


def ids(events: list[Event], *, from_seq: int = 0) -> set[str]:
    return {v.req for v in check_task_stream(events, from_seq=from_seq)}


@pytest.mark.req("HAR-1500")
def test_checker_accepts_a_good_stream_and_coalesced_tokens() -> None:
    assert not check_task_stream(good_stream())
    coalesced = [Event("started", seq=0), Event("token", seq=1, index=0, count=3),
                 Event("token", seq=2, index=3), Event("end", seq=3, tokens_out=4)]
    assert not check_task_stream(coalesced)
    cancelled = [Event("queued", seq=0), Event("cancelled", seq=1, reason="client")]
    assert not check_task_stream(cancelled)


@pytest.mark.req("HAR-1500")
def test_checker_names_the_broken_requirement() -> None:
    s = good_stream()
    assert ids(s[:-1]) == {"STR-1002"}                                  # no terminal event
    assert ids([*s, Event("token", seq=6, index=3)]) == {"STR-1002"}    # event after the terminal
    swapped = [*s[:2], s[3], s[2], *s[4:]]
    assert {"STR-1004", "STR-1005"} <= ids(swapped)                     # reordered tokens
    dup = [*s[:3], s[2], *s[3:]]
    assert "STR-1004" in ids(dup)                                       # duplicated event
    early = [Event("token", seq=0, index=0), Event("started", seq=1), Event("end", seq=2, tokens_out=1)]
    assert "STR-1003" in ids(early)                                     # token before started
    wrong_usage = [*s[:-1], Event("end", seq=5, tokens_out=7)]
    assert ids(wrong_usage) == {"STR-1006"}
    late_queued = [Event("started", seq=0), Event("queued", seq=1), Event("end", seq=2, tokens_out=0)]
    assert "STR-1001" in ids(late_queued)


@pytest.mark.req("HAR-1500")
def test_checker_on_resumed_and_adapter_streams() -> None:
    s = good_stream(4)
    assert not check_task_stream(s[3:], from_seq=3)
    assert "STR-1004" in ids(s[4:], from_seq=3)
    gen = [Event("started"), Event("token", index=0), Event("token", index=1), Event("end", tokens_out=2)]
    assert not check_generate_stream(gen)
    assert {v.req for v in check_generate_stream(gen[1:])} == {"ADP-1012"}
    assert {v.req for v in check_generate_stream([gen[0], gen[2], gen[3]])} == {"ADP-1014", "ADP-1015"}


@pytest.mark.req("HAR-1501")
def test_comparator_finds_the_first_divergence() -> None:
    a = [StreamToken(" a", 1), StreamToken(" b", 2), StreamToken(" c", 3)]
    assert first_divergence(a, list(a)) is None
    div = first_divergence(a, [a[0], StreamToken(" x", 9), a[2]])
    assert div is not None and div.index == 1
    short = first_divergence(a, a[:2])
    assert short is not None and short.index == 2 and short.right is None
    assert first_divergence([StreamToken(" a", -1)], [StreamToken(" a", 5)]) is None  # id unknown on one side


@pytest.mark.req("HAR-1045", "HAR-1048")
def test_known_failing_patterns() -> None:
    entries = parse("# comment\nharness/adapter/*.py::test_x[a-b]  reason one\n"
                    "harness/**  catch-all reason\n")
    first, catch_all = entries
    assert first.matches("harness/adapter/test_1.py::test_x[a-b]")
    assert not first.matches("harness/adapter/test_1.py::test_xa-b")          # brackets are literal
    assert not first.matches("harness/adapter/sub/test_1.py::test_x[a-b]")   # * stays in one segment
    assert catch_all.matches("harness/a/b/c.py::t[1]")
    with pytest.raises(KnownFailingError, match=":2"):
        parse("harness/a.py::t  fine\nharness/b.py::t\n")


INDEX = {"STR-1001": RequirementInfo("streaming", "must"), "STR-1018": RequirementInfo("streaming", "should"),
         "QUE-1001": RequirementInfo("core", "must")}


def rec(nodeid: str, outcome: str, *reqs: str) -> Record:
    return Record(nodeid, outcome, list(reqs))


@pytest.mark.req("HAR-1036", "HAR-1046", "HAR-1047", "HAR-1049", "HAR-1050")
def test_certification_exit_codes() -> None:
    target = {"kind": "orchestrator", "address": "grpc://x:1", "engine": "mock", "engine_version": "1"}
    passing = [rec("harness/a.py::t1", "passed", "STR-1001"), rec("harness/a.py::t2", "passed", "QUE-1001")]
    cert = certify(passing, [], ["core", "streaming"], INDEX, target)
    assert (cert.exit_code, cert.verdict) == (0, "certified")
    assert cert.per_profile == {"core": "certified", "streaming": "certified"}

    failing = [*passing[:1], rec("harness/a.py::t2", "failed", "QUE-1001")]
    assert certify(failing, [], ["core"], INDEX, target).exit_code == 1
    known = parse("harness/a.py::t2  tracked upstream\n")
    cert = certify(failing, known, ["core"], INDEX, target)
    assert (cert.exit_code, cert.verdict, cert.per_profile["core"]) == (3, "known-failures", "known-failures")
    assert cert.known[0]["reason"] == "tracked upstream"

    stale = parse("harness/a.py::t9  never fails\n")
    cert = certify(passing, stale, ["core"], INDEX, target)
    assert cert.exit_code == 1 and cert.stale[0]["pattern"] == "harness/a.py::t9"

    should_only = [*passing, rec("harness/b.py::t3", "failed", "STR-1018")]
    cert = certify(should_only, [], ["core", "streaming"], INDEX, target)
    assert cert.exit_code == 0 and cert.advisory_failures[0]["nodeid"] == "harness/b.py::t3"
    uncited = [*passing, rec("harness/b.py::t4", "failed")]
    assert certify(uncited, [], ["core"], INDEX, target).exit_code == 1


@pytest.mark.req("HAR-1043")
def test_unsupported_on_a_claimed_must_fails_certification() -> None:
    target = {"kind": "openai", "address": "http://x:1"}
    index = {"OAI-1004": RequirementInfo("openai", "must")}
    unsupported = Record("harness/c.py::t5", "skipped", ["OAI-1004"], message="unsupported: n > 1 (HTTP 400)")
    cert = certify([unsupported], [], ["openai"], index, target)
    assert cert.per_profile == {"openai": "failed"} and cert.unsupported[0]["nodeid"] == "harness/c.py::t5"
    assert (cert.exit_code, cert.verdict) == (1, "failed")
    plain_skip = Record("harness/c.py::t6", "skipped", ["OAI-1004"], message="no auth configured")
    assert certify([plain_skip], [], ["openai"], index, target).exit_code == 0


def test_runner_records_skip_reasons_without_pytests_prefix(pytester: pytest.Pytester) -> None:
    from llorch.harness.conform.runner import _Collector

    pytester.makepyfile(test_x="import pytest\n\ndef test_s():\n    pytest.skip('unsupported: tools')\n")
    collector = _Collector(lambda n: None, lambda r: None)
    pytester.inline_run("-p", "no:cacheprovider", plugins=[collector])
    (record,) = collector.records.values()
    assert (record.outcome, record.message) == ("skipped", "unsupported: tools")
