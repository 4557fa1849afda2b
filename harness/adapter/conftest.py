"""Shared helpers of the adapter suite: request building and stream reading over gRPC."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from llorch.harness.clients import STREAM_TIMEOUT_S, event_from_generate
from llorch.harness.streamcheck import Event

from llorch.proto import common_pb2, worker_adapter_pb2


@dataclass
class AdapterInfo:
    engine: worker_adapter_pb2.EngineInfo
    props: worker_adapter_pb2.Props

    @property
    def model(self) -> str:
        return self.engine.model or self.props.model

    @property
    def max_tokens_limit(self) -> int:
        return self.props.max_tokens_limit or 65536


@pytest.fixture(scope="session")
def adapter_info(adapter_stub: Any) -> AdapterInfo:
    engine = adapter_stub.GetEngineInfo(worker_adapter_pb2.EngineInfoRequest(), timeout=10)
    props = adapter_stub.GetProps(worker_adapter_pb2.PropsRequest(), timeout=10)
    return AdapterInfo(engine, props)


@pytest.fixture
def make_request(adapter_info: AdapterInfo) -> Callable[..., worker_adapter_pb2.GenerateRequest]:
    """A valid GenerateRequest for the adapter's model with a fresh request_id; kwargs override."""

    def make(**kw: Any) -> worker_adapter_pb2.GenerateRequest:
        sampler = kw.pop("sampler", None) or common_pb2.SamplerParams(temperature=0.7, top_p=0.9, seed=7)
        fields: dict[str, Any] = {"request_id": f"conform-{uuid.uuid4().hex[:12]}",
                                  "model": adapter_info.model, "prompt": "the conformance suite asks",
                                  "max_tokens": 8}
        fields.update(kw)
        return worker_adapter_pb2.GenerateRequest(sampler=sampler, **fields)

    return make


@dataclass
class Generation:
    """A Generate call read in the background, so a test can act while it streams."""

    request: worker_adapter_pb2.GenerateRequest
    events: list[worker_adapter_pb2.GenerateEvent] = field(default_factory=list)
    error: grpc.RpcError | None = None
    done: bool = False
    finished_at: float | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _call: Any = None

    @classmethod
    def start(cls, stub: Any, request: worker_adapter_pb2.GenerateRequest,
              timeout_s: float = STREAM_TIMEOUT_S) -> Generation:
        gen = cls(request)
        gen._call = stub.Generate(request, timeout=timeout_s)
        threading.Thread(target=gen._run, daemon=True, name=f"gen-{request.request_id}").start()
        return gen

    def _run(self) -> None:
        try:
            for ev in self._call:
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        finally:
            with self._cond:
                self.done = True
                self.finished_at = time.monotonic()
                self._cond.notify_all()

    def tokens(self) -> int:
        with self._cond:
            return sum(1 for ev in self.events if ev.WhichOneof("kind") == "token")

    def wait_tokens(self, n: int, timeout_s: float = STREAM_TIMEOUT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done or self.tokens_locked() >= n, timeout_s) and (
                self.tokens_locked() >= n)

    def tokens_locked(self) -> int:
        return sum(1 for ev in self.events if ev.WhichOneof("kind") == "token")

    def wait_done(self, timeout_s: float = STREAM_TIMEOUT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout_s)

    def checked(self) -> list[Event]:
        with self._cond:
            return [event_from_generate(ev) for ev in self.events]

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()


@pytest.fixture
def generations() -> Any:
    """Start background generations; all are closed when the test ends."""
    started: list[Generation] = []

    class Starter:
        def __call__(self, stub: Any, request: worker_adapter_pb2.GenerateRequest) -> Generation:
            gen = Generation.start(stub, request)
            started.append(gen)
            return gen

    yield Starter()
    for gen in started:
        gen.close()
