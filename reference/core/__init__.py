"""The pure core: synchronous, clock-free (``now_ms`` passed in), no I/O.

``task`` (state machine), ``queue`` (bounded priority FIFO), ``admission`` (validation, budgets,
rate limits, session turns), ``placement`` (pin / prefer / avoid, least-loaded), ``sessions``,
``budgets``. The runtime wraps them in async code; ``statistics()`` records feed ``/metrics``.

How the runtime drives them (one synchronous step each, no ``await`` in between):

- submit: ``admitted = admitter.admit(request, identity, now, snapshot=snapshot)``; ``task = Task(id,
  request, tenant, now)``; ``pushed = queue.push_nowait(id, task, request.priority)`` — on
  ``QueueFull`` call ``admitter.abort(admitted, now)`` and re-raise; ``pushed.evicted`` names a task
  to ``fail`` with ``ErrorInfo(evicted.code, …)`` (and settle).
- dispatch: ``id, task = queue.pop_nowait(lambda t: snapshot.eligible(t.request), now_ms=now)``,
  then ``snapshot.place(task.request, turn=n)`` and ``task.dispatch(now, pool, replica)``. Build a
  new ``Snapshot`` after each lease or release: it memoises its answers.
- end: ``task.complete | cancel | fail | expire``, then ``admitter.settle(admitted, task.tokens_in,
  task.tokens_out, now)`` on every terminal path (idempotent).
"""

from llorch.reference.core.admission import AdmissionLimits, Admitted, Admitter, validate
from llorch.reference.core.budgets import BudgetPolicy, RateLimiter, RatePolicy, TokenBudgets
from llorch.reference.core.placement import Placed, PoolView, ReplicaView, Snapshot, Wait
from llorch.reference.core.queue import Evicted, QueueFull, TaskQueue, WouldBlock
from llorch.reference.core.sessions import Session, Sessions
from llorch.reference.core.task import InvalidTransition, Task

__all__ = [
    "AdmissionLimits", "Admitted", "Admitter", "BudgetPolicy", "Evicted", "InvalidTransition", "Placed",
    "PoolView", "QueueFull", "RateLimiter", "RatePolicy", "ReplicaView", "Session", "Sessions",
    "Snapshot", "Task", "TaskQueue", "TokenBudgets", "Wait", "WouldBlock", "validate",
]
