"""WorkerAdapter conformance: health, props and slots, engine info, the Generate stream grammar,
cancel, bad input and determinism — all over the wire."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llorch.harness.clients import error_detail, event_from_generate, wait_until
from llorch.harness.compare import StreamToken, first_divergence
from llorch.harness.streamcheck import check_generate_stream, format_violations

from llorch.proto import common_pb2, worker_adapter_pb2

CANCEL_GRACE_S = 2.0
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _props(stub: Any) -> worker_adapter_pb2.Props:
    props: worker_adapter_pb2.Props = stub.GetProps(worker_adapter_pb2.PropsRequest(), timeout=10)
    return props


def _generate(stub: Any, request: worker_adapter_pb2.GenerateRequest,
              ) -> tuple[list[worker_adapter_pb2.GenerateEvent], grpc.RpcError | None]:
    events: list[worker_adapter_pb2.GenerateEvent] = []
    try:
        for ev in stub.Generate(request, timeout=30):
            events.append(ev)
    except grpc.RpcError as exc:
        return events, exc
    return events, None


def _tokens(events: list[worker_adapter_pb2.GenerateEvent]) -> list[StreamToken]:
    return [StreamToken(ev.token.text, ev.token.token_id) for ev in events
            if ev.WhichOneof("kind") == "token"]


@pytest.mark.req("ADP-1001")
def test_health_reports_ready_or_why_not(adapter_stub: Any) -> None:
    health = adapter_stub.Health(worker_adapter_pb2.HealthRequest(), timeout=10)
    assert health.ready or health.detail, "[ADP-1001] Health ready=false must carry a non-empty detail"
    assert health.ready, f"[ADP-1001] an idle conformance adapter must be ready (detail {health.detail!r})"


@pytest.mark.req("ADP-1011")
def test_standard_grpc_health_service(adapter_channel: Any) -> None:
    stub = health_pb2_grpc.HealthStub(adapter_channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING, "[ADP-1011] grpc.health.v1 not SERVING"


@pytest.mark.req("ADP-1002")
def test_props_slots_are_sane(adapter_stub: Any) -> None:
    props = _props(adapter_stub)
    assert props.total_slots >= 1, f"[ADP-1002] total_slots {props.total_slots} < 1"
    assert props.free_slots <= props.total_slots, (
        f"[ADP-1002] free_slots {props.free_slots} > total_slots {props.total_slots}")


@pytest.mark.req("ADP-1006", "ADP-1007", "ADP-1009")
def test_engine_info_identifies_engine_and_model(adapter_stub: Any) -> None:
    info = adapter_stub.GetEngineInfo(worker_adapter_pb2.EngineInfoRequest(), timeout=10)
    assert info.engine and info.engine_version and info.model, f"[ADP-1006] incomplete EngineInfo: {info}"
    assert DIGEST.fullmatch(info.model_digest), f"[ADP-1007] model_digest {info.model_digest!r}"
    assert _props(adapter_stub).model == info.model, "[ADP-1009] GetProps.model != GetEngineInfo.model"


@pytest.mark.req("ADP-1012", "ADP-1013", "ADP-1014", "ADP-1015", "ADP-1016")
@pytest.mark.parametrize("max_tokens", [1, 5, 24])
def test_generate_stream_grammar(adapter_stub: Any, make_request: Any, max_tokens: int) -> None:
    req = make_request(max_tokens=max_tokens)
    events, err = _generate(adapter_stub, req)
    assert err is None, f"Generate failed: {err}"
    violations = check_generate_stream([event_from_generate(ev) for ev in events])
    assert not violations, format_violations(violations)
    assert all(ev.request_id == req.request_id for ev in events), "[ADP-1013] an event lacks the request_id"
    n = len(_tokens(events))
    end = events[-1].end
    assert n <= max_tokens, f"[ADP-1016] {n} tokens for max_tokens {max_tokens}"
    if n == max_tokens:
        assert end.finish_reason == "length", f"[ADP-1016] stopped at the limit with {end.finish_reason!r}"
    assert end.prompt_tokens == events[0].started.prompt_tokens, "[ADP-1015] prompt_tokens differ"


@pytest.mark.req("ADP-1003")
def test_free_slots_track_running_generations(adapter_stub: Any, make_request: Any, generations: Any,
                                              adapter_info: Any) -> None:
    idle = _props(adapter_stub).free_slots
    assert idle >= 1, "[ADP-1003] an idle adapter reports no free slot"
    gen = generations(adapter_stub, make_request(max_tokens=min(4000, adapter_info.max_tokens_limit)))
    assert gen.wait_tokens(1), f"no token arrived: {gen.error}"
    busy = _props(adapter_stub).free_slots
    assert busy == idle - 1, f"[ADP-1003] free_slots {busy} while one generation runs (idle {idle})"
    gen.close()
    assert wait_until(lambda: _props(adapter_stub).free_slots == idle, CANCEL_GRACE_S), (
        "[ADP-1003] free_slots did not return to its idle value after the call ended")


@pytest.mark.req("ADP-1026", "ADP-1029")
def test_cancel_stops_the_stream(adapter_stub: Any, make_request: Any, generations: Any,
                                 adapter_info: Any) -> None:
    idle = _props(adapter_stub).free_slots
    max_tokens = min(4000, adapter_info.max_tokens_limit)
    req = make_request(max_tokens=max_tokens)
    gen = generations(adapter_stub, req)
    assert gen.wait_tokens(2), f"no token arrived: {gen.error}"
    resp = adapter_stub.Cancel(worker_adapter_pb2.AdapterCancelRequest(request_id=req.request_id), timeout=10)
    assert resp.found, "[ADP-1026] Cancel of a running request_id answered found=false"
    assert gen.wait_done(CANCEL_GRACE_S), (
        f"[ADP-1026] the stream kept going {CANCEL_GRACE_S}s after the cancel ({gen.tokens()} tokens)")
    events = gen.checked()
    assert gen.tokens() < max_tokens and not any(e.kind == "end" and e.reason == "length" for e in events), (
        "[ADP-1026] the cancelled generation ran to max_tokens")
    violations = check_generate_stream(events, require_terminal=False)
    assert not violations, format_violations(violations)
    assert wait_until(lambda: _props(adapter_stub).free_slots == idle, CANCEL_GRACE_S), (
        "[ADP-1029] free_slots did not return to idle after the cancel")


@pytest.mark.req("ADP-1027")
def test_cancel_unknown_request(adapter_stub: Any) -> None:
    resp = adapter_stub.Cancel(worker_adapter_pb2.AdapterCancelRequest(request_id="conform-never-started"),
                               timeout=10)
    assert not resp.found, "[ADP-1027] Cancel of an unknown request_id answered found=true"


@pytest.mark.req("ADP-1028")
def test_closing_the_call_frees_the_slot(adapter_stub: Any, make_request: Any, generations: Any,
                                         adapter_info: Any) -> None:
    idle = _props(adapter_stub).free_slots
    gen = generations(adapter_stub, make_request(max_tokens=min(4000, adapter_info.max_tokens_limit)))
    assert gen.wait_tokens(1), f"no token arrived: {gen.error}"
    gen.close()
    assert wait_until(lambda: _props(adapter_stub).free_slots == idle, CANCEL_GRACE_S), (
        "[ADP-1028] closing the Generate call did not free its slot")


BAD_INPUTS: dict[str, dict[str, Any]] = {
    "max_tokens-zero": {"max_tokens": 0},
    "max_tokens-over-limit": {"max_tokens": "limit+1"},
    "empty-prompt": {"prompt": ""},
    "empty-request-id": {"request_id": ""},
}


@pytest.mark.req("ADP-1022", "ADP-1025")
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused(adapter_stub: Any, make_request: Any, adapter_info: Any, case: str) -> None:
    fields = dict(BAD_INPUTS[case])
    if fields.get("max_tokens") == "limit+1":
        fields["max_tokens"] = adapter_info.max_tokens_limit + 1
    before = _props(adapter_stub).free_slots
    events, err = _generate(adapter_stub, make_request(**fields))
    assert err is not None, f"[ADP-1022] {case}: accepted, streamed {len(events)} events"
    assert not events, f"[ADP-1022] {case}: {len(events)} events before the refusal"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"[ADP-1022] {case}: status {err.code()}"
    detail = error_detail(err)
    assert detail is not None and detail.code == common_pb2.INVALID_PARAMS, (
        f"[ADP-1022] {case}: ErrorDetail {detail}")
    assert _props(adapter_stub).free_slots == before, "[ADP-1025] a refused request changed free_slots"


@pytest.mark.req("ADP-1023")
def test_unknown_model_is_not_found(adapter_stub: Any, make_request: Any) -> None:
    events, err = _generate(adapter_stub, make_request(model="conform-no-such-model"))
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND, (
        f"[ADP-1023] unknown model: {err.code() if err else f'accepted, {len(events)} events'}")
    detail = error_detail(err)
    assert detail is not None and detail.code == common_pb2.MODEL_NOT_FOUND, f"[ADP-1023] {detail}"


@pytest.mark.req("ADP-1030", "ADP-1031")
def test_same_seed_same_stream(adapter_stub: Any, make_request: Any, adapter_info: Any) -> None:
    sampler = common_pb2.SamplerParams(temperature=0.8, top_p=0.95, top_k=40, repeat_penalty=1.0, seed=1234)
    if not adapter_info.engine.deterministic:
        events, err = _generate(adapter_stub, make_request(sampler=sampler, deterministic=True))
        detail = error_detail(err) if err is not None else None
        assert detail is not None and detail.code == common_pb2.DETERMINISM_UNSUPPORTED, (
            "[ADP-1031] an adapter reporting deterministic=false accepted a deterministic request")
        return
    fields = {"prompt": "a fixed prompt for the determinism check", "max_tokens": 24, "deterministic": True}
    runs = []
    for i in range(3):
        events, err = _generate(adapter_stub, make_request(sampler=sampler, **fields))
        assert err is None, f"Generate failed: {err}"
        runs.append(_tokens(events))
        if i == 0:  # other history in between: a cache must not change the output
            _generate(adapter_stub, make_request(prompt="an unrelated request in between", max_tokens=12))
    for other in runs[1:]:
        div = first_divergence(runs[0], other)
        assert div is None, f"[ADP-1030] {div.describe()}"
