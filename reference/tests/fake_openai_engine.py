"""A stand-in engine process for the supervised-pool tests: just enough of the OpenAI completions
API (as llama-cpp-python's server speaks it) for the ``openai`` adapter to probe it and stream one
completion, with no model behind it.

``python fake_openai_engine.py --port P --model PATH [--token-interval-s S]``. ``GET /v1/models``
lists ``PATH``; ``POST /v1/completions`` with ``stream: true`` answers ``max_tokens`` SSE chunks
(``tok0 ``, ``tok1 `` …, one every ``S`` seconds, as a real engine paces its decode), a chunk with
``finish_reason: "length"``, then ``data: [DONE]``. Standard library only, so the supervisor can
start it with any interpreter. Not a test module.
"""

from __future__ import annotations

import argparse
import http.server
import json
import threading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--token-interval-s", type=float, default=0.0)
    args = parser.parse_args()
    pace = threading.Event()  # never set: ``wait`` is the decode pace

    class Handler(http.server.BaseHTTPRequestHandler):
        def _json(self, status: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/completions" or not request.get("stream"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            n = int(request.get("max_tokens", 16))
            for i in range(n):
                finish = "length" if i == n - 1 else None
                chunk = {"object": "text_completion", "choices": [{"index": 0, "text": f"tok{i} ",
                                                                    "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                pace.wait(args.token_interval_s)
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, format: str, *rest: object) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
