"""V4 message pacts for the task-event stream: the JSON form of ``llorch.v1.TaskEvent``
(``google.protobuf.json_format``, proto field names) as the harness's stream reader consumes it.
The provider side (``test_pact_provider.py``) produces each message from a real task on the target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from llorch.harness.clients import event_from_proto
from pact import Pact, match

from llorch.proto import orchestrator_pb2

from .conftest import CONSUMER, EVENTS_PROVIDER

U64 = r"^[0-9]+$"
COMMON = {"task_id": match.str("t-1"), "seq": match.regex("1", regex=U64),
          "timestamp_ms": match.regex("1700000000000", regex=U64)}
MESSAGES: dict[str, tuple[dict[str, Any], str]] = {
    "a started event": ({**COMMON, "started": {
        "pool_id": match.str("pool-a"), "replica_id": match.str("pool-a-r0"), "engine": match.str("mock"),
        "engine_version": match.str("1.0.0"),
        "model_digest": match.regex("sha256:" + "0" * 64, regex=r"^sha256:[0-9a-f]{64}$"),
        "queue_wait_ms": match.regex("0", regex=U64)}}, "started"),
    "a token event": ({**COMMON, "token": {
        "index": match.int(0), "text": match.str(" the"), "token_id": match.regex("5", regex=r"^-?[0-9]+$"),
        "count": match.int(1)}}, "token"),
    "an end event": ({**COMMON, "end": {
        "tokens_in": match.int(3), "tokens_out": match.int(4), "decode_ms": match.regex("20", regex=U64),
        "finish_reason": match.regex("length", regex=r"^(stop|length)$")}}, "end"),
    "a cancelled event": ({**COMMON, "cancelled": {"reason": match.str("client")}}, "cancelled"),
}


def read_event(body: str | bytes | None, metadata: dict[str, object]) -> None:
    """The consumer: parse the JSON form into the proto and into the checker's event."""
    assert body is not None, "empty message"
    msg = json_format.ParseDict(json.loads(body), orchestrator_pb2.TaskEvent())
    event = event_from_proto(msg)
    assert event.kind in {"started", "token", "end", "cancelled"}, f"unexpected kind {event.kind}"
    assert event.seq is not None and msg.task_id, "event without seq or task_id"


@pytest.mark.req("CTR-1023")
@pytest.mark.parametrize("description", sorted(MESSAGES))
def test_event_message_consumer(description: str, fresh_pact_dir: Path) -> None:
    pact = Pact(CONSUMER, EVENTS_PROVIDER).with_specification("V4")
    body, _ = MESSAGES[description]
    (pact.upon_receiving(description, "Async").given("a task has streamed")
     .with_body(body, content_type="application/json"))
    pact.verify(read_event, "Async")
    pact.write_file(fresh_pact_dir)
