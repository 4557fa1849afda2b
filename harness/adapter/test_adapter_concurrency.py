"""WorkerAdapter under concurrent load: streams stay separate, and the control RPCs keep answering
while every slot generates."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from llorch.harness.clients import adapter_stub as make_stub
from llorch.harness.targets import ServedProcess

from llorch.proto import worker_adapter_pb2

LONG = 4000  # long enough that the generations are still running while the test probes
SLOTS = 3


@pytest.fixture(scope="module")
def multi_slot_stub(adapter: Any, adapter_stub: Any) -> Iterator[Any]:
    """An adapter with at least two slots: the target when it has them; with the embedded reference
    (one slot by default) a second ``llorch adapter serve --slots 3``."""
    total = adapter_stub.GetProps(worker_adapter_pb2.PropsRequest(), timeout=10).total_slots
    if total >= 2:
        yield adapter_stub
        return
    if not adapter.embedded:
        pytest.skip(f"the adapter under test has {total} slot(s): no two generations can run at once")
    served = ServedProcess.start([sys.executable, "-m", "llorch", "adapter", "serve", "--engine", "mock",
                                  "--slots", str(SLOTS), "--port", "0", "--json"])
    try:
        with grpc.insecure_channel(str(served.info["grpc"])) as channel:
            yield make_stub(channel)
    finally:
        served.stop()


@pytest.mark.req("ADP-1020")
def test_concurrent_generations_get_only_their_own_events(multi_slot_stub: Any, make_request: Any,
                                                          generations: Any) -> None:
    stub = multi_slot_stub
    info = stub.GetEngineInfo(worker_adapter_pb2.EngineInfoRequest(), timeout=10)
    slots = min(stub.GetProps(worker_adapter_pb2.PropsRequest(), timeout=10).total_slots, 4)
    requests = [make_request(max_tokens=24, prompt=f"stream number {i} of the isolation check")
                for i in range(slots)]
    gens = [generations(stub, req) for req in requests]
    assert all(gen.wait_tokens(1) for gen in gens), "the generations did not all stream"
    for gen in gens:
        assert gen.wait_done(), f"generation {gen.request.request_id} did not finish"
        assert gen.error is None, f"generation failed: {gen.error}"
    for gen in gens:
        foreign = {ev.request_id for ev in gen.events} - {gen.request.request_id}
        assert not foreign, f"[ADP-1020] {gen.request.request_id} received events of {sorted(foreign)}"
        kinds = [ev.WhichOneof("kind") for ev in gen.events]
        assert kinds.count("started") == 1 and kinds[-1] == "end", (
            f"[ADP-1020] {gen.request.request_id} got a mixed stream: {kinds}")
        indices = [ev.token.index for ev in gen.events if ev.WhichOneof("kind") == "token"]
        assert indices == list(range(len(indices))), f"[ADP-1020] interleaved token indices {indices}"
    if not info.deterministic:
        return
    for req, shared in zip(requests, gens, strict=True):
        gen = generations(stub, make_request(max_tokens=24, prompt=req.prompt))
        assert gen.wait_done() and gen.error is None
        texts = [ev.token.text for ev in gen.events if ev.WhichOneof("kind") == "token"]
        assert texts == [ev.token.text for ev in shared.events if ev.WhichOneof("kind") == "token"], (
            "[ADP-1020] a concurrent stream's text differs from the same request run alone")


@pytest.mark.req("ADP-1041")
def test_control_rpcs_answer_while_every_slot_is_busy(adapter_stub: Any, make_request: Any, generations: Any,
                                                      adapter_info: Any) -> None:
    total = adapter_stub.GetProps(worker_adapter_pb2.PropsRequest(), timeout=10).total_slots
    max_tokens = min(LONG, adapter_info.max_tokens_limit)
    gens = [generations(adapter_stub, make_request(max_tokens=max_tokens)) for _ in range(total)]
    for gen in gens:
        assert gen.wait_tokens(1), f"no token arrived: {gen.error}"
    for _ in range(3):
        props = adapter_stub.GetProps(worker_adapter_pb2.PropsRequest(), timeout=2)
        assert props.free_slots == 0, f"expected every slot busy, free_slots {props.free_slots}"
        adapter_stub.Health(worker_adapter_pb2.HealthRequest(), timeout=2)
        info = adapter_stub.GetEngineInfo(worker_adapter_pb2.EngineInfoRequest(), timeout=2)
        assert info.engine, "[ADP-1041] GetEngineInfo answered without an engine while busy"
    assert all(not gen.done for gen in gens), (
        "the generations ended before the probes ran; the check did not run under full load")
