"""Placement over pool snapshots: constraints, readiness, fallback chains, least-loaded choice."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llorch.reference.core.placement import Placed, PoolView, ReplicaView, Snapshot, Wait, place
from llorch.reference.core.types import Placement, TaskRequest
from llorch.reference.errors import ErrorCode, LlorchError, NotFound, Unavailable


def req(model: str = "m", **kw) -> TaskRequest:
    placement = Placement(**{k: kw.pop(k) for k in list(kw) if k in Placement.__dataclass_fields__})
    return TaskRequest(model=model, prompt="p", max_tokens=4, placement=placement, **kw)


def pool(pool_id: str, *free: int, model: str = "m", ready: bool = True, **kw) -> PoolView:
    replicas = tuple(ReplicaView(f"{pool_id}-r{i}", ready=True, free_slots=f, total_slots=4)
                     for i, f in enumerate(free))
    return PoolView(pool_id, model, ready, replicas, **kw)


def code_of(request: TaskRequest, pools: list[PoolView]) -> ErrorCode:
    with pytest.raises(LlorchError) as info:
        place(request, pools)
    return info.value.code


@pytest.mark.req("ADM-1012")
def test_no_pool_serving_the_model_is_model_not_found():
    with pytest.raises(NotFound) as info:
        place(req("other"), [pool("a", 1)])
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND


@pytest.mark.req("SCH-1001", "SCH-1007")
def test_pin_pool_restricts_and_an_unknown_pin_is_not_found():
    pools = [pool("a", 4), pool("b", 1)]
    assert place(req(pin_pool="b"), pools) == Placed("b", "b-r0")
    assert code_of(req(pin_pool="zzz"), pools) is ErrorCode.POOL_NOT_FOUND


@pytest.mark.req("SCH-1002")
def test_pin_replica_runs_only_there_even_when_others_are_freer():
    pools = [pool("a", 4, 1)]
    assert place(req(pin_pool="a", pin_replica="a-r1"), pools) == Placed("a", "a-r1")
    busy = [pool("a", 4, 0)]
    assert isinstance(place(req(pin_pool="a", pin_replica="a-r1"), busy), Wait)


@pytest.mark.req("SCH-1003", "SCH-1006")
def test_avoided_pools_are_never_used_and_excluding_all_is_unavailable():
    pools = [pool("a", 4), pool("b", 1)]
    assert place(req(avoid_pools=("a",)), pools) == Placed("b", "b-r0")
    assert isinstance(place(req(avoid_pools=("a",)), [pool("a", 4), pool("b", 0)]), Wait)
    assert code_of(req(avoid_pools=("a", "b")), pools) is ErrorCode.POOL_UNAVAILABLE
    assert code_of(req(pin_pool="a", avoid_pools=("a",)), pools) is ErrorCode.POOL_UNAVAILABLE


@pytest.mark.req("SCH-1004", "SCH-1005")
def test_prefer_is_a_fallback_chain_by_readiness():
    pools = [pool("a", 4), pool("b", 1), pool("c", 2)]
    assert place(req(prefer_pools=("b", "c")), pools).pool_id == "b"  # type: ignore[union-attr]
    # b busy but ready: the task waits for b rather than spilling to c
    busy_b = [pool("a", 4), pool("b", 0), pool("c", 2)]
    assert isinstance(place(req(prefer_pools=("b", "c")), busy_b), Wait)
    # b unready: next in the chain
    down_b = [pool("a", 4), pool("b", 1, ready=False), pool("c", 2)]
    assert place(req(prefer_pools=("b", "c")), down_b).pool_id == "c"  # type: ignore[union-attr]
    # every preferred pool unready: any other allowed pool
    down_bc = [pool("a", 4), pool("b", 1, ready=False), pool("c", 2, draining=True)]
    assert place(req(prefer_pools=("b", "c")), down_bc).pool_id == "a"  # type: ignore[union-attr]


@pytest.mark.req("SCH-1010", "SCH-1011")
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=1, max_size=6), st.integers(0, 50))
def test_choice_is_a_ready_replica_with_the_most_free_slots(replicas, turn):
    views = tuple(ReplicaView(f"r{i}", ready, free) for i, (ready, free) in enumerate(replicas))
    pools = [PoolView("a", "m", True, views)]
    usable = [v for v in views if v.ready and v.free_slots > 0]
    try:
        result = place(req(), pools, turn=turn)
    except Unavailable as exc:
        assert not any(v.ready for v in views)
        assert exc.code is ErrorCode.POOL_UNREADY
        return
    if not usable:
        assert isinstance(result, Wait)
        return
    assert isinstance(result, Placed)
    chosen = next(v for v in views if v.replica_id == result.replica_id)
    assert chosen in usable
    assert chosen.free_slots == max(v.free_slots for v in usable)


@pytest.mark.req("SCH-1012")
def test_ties_rotate_with_the_turn_counter():
    pools = [pool("a", 2, 2), pool("b", 2)]
    chosen = {place(req(), pools, turn=t) for t in range(3)}
    assert chosen == {Placed("a", "a-r0"), Placed("a", "a-r1"), Placed("b", "b-r0")}


@pytest.mark.req("SCH-1013")
def test_unready_pools_refuse_unless_one_is_reloading():
    assert code_of(req(), [pool("a", 1, ready=False)]) is ErrorCode.POOL_UNREADY
    unready_replicas = PoolView("a", "m", True, (ReplicaView("r0", ready=False, free_slots=1),))
    assert code_of(req(), [unready_replicas]) is ErrorCode.POOL_UNREADY
    assert isinstance(place(req(), [pool("a", 1, ready=False, reloading=True)]), Wait)


@pytest.mark.req("SCH-1015", "SCH-1013")
def test_draining_pools_take_nothing_new_and_all_draining_is_unready():
    pools = [pool("a", 4, draining=True), pool("b", 1)]
    assert place(req(), pools) == Placed("b", "b-r0")
    # A draining pool exists but has no replica open to new work: POOL_UNREADY, as the proto says.
    assert code_of(req(), [pool("a", 4, draining=True)]) is ErrorCode.POOL_UNREADY
    both = [pool("a", 4, draining=True), pool("b", 1, draining=True)]
    assert code_of(req(), both) is ErrorCode.POOL_UNREADY


@pytest.mark.req("ADM-1017")
def test_require_real_engine_skips_mock_pools():
    pools = [pool("mock", 4, mock=True), pool("real", 1)]
    assert place(req(require_real_engine=True), pools) == Placed("real", "real-r0")
    only_mock = [pool("mock", 4, mock=True)]
    assert code_of(req(require_real_engine=True), only_mock) is ErrorCode.REAL_ENGINE_REQUIRED


@pytest.mark.req("ADM-1018")
def test_deterministic_tasks_only_go_to_deterministic_replicas():
    mixed = PoolView("a", "m", True, (ReplicaView("r0", True, 4, deterministic=False),
                                      ReplicaView("r1", True, 1, deterministic=True)))
    assert place(req(deterministic=True), [mixed]) == Placed("a", "r1")
    assert place(req(), [mixed]) == Placed("a", "r0")
    never = PoolView("a", "m", True, (ReplicaView("r0", True, 4, deterministic=False),))
    assert code_of(req(deterministic=True), [never]) is ErrorCode.DETERMINISM_UNSUPPORTED


def test_snapshot_eligible_and_check_agree_with_place():
    snapshot = Snapshot([pool("a", 0), pool("b", 2, model="n")])
    assert not snapshot.eligible(req("m"))  # busy: wait
    assert snapshot.eligible(req("n"))
    assert not snapshot.eligible(req("zzz"))  # refused: not eligible either
    snapshot.check(req("m"))  # waiting is not a refusal
    with pytest.raises(NotFound):
        snapshot.check(req("zzz"))
    with pytest.raises(NotFound):  # a memoised refusal is raised again, fresh
        snapshot.place(req("zzz"))


pool_ids = ["a", "b", "c", "d"]
replica_st = st.builds(ReplicaView, st.sampled_from(["r0", "r1"]), st.booleans(), st.integers(0, 3),
                       st.just(4), st.booleans())
pool_st = st.builds(
    lambda pid, model, ready, reps, draining, mock: PoolView(
        pid, model, ready, tuple({f"{pid}-{r.replica_id}": r for r in reps}.values()), draining=draining,
        mock=mock),
    st.sampled_from(pool_ids), st.sampled_from(["m", "n"]), st.booleans(), st.lists(replica_st, max_size=2),
    st.booleans(), st.booleans())


@pytest.mark.req("SCH-1001", "SCH-1003", "SCH-1010", "SCH-1015", "ADM-1017", "ADM-1018")
@settings(max_examples=300, deadline=None)
@given(st.lists(pool_st, min_size=1, max_size=4, unique_by=lambda p: p.pool_id),
       st.sampled_from(["", "a", "b"]), st.lists(st.sampled_from(pool_ids), max_size=2, unique=True),
       st.lists(st.sampled_from(pool_ids), max_size=2, unique=True), st.booleans(), st.booleans(),
       st.integers(0, 9))
def test_a_placed_task_respects_every_constraint(pools, pin, prefer, avoid, real, deterministic, turn):
    request = req(pin_pool=pin, prefer_pools=tuple(prefer), avoid_pools=tuple(avoid),
                  require_real_engine=real, deterministic=deterministic)
    try:
        result = place(request, pools, turn=turn)
    except LlorchError:
        return
    if isinstance(result, Wait):
        return
    chosen_pool = next(p for p in pools if p.pool_id == result.pool_id)
    replica = next(r for r in chosen_pool.replicas if r.replica_id == result.replica_id)
    assert chosen_pool.model == "m" and chosen_pool.ready and not chosen_pool.draining
    assert replica.ready and replica.free_slots > 0
    assert not pin or chosen_pool.pool_id == pin
    assert chosen_pool.pool_id not in avoid
    assert not real or not chosen_pool.mock
    assert not deterministic or replica.deterministic
