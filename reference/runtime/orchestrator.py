"""The orchestrator: the async glue between the pure core, the pools, the adapters and the store.

It implements ``OrchestratorApi`` (``runtime/api.py``), the one facade the edges call. The rules
live in the core (admission, queue, placement, task state machine, sessions, budgets); this module
only sequences them on one event loop:

- **submit**: admission (validation, placement fail-fast, session turn, rate, budget) → queue push
  (full policy; an evicted task fails with the policy's code) → ``queued`` event → row in the store
  before the answer (PER-1002) → dispatcher woken.
- **dispatch**: whenever a slot frees, a replica turns ready, a reload ends or a task arrives, the
  dispatcher pops the most urgent *placeable* task (FIFO within a class), leases the slot the core's
  placement picked and starts a runner task for it.
- **run**: the runner drives ``adapter.generate`` and appends to the task's ``EventLog``, which
  coalesces tokens for slow readers (``relay.py``). The lease and the budget reservation are given
  back in a ``finally``, on every terminal path (POOL-1012, BUD-1003).
- **terminal**: ``_terminate`` is the only way to end a task: it applies the core transition (which
  refuses a second terminal state), appends the terminal event that closes the log, and queues the
  terminal record for the store. Cancel calls it *before* stopping the runner, so once ``cancel``
  returns no token can be appended (STR-1028).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenStarted, GenToken
from llorch.reference.adapters.mock import prompt_tokens as mock_prompt_tokens
from llorch.reference.config import Config
from llorch.reference.core.admission import AdmissionLimits, Admitted, Admitter
from llorch.reference.core.budgets import BudgetPolicy, RateLimiter, RatePolicy, TokenBudgets
from llorch.reference.core.placement import Placed, PoolView, ReplicaView, Snapshot
from llorch.reference.core.queue import QueueFull, TaskQueue, WouldBlock
from llorch.reference.core.sessions import Session, Sessions
from llorch.reference.core.task import Task
from llorch.reference.core.types import (
    Admission,
    CancelledEvent,
    Ended,
    EventKind,
    Failed,
    FullPolicy,
    Identity,
    Priority,
    Queued,
    Started,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskState,
)
from llorch.reference.errors import (
    Conflict,
    DeadlineUnmet,
    EngineFailure,
    ErrorCode,
    ErrorInfo,
    InternalError,
    LlorchError,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unavailable,
)
from llorch.reference.metrics import Metrics, SlotSample, StateSnapshot
from llorch.reference.pool.registry import AdapterFactory, Lease, PoolRegistry, default_adapter_factory
from llorch.reference.runtime.api import (
    CapabilitiesInfo,
    DrainResult,
    PoolStatus,
    ReloadResult,
    SessionInfo,
    UsageRow,
)
from llorch.reference.runtime.relay import EventLog
from llorch.reference.store.sqlite import SessionRow, SqliteStore

from llorch import __version__

log = logging.getLogger("llorch.runtime")

API_VERSION = "v1"
_COUNTED = "_llorch_rejection_counted"  # set on an error once ``tasks_rejected_total`` counted it
HOUSEKEEPING_INTERVAL_S = 60.0
MAX_REQUEUES = 3  # REPLICA_EXHAUSTED answers a task may get before it fails with that code
SESSION_GRACE_MS = 3_600_000  # an expired session answers SESSION_EXPIRED this long before it is forgotten


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class _Run:
    """Runtime state of one accepted task (the core ``Task`` plus what the loop needs)."""

    task: Task
    log: EventLog
    admitted: Admitted
    lease: Lease | None = None
    runner: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None  # queued deadline
    disconnect: asyncio.TimerHandle | None = None
    subscribers: int = 0
    requeues: int = 0  # times an engine refused it with REPLICA_EXHAUSTED (POOL-1014)
    first_token_at: float | None = None  # monotonic seconds
    last_token_at: float | None = None
    accepted_at: float = 0.0
    committed: asyncio.Future[None] | None = None  # terminal record durable
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Orchestrator:
    """The reference ``OrchestratorApi``. ``await start()`` before use, ``await aclose()`` after."""

    def __init__(self, config: Config, *, adapter_factory: AdapterFactory = default_adapter_factory,
                 store: SqliteStore | None = None) -> None:
        self.config = config
        self.store = store or SqliteStore(config.store.path)
        self.registry = PoolRegistry(config, factory=adapter_factory, on_change=self._schedule_dispatch)
        self.queue: TaskQueue[_Run] = TaskQueue(config.queue.capacity, FullPolicy(config.queue.full_policy),
                                                initial_dispatch_interval_ms=config.queue.retry_after_ms)
        self.sessions = Sessions(config.sessions.default_ttl_ms, config.sessions.default_max_turns)
        budgets = config.budgets

        def budget_for(tenant: str) -> BudgetPolicy:
            b = budgets.for_tenant(tenant)
            return BudgetPolicy(tokens=b.tokens, period_ms=b.period_ms)

        def rate_for(tenant: str) -> RatePolicy:
            b = budgets.for_tenant(tenant)
            return RatePolicy(requests_per_s=b.requests_per_s, burst=b.burst)

        pools = {p.id: frozenset(r.id for r in p.replica_list()) for p in config.pools}
        self.limits = AdmissionLimits(models=frozenset(config.model_ids()), pools=pools,
                                      max_tokens=config.limits.max_tokens,
                                      max_prompt_bytes=config.limits.max_prompt_bytes,
                                      max_stop=config.limits.max_stop)
        self.admitter = Admitter(self.limits, TokenBudgets(budget_for), RateLimiter(rate_for), self.sessions)
        self.metrics = Metrics(self._state_snapshot, pools={k: sorted(v) for k, v in pools.items()})
        self._runs: dict[str, _Run] = {}  # unfinished tasks
        self._finished: OrderedDict[str, _Run] = OrderedDict()  # recent terminal tasks
        self._finished_events = 0  # events held by ``_finished``
        self._idempotency: dict[tuple[str, str], tuple[str, TaskRequest, int]] = {}
        self._session_created: dict[str, int] = {}
        self._dispatch_scheduled = False
        self._turn = 0
        self._started = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._housekeeper: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, recover unfinished tasks, probe the pools, start dispatching."""
        self._loop = asyncio.get_running_loop()
        await self.store.open()
        recovered = await self.store.recover(wall_ms())
        if recovered:
            log.warning("recovered %d unfinished task(s) as ORCHESTRATOR_RESTARTED", len(recovered))
        for row in await self.store.sessions():
            self._restore_session(row)
        await self.registry.start()
        self._started = True
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="llorch-housekeeping")
        self._schedule_dispatch()

    async def aclose(self) -> None:
        """Cancel what is still queued or running (reason ``shutdown``), then close everything."""
        if self._closing:
            return
        self._closing = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
        await asyncio.gather(*(self._cancel_run(run, "shutdown") for run in list(self._runs.values())))
        await self.registry.close()
        await self.store.close()

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _housekeeping(self) -> None:
        """Forget long-expired sessions and stale idempotency keys, so memory stays bounded."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.sweep(wall_ms())

    def sweep(self, now_ms: int) -> None:
        """Housekeeping at ``now_ms``: expired sessions, stale idempotency keys, tasks past retention."""
        for session_id in self.sessions.sweep(now_ms, SESSION_GRACE_MS):
            self._session_created.pop(session_id, None)
            self.store.delete_session(session_id)
        oldest = now_ms - self.config.runtime.idempotency_retention_ms
        for key in [k for k, (_, _, at) in self._idempotency.items() if at < oldest]:
            del self._idempotency[key]
        # req: PER-1006
        cutoff = now_ms - self.config.store.retention_ms
        while self._finished:
            task_id, old = next(iter(self._finished.items()))
            if old.task.finished_ms >= cutoff:
                break  # finish order: every later one is younger
            del self._finished[task_id]
            self._finished_events -= len(old.log)
        self.store.prune(cutoff)

    # ---- helpers ---------------------------------------------------------------------------------

    def _lookup(self, task_id: str) -> _Run | None:
        return self._runs.get(task_id) or self._finished.get(task_id)

    @staticmethod
    def _check_tenant(run_tenant: str, identity: Identity, task_id: str) -> None:
        if run_tenant != identity.tenant:
            # req: ADM-1022
            raise NotFound(f"task {task_id!r} not found", code=ErrorCode.TASK_NOT_FOUND)

    @staticmethod
    def _require_admin(identity: Identity) -> None:
        if not identity.admin:
            raise PermissionDenied("this operation needs an admin token")

    def _snapshot(self) -> Snapshot:
        views = []
        for pool in self.registry.pools.values():
            reps = tuple(ReplicaView(r.replica_id, r.ready, r.free_slots, r.total_slots,
                                     r.info.deterministic if r.info else False)
                         for r in pool.replicas.values())
            mock = any(r.info.is_mock for r in pool.replicas.values() if r.info) or pool.engine == "mock"
            views.append(PoolView(pool.pool_id, pool.model, pool.ready, reps, pool.draining,
                                  pool.reloading, mock))
        return Snapshot(views)

    def _state_snapshot(self) -> StateSnapshot:
        stats = self.queue.statistics()
        slots = tuple(SlotSample(r.pool_id, r.replica_id, r.total_slots, r.free_slots)
                      for r in self.registry.replicas())
        ready = {p.pool_id: p.ready for p in self.registry.pools.values()}
        return StateSnapshot(stats.depth_by_priority, slots, ready)

    # ---- submit ----------------------------------------------------------------------------------

    def count_rejection(self, error: LlorchError) -> None:
        """Count one rejected submit (MET-1011), once per error, wherever it was raised.

        The orchestrator counts what ``submit`` refuses; an edge calls this from its one error path
        for submits it refused before they got here (malformed, unauthenticated, too large). The
        error is marked so that the edge's call for an error ``submit`` already counted is a no-op.
        """
        if getattr(error, _COUNTED, False):
            return
        setattr(error, _COUNTED, True)
        # req: MET-1011
        self.metrics.rejected(error.code.value, backpressure=isinstance(error, Overloaded))

    async def submit(self, request: TaskRequest, identity: Identity) -> Admission:
        try:
            return await self._submit(request, identity)
        except LlorchError as exc:
            self.count_rejection(exc)
            raise

    async def _submit(self, request: TaskRequest, identity: Identity) -> Admission:
        if not self._started or self._closing:
            raise Unavailable("the orchestrator is not serving (starting or shutting down)",
                              code=ErrorCode.POOL_UNREADY)
        now = wall_ms()
        tenant = identity.tenant
        if request.idempotency_key:
            existing = await self._idempotent(request, tenant, now)
            if existing is not None:
                return existing
        snapshot = self._snapshot()
        admitted = self.admitter.admit(request, identity, now, snapshot=snapshot,
                                       prompt_tokens=self._prompt_tokens(request))
        task_id = uuid.uuid4().hex  # req: ADM-1003, PER-1011
        task = Task(task_id, admitted.request, tenant, now)
        run = _Run(task=task, log=EventLog(task_id, self.store.append_events), admitted=admitted,
                   accepted_at=time.monotonic())
        try:
            pushed = self.queue.push_nowait(task_id, run, request.priority)
        except QueueFull:
            self.admitter.abort(admitted, now)
            raise
        self._runs[task_id] = run
        self.store.insert_task(task.record(), request.idempotency_key)
        run.log.append(Queued(pushed.position), now)  # req: QUE-1021
        self.metrics.enqueued(request.priority)
        if request.session_id:
            self._save_session(request.session_id, tenant)
        if request.idempotency_key:
            self._idempotency[(tenant, request.idempotency_key)] = (task_id, request, now)
        if pushed.evicted is not None:
            victim = pushed.evicted.payload
            # req: QUE-1012, QUE-1013, QUE-1015
            self._fail(victim, ErrorInfo(pushed.evicted.code, "evicted from the full queue by a newer task",
                                         retriable=True, retry_after_ms=self.queue.retry_after_ms(),
                                         policy_label=pushed.evicted.policy_label))
        if request.deadline_ms > 0:
            run.timer = asyncio.get_running_loop().call_later(request.deadline_ms / 1000, self._expire, run)
        # req: QUE-1022
        predicted = 0 if snapshot.eligible(admitted.request) and pushed.position == 0 \
            else self.queue.predicted_wait_ms(task_id)
        self._schedule_dispatch()
        await self.store.flush()  # req: PER-1002
        return Admission(task_id, pushed.position, predicted)

    def _prompt_tokens(self, request: TaskRequest) -> int | None:
        """The prompt's token count for the budget reservation, where it is known before dispatch.

        Every pool serving the model runs the mock engine, whose count is a pure function of the
        prompt: reserve exactly that. Otherwise (remote or real engines: the adapter protocol has
        no tokenize call) None, and admission reserves the UTF-8 byte count, an upper bound (BUD-1250).
        """
        # req: BUD-1002, BUD-1250
        pools = [p for p in self.registry.pools.values() if p.model == request.model]
        if pools and all(p.engine == "mock" for p in pools):
            return mock_prompt_tokens(request.prompt)
        return None

    async def _idempotent(self, request: TaskRequest, tenant: str, now: int) -> Admission | None:
        # req: ADM-1023, ADM-1024
        key = request.idempotency_key
        since = now - self.config.runtime.idempotency_retention_ms
        hit = self._idempotency.get((tenant, key))
        if hit is not None and hit[2] >= since:
            task_id, first, _ = hit
            if first != request:
                # req: ADM-1025
                raise Conflict(f"idempotency_key {key!r} was used with a different request")
        else:
            found = await self.store.find_idempotent(tenant, key, since)  # req: PER-1012
            if found is None:
                return None
            task_id = found
        position = self.queue.position(task_id) if task_id in self.queue else 0
        return Admission(task_id, position, 0)

    # ---- dispatch --------------------------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        """Coalesce wake-ups: one dispatch pass per loop iteration, however many changes."""
        if self._dispatch_scheduled or not self._started or self._closing:
            return
        self._dispatch_scheduled = True
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        # req: QUE-1005, QUE-1006, QUE-1007, QUE-1008
        self._dispatch_scheduled = False
        while len(self.queue) and not self._closing:
            if not any(r.ready and r.free_slots > 0 for p in self.registry.pools.values() if p.accepting
                       for r in p.replicas.values()):
                return
            snapshot = self._snapshot()
            now = wall_ms()
            try:
                task_id, run = self.queue.pop_nowait(_eligible(snapshot), now_ms=now)
            except WouldBlock:
                return
            try:
                self._start(run, snapshot, now)
            except Exception as exc:  # a popped task must still end: never lose it
                log.exception("dispatch of task %s failed", task_id)
                if run.lease is not None:
                    run.lease.release()
                self._fail(run, InternalError(f"dispatch failed: {type(exc).__name__}").info())

    def _start(self, run: _Run, snapshot: Snapshot, now: int) -> None:
        """Lease the slot placement picked for a popped task and start its runner."""
        task_id = run.task.task_id
        placed = snapshot.place(run.task.request, self._turn)
        self._turn += 1
        lease = None
        if isinstance(placed, Placed):
            lease = self.registry.get(placed.pool_id).lease(placed.replica_id, task_id)
        if lease is None:  # the snapshot said eligible: cannot happen; fail loudly, not silently
            raise RuntimeError("placement chose a replica without a free slot")
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        run.lease = lease
        run.task.dispatch(now, lease.pool_id, lease.replica_id)
        self.store.update_progress(run.task.record())
        run.runner = asyncio.get_running_loop().create_task(self._run_task(run, lease),
                                                            name=f"llorch-task-{task_id}")
        # A runner cancelled before its first step never enters its ``finally``: release here too.
        run.runner.add_done_callback(_releaser(lease))

    def _fail_unservable(self) -> None:
        """Queued tasks whose model no pool serves any more (after a reload) can never run: fail
        them now rather than let them wait for their deadline. Transient refusals (draining,
        unready) leave tasks queued (POOL-1018)."""
        snapshot = self._snapshot()
        for task_id, run in list(self.queue.items()):
            try:
                snapshot.check(run.task.request)
            except NotFound as exc:
                self.queue.remove(task_id)
                self._fail(run, exc.info())
            except LlorchError:
                continue

    def _expire(self, run: _Run) -> None:
        """A queued task's deadline passed (QUE-1019)."""
        run.timer = None
        if run.task.state is not TaskState.QUEUED:
            return
        self.queue.remove(run.task.task_id)  # req: QUE-1020
        now = wall_ms()
        self._terminate(run, None, lambda: run.task.expire(now))

    # ---- run -------------------------------------------------------------------------------------

    async def _run_task(self, run: _Run, lease: Lease) -> None:
        task = run.task
        req = task.request
        info = lease.replica.info
        gen_req = GenerateRequest(request_id=task.task_id, model=req.model, prompt=req.prompt,
                                  max_tokens=req.max_tokens, sampler=req.sampler,
                                  deterministic=req.deterministic)
        deadline_at = task.deadline_at_ms
        try:
            timeout = None if deadline_at is None else max(0.0, (deadline_at - wall_ms()) / 1000)
            async with asyncio.timeout(timeout):
                stream = lease.adapter.generate(gen_req)
                try:
                    async for ev in stream:
                        if task.terminal:
                            break
                        if isinstance(ev, GenToken):
                            now_mono = time.monotonic()
                            if run.first_token_at is None:
                                run.first_token_at = now_mono
                                # req: MET-1019
                                self.metrics.first_token(lease.pool_id, req.priority,
                                                         (now_mono - run.accepted_at) * 1000)
                            run.last_token_at = now_mono
                            task.add_tokens(1)
                            run.log.append_token(ev.text, ev.token_id, wall_ms())
                        elif isinstance(ev, GenStarted):
                            now = wall_ms()
                            task.start(now, ev.prompt_tokens)
                            run.log.append(Started(
                                pool_id=lease.pool_id, replica_id=lease.replica_id,
                                engine=info.engine if info else "unknown",
                                engine_version=info.engine_version if info else "unknown",
                                model_digest=info.model_digest if info else "",
                                queue_wait_ms=task.queue_wait_ms), now)
                            self.store.update_progress(task.record())
                            self.metrics.started(lease.pool_id, lease.replica_id, req.priority,
                                                 ev.prompt_tokens)
                        elif isinstance(ev, GenEnd):
                            self._complete(run, ev)
                            break
                finally:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
            if not task.terminal:
                self._fail(run, EngineFailure("the engine ended the stream without an end event",
                                              code=ErrorCode.WORKER_RESET).info())
        except TimeoutError:
            # req: ADM-1026
            self._fail(run, DeadlineUnmet(f"deadline of {req.deadline_ms} ms passed while running").info())
        except LlorchError as exc:
            if not (exc.code is ErrorCode.REPLICA_EXHAUSTED and self._requeue(run, lease)):
                self._fail(run, exc.info())
        except asyncio.CancelledError:
            if not task.terminal:
                self._terminate(run, CancelledEvent("shutdown"), lambda: task.cancel(wall_ms(), "shutdown"))
            raise
        except Exception as exc:
            log.exception("task %s failed inside the runtime", task.task_id)
            self._fail(run, InternalError(f"internal error: {type(exc).__name__}").info())
        finally:
            lease.release()  # req: POOL-1012

    def _requeue(self, run: _Run, lease: Lease) -> bool:
        """The engine refused a leased, not yet started task (REPLICA_EXHAUSTED): queue it again at
        the head of its class rather than fail it. False when it cannot be (it started already, it
        was requeued ``MAX_REQUEUES`` times, or the queue is full): the caller fails it then.

        The replica is taken at its word (no free slot) until a lease on it is released or a probe
        sees a free slot, so the task does not bounce straight back onto it.
        """
        # req: POOL-1014
        task = run.task
        if task.state is not TaskState.DISPATCHED or run.requeues >= MAX_REQUEUES:
            return False
        try:
            self.queue.requeue_nowait(task.task_id, run, task.request.priority)
        except QueueFull:
            return False
        lease.refused()
        run.requeues += 1
        now = wall_ms()
        task.requeue(now)
        run.lease = None
        run.runner = None  # this runner is ending; a cancel now only has to leave the queue
        self.store.update_progress(task.record())
        deadline_at = task.deadline_at_ms
        if deadline_at is not None:
            run.timer = asyncio.get_running_loop().call_later(max(0.0, (deadline_at - now) / 1000),
                                                              self._expire, run)
        log.info("task %s requeued: replica %s/%s is exhausted", task.task_id, lease.pool_id,
                 lease.replica_id)
        return True

    def _complete(self, run: _Run, end: GenEnd) -> None:
        task = run.task
        tokens_out = run.log.tokens_out
        finish = "length" if tokens_out >= task.request.max_tokens else "stop"  # req: STR-1009
        decode_ms = 0
        if run.first_token_at is not None and run.last_token_at is not None:
            decode_ms = round((run.last_token_at - run.first_token_at) * 1000)
        ended = Ended(tokens_in=end.prompt_tokens, tokens_out=tokens_out, decode_ms=decode_ms,
                      finish_reason=finish)  # req: STR-1006
        self._terminate(run, ended, lambda: task.complete(wall_ms(), finish, end.prompt_tokens, tokens_out))

    # ---- terminal --------------------------------------------------------------------------------

    def _fail(self, run: _Run, error: ErrorInfo) -> bool:
        return self._terminate(run, Failed(error), lambda: run.task.fail(wall_ms(), error))

    def _terminate(self, run: _Run, kind: EventKind | None, transition: Callable[[], None]) -> bool:
        """The one way a task ends: core transition, terminal event, store, metrics, bookkeeping.

        ``kind`` None means "the error event of the task's recorded error" (expiry). Returns False
        when the task was already terminal (nothing happens: exactly one terminal state, QUE-1001).
        """
        task = run.task
        if task.terminal:
            return False
        transition()
        now = wall_ms()
        if kind is None:
            assert task.error is not None
            kind = Failed(task.error)
        run.log.append(kind, now)  # closes the log and hands every event to the store
        record = task.record()
        run.committed = self.store.finish_task(record)  # req: PER-1003
        run.committed.add_done_callback(_log_commit_failure)
        self._account(run, record)
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        if run.disconnect is not None:
            run.disconnect.cancel()
            run.disconnect = None
        self._runs.pop(task.task_id, None)
        self._finished[task.task_id] = run
        self._finished_events += len(run.log)
        limits = self.config.runtime
        while self._finished and (len(self._finished) > limits.finished_task_cache
                                  or self._finished_events > limits.finished_event_cache):
            _, old = self._finished.popitem(last=False)
            self._finished_events -= len(old.log)
        run.done.set()
        return True

    def _account(self, run: _Run, record: TaskRecord) -> None:
        """Budget settle, session usage and metrics of a terminal task."""
        req = run.task.request
        self.admitter.settle(run.admitted, record.tokens_in, record.tokens_out, record.finished_ms)
        if req.session_id:
            self._save_session(req.session_id, run.task.tenant)
        if record.tokens_out and record.pool_id:
            self.metrics.tokens_out(record.pool_id, record.tokens_out)  # req: MET-1012
        state = record.state
        if state is TaskState.COMPLETED:
            decode = None
            if run.first_token_at is not None and run.last_token_at is not None:
                decode = (run.last_token_at - run.first_token_at) * 1000
            self.metrics.completed(record.pool_id, req.priority, decode)
        elif state is TaskState.CANCELLED:
            self.metrics.cancelled(req.priority, run.task.cancel_reason or "client")
        elif state is TaskState.FAILED:
            self.metrics.failed(req.priority, record.error.code.value if record.error else "INTERNAL")
        elif state is TaskState.EXPIRED:
            self.metrics.expired(req.priority)

    # ---- events ----------------------------------------------------------------------------------

    async def events(self, task_id: str, identity: Identity,
                     from_seq: int = 0) -> AsyncGenerator[TaskEvent, None]:
        run = self._lookup(task_id)
        if run is None:
            # req: STR-1021
            record = await self.store.get_task(task_id)
            if record is None:
                raise NotFound(f"task {task_id!r} not found", code=ErrorCode.TASK_NOT_FOUND)  # req: STR-1017
            self._check_tenant(record.tenant, identity, task_id)
            for ev in await self.store.events(task_id, from_seq):
                yield ev
            return
        self._check_tenant(run.task.tenant, identity, task_id)
        run.subscribers += 1
        if run.disconnect is not None:
            run.disconnect.cancel()
            run.disconnect = None
        try:
            # req: STR-1019, STR-1022
            cursor = max(0, from_seq)
            log_ = run.log
            while True:
                batch = log_.read(cursor)
                for ev in batch:
                    yield ev
                    cursor = ev.seq + 1
                    if ev.terminal:
                        return
                if not batch:
                    if log_.closed:
                        return
                    await log_.wait_beyond(cursor)
        finally:
            run.subscribers -= 1
            # req: STR-1301 (only a task that had a subscriber can lose its last one)
            if run.subscribers == 0 and not run.task.terminal and not self._closing:
                self._arm_disconnect(run)

    def _arm_disconnect(self, run: _Run) -> None:
        """Last subscriber gone: cancel upstream unless one comes back within the grace (STR-1034)."""
        grace = self.config.runtime.disconnect_grace_ms / 1000

        def fire() -> None:
            run.disconnect = None
            if run.subscribers == 0 and not run.task.terminal:
                asyncio.get_running_loop().create_task(self._cancel_run(run, "disconnect"))

        with contextlib.suppress(RuntimeError):
            run.disconnect = asyncio.get_running_loop().call_later(grace, fire)

    # ---- cancel ----------------------------------------------------------------------------------

    async def cancel(self, task_id: str, identity: Identity, reason: str = "client") -> TaskRecord:
        run = self._lookup(task_id)
        if run is None:
            record = await self.store.get_task(task_id)
            if record is None:
                raise NotFound(f"task {task_id!r} not found", code=ErrorCode.TASK_NOT_FOUND)  # req: STR-1032
            self._check_tenant(record.tenant, identity, task_id)
            return record  # req: STR-1031
        self._check_tenant(run.task.tenant, identity, task_id)
        await self._cancel_run(run, reason)
        return run.task.record()

    async def _cancel_run(self, run: _Run, reason: str) -> None:
        task = run.task
        if task.state is TaskState.QUEUED:
            self.queue.remove(task.task_id)  # req: QUE-1017, QUE-1018
        # The terminal event closes the log before the runner is stopped: no token can follow.
        # req: STR-1028, STR-1029, STR-1030
        self._terminate(run, CancelledEvent(reason), lambda: task.cancel(wall_ms(), reason))
        runner = run.runner
        if runner is not None and not runner.done():
            # req: STR-1033
            grace = self.config.runtime.cancel_grace_ms / 1000
            lease = run.lease
            adapter_cancel = None
            if lease is not None:
                adapter_cancel = asyncio.get_running_loop().create_task(lease.adapter.cancel(task.task_id))
            runner.cancel()
            waits: set[asyncio.Future[object]] = {runner}  # type: ignore[arg-type]
            if adapter_cancel is not None:
                waits.add(adapter_cancel)  # type: ignore[arg-type]
            await asyncio.wait(waits, timeout=grace)
            if adapter_cancel is not None and not adapter_cancel.done():
                adapter_cancel.cancel()
        if run.committed is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(run.committed)

    # ---- tasks -----------------------------------------------------------------------------------

    async def get_task(self, task_id: str, identity: Identity) -> TaskRecord:
        run = self._lookup(task_id)
        if run is not None:
            self._check_tenant(run.task.tenant, identity, task_id)
            return run.task.record()
        record = await self.store.get_task(task_id)
        if record is None:
            raise NotFound(f"task {task_id!r} not found", code=ErrorCode.TASK_NOT_FOUND)
        self._check_tenant(record.tenant, identity, task_id)
        return record

    async def list_tasks(self, identity: Identity, state: TaskState | None = None,
                         limit: int = 100) -> list[TaskRecord]:
        # req: ADM-1020, ADM-1021
        rows = await self.store.list_tasks(identity.tenant, None, max(limit * 2, limit + len(self._runs)))
        out = []
        for row in rows:
            run = self._lookup(row.task_id)
            record = run.task.record() if run is not None else row
            if state is None or record.state is state:
                out.append(record)
            if len(out) >= limit:
                break
        return out

    # ---- capabilities and pools -------------------------------------------------------------------

    def capabilities(self) -> CapabilitiesInfo:
        # req: CFG-1011, CFG-1015
        cfg = self.config
        return CapabilitiesInfo(
            api_version=API_VERSION, server_version=__version__, queue_capacity=cfg.queue.capacity,
            full_policy=cfg.queue.full_policy, priorities=tuple(Priority),
            max_tokens_limit=cfg.limits.max_tokens, max_prompt_bytes=cfg.limits.max_prompt_bytes,
            pools=tuple(self.pools()), profiles=tuple(cfg.profiles), auth_required=cfg.auth.required,
            models=tuple(cfg.model_ids()))

    def pools(self) -> list[PoolStatus]:
        return self.registry.statuses()

    def pool(self, pool_id: str) -> PoolStatus:
        return self.registry.get(pool_id).status()

    def ready(self) -> bool:
        return self._started and self.registry.ready()

    async def drain_pool(self, pool_id: str, identity: Identity, deadline_ms: int = 0) -> DrainResult:
        self._require_admin(identity)
        pool = self.registry.start_drain(pool_id)
        try:
            deadline = (deadline_ms or self.config.runtime.drain_deadline_ms) / 1000  # req: POOL-1019
            running = [self._runs[t] for t in list(pool.leases) if t in self._runs]
            self._schedule_dispatch()  # queued tasks may now go elsewhere (POOL-1018)
            # req: POOL-1016, POOL-1017
            await pool.wait_idle(deadline)
            cancelled = 0
            for run in running:
                if not run.task.terminal:
                    await self._cancel_run(run, "drain")
                    cancelled += 1
            await asyncio.gather(*(r.done.wait() for r in running))
            await pool.wait_idle(self.config.runtime.cancel_grace_ms / 1000)
        finally:
            self.registry.end_drain(pool)  # a reload may now bring the drained pool back (POOL-1251)
        return DrainResult(pool_id=pool_id, finished=len(running) - cancelled, cancelled=cancelled)

    async def reload_pool(self, pool_id: str, model: str, identity: Identity) -> ReloadResult:
        self._require_admin(identity)
        success, rolled_back, error = await self.registry.reload(pool_id, model, self.config.model_ids())
        if success:
            self._fail_unservable()
        self._schedule_dispatch()
        pool = self.registry.get(pool_id)
        return ReloadResult(pool_id=pool_id, success=success, rolled_back=rolled_back,
                            generation=pool.generation, error=error)

    # ---- sessions --------------------------------------------------------------------------------

    def _restore_session(self, row: SessionRow) -> None:
        """Put a stored session back into the core as it was (PER-1013)."""
        # req: PER-1013
        self.sessions.restore(Session(row.session_id, row.tenant, row.expires_ms, row.turns_used,
                                      row.max_turns, row.tokens_used),
                              ttl_ms=max(1, row.expires_ms - row.created_ms))
        self._session_created[row.session_id] = row.created_ms

    def _save_session(self, session_id: str, tenant: str) -> None:
        try:
            s = self.sessions.get(session_id, tenant)
        except LlorchError:
            return  # deleted meanwhile
        self.store.save_session(SessionRow(s.session_id, s.tenant, self._session_created.get(session_id, 0),
                                           s.expires_ms, s.max_turns, s.turns_used, s.tokens_used))

    async def create_session(self, identity: Identity, ttl_ms: int = 0, max_turns: int = 0) -> SessionInfo:
        now = wall_ms()
        s = self.sessions.create(uuid.uuid4().hex, identity.tenant, now, ttl_ms, max_turns)
        self._session_created[s.session_id] = now
        self._save_session(s.session_id, s.tenant)
        await self.store.flush()
        return SessionInfo(s.session_id, s.tenant, s.expires_ms, s.turns_used, s.max_turns, s.tokens_used)

    async def get_session(self, session_id: str, identity: Identity) -> SessionInfo:
        s = self.sessions.get(session_id, identity.tenant)
        return SessionInfo(s.session_id, s.tenant, s.expires_ms, s.turns_used, s.max_turns, s.tokens_used)

    async def delete_session(self, session_id: str, identity: Identity) -> None:
        self.sessions.delete(session_id, identity.tenant)
        self._session_created.pop(session_id, None)
        self.store.delete_session(session_id)
        await self.store.flush()

    # ---- usage -----------------------------------------------------------------------------------

    async def usage(self) -> list[UsageRow]:
        rows: dict[tuple[str, str], UsageRow] = {}
        for rec in await self.store.usage():
            key = (rec.tenant, rec.pool_id)
            row = rows.get(key) or UsageRow(rec.tenant, rec.pool_id, 0, 0, 0, {})
            by_state = dict(row.by_state)
            by_state[rec.state] = by_state.get(rec.state, 0) + rec.tasks
            rows[key] = UsageRow(rec.tenant, rec.pool_id, row.tasks + rec.tasks,
                                 row.tokens_in + rec.tokens_in, row.tokens_out + rec.tokens_out, by_state)
        return list(rows.values())

    # ---- introspection for tests and the bench ------------------------------------------------------

    async def wait_terminal(self, task_id: str) -> TaskRecord:
        """Wait until the task is terminal and its record durable (tests, the CLI)."""
        run = self._lookup(task_id)
        if run is not None:
            await run.done.wait()
            if run.committed is not None:
                await asyncio.shield(run.committed)
            return run.task.record()
        record = await self.store.get_task(task_id)
        if record is None:
            raise NotFound(f"task {task_id!r} not found", code=ErrorCode.TASK_NOT_FOUND)
        return record


def _releaser(lease: Lease) -> Callable[[object], None]:
    return lambda _task: lease.release()


def _eligible(snapshot: Snapshot) -> Callable[[_Run], bool]:
    return lambda run: snapshot.eligible(run.task.request)


def _log_commit_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("terminal record not stored: %s", fut.exception())


__all__ = ["API_VERSION", "Orchestrator"]
