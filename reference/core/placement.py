"""Placement: which (pool, replica) a task runs on, from a snapshot of the pools.

Pure: the runtime builds a ``Snapshot`` from the pool registry whenever slots or readiness change
and asks it. The steps, each narrowing the candidates, and the answer when nothing is left:

1. pools serving the model — none: ``NotFound`` MODEL_NOT_FOUND;
2. ``pin_pool`` (unknown: ``NotFound`` POOL_NOT_FOUND), then minus ``avoid_pools`` — none left:
   ``Unavailable`` POOL_UNAVAILABLE;
3. ``require_real_engine`` drops mock pools — none left: REAL_ENGINE_REQUIRED; ``deterministic``
   keeps replicas reporting determinism — none: DETERMINISM_UNSUPPORTED; ``pin_replica`` keeps that
   replica — absent: POOL_UNAVAILABLE;
4. ready, non-draining pools with a ready replica — none: ``Wait`` if an allowed pool is reloading,
   POOL_UNREADY otherwise (a draining pool exists but has no replica open to new work, as the
   proto's POOL_UNREADY says; POOL_UNAVAILABLE is kept for constraints that exclude every pool);
5. ``prefer_pools``, in order: the first preferred pool still in the running is the only target;
   when none is, every remaining pool is (a fallback chain, then any other allowed pool);
6. replicas of the target with a free slot — none: ``Wait`` (not an error: the task stays queued);
   otherwise the one with the most free slots, ties rotated by the caller's ``turn`` counter over
   the candidates sorted by (pool id, replica id), so consecutive tasks spread deterministically.

``Snapshot.eligible(request)`` answers "could it be placed right now", for ``TaskQueue.pop_nowait``;
an error counts as not eligible (the runtime's sweep decides whether a queued task should fail).
Results are memoised per placement-relevant request fields, so a pop over a long queue of
similar tasks costs one evaluation per distinct constraint set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llorch.reference.core.types import Placement, TaskRequest
from llorch.reference.errors import ErrorCode, LlorchError, NotFound, Unavailable


@dataclass(frozen=True, slots=True)
class ReplicaView:
    replica_id: str
    ready: bool
    free_slots: int
    total_slots: int = 1
    deterministic: bool = True


@dataclass(frozen=True, slots=True)
class PoolView:
    pool_id: str
    model: str
    ready: bool
    replicas: tuple[ReplicaView, ...]
    draining: bool = False
    reloading: bool = False
    mock: bool = False


@dataclass(frozen=True, slots=True)
class Placed:
    pool_id: str
    replica_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Every allowed replica is busy (or a pool is reloading): keep the task queued."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A remembered refusal; raised afresh each time so tracebacks do not pile up."""

    kind: type[LlorchError]
    code: ErrorCode
    message: str

    def raise_(self) -> None:
        raise self.kind(self.message, code=self.code)


_Key = tuple[str, Placement, bool, bool]
_Candidates = tuple[tuple[int, str, str], ...]  # (free slots, pool id, replica id)


