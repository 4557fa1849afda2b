"""Record an engine's real HTTP exchanges into a replayable transcript (JSON).

Each exchange keeps the request, the status, the headers that matter and the body *as the chunks
arrived on the socket*, so a replay can stream it back chunk by chunk and the adapter tests see
the same framing the engine produced. Usage::

    python -m llorch.reference.adapters.recordings.record BASE_URL OUT.json SPEC.json

where SPEC.json is a list of ``{"method", "path", "json"?, "note"?}``. README.md says how each
transcript in this folder was made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx

KEEP_HEADERS = ("content-type",)


def record_exchange(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    """Send one request and keep the response body as the list of chunks read off the socket."""
    chunks: list[str] = []
    with client.stream(spec["method"], spec["path"], json=spec.get("json")) as resp:
        for raw in resp.iter_raw():
            chunks.append(raw.decode("utf-8"))
        headers = {k: v for k, v in resp.headers.items() if k.lower() in KEEP_HEADERS}
        return {"note": spec.get("note", ""),
                "request": {k: spec[k] for k in ("method", "path", "json") if k in spec},
                "response": {"status": resp.status_code, "headers": headers, "chunks": chunks}}


def main(argv: list[str]) -> int:
    base, out, spec_file = argv
    specs = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    with httpx.Client(base_url=base, timeout=60) as client:
        exchanges = [record_exchange(client, s) for s in specs]
    Path(out).write_text(json.dumps({"exchanges": exchanges}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
