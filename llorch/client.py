"""``llorch.client``: the HTTP client of the llorch task API (used by ``llorch submit``/``tasks``/
``pools``/``stats`` and by the pact consumer tests, DECISIONS D16).

Talks only the wire contract (``contracts/openapi/``), never reference internals. Answers are typed
records; error answers raise ``ApiError`` built from the envelope
``{"error": {code, message, retriable, retry_after_ms, correlation_id, policy_label}}``.

    with Client("http://127.0.0.1:8700", token=os.environ.get("LLORCH_TOKEN")) as client:
        task = client.submit(model="llorch-mock", prompt="hello", max_tokens=16)
        for event in client.events(task.task_id):
            ...
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import connect_sse

__all__ = [
    "ApiError", "Cancelled", "Client", "ClientError", "DrainResult", "Event", "Pool", "ReloadResult",
    "Replica", "Submitted", "Task", "TransportError", "UsageRow",
]

DEFAULT_URL = "http://127.0.0.1:8700"
TERMINAL_EVENTS = frozenset({"end", "error", "cancelled"})


class ClientError(Exception):
    """Base of everything this client raises."""


class TransportError(ClientError):
    """The server could not be reached, or answered something that is not the contract."""


class ApiError(ClientError):
    """An error answer in the llorch envelope."""

    def __init__(self, status: int, code: str, message: str, *, retriable: bool = False,
                 retry_after_ms: int = 0, correlation_id: str = "", policy_label: str = "") -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retriable = retriable
        self.retry_after_ms = retry_after_ms
        self.correlation_id = correlation_id
        self.policy_label = policy_label

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]),
                       retriable=bool(error.get("retriable", False)),
                       retry_after_ms=int(error.get("retry_after_ms", 0)),
                       correlation_id=str(error.get("correlation_id", "")),
                       policy_label=str(error.get("policy_label", "")))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "UNKNOWN", response.text[:200])


@dataclass(frozen=True, slots=True)
class Submitted:
    task_id: str
    queue_position: int
    predicted_start_ms: int
    correlation_id: str


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    state: str
    tenant: str
    model: str
    priority: str
    pool_id: str
    replica_id: str
    tokens_in: int
    tokens_out: int
    created_ms: int
    finished_ms: int
    finish_reason: str
    error: dict[str, Any] | None
    session_id: str

    @property
    def terminal(self) -> bool:
        return self.state in ("completed", "cancelled", "failed", "expired")


@dataclass(frozen=True, slots=True)
class Cancelled:
    task_id: str
    state: str


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event of ``/v1/tasks/{id}/events``: ``kind`` is the SSE event name."""

    kind: str
    seq: int
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_EVENTS


@dataclass(frozen=True, slots=True)
class Replica:
    replica_id: str
    ready: bool
    total_slots: int
    free_slots: int
    engine: str
    engine_version: str
    model_digest: str


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    model: str
    engine: str
    ready: bool
    draining: bool
    total_slots: int
    free_slots: int
    generation: int
    replicas: tuple[Replica, ...] = ()

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Pool:
        replicas = tuple(_build(Replica, r) for r in data.get("replicas", ()))
        pool: Pool = _build(cls, {**data, "replicas": replicas})
        return pool


@dataclass(frozen=True, slots=True)
class DrainResult:
    pool_id: str
    finished: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class ReloadResult:
    pool_id: str
    success: bool
    rolled_back: bool
    generation: int
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant: str
    pool_id: str
    tasks: int
    tokens_in: int
    tokens_out: int
    by_state: dict[str, int] = field(default_factory=dict)


def _build(cls: type[Any], data: Any) -> Any:
    """A record from a JSON object; fields a newer server added are ignored (tolerant reader)."""
    if not isinstance(data, dict):
        raise TransportError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise TransportError(f"answer does not match {cls.__name__}: {exc}") from exc


