"""Pools of worker replicas: registry, health/props probing, slot leases, drain and atomic reload.

The registry owns the adapters. A replica's slots are counted here (``SlotCounter``), keyed by
replica id and kept across reloads, so tasks still running on the old adapters of a reloaded pool
keep occupying their slots and no replica ever runs more than ``total_slots`` tasks.

A ``Lease`` is released exactly once, on whatever path its task ends; the runtime releases it
in a ``finally``. Every change that can make a queued task placeable (a release, a replica
turning ready, a reload finishing) calls ``on_change`` so the dispatcher wakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from llorch.reference.adapters.base import Adapter, EngineInfo
from llorch.reference.config import Config, PoolConfig, ReplicaConfig
from llorch.reference.errors import Conflict, ErrorCode, ErrorInfo, NotFound
from llorch.reference.runtime.api import PoolStatus, ReplicaStatus

log = logging.getLogger("llorch.pool")

AdapterFactory = Callable[[PoolConfig, ReplicaConfig, str], Adapter]
"""(pool config, replica config, model) -> a new adapter serving ``model``."""


def default_adapter_factory(pool: PoolConfig, replica: ReplicaConfig, model: str) -> Adapter:
    """Builds the adapter the pool's ``engine`` names."""
    if pool.engine == "mock":
        from llorch.reference.adapters.mock import MockAdapter

        return MockAdapter(model, pool.mock, slots=pool.slots_per_replica, replica_id=replica.id)
    if pool.engine == "remote":
        from llorch.reference.adapters.remote import RemoteAdapter

        return RemoteAdapter(replica.address, connect_timeout_s=pool.remote.connect_timeout_ms / 1000)
    raise ValueError(f"unknown engine {pool.engine!r}")


@dataclass
class SlotCounter:
    """Leases held on one replica id, across reloads."""

    # req: POOL-1300

    leased: int = 0


@dataclass
class Replica:
    replica_id: str
    pool_id: str
    adapter: Adapter
    slots: SlotCounter
    configured_slots: int
    ready: bool = False
    failures: int = 0
    engine_total_slots: int = 0
    info: EngineInfo | None = None
    detail: str = "not probed yet"
    exhausted: bool = False
    """The engine answered REPLICA_EXHAUSTED despite a free lease: believe it (no free slot) until a
    lease on this replica is released or a props probe reports a free slot (POOL-1014)."""

    @property
    def total_slots(self) -> int:
        # req: POOL-1013
        if self.engine_total_slots <= 0:
            return self.configured_slots
        return min(self.configured_slots, self.engine_total_slots)

    @property
    def free_slots(self) -> int:
        if self.exhausted:
            return 0
        return max(0, self.total_slots - self.slots.leased)

    def status(self) -> ReplicaStatus:
        info = self.info
        return ReplicaStatus(replica_id=self.replica_id, ready=self.ready, total_slots=self.total_slots,
                             free_slots=self.free_slots, engine=info.engine if info else "",
                             engine_version=info.engine_version if info else "",
                             model_digest=info.model_digest if info else "")


class Lease:
    """One slot on one replica, held by one task; ``release`` is idempotent."""

    __slots__ = ("_pool", "_refused", "_released", "replica", "task_id")

    def __init__(self, pool: Pool, replica: Replica, task_id: str) -> None:
        self._pool = pool
        self.replica = replica
        self.task_id = task_id
        self._released = False
        self._refused = False

    def refused(self) -> None:
        """The engine answered REPLICA_EXHAUSTED for this lease: count the replica full until another
        lease on it is released or a probe sees a free slot (this one's release proves nothing)."""
        # req: POOL-1014
        self._refused = True
        self.replica.exhausted = True

    @property
    def pool_id(self) -> str:
        return self._pool.pool_id

    @property
    def replica_id(self) -> str:
        return self.replica.replica_id

    @property
    def adapter(self) -> Adapter:
        return self.replica.adapter

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        # req: POOL-1012
        if self._released:
            return
        self._released = True
        self._pool._release(self)


