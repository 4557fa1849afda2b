"""Deterministic tasks over the task API, on the conformance configuration's pools: replicas of the
same model digest, concurrent load and relay coalescing must not change the token stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from llorch.harness.clients import STREAM_TIMEOUT_S, wait_until

SAMPLER = {"temperature": 0.8, "top_p": 0.95, "seed": 1234}
PROMPT = "determinism over the wire"
MAX_TOKENS = 48


@dataclass(frozen=True)
class Stream:
    """What a task streamed: token texts as the events carried them, the joined text, the end."""

    pieces: list[str]
    text: str
    tokens_out: int
    finish_reason: str
    replica_id: str


def _pools(api: Any) -> dict[str, dict[str, Any]]:
    return {p["pool_id"]: p for p in api.request("GET", "/v1/pools").json()["pools"]}


def _run(api: Any, placement: dict[str, Any], *, replay: bool = False, **overrides: Any) -> Stream:
    """Submit a deterministic task and read its stream over gRPC: live, or (``replay``) only after
    the task ended, so that the relay has coalesced its unread tokens differently."""
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "sampler": SAMPLER, "deterministic": True,
            "placement": placement, **overrides}
    task_id = api.submit_ok(**body)["task_id"]
    if replay:
        assert wait_until(lambda: api.get_task(task_id)["state"] == "completed", STREAM_TIMEOUT_S), (
            f"task {task_id} did not complete")
    events = api.grpc_events(task_id)
    kinds = [ev.WhichOneof("kind") for ev in events]
    assert kinds[-1] == "end", f"deterministic task ended with {kinds[-1]}: {events[-1]}"
    pieces = [ev.token.text for ev in events if ev.WhichOneof("kind") == "token"]
    started = [ev.started for ev in events if ev.WhichOneof("kind") == "started"]
    return Stream(pieces, "".join(pieces), events[-1].end.tokens_out, events[-1].end.finish_reason,
                  started[0].replica_id if started else "")


@pytest.fixture
def pool_a(api: Any) -> dict[str, Any]:
    pool = _pools(api).get("pool-a")
    if pool is None or len(pool["replicas"]) < 2:
        pytest.skip("the conformance configuration's pool-a (two replicas) is not served")
    return pool


@pytest.mark.req("DET-1001")
def test_same_request_on_two_replicas_is_identical(api: Any, pool_a: dict[str, Any]) -> None:
    r0, r1 = (r["replica_id"] for r in pool_a["replicas"][:2])
    assert pool_a["replicas"][0]["model_digest"] == pool_a["replicas"][1]["model_digest"]
    a = _run(api, {"pin_pool": "pool-a", "pin_replica": r0}, model=pool_a["model"])
    b = _run(api, {"pin_pool": "pool-a", "pin_replica": r1}, model=pool_a["model"])
    assert (a.replica_id, b.replica_id) == (r0, r1), f"pinning ignored: ran on {a.replica_id}, {b.replica_id}"
    assert a.text.encode() == b.text.encode(), f"[DET-1001] {r0} streamed {a.text!r}, {r1} {b.text!r}"
    assert a.finish_reason == b.finish_reason, (
        f"[DET-1001] finish_reason {a.finish_reason} vs {b.finish_reason}")
    other = _run(api, {"pin_pool": "pool-a", "pin_replica": r1}, model=pool_a["model"],
                 sampler={**SAMPLER, "seed": 4321})
    assert other.text != a.text, "another seed gave the same text: the comparison could not fail"


@pytest.mark.req("DET-1003")
def test_concurrent_load_does_not_change_the_stream(api: Any, pool_a: dict[str, Any]) -> None:
    placement = {"pin_pool": "pool-a"}
    alone = _run(api, placement, model=pool_a["model"])
    loaders = [api.submit_ok(model=pool_a["model"], prompt=f"concurrent load {i}", max_tokens=256,
                             placement=placement)["task_id"] for i in range(3)]
    try:
        assert wait_until(lambda: all(api.get_task(t)["state"] == "streaming" for t in loaders), 10), (
            "the load tasks are not streaming beside the deterministic one")
        busy = _run(api, placement, model=pool_a["model"])
        assert wait_until(lambda: any(api.get_task(t)["state"] == "streaming" for t in loaders), 1), (
            "the load ended before the deterministic task ran")
    finally:
        for task_id in loaders:
            api.cancel(task_id)
    assert busy.text.encode() == alone.text.encode(), (
        f"[DET-1003] under load {busy.text!r}, alone {alone.text!r}")
    assert (busy.tokens_out, busy.finish_reason) == (alone.tokens_out, alone.finish_reason)


@pytest.mark.req("DET-1004")
def test_coalescing_does_not_change_the_stream(api: Any, pool_a: dict[str, Any]) -> None:
    placement = {"pin_pool": "pool-a"}
    live = _run(api, placement, model=pool_a["model"])
    late = _run(api, placement, model=pool_a["model"], replay=True)
    assert live.pieces != late.pieces, (
        f"live and late readers got the same event boundaries ({len(live.pieces)} token events): "
        "the check could not fail")
    assert late.text.encode() == live.text.encode(), (
        f"[DET-1004] {len(late.pieces)} token events gave {late.text!r}; "
        f"{len(live.pieces)} gave {live.text!r}")
    assert (late.tokens_out, late.finish_reason) == (live.tokens_out, live.finish_reason), (
        f"[DET-1004] end differs: {late.tokens_out}/{late.finish_reason} "
        f"vs {live.tokens_out}/{live.finish_reason}")
