"""Wire clients the suites use: gRPC stubs from ``llorch.proto``, httpx, an SSE reader, and the
conversion of wire events (protobuf, SSE JSON) into ``streamcheck.Event``.

A ``TenantClient`` binds one tenant (``X-Llorch-Tenant`` / ``x-llorch-tenant`` without auth, the
bearer token with it) so each test isolates itself (D13). Nothing here knows the reference's
internals; everything goes over the wire.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_status import rpc_status
from httpx_sse import connect_sse

from llorch.proto import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc, worker_adapter_pb2
from llorch.proto import worker_adapter_pb2_grpc as adapter_grpc

from .streamcheck import Event

__all__ = [
    "STREAM_TIMEOUT_S",
    "EventCollector",
    "TenantClient",
    "WireError",
    "adapter_stub",
    "error_detail",
    "event_from_generate",
    "event_from_proto",
    "event_from_sse",
    "message_json",
    "new_tenant",
    "orchestrator_stub",
    "wait_until",
]

STREAM_TIMEOUT_S = 30.0
TENANT_HEADER = "X-Llorch-Tenant"


def new_tenant(prefix: str = "conform") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    """Poll an observable condition with a bounded deadline (never a bare sleep for synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def orchestrator_stub(channel: grpc.Channel) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
    return orchestrator_pb2_grpc.OrchestratorServiceStub(channel)


def adapter_stub(channel: grpc.Channel) -> adapter_grpc.WorkerAdapterStub:
    return adapter_grpc.WorkerAdapterStub(channel)


def message_json(msg: Message) -> dict[str, Any]:
    """The JSON form of a proto message (proto field names, defaults included): pact message bodies."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


# ---- events ---------------------------------------------------------------------------------


def event_from_proto(ev: orchestrator_pb2.TaskEvent) -> Event:
    kind = ev.WhichOneof("kind") or ""
    if kind == "token":
        t = ev.token
        return Event("token", seq=ev.seq, index=t.index, count=t.count or 1, text=t.text)
    if kind == "end":
        return Event("end", seq=ev.seq, tokens_out=ev.end.tokens_out, reason=ev.end.finish_reason)
    if kind == "error":
        return Event("error", seq=ev.seq, code=common_pb2.ErrorCode.Name(ev.error.code))
    if kind == "cancelled":
        return Event("cancelled", seq=ev.seq, reason=ev.cancelled.reason)
    return Event(kind, seq=ev.seq)


def event_from_generate(ev: worker_adapter_pb2.GenerateEvent) -> Event:
    kind = ev.WhichOneof("kind") or ""
    if kind == "token":
        return Event("token", index=ev.token.index, text=ev.token.text)
    if kind == "end":
        return Event("end", tokens_out=ev.end.tokens_out, reason=ev.end.finish_reason)
    if kind == "error":
        return Event("error", code=common_pb2.ErrorCode.Name(ev.error.code))
    return Event(kind)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def event_from_sse(name: str, data: Mapping[str, Any]) -> Event:
    """An SSE event (``event:`` name, ``data:`` JSON) as an Event; kind fields may be flat in
    ``data`` or nested under the kind's name (the proto JSON form); both are accepted."""
    fields: dict[str, Any] = dict(data)
    nested = data.get(name)
    if isinstance(nested, Mapping):
        fields.update(nested)
    seq = _int(data.get("seq"))
    if name == "token":
        return Event("token", seq=seq, index=_int(fields.get("index")),
                     count=_int(fields.get("count")) or 1, text=str(fields.get("text", "")))
    if name == "end":
        return Event("end", seq=seq, tokens_out=_int(fields.get("tokens_out")),
                     reason=str(fields.get("finish_reason", "")))
    if name == "error":
        return Event("error", seq=seq, code=str(fields.get("code", "")))
    if name == "cancelled":
        return Event("cancelled", seq=seq, reason=str(fields.get("reason", "")))
    return Event(name, seq=seq)


# ---- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireError:
    """An error as a client sees it: transport status plus the contract's ErrorDetail fields."""

    status: int | str
    code: str
    retriable: bool | None
    retry_after_ms: int | None
    body: Any


def error_detail(err: grpc.RpcError) -> common_pb2.ErrorDetail | None:
    """The llorch.v1.ErrorDetail packed in google.rpc.Status.details, if the status carries one."""
    if not isinstance(err, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return None
    if status is None:
        return None
    for any_msg in status.details:
        detail = common_pb2.ErrorDetail()
        if any_msg.Is(common_pb2.ErrorDetail.DESCRIPTOR) and any_msg.Unpack(detail):
            return detail
    return None


# ---- the tenant-bound client ------------------------------------------------------------------


@dataclass
class TenantClient:
    """One tenant's view of an orchestrator target, over HTTP and gRPC."""

    http: httpx.Client | None
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub | None
    tenant: str
    token: str | None = None
    model: str = ""

    @property
    def headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {TENANT_HEADER: self.tenant}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        return ((TENANT_HEADER.lower(), self.tenant),)

    def for_tenant(self, tenant: str) -> TenantClient:
        return TenantClient(self.http, self.stub, tenant, self.token, self.model)

    # HTTP ------------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        if self.http is None:
            raise RuntimeError("this target has no HTTP address (pass --target-http)")
        return self.http

    def _grpc(self) -> orchestrator_pb2_grpc.OrchestratorServiceStub:
        if self.stub is None:
            raise RuntimeError("this target has no gRPC address (pass --target)")
        return self.stub

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return self._http().request(method, path, headers=headers, **kw)

    def task_body(self, **overrides: Any) -> dict[str, Any]:
        """A valid submit body for the target's first model; tests override what they vary."""
        body: dict[str, Any] = {"model": self.model, "prompt": "conformance", "max_tokens": 8}
        body.update(overrides)
        return body

    def submit(self, **overrides: Any) -> httpx.Response:
        return self.request("POST", "/v1/tasks", json=self.task_body(**overrides))

    def submit_ok(self, **overrides: Any) -> dict[str, Any]:
        resp = self.submit(**overrides)
        if resp.status_code != 202:
            raise AssertionError(f"submit answered {resp.status_code}: {resp.text}")
        body: dict[str, Any] = resp.json()
        return body

    def get_task(self, task_id: str) -> dict[str, Any]:
        resp = self.request("GET", f"/v1/tasks/{task_id}")
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def cancel(self, task_id: str) -> httpx.Response:
        return self.request("POST", f"/v1/tasks/{task_id}/cancel")

    def capabilities(self) -> dict[str, Any]:
        resp = self.request("GET", "/v1/capabilities")
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def metrics_text(self) -> str:
        resp = self._http().get("/metrics")
        resp.raise_for_status()
        return resp.text

    def sse_events(self, task_id: str, *, from_seq: int | None = None, last_event_id: int | None = None,
                   timeout_s: float = STREAM_TIMEOUT_S, stop_after: Callable[[Event], bool] | None = None,
                   ) -> list[Event]:
        """Read ``GET /v1/tasks/{id}/events`` until the terminal event (or ``stop_after``)."""
        params = {"from_seq": str(from_seq)} if from_seq is not None else None
        headers = dict(self.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        events: list[Event] = []
        with connect_sse(self._http(), "GET", f"/v1/tasks/{task_id}/events", params=params,
                         headers=headers, timeout=timeout_s) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                if not sse.data:
                    continue
                data = json.loads(sse.data)
                ev = event_from_sse(sse.event, data)
                events.append(ev)
                if ev.terminal or (stop_after is not None and stop_after(ev)):
                    break
        return events

    # gRPC ------------------------------------------------------------------------------------
    def grpc_submit(self, **fields: Any) -> orchestrator_pb2.SubmitResponse:
        req = orchestrator_pb2.SubmitRequest(model=self.model, prompt="conformance", max_tokens=8)
        json_format.ParseDict(fields, req)
        resp: orchestrator_pb2.SubmitResponse = self._grpc().Submit(req, metadata=self.metadata,
                                                                     timeout=STREAM_TIMEOUT_S)
        return resp

    def grpc_events(self, task_id: str, from_seq: int = 0,
                    timeout_s: float = STREAM_TIMEOUT_S) -> list[orchestrator_pb2.TaskEvent]:
        """All events of a task over gRPC, until the terminal one or the server closes the stream."""
        out: list[orchestrator_pb2.TaskEvent] = []
        call = self._grpc().StreamEvents(
            orchestrator_pb2.StreamEventsRequest(task_id=task_id, from_seq=from_seq),
            metadata=self.metadata, timeout=timeout_s)
        for ev in call:
            out.append(ev)
            if ev.WhichOneof("kind") in ("end", "error", "cancelled"):
                call.cancel()
                break
        return out

    def grpc_cancel(self, task_id: str) -> orchestrator_pb2.CancelResponse:
        resp: orchestrator_pb2.CancelResponse = self._grpc().Cancel(
            orchestrator_pb2.CancelRequest(task_id=task_id), metadata=self.metadata, timeout=STREAM_TIMEOUT_S)
        return resp

    def grpc_task(self, task_id: str) -> orchestrator_pb2.Task:
        resp: orchestrator_pb2.Task = self._grpc().GetTask(
            orchestrator_pb2.GetTaskRequest(task_id=task_id), metadata=self.metadata,
            timeout=STREAM_TIMEOUT_S)
        return resp

    def collect(self, task_id: str) -> EventCollector:
        """Stream a task's events over gRPC in the background (for cancel and ordering tests)."""
        return EventCollector.start(self._grpc(), task_id, self.metadata)


@dataclass
class EventCollector:
    """A background gRPC ``StreamEvents`` reader that tests can wait on (condition, not sleep)."""

    task_id: str
    events: list[orchestrator_pb2.TaskEvent] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)
    error: grpc.RpcError | None = None
    done: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _call: Any = None

    @classmethod
    def start(cls, stub: orchestrator_pb2_grpc.OrchestratorServiceStub, task_id: str,
              metadata: Sequence[tuple[str, str]], timeout_s: float = STREAM_TIMEOUT_S) -> EventCollector:
        col = cls(task_id)
        col._call = stub.StreamEvents(orchestrator_pb2.StreamEventsRequest(task_id=task_id),
                                      metadata=tuple(metadata), timeout=timeout_s)
        threading.Thread(target=col._run, name=f"events-{task_id}", daemon=True).start()
        return col

    def _run(self) -> None:
        try:
            for ev in self._call:
                with self._cond:
                    self.events.append(ev)
                    self.arrival.append(time.monotonic())
                    self._cond.notify_all()
                if ev.WhichOneof("kind") in ("end", "error", "cancelled"):
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[orchestrator_pb2.TaskEvent]], bool],
                 timeout_s: float = STREAM_TIMEOUT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done or predicate(self.events), timeout_s) and (
                predicate(self.events))

    def wait_done(self, timeout_s: float = STREAM_TIMEOUT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout_s)

    def kinds(self) -> list[str]:
        with self._cond:
            return [ev.WhichOneof("kind") or "" for ev in self.events]

    def checked(self) -> list[Event]:
        with self._cond:
            return [event_from_proto(ev) for ev in self.events]

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()


def generate(stub: adapter_grpc.WorkerAdapterStub, request: worker_adapter_pb2.GenerateRequest,
             timeout_s: float = STREAM_TIMEOUT_S) -> Iterator[worker_adapter_pb2.GenerateEvent]:
    """A WorkerAdapter Generate stream, closed when the caller stops iterating."""
    call = stub.Generate(request, timeout=timeout_s)
    try:
        yield from call
    finally:
        call.cancel()