@dataclass
class Pool:
    config: PoolConfig
    model: str
    replicas: dict[str, Replica]
    on_change: Callable[[], None]
    generation: int = 0
    draining: bool = False  # set by a drain, cleared only by a successful reload (POOL-1251)
    drains_in_progress: int = 0  # drains not answered yet: a reload meanwhile is refused
    drains_started: int = 0  # a drain asked for during a reload outlives that reload
    reloading: bool = False
    leases: dict[str, Lease] = field(default_factory=dict)  # task id -> lease
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pool_id(self) -> str:
        return self.config.id

    @property
    def engine(self) -> str:
        return self.config.engine

    @property
    def accepting(self) -> bool:
        """May new tasks be placed here?"""
        return not self.draining and not self.reloading

    @property
    def ready(self) -> bool:
        # req: POOL-1004
        return self.accepting and any(r.ready for r in self.replicas.values())

    @property
    def total_slots(self) -> int:
        return sum(r.total_slots for r in self.replicas.values())

    @property
    def free_slots(self) -> int:
        return sum(r.free_slots for r in self.replicas.values())

    def status(self) -> PoolStatus:
        # req: POOL-1001, POOL-1003
        reps = tuple(r.status() for r in self.replicas.values())
        return PoolStatus(pool_id=self.pool_id, model=self.model, engine=self.engine, ready=self.ready,
                          draining=self.draining, total_slots=sum(r.total_slots for r in reps),
                          free_slots=sum(r.free_slots for r in reps), generation=self.generation,
                          replicas=reps)

    def placeable_replicas(self) -> list[Replica]:
        """Ready replicas with a free slot, when the pool accepts work."""
        if not self.accepting:
            return []
        return [r for r in self.replicas.values() if r.ready and r.free_slots > 0]

    def lease(self, replica_id: str, task_id: str) -> Lease | None:
        replica = self.replicas.get(replica_id)
        if replica is None or not self.accepting or not replica.ready or replica.free_slots <= 0:
            return None
        replica.slots.leased += 1
        lease = Lease(self, replica, task_id)
        self.leases[task_id] = lease
        return lease

    def _release(self, lease: Lease) -> None:
        lease.replica.slots.leased -= 1
        if not lease._refused:
            lease.replica.exhausted = False  # a slot the engine itself will see free
        if self.leases.get(lease.task_id) is lease:
            del self.leases[lease.task_id]
        self._released.set()
        self.on_change()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no lease is held on the pool; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.leases:
                    self._released.clear()
                    await self._released.wait()
        except TimeoutError:
            return not self.leases
        return True