class Snapshot:
    """The pools at one instant; cheap to build, meant to be replaced when anything changes."""

    def __init__(self, pools: Iterable[PoolView]) -> None:
        self.pools = tuple(pools)
        self._ids = frozenset(p.pool_id for p in self.pools)
        self._memo: dict[_Key, _Candidates | Wait | _Refusal] = {}

    def _evaluate(self, request: TaskRequest) -> _Candidates | Wait | _Refusal:
        model, where = request.model, request.placement
        allowed = [p for p in self.pools if p.model == model]
        if not allowed:
            # req: ADM-1012
            return _Refusal(NotFound, ErrorCode.MODEL_NOT_FOUND, f"model {model!r}: no pool serves it")
        if where.pin_pool:
            if where.pin_pool not in self._ids:
                # req: SCH-1007
                return _Refusal(NotFound, ErrorCode.POOL_NOT_FOUND,
                                f"placement.pin_pool: pool {where.pin_pool!r} not found")
            # req: SCH-1001
            allowed = [p for p in allowed if p.pool_id == where.pin_pool]
        # req: SCH-1003
        allowed = [p for p in allowed if p.pool_id not in where.avoid_pools]
        if not allowed:
            # req: SCH-1006
            return _Refusal(Unavailable, ErrorCode.POOL_UNAVAILABLE,
                            f"placement excludes every pool serving model {model!r}")
        if request.require_real_engine:
            # req: ADM-1017
            allowed = [p for p in allowed if not p.mock]
            if not allowed:
                return _Refusal(Unavailable, ErrorCode.REAL_ENGINE_REQUIRED,
                                f"require_real_engine: only mock engines serve model {model!r}")

        def fits(r: ReplicaView) -> bool:
            return ((not where.pin_replica or r.replica_id == where.pin_replica)
                    and (not request.deterministic or r.deterministic))

        pinned = where.pin_replica
        if pinned and not any(r.replica_id == pinned for p in allowed for r in p.replicas):
            # req: SCH-1002
            return _Refusal(Unavailable, ErrorCode.POOL_UNAVAILABLE,
                            f"placement.pin_replica: replica {pinned!r} is not among the allowed pools")
        if request.deterministic and not any(fits(r) for p in allowed for r in p.replicas):
            # req: ADM-1018
            return _Refusal(Unavailable, ErrorCode.DETERMINISM_UNSUPPORTED,
                            f"deterministic: no allowed replica of model {model!r} guarantees determinism")

        # req: SCH-1010, SCH-1015
        live = [(p, [r for r in p.replicas if r.ready and fits(r)]) for p in allowed
                if p.ready and not p.draining]
        live = [(p, rs) for p, rs in live if rs]
        if not live:
            if any(p.reloading for p in allowed):
                return Wait("an allowed pool is reloading")
            detail = ("every pool allowed for model {!r} is draining" if all(p.draining for p in allowed)
                      else "no ready replica in the pools allowed for model {!r}")
            # req: SCH-1013
            return _Refusal(Unavailable, ErrorCode.POOL_UNREADY, detail.format(model))

        # req: SCH-1004, SCH-1005
        by_id = {p.pool_id: rs for p, rs in live}
        first = next((name for name in where.prefer_pools if name in by_id), None)
        targets = [(first, by_id[first])] if first is not None else [(p.pool_id, rs) for p, rs in live]
        free = tuple(sorted((r.free_slots, pool_id, r.replica_id) for pool_id, rs in targets for r in rs
                            if r.free_slots > 0))
        if not free:
            return Wait("every allowed replica is busy")
        return free

    def _lookup(self, request: TaskRequest) -> _Candidates | Wait | _Refusal:
        key = (request.model, request.placement, request.require_real_engine, request.deterministic)
        result = self._memo.get(key)
        if result is None:
            result = self._memo[key] = self._evaluate(request)
        return result

    def place(self, request: TaskRequest, turn: int = 0) -> Placed | Wait:
        """A replica with a free slot, ``Wait``, or the typed refusal raised."""
        result = self._lookup(request)
        if isinstance(result, _Refusal):
            result.raise_()
            raise AssertionError("unreachable")  # pragma: no cover
        if isinstance(result, Wait):
            return result
        # req: SCH-1011, SCH-1012
        most = max(free for free, _, _ in result)
        ties = [(pool_id, replica_id) for free, pool_id, replica_id in result if free == most]
        pool_id, replica_id = ties[turn % len(ties)]
        return Placed(pool_id, replica_id)

    def check(self, request: TaskRequest) -> None:
        """Raise the refusal the request would get, if any (submit-time fail-fast)."""
        result = self._lookup(request)
        if isinstance(result, _Refusal):
            result.raise_()

    def eligible(self, request: TaskRequest) -> bool:
        """True when ``place`` would answer ``Placed`` now."""
        return isinstance(self._lookup(request), tuple)


def place(request: TaskRequest, pools: Iterable[PoolView], turn: int = 0) -> Placed | Wait:
    """One-off placement over ``pools`` (builds a throwaway ``Snapshot``)."""
    return Snapshot(pools).place(request, turn)


__all__ = ["Placed", "PoolView", "ReplicaView", "Snapshot", "Wait", "place"]
