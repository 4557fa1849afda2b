"""Targets the suites talk to: addresses, and embedded servers started as subprocesses.

The harness never imports the reference (layering check): the embedded orchestrator is
``python -m llorch serve … --json`` and the embedded adapter ``python -m llorch adapter serve …
--json``, each printing one JSON line with its bound addresses once it is ready (D12). Anything a
third party runs is reached the same way, by address.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from llorch import resources

__all__ = [
    "READY_TIMEOUT_S",
    "ServedProcess",
    "TargetError",
    "conformance_config",
    "grpc_address",
    "http_base",
    "start_adapter",
    "start_reference",
]

READY_TIMEOUT_S = 60.0


class TargetError(RuntimeError):
    """A target could not be reached or started: a setup error (exit code 2), not a test failure."""


def grpc_address(target: str) -> str:
    """``grpc://H:P`` (or bare ``H:P``) → ``H:P`` for a grpc channel."""
    if "://" not in target:
        target = "grpc://" + target
    parts = urlsplit(target)
    if parts.scheme != "grpc" or not parts.hostname or parts.port is None:
        raise TargetError(f"not a gRPC target (want grpc://HOST:PORT): {target!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


def http_base(url: str) -> str:
    """Validate an HTTP base URL and strip its trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TargetError(f"not an HTTP base URL (want http://HOST:PORT): {url!r}")
    return url.rstrip("/")


def conformance_config() -> Path:
    """The documented conformance configuration the embedded reference runs with (D13)."""
    return resources.contracts_dir() / "conformance" / "orchestrator.yaml"


_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _stop_leftovers() -> None:
    """SIGTERM every server this process started and did not stop, so a run that ends early leaves
    no orphan. (No ``preexec_fn``: forking a process that has gRPC loaded and running Python code
    before exec can abort the child inside gRPC's fork handlers.)"""
    for process in list(_RUNNING):
        if process.poll() is None:
            process.terminate()


@dataclass
class ServedProcess:
    """A server subprocess that announced itself with one JSON line on stdout (D12)."""

    argv: list[str]
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    _stdout: IO[bytes]
    _stderr: IO[bytes]

    @classmethod
    def start(cls, argv: list[str], timeout_s: float = READY_TIMEOUT_S,
              env: dict[str, str] | None = None) -> ServedProcess:
        """Start ``argv`` and wait (bounded) for its JSON line; raise TargetError if it dies or stalls.

        stdout/stderr go to temporary files, not pipes, so a chatty server can never block on a full
        pipe after the announcement.
        """
        stdout = tempfile.TemporaryFile()
        stderr = tempfile.TemporaryFile()
        proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                   env=proc_env)
        _RUNNING.add(process)
        served = cls(argv, process, {}, stdout, stderr)
        deadline = time.monotonic() + timeout_s
        while True:
            line = served._first_line()
            if line is not None:
                try:
                    info = json.loads(line)
                except json.JSONDecodeError as exc:
                    served.stop()
                    raise TargetError(f"{argv[2:]} printed a non-JSON first line: {line!r}") from exc
                if not isinstance(info, dict):
                    served.stop()
                    raise TargetError(f"{argv[2:]} printed {line!r}, not a JSON object")
                served.info = info
                return served
            if process.poll() is not None:
                tail = served.stderr_tail()
                served.stop()
                raise TargetError(f"{' '.join(argv[2:])} exited with {process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                tail = served.stderr_tail()
                served.stop()
                raise TargetError(f"{' '.join(argv[2:])} printed no address within {timeout_s:.0f}s:\n{tail}")
            time.sleep(0.05)

    def _first_line(self) -> str | None:
        # pread, not seek+read: the child writes through the same open file description, so moving
        # its offset here would make the child's next write land at the wrong place.
        data = os.pread(self._stdout.fileno(), 1 << 16, 0)
        if b"\n" not in data:
            return None
        return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()

    def stderr_tail(self, limit: int = 4000) -> str:
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait for a graceful exit, SIGKILL only if it does not come."""
        _RUNNING.discard(self.process)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stdout.close()
        self._stderr.close()

    def __enter__(self) -> ServedProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_reference(config: Path | None = None, timeout_s: float = READY_TIMEOUT_S) -> ServedProcess:
    """The embedded reference orchestrator on free loopback ports, with the conformance config."""
    argv = [sys.executable, "-m", "llorch", "serve", "--grpc-port", "0", "--http-port", "0", "--json"]
    if config is not None and not config.is_file():
        raise TargetError(f"configuration missing: {config}")
    config = config or conformance_config()
    if config.is_file():
        argv += ["--config", str(config)]
    else:  # a build without the conformance configuration: the server's embedded default
        print(f"llorch harness: {config} is missing; the reference runs its default configuration",
              file=sys.stderr)
    served = ServedProcess.start(argv, timeout_s)
    for key in ("grpc", "http"):
        if not isinstance(served.info.get(key), str):
            served.stop()
            raise TargetError(f"`llorch serve --json` printed no {key!r} address: {served.info}")
    return served


def start_adapter(engine: str = "mock", timeout_s: float = READY_TIMEOUT_S) -> ServedProcess:
    """The reference adapter (``llorch adapter serve``) on a free loopback port."""
    served = ServedProcess.start(
        [sys.executable, "-m", "llorch", "adapter", "serve", "--engine", engine, "--port", "0", "--json"],
        timeout_s)
    if not isinstance(served.info.get("grpc"), str):
        served.stop()
        raise TargetError(f"`llorch adapter serve --json` printed no 'grpc' address: {served.info}")
    return served