class PoolRegistry:
    """All pools of one orchestrator, their probing loop, drain flags and reloads."""

    def __init__(self, config: Config, *, factory: AdapterFactory = default_adapter_factory,
                 on_change: Callable[[], None] | None = None) -> None:
        self._config = config
        self._factory = factory
        self._on_change = on_change or (lambda: None)
        self._counters: dict[str, SlotCounter] = {}
        self._retired: list[tuple[Pool, list[Replica]]] = []
        self.pools: dict[str, Pool] = {}
        for pc in config.pools:
            self.pools[pc.id] = Pool(config=pc, model=pc.model, replicas=self._build(pc, pc.model),
                                     on_change=self._changed)
        self._probe_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def _changed(self) -> None:
        if self._retired:
            self.reap_retired()
        self._on_change()

    def _build(self, pc: PoolConfig, model: str) -> dict[str, Replica]:
        reps: dict[str, Replica] = {}
        for rc in pc.replica_list():
            counter = self._counters.setdefault(rc.id, SlotCounter())
            reps[rc.id] = Replica(replica_id=rc.id, pool_id=pc.id, adapter=self._factory(pc, rc, model),
                                  slots=counter, configured_slots=pc.slots_per_replica)
        return reps

    # ---- lookup ----------------------------------------------------------------------------------

    def get(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id)
        if pool is None:
            # req: POOL-1002
            raise NotFound(f"no pool {pool_id!r}", code=ErrorCode.POOL_NOT_FOUND)
        return pool

    def statuses(self) -> list[PoolStatus]:
        return [p.status() for p in self.pools.values()]

    def ready(self) -> bool:
        # req: POOL-1008
        return any(p.ready for p in self.pools.values())

    def models(self) -> set[str]:
        return {p.model for p in self.pools.values()}

    def replicas(self) -> Iterable[Replica]:
        for pool in self.pools.values():
            yield from pool.replicas.values()

    # ---- probing ---------------------------------------------------------------------------------

    async def probe_replica(self, replica: Replica) -> bool:
        """One health + props (+ engine info) probe; updates readiness. True when ready."""
        timeout = self._config.runtime.probe_timeout_ms / 1000
        was_ready = replica.ready
        try:
            async with asyncio.timeout(timeout):
                health = await replica.adapter.health()
                if health.ready:
                    props = await replica.adapter.props()
                    if replica.info is None:
                        replica.info = await replica.adapter.engine_info()  # req: POOL-1010
                    replica.engine_total_slots = props.total_slots
                    if replica.exhausted and props.free_slots > 0:
                        replica.exhausted = False
                        self._changed()
            ok, detail = health.ready, health.detail
        except Exception as exc:  # any probe failure counts; the replica stays registered
            ok, detail = False, f"probe failed: {type(exc).__name__}: {exc}"
        if ok:
            replica.failures = 0
            replica.ready = True  # req: POOL-1007
        else:
            replica.failures += 1
            if replica.failures >= self._config.runtime.unhealthy_after:  # req: POOL-1006
                replica.ready = False
        replica.detail = detail
        if replica.ready != was_ready:
            log.info("replica %s/%s is now %s (%s)", replica.pool_id, replica.replica_id,
                     "ready" if replica.ready else "unready", detail)
            self._changed()
        return replica.ready

    async def probe_all(self) -> None:
        reps = list(self.replicas())
        await asyncio.gather(*(self.probe_replica(r) for r in reps))

    async def start(self) -> None:
        """First probe of every replica, then the periodic loop."""
        await self.probe_all()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="llorch-pool-probe")

    async def _probe_loop(self) -> None:
        # req: POOL-1005
        interval = self._config.runtime.probe_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.probe_all()
            except Exception:  # never let one bad probe kill the loop
                log.exception("probe round failed")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        adapters = [r.adapter for r in self.replicas()]
        adapters += [r.adapter for _, reps in self._retired for r in reps]
        await asyncio.gather(*(a.aclose() for a in adapters), return_exceptions=True)

    # ---- drain -----------------------------------------------------------------------------------

    def start_drain(self, pool_id: str) -> Pool:
        """Flag the pool draining; pair with ``end_drain`` once the drain has answered."""
        # req: POOL-1015
        pool = self.get(pool_id)
        pool.draining = True
        pool.drains_in_progress += 1
        pool.drains_started += 1
        self._changed()
        return pool

    @staticmethod
    def end_drain(pool: Pool) -> None:
        """The drain has answered: the pool stays draining, but a reload may now bring it back."""
        pool.drains_in_progress -= 1

    # ---- reload ----------------------------------------------------------------------------------

    async def reload(self, pool_id: str, model: str,
                     known_models: Iterable[str]) -> tuple[bool, bool, ErrorInfo | None]:
        """Build a new replica set for ``model``, probe it, swap atomically; roll back on failure.

        Returns (success, rolled_back, error). The pool accepts no new placement while reloading;
        tasks queued meanwhile stay queued (POOL-1024). Old adapters are closed once idle. A drained
        pool (its drain answered) may be reloaded, with its current model or another: success ends
        the drain, so a reload is how a drained pool comes back without a restart.
        """
        pool = self.get(pool_id)
        self._refuse_busy(pool)
        if model not in set(known_models):
            # req: POOL-1025
            return False, False, ErrorInfo(ErrorCode.MODEL_NOT_FOUND, f"unknown model {model!r}")
        async with self._reload_lock:
            self._refuse_busy(pool)  # again: a drain or reload may have begun while this one waited
            drains_before = pool.drains_started
            pool.reloading = True
            self._changed()
            new: dict[str, Replica] = {}
            try:
                new = self._build(pool.config, model)
                failures = []
                for rep in new.values():
                    if not await self.probe_replica(rep):
                        failures.append(f"{rep.replica_id}: {rep.detail}")
                    elif rep.info is not None and rep.info.model != model:
                        failures.append(f"{rep.replica_id}: engine serves {rep.info.model!r}")
                if failures:
                    # req: POOL-1021, POOL-1252 (the drain flag is left as it was)
                    await asyncio.gather(*(r.adapter.aclose() for r in new.values()), return_exceptions=True)
                    return False, True, ErrorInfo(ErrorCode.ENGINE_ERROR,
                                                  "reload failed, rolled back: " + "; ".join(failures))
                # req: POOL-1020, POOL-1022
                old = list(pool.replicas.values())
                pool.replicas = new
                pool.model = model
                pool.generation += 1
                if pool.drains_started == drains_before:  # no drain was asked for meanwhile
                    pool.draining = False  # req: POOL-1251 (a failed reload leaves it drained: POOL-1252)
                self._retire(pool, old)
                return True, False, None
            except Exception as exc:
                await asyncio.gather(*(r.adapter.aclose() for r in new.values()), return_exceptions=True)
                return False, True, ErrorInfo(ErrorCode.ENGINE_ERROR, f"reload failed, rolled back: {exc}")
            finally:
                pool.reloading = False
                self._changed()

    @staticmethod
    def _refuse_busy(pool: Pool) -> None:
        if pool.drains_in_progress or pool.reloading:
            # req: POOL-1250
            raise Conflict(f"pool {pool.pool_id} is {'reloading' if pool.reloading else 'draining'}")

    def _retire(self, pool: Pool, old: list[Replica]) -> None:
        """Close the old adapters once the tasks still running on them have ended."""
        still = {lease.replica.adapter for lease in pool.leases.values()}
        idle = [r for r in old if r.adapter not in still]
        busy = [r for r in old if r.adapter in still]
        for r in idle:
            asyncio.get_running_loop().create_task(r.adapter.aclose())
        if busy:
            self._retired.append((pool, busy))

    def reap_retired(self) -> None:
        """Close retired adapters whose last task has ended (called on every release)."""
        keep: list[tuple[Pool, list[Replica]]] = []
        for pool, reps in self._retired:
            still = {lease.replica.adapter for lease in pool.leases.values()}
            busy = [r for r in reps if r.adapter in still]
            for r in reps:
                if r.adapter not in still:
                    asyncio.get_running_loop().create_task(r.adapter.aclose())
            if busy:
                keep.append((pool, busy))
        self._retired = keep


__all__ = ["AdapterFactory", "Lease", "Pool", "PoolRegistry", "Replica", "SlotCounter",
           "default_adapter_factory"]
