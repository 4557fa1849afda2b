"""Launch and supervise a local engine process (llama-cpp-python's server with a model file).

A pool that runs its own engines hands each replica an ``EngineSupervisor``: it starts the
process, reports the replica ready only once the engine's health endpoint answers (POOL-1026),
notices an unexpected exit at once (listeners are told, so running tasks can end with
``WORKER_RESET``, POOL-1027), restarts it with an exponential backoff (POOL-1028), and on stop sends
SIGTERM, then SIGKILL after a grace period, to the engine's whole process group so nothing is
orphaned (POOL-1029). An engine that never becomes ready leaves the replica unready while the
supervisor keeps trying (POOL-1030); nothing here raises into the orchestrator's serving path.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import httpx

__all__ = ["EngineProcessSpec", "EngineState", "EngineSupervisor", "free_port", "llama_cpp_python_server"]


class EngineState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"  # crashed (or never became ready); waiting to restart
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class EngineProcessSpec:
    """How to run one engine process and how to tell it is ready."""

    argv: tuple[str, ...]
    health_url: str  # GET answering 200 once the engine can serve
    base_url: str  # what adapters talk to
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    stop_grace_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    healthy_reset_s: float = 30.0  # a run this long resets the backoff
    poll_interval_s: float = 0.1


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (the engine binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def llama_cpp_python_server(model_path: str, *, port: int | None = None, host: str = "127.0.0.1",
                            n_ctx: int = 2048, n_threads: int | None = None, python: str = sys.executable,
                            start_timeout_s: float = 60.0) -> EngineProcessSpec:
    """``python -m llama_cpp.server`` serving one model file; one request at a time by design."""
    port = port or free_port(host)
    argv = [python, "-m", "llama_cpp.server", "--model", model_path, "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx)]
    if n_threads:
        argv += ["--n_threads", str(n_threads)]
    base = f"http://{host}:{port}"
    return EngineProcessSpec(argv=tuple(argv), health_url=f"{base}/v1/models", base_url=base,
                             start_timeout_s=start_timeout_s)


Listener = Callable[[EngineState], None]


class EngineSupervisor:
    """Keeps one engine process running until ``stop()``."""

    def __init__(self, spec: EngineProcessSpec) -> None:
        self.spec = spec
        self.state = EngineState.STOPPED
        self.restarts = 0  # crashes followed by a restart
        self.starts = 0
        self.last_exit_code: int | None = None
        self.last_error = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._changed = asyncio.Condition()
        self._listeners: list[Listener] = []
        self._log: IO[bytes] | None = None

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def on_change(self, listener: Listener) -> None:
        """Called on every state change (READY, BACKOFF after a crash, …), from the event loop."""
        self._listeners.append(listener)

    async def _set(self, state: EngineState) -> None:
        self.state = state
        for listener in self._listeners:
            listener(state)
        async with self._changed:
            self._changed.notify_all()

    async def start(self) -> None:
        """Begin supervising; returns at once (wait with ``wait_ready``)."""
        if self._task is not None:
            return
        self._stopping = False
        self._log = tempfile.TemporaryFile()
        self._task = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once the engine is ready; False if it is not within ``timeout_s``."""
        await self.wait_state(lambda sup: sup.ready or sup._stopping, timeout_s)
        return self.ready

    async def wait_state(self, predicate: Callable[[EngineSupervisor], bool], timeout_s: float) -> bool:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout_s)
        return predicate(self)

    def log_tail(self, limit: int = 4000) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-limit:]

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.starts += 1
        return await asyncio.create_subprocess_exec(
            *self.spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            env={**os.environ, **self.spec.env}, start_new_session=True)

    async def _await_ready(self, proc: asyncio.subprocess.Process, client: httpx.AsyncClient) -> bool:
        """Poll the health URL until 200, the process exits, or the start timeout passes."""
        deadline = time.monotonic() + self.spec.start_timeout_s
        while proc.returncode is None and not self._stopping:
            try:
                if (await client.get(self.spec.health_url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.last_error = f"not ready within {self.spec.start_timeout_s}s"
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.spec.poll_interval_s)
        return False

    async def _supervise(self) -> None:
        backoff = self.spec.backoff_initial_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not self._stopping:
                await self._set(EngineState.STARTING)
                proc = self._proc = await self._spawn()
                # req: POOL-1026
                if await self._await_ready(proc, client):
                    await self._set(EngineState.READY)
                    began = time.monotonic()
                    await proc.wait()
                    if time.monotonic() - began >= self.spec.healthy_reset_s:
                        backoff = self.spec.backoff_initial_s
                elif proc.returncode is None:
                    # req: POOL-1030 (stuck starting: kill it and try again later)
                    await self._terminate(proc)
                self.last_exit_code = proc.returncode
                if self._stopping:
                    break
                # req: POOL-1027, POOL-1028
                self.last_error = self.last_error or f"engine exited with {proc.returncode}"
                self.restarts += 1
                await self._set(EngineState.BACKOFF)
                await asyncio.sleep(backoff)  # a real backoff, not a synchronisation wait
                backoff = min(backoff * 2, self.spec.backoff_max_s)
                self.last_error = ""

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group, then SIGKILL after the grace period."""
        # req: POOL-1029
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.spec.stop_grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self) -> None:
        """Stop supervising and stop the engine cleanly; idempotent."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._proc is not None:
            await self._terminate(self._proc)
            self.last_exit_code = self._proc.returncode
        await self._set(EngineState.STOPPED)
        if self._log is not None:
            self._log.close()
