"""Pools of worker replicas: registry, health/props probing, slot leases, drain and atomic reload.

The registry owns the adapters. A replica's slots are counted here (``SlotCounter``), keyed by
replica id and kept across reloads, so tasks still running on the old adapters of a reloaded pool
keep occupying their slots and no replica ever runs more than ``total_slots`` tasks.

A ``Lease`` is released exactly once, on whatever path its task ends; the runtime releases it
in a ``finally``. Every change that can make a queued task placeable (a release, a replica
turning ready, a reload finishing) calls ``on_change`` so the dispatcher wakes.

A pool with a ``launch`` block runs one ``EngineSupervisor`` per replica: the registry starts the
engines with the pool, keeps the replica unready while its engine starts or restarts, cancels the
tasks running on an engine that crashed (they end with ``WORKER_RESET``), and stops the engines
(SIGTERM, then SIGKILL) when the pool's replicas are closed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from llorch.reference.adapters.base import Adapter, EngineInfo
from llorch.reference.config import Config, LaunchConfig, PoolConfig, ReplicaConfig
from llorch.reference.errors import Conflict, ErrorCode, ErrorInfo, InvalidParams, NotFound
from llorch.reference.pool.supervisor import (
    EngineProcessSpec,
    EngineState,
    EngineSupervisor,
    free_port,
    llama_cpp_python_server,
)
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
    return _real_adapter(pool, pool.engine, {**pool.params, "model": model})


def _real_adapter(pool: PoolConfig, engine: str, params: dict[str, Any]) -> Adapter:
    """``adapters/registry.build_adapter``, its refusals naming the pool."""
    from llorch.reference.adapters.registry import build_adapter

    try:
        return build_adapter(engine, params)
    except InvalidParams as exc:
        raise InvalidParams(f"pool {pool.id}: {exc.message}") from exc


def launch_spec(launch: LaunchConfig, host: str = "127.0.0.1") -> EngineProcessSpec:
    """The engine process one replica of a pool with a ``launch`` block runs, on a free port."""
    port = free_port(host)
    base = f"http://{host}:{port}"
    if launch.kind == "llama-cpp-python-server":
        spec = llama_cpp_python_server(launch.model_path, port=port, host=host, n_ctx=launch.n_ctx,
                                       n_threads=launch.n_threads)
        argv = spec.argv
    else:
        values = {"{host}": host, "{port}": str(port), "{model_path}": launch.model_path}
        argv = tuple(_substitute(arg, values) for arg in launch.argv)
    return EngineProcessSpec(argv=argv, health_url=base + launch.health_path, base_url=base,
                             start_timeout_s=launch.start_timeout_s, stop_grace_s=launch.stop_grace_s)


def _substitute(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg


def launched_adapter(pool: PoolConfig, model: str, spec: EngineProcessSpec) -> Adapter:
    """The ``openai`` adapter of a launched engine: its address, the model file (the digest), and
    for llama-cpp-python the installed package's version (its server reports none)."""
    assert pool.launch is not None
    defaults: dict[str, Any] = {"model_path": pool.launch.model_path}
    if pool.launch.kind == "llama-cpp-python-server":
        defaults["engine_model"] = pool.launch.model_path  # the server's default model alias
        try:
            defaults["engine_version"] = importlib.metadata.version("llama_cpp_python")
        except importlib.metadata.PackageNotFoundError:
            pass
    params = {**defaults, **pool.params, "model": model, "base_url": spec.base_url}
    return _real_adapter(pool, "openai", params)


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
    supervisor: EngineSupervisor | None = None
    """The local engine process behind the adapter, for pools with a ``launch`` block."""

    @property
    def engine_ready(self) -> bool:
        """False while a supervised engine starts, restarts or is stopped."""
        return self.supervisor is None or self.supervisor.ready

    async def aclose(self) -> None:
        """Close the adapter, then stop the supervised engine (SIGTERM, then SIGKILL)."""
        try:
            await self.adapter.aclose()
        finally:
            if self.supervisor is not None:
                await self.supervisor.stop()  # req: POOL-1029

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
                             model_digest=info.model_digest if info else "",
                             build_info=info.build_info if info else "")


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
        self._engine_tasks: set[asyncio.Task[bool]] = set()  # probes and cancels started by engines
        self._closing = False

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
            supervisor = None
            if pc.launch is not None:
                supervisor = EngineSupervisor(launch_spec(pc.launch))
                adapter = launched_adapter(pc, model, supervisor.spec)
            else:
                adapter = self._factory(pc, rc, model)
            replica = reps[rc.id] = Replica(replica_id=rc.id, pool_id=pc.id, adapter=adapter, slots=counter,
                                            configured_slots=pc.slots_per_replica, supervisor=supervisor)
            if supervisor is not None:
                supervisor.on_change(self._engine_listener(replica))
        return reps

    def _engine_listener(self, replica: Replica) -> Callable[[EngineState], None]:
        return lambda state: self._engine_changed(replica, state)

    def _engine_changed(self, replica: Replica, state: EngineState) -> None:
        """A supervised engine changed state: probe it once ready; otherwise the replica is unready
        at once, and after a crash the tasks still running on it are ended."""
        if self._closing:
            replica.ready = False
            return
        if state is EngineState.READY:
            # req: POOL-1028 (ready again once the restarted engine answers a probe)
            self._background(self.probe_replica(replica))
            return
        error = replica.supervisor.last_error if replica.supervisor is not None else ""
        self._set_unready(replica, f"engine {state.value}" + (f": {error}" if error else ""))
        if state is EngineState.BACKOFF:
            # req: POOL-1027 (a stream cut short without an end event ends its task with WORKER_RESET)
            pool = self.pools.get(replica.pool_id)
            running = [t for t, lease in (pool.leases.items() if pool else ()) if lease.replica is replica]
            for task_id in running:
                log.warning("engine of %s/%s crashed: ending task %s", replica.pool_id, replica.replica_id,
                            task_id)
                self._background(replica.adapter.cancel(task_id))

    def _background(self, coro: Coroutine[Any, Any, bool]) -> None:
        """Run ``coro`` on the loop, holding a reference until it ends (``close`` cancels it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._engine_tasks.add(task)
        task.add_done_callback(self._engine_tasks.discard)

    def _set_unready(self, replica: Replica, detail: str) -> None:
        was_ready = replica.ready
        replica.ready = False
        replica.detail = detail
        if was_ready:
            log.info("replica %s/%s is now unready (%s)", replica.pool_id, replica.replica_id, detail)
            self._changed()

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
        if not replica.engine_ready:
            # req: POOL-1026, POOL-1030
            assert replica.supervisor is not None
            self._set_unready(replica, f"engine {replica.supervisor.state.value}")
            return False
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
            ok, detail = health.ready and replica.engine_ready, health.detail
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
        """Start the supervised engines (ready later, each on its own), first probe of every replica,
        then the periodic loop."""
        for replica in self.replicas():
            if replica.supervisor is not None:
                await replica.supervisor.start()
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
        """Stop probing, close every adapter and stop every supervised engine."""
        self._closing = True
        probes = [t for t in (self._probe_task, *self._engine_tasks) if t is not None]
        for t in probes:
            t.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        replicas = list(self.replicas()) + [r for _, reps in self._retired for r in reps]
        await asyncio.gather(*(r.aclose() for r in replicas), return_exceptions=True)

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
                await self._start_engines(new.values())
                for rep in new.values():
                    if not await self.probe_replica(rep):
                        failures.append(f"{rep.replica_id}: {rep.detail}")
                    elif rep.info is not None and rep.info.model != model:
                        failures.append(f"{rep.replica_id}: engine serves {rep.info.model!r}")
                if failures:
                    # req: POOL-1021, POOL-1252 (the drain flag is left as it was)
                    await asyncio.gather(*(r.aclose() for r in new.values()), return_exceptions=True)
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
                await asyncio.gather(*(r.aclose() for r in new.values()), return_exceptions=True)
                return False, True, ErrorInfo(ErrorCode.ENGINE_ERROR, f"reload failed, rolled back: {exc}")
            finally:
                pool.reloading = False
                self._changed()

    @staticmethod
    async def _start_engines(replicas: Iterable[Replica]) -> None:
        """Start the supervised engines of a new replica set and wait for them (each bounded by its
        start timeout), so the reload's probe sees them ready or reports why not."""
        sups = [r.supervisor for r in replicas if r.supervisor is not None]
        for sup in sups:
            await sup.start()
        await asyncio.gather(*(sup.wait_ready(sup.spec.start_timeout_s) for sup in sups))

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
            asyncio.get_running_loop().create_task(r.aclose())
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
                    asyncio.get_running_loop().create_task(r.aclose())
            if busy:
                keep.append((pool, busy))
        self._retired = keep


__all__ = ["AdapterFactory", "Lease", "Pool", "PoolRegistry", "Replica", "SlotCounter",
           "default_adapter_factory", "launch_spec", "launched_adapter"]
