"""One asyncio process serving gRPC (``grpc.aio``) and HTTP (uvicorn) over one orchestrator.

Start order: refuse an insecure bind, start the orchestrator, bind both listeners (port 0 = a free
port), start both servers, then announce the bound addresses (``--json``: one line). Stop order on
SIGTERM/SIGINT or ``stop()``: gRPC health goes NOT_SERVING and ``/readyz`` 503 first, then both
servers stop accepting and finish in-flight calls within the grace period, then the orchestrator
closes (STYLE.md §6, grpc's graceful-shutdown example).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from llorch.reference.config import Config
from llorch.reference.runtime.api import OrchestratorApi
from llorch.reference.server.grpc.server import GrpcServer
from llorch.reference.server.http.app import create_app
from llorch.reference.server.security import SecuritySettings, check_bind, security_from_config

log = logging.getLogger("llorch.server")

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class BoundAddresses:
    grpc: str
    http: str
    pid: int

    def as_json(self) -> dict[str, Any]:
        return {"grpc": self.grpc, "http": self.http, "pid": self.pid}


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """Signals belong to ``Service``, which stops gRPC and HTTP in order; uvicorn must not re-raise them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def build_orchestrator(config: Config) -> Any:
    """Create and start the runtime orchestrator for ``config`` (``runtime/orchestrator.py``)."""
    from llorch.reference.runtime.orchestrator import Orchestrator

    orchestrator = Orchestrator(config)
    await orchestrator.start()
    return orchestrator


async def close_orchestrator(orchestrator: Any) -> None:
    await orchestrator.aclose()


def metrics_registry_of(orchestrator: Any) -> Any:
    """The registry ``reference/metrics.py`` built for this orchestrator (``/metrics`` serves it)."""
    metrics = getattr(orchestrator, "metrics", None)
    return getattr(metrics, "registry", None)


class Service:
    """Both servers over one orchestrator; ``run()`` serves until ``stop()`` or a signal."""

    def __init__(self, config: Config, orchestrator: OrchestratorApi, security: SecuritySettings,
                 *, host: str, grpc_port: int, http_port: int) -> None:
        self.config = config
        self.orchestrator = orchestrator
        self.security = security
        self.host = host
        self.grpc = GrpcServer(orchestrator, security)
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._stop = asyncio.Event()
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.bound: BoundAddresses | None = None
        self.app: FastAPI | None = None

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> BoundAddresses:
        grpc_port = self.grpc.bind(self.host, self._grpc_port)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that declare TCP, and
        # without it Nagle + delayed ACK hold the first SSE event ~40 ms behind the headers.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._http_port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot bind HTTP on {_hostport(self.host, self._http_port)}: "
                          f"{exc.strerror or exc}") from exc
        sock.setblocking(False)
        http_port = sock.getsockname()[1]
        app = self.app = create_app(self.orchestrator, self.security,
                                    metrics_registry=metrics_registry_of(self.orchestrator))
        tls = self.security.tls
        uv_config = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=5,
            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None)
        self._http = _Uvicorn(uv_config)
        await self.grpc.start()
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="llorch-http")
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("the HTTP server stopped during startup")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the HTTP server did not start in time")
            await asyncio.sleep(0.01)
        scheme = "https" if tls else "http"
        self.bound = BoundAddresses(grpc=_hostport(self.host, grpc_port),
                                    http=f"{scheme}://{_hostport(self.host, http_port)}", pid=os.getpid())
        return self.bound

    async def wait(self) -> None:
        stop = asyncio.create_task(self._stop.wait())
        waiters: set[asyncio.Task[Any]] = {stop}
        if self._http_task is not None:
            waiters.add(self._http_task)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    async def begin_shutdown(self) -> None:
        """Tell probes first: gRPC health NOT_SERVING and ``/readyz`` 503, while still serving."""
        # req: CFG-1401
        if self.app is not None:
            self.app.state.gateway.shutting_down = True
        await self.grpc.enter_shutdown()

    async def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Probes first (``begin_shutdown``), then stop both servers (in-flight calls get ``grace_s``)."""
        await self.begin_shutdown()
        if self._http is not None:
            self._http.should_exit = True
        await self.grpc.stop(grace_s)
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, grace_s + 1)


async def serve(config: Config, *, host: str | None = None, grpc_port: int | None = None,
                http_port: int | None = None,
                on_ready: Callable[[BoundAddresses], None] | None = None,
                install_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT. Raises ``InsecureBindError`` before binding anything."""
    host = host or config.server.host
    grpc_port = config.server.grpc_port if grpc_port is None else grpc_port
    http_port = config.server.http_port if http_port is None else http_port
    security = security_from_config(config)
    check_bind(host, security.authenticator.required)
    orchestrator = await build_orchestrator(config)
    service = Service(config, orchestrator, security, host=host, grpc_port=grpc_port, http_port=http_port)
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
    try:
        bound = await service.start()
        if on_ready is not None:
            on_ready(bound)
        await service.wait()
    finally:
        await service.shutdown()
        await close_orchestrator(orchestrator)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


__all__ = ["BoundAddresses", "Service", "serve"]
