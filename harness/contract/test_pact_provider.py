"""Provider verification of the pacts against the RUNNING target (never against the OpenAPI file):
provider states are set up through the public API by a small state-change server, and the values
they create (a task id) are injected into the replayed requests. A planted provider change (a
renamed response field, served by a faulty proxy) must break verification."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from llorch.harness import targets
from llorch.harness.clients import TenantClient, message_json
from pact import Verifier

from .conftest import EVENTS_PROVIDER, PACT_TENANT, PROVIDER, pacts_to_verify


class StateServer:
    """Pact provider-state callback over HTTP: sets states up through the target's public API and
    answers the created values as JSON (provider-state injection)."""

    def __init__(self, client: TenantClient) -> None:
        self.client = client
        self.errors: list[str] = []
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/pact-state"

    def setup(self, state: str, params: dict[str, Any]) -> dict[str, Any]:
        if state == "a task exists":
            task = self.client.submit_ok(max_tokens=4)
            self.client.sse_events(task["task_id"])  # wait for its terminal event
            return {"task_id": task["task_id"]}
        if state == "a running task exists":
            task = self.client.submit_ok(max_tokens=500)
            self.client.sse_events(task["task_id"], stop_after=lambda e: e.kind == "token")
            return {"task_id": task["task_id"]}
        if state == "the orchestrator serves a model":
            models = self.client.capabilities().get("models") or []
            if params.get("model") not in models:
                raise RuntimeError(f"the target does not serve {params.get('model')!r}: {models}")
            return {}
        return {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                state = str(body.get("state", ""))
                try:
                    values = {} if body.get("action") == "teardown" else server.setup(
                        state, dict(body.get("params") or {}))
                except Exception as exc:
                    # pact_ffi 0.5 hangs on a failed state change; answer a placeholder instead, so the
                    # interaction fails on the wire, and keep the reason for the test's message.
                    server.errors.append(f"state {state!r}: {type(exc).__name__}: {exc}")
                    values = {"task_id": "state-setup-failed"}
                data = json.dumps(values).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def __enter__(self) -> StateServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pact_client(api: TenantClient) -> TenantClient:
    return api.for_tenant(PACT_TENANT)


def verify_http(base_url: str, pact_file: Path, client: TenantClient) -> tuple[bool, str]:
    verifier = Verifier(PROVIDER, host="127.0.0.1")
    verifier.add_transport(url=base_url)
    verifier.add_source(pact_file)
    with StateServer(client) as states:
        verifier.state_handler(states.url, teardown=False, body=True)
        try:
            verifier.verify()
        except RuntimeError:
            return False, "\n".join([verifier.output(strip_ansi=True), *states.errors])
    return True, verifier.output(strip_ansi=True)


@pytest.mark.req("CTR-1500", "CTR-1023")
def test_target_honours_the_client_pact(orchestrator: Any, pact_dir: Path, pact_client: TenantClient) -> None:
    ok, output = verify_http(orchestrator.http, pacts_to_verify(pact_dir, PROVIDER), pact_client)
    assert ok, f"[CTR-1500] provider verification failed:\n{output[-4000:]}"


@pytest.fixture
def renamed_field_proxy(orchestrator: Any) -> Iterator[str]:
    """The target behind a proxy that renames ``task_id`` in the submit answer (a planted change)."""
    argv = [sys.executable, "-m", "llorch.harness.faulty.proxy", "rename-field",
            "--upstream-grpc", orchestrator.grpc, "--upstream-http", orchestrator.http]
    with targets.ServedProcess.start(argv) as proxy:
        yield str(proxy.info["http"])


@pytest.mark.req("CTR-1023")
def test_a_planted_provider_change_breaks_verification(renamed_field_proxy: str, pact_dir: Path,
                                                       pact_client: TenantClient) -> None:
    ok, output = verify_http(renamed_field_proxy, pacts_to_verify(pact_dir, PROVIDER), pact_client)
    assert not ok, "verification passed against a provider that renamed task_id"
    assert "task_id" in output, f"the failure does not name the renamed field:\n{output[-2000:]}"


@pytest.mark.req("CTR-1500", "CTR-1023")
def test_target_produces_the_event_messages(pact_dir: Path, api: TenantClient) -> None:
    """Each message of the event pact is produced from a real task streamed over gRPC."""
    cache: dict[str, Any] = {}

    def produce(kind: str) -> dict[str, Any]:
        if kind not in cache:
            if kind == "cancelled":
                sub = api.grpc_submit(max_tokens=500)
                col = api.collect(sub.task_id)
                col.wait_for(lambda evs: any(e.WhichOneof("kind") == "token" for e in evs))
                api.grpc_cancel(sub.task_id)
                col.wait_done()
                events = list(col.events)
            else:
                events = api.grpc_events(api.grpc_submit(max_tokens=4).task_id)
            for ev in events:
                cache.setdefault(ev.WhichOneof("kind") or "", ev)
        found = cache.get(kind)
        assert found is not None, f"the target streamed no {kind!r} event"
        return {"contents": json.dumps(message_json(found)).encode(), "metadata": None,
                "content_type": "application/json"}

    kinds = {"a started event": "started", "a token event": "token", "an end event": "end",
             "a cancelled event": "cancelled"}
    verifier = Verifier(EVENTS_PROVIDER, host="127.0.0.1")
    def producer(kind: str) -> Any:
        return lambda *_args, **_kw: produce(kind)

    verifier.message_handler({desc: producer(kind) for desc, kind in kinds.items()})
    verifier.add_source(pacts_to_verify(pact_dir, EVENTS_PROVIDER))
    try:
        verifier.verify()
    except RuntimeError:
        output = verifier.output(strip_ansi=True)[-4000:]
        pytest.fail(f"[CTR-1500] event message verification failed:\n{output}")