class Client:
    """Synchronous client. ``token`` is sent as a bearer token; ``tenant`` as ``X-Llorch-Tenant``
    (honoured only by servers without auth)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, token: str | None = None, tenant: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None,
                 verify: bool | ssl.SSLContext = True) -> None:
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if tenant:
            headers["X-Llorch-Tenant"] = tenant
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport, verify=verify)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, json_body: Any = None,
                 params: Mapping[str, Any] | None = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json_body, params=params)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise TransportError(f"{method} {path}: answer is not JSON") from exc

    # ---- tasks ---------------------------------------------------------------------------------

    def submit(self, *, model: str, prompt: str, max_tokens: int, sampler: Mapping[str, Any] | None = None,
               priority: str | None = None, **fields: Any) -> Submitted:
        """``POST /v1/tasks``; ``fields`` are further submit fields (placement, session_id, …)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, **fields}
        if sampler:
            body["sampler"] = dict(sampler)
        if priority:
            body["priority"] = priority
        return _build(Submitted, self._json("POST", "/v1/tasks", json_body=body))  # type: ignore[no-any-return]

    def get_task(self, task_id: str) -> Task:
        return _build(Task, self._json("GET", f"/v1/tasks/{task_id}"))  # type: ignore[no-any-return]

    def list_tasks(self, *, state: str | None = None, limit: int = 100) -> list[Task]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        data = self._json("GET", "/v1/tasks", params=params)
        return [_build(Task, t) for t in data.get("tasks", [])]

    def cancel(self, task_id: str) -> Cancelled:
        return _build(Cancelled, self._json("POST", f"/v1/tasks/{task_id}/cancel"))  # type: ignore[no-any-return]

    def events(self, task_id: str, *, from_seq: int = 0, last_event_id: int | None = None) -> Iterator[Event]:
        """Follow ``/v1/tasks/{id}/events`` until the terminal event (or the server closes)."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        params = {"from_seq": from_seq} if from_seq else None
        try:
            with connect_sse(self._http, "GET", f"/v1/tasks/{task_id}/events", params=params,
                             headers=headers, timeout=httpx.Timeout(None, connect=10.0)) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise ApiError.from_response(source.response)
                for sse in source.iter_sse():
                    if not sse.data:
                        continue
                    data = json.loads(sse.data)
                    event = Event(kind=sse.event, seq=int(data.get("seq", -1)), data=data)
                    yield event
                    if event.terminal:
                        return
        except httpx.HTTPError as exc:
            raise TransportError(f"events of {task_id}: {exc}") from exc

    # ---- capabilities, pools, sessions, usage --------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        return self._json("GET", "/v1/capabilities")  # type: ignore[no-any-return]

    def pools(self) -> list[Pool]:
        return [Pool.of(p) for p in self._json("GET", "/v1/pools").get("pools", [])]

    def pool(self, pool_id: str) -> Pool:
        return Pool.of(self._json("GET", f"/v1/pools/{pool_id}"))

    def drain(self, pool_id: str, *, deadline_ms: int = 0) -> DrainResult:
        return _build(DrainResult, self._json(  # type: ignore[no-any-return]
            "POST", f"/v1/pools/{pool_id}/drain", json_body={"deadline_ms": deadline_ms}))

    def reload(self, pool_id: str, model: str) -> ReloadResult:
        return _build(ReloadResult, self._json(  # type: ignore[no-any-return]
            "POST", f"/v1/pools/{pool_id}/reload", json_body={"model": model}))

    def create_session(self, *, ttl_ms: int = 0, max_turns: int = 0) -> dict[str, Any]:
        return self._json("POST", "/v1/sessions",  # type: ignore[no-any-return]
                          json_body={"ttl_ms": ttl_ms, "max_turns": max_turns})

    def get_session(self, session_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/sessions/{session_id}")  # type: ignore[no-any-return]

    def delete_session(self, session_id: str) -> None:
        self._request("DELETE", f"/v1/sessions/{session_id}")

    def usage(self) -> list[UsageRow]:
        return [_build(UsageRow, r) for r in self._json("GET", "/v1/usage").get("usage", [])]

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError as exc:
            raise TransportError(f"/readyz: {exc}") from exc
