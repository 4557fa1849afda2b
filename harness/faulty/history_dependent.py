"""A faulty orchestrator target whose streams depend on request history (D15: wire level).

It speaks just enough of the task API for the determinism suite — ``GET /v1/pools``, ``POST
/v1/tasks``, ``GET /v1/tasks/{id}/events`` (SSE) — and generates each token from a hash of the
request *and of the previous prompt that replica served*, as an engine with a prompt cache does.
A cross-replica comparison of first runs in the same order can agree; the suite's back-to-back
and interleaved repeats must catch it. ``history=False`` turns the fault off (a correct target),
``digest`` changes the reported model digest (for replay refusal tests).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["HistoryDependentTarget"]

WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta")


@dataclass
class HistoryDependentTarget:
    history: bool = True
    digest: str = "sha256:" + "0" * 64
    replicas: tuple[str, ...] = ("faulty-r0", "faulty-r1")
    _tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _last_prompt: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def pools(self) -> dict[str, Any]:
        reps = [{"replica_id": r, "ready": True, "total_slots": 1, "free_slots": 1, "engine": "faulty-cache",
                 "engine_version": "1.0", "model_digest": self.digest} for r in self.replicas]
        return {"pools": [{"pool_id": "faulty", "model": "faulty-model", "engine": "faulty-cache",
                           "ready": True, "draining": False, "total_slots": len(reps),
                           "free_slots": len(reps), "generation": 0, "replicas": reps}]}

    def tokens(self, body: dict[str, Any]) -> list[str]:
        replica = body.get("placement", {}).get("pin_replica") or self.replicas[0]
        with self._lock:
            before = self._last_prompt.get(replica, "") if self.history else ""
            self._last_prompt[replica] = body["prompt"]
        # The fault: a prompt seen right before (the "cached prefix") shifts the stream.
        shift = "cached" if before == body["prompt"] else ""
        key = f"{body['prompt']}|{body.get('sampler', {}).get('seed')}|{shift}"
        out = []
        for i in range(int(body["max_tokens"])):
            h = hashlib.sha256(f"{key}|{i}".encode()).digest()
            out.append(" " + WORDS[h[0] % len(WORDS)])
        return out

    def __enter__(self) -> HistoryDependentTarget:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/pools":
                    self._json(200, target.pools())
                    return
                parts = self.path.split("/")
                task = target._tasks.get(parts[3]) if len(parts) == 5 and parts[4] == "events" else None
                if task is None:
                    self._json(404, {"error": {"code": "TASK_NOT_FOUND"}})
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                toks = target.tokens(task)
                events = [("started", {}), *(("token", {"index": i, "text": t, "count": 1})
                                             for i, t in enumerate(toks)),
                          ("end", {"tokens_out": len(toks), "finish_reason": "length"})]
                for seq, (kind, data) in enumerate(events):
                    payload = json.dumps({"task_id": parts[3], "seq": seq, **data})
                    self.wfile.write(f"id: {seq}\nevent: {kind}\ndata: {payload}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                task_id = uuid.uuid4().hex
                target._tasks[task_id] = body
                self._json(202, {"task_id": task_id, "queue_position": 0, "predicted_start_ms": 0})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
