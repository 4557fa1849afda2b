"""Reference-orchestrator commands: ``serve``, ``adapter serve``, ``submit``, ``tasks``, ``pools``,
``stats`` (mapped in ``llorch/cli.py``).

``serve`` and ``adapter serve`` print one JSON line with their bound addresses under ``--json``
(D12, CFG-1013/1014). The client commands talk HTTP through ``llorch.client``; a token is read only
from the environment variable named by ``--token-env`` (never from the command line, SEC-1013).
Exit codes: 0 success, 1 the server answered an error, 2 usage or setup error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from llorch.client import DEFAULT_URL, ApiError, Client, ClientError

URL_OPTION = click.option("--url", default=DEFAULT_URL, show_default=True, envvar="LLORCH_URL",
                          help="Base URL of the orchestrator's HTTP API (env LLORCH_URL).")
TOKEN_OPTION = click.option("--token-env", metavar="VAR", default=None,
                            help="Environment variable holding the bearer token.")
TENANT_OPTION = click.option("--tenant", default=None,
                             help="X-Llorch-Tenant (honoured only by servers without auth).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"llorch: {message}", err=True)
    sys.exit(code)


def _client(url: str, token_env: str | None, tenant: str | None) -> Client:
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            _fail(f"--token-env {token_env}: the variable is not set")
    return Client(url, token=token, tenant=tenant)


def _call(fn: Callable[[], Any]) -> Any:
    """Run a client call; API errors exit 1, unreachable servers exit 2."""
    try:
        return fn()
    except ApiError as exc:
        _fail(f"{exc.status} {exc.code}: {exc.message}", 1)
    except ClientError as exc:
        _fail(str(exc))


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, separators=(",", ":"), default=lambda o: getattr(o, "__dict__", str(o))))


def _asdict(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, list):
        return [_asdict(o) for o in obj]
    return obj


# ---- serve ----------------------------------------------------------------------------------------


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML/JSON config (default: the embedded default, a pool of mock replicas).")
@click.option("--host", default=None, help="Bind address [config: server.host, 127.0.0.1].")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="gRPC port, 0 = free port [config: server.grpc_port, 50051].")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port, 0 = free port [config: server.http_port, 8700].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON line {grpc, http, pid} once both servers accept connections.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True, help="Log level of the server's stderr log.")
def serve(config_path: Path | None, host: str | None, grpc_port: int | None, http_port: int | None,
          as_json: bool, log_level: str) -> None:
    """Run the reference orchestrator: gRPC and HTTP in one process, until SIGTERM/SIGINT.

    A non-loopback --host needs auth tokens in the config (else exit 2). Exit 2 also on an invalid
    config or a busy port.
    """
    import logging

    from llorch.reference.config import default_config, load_config
    from llorch.reference.errors import LlorchError
    from llorch.reference.server.app import BoundAddresses
    from llorch.reference.server.app import serve as run
    from llorch.reference.server.security import InsecureBindError, MissingTokenError
    from llorch.reference.store.sqlite import StoreError

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # req: CFG-1001, CFG-1002, CFG-1005, CFG-1009
        config = load_config(config_path) if config_path is not None else default_config()
    except OSError as exc:
        _fail(f"cannot read config {config_path}: {exc.strerror or exc}")
    except LlorchError as exc:
        _fail(exc.message)
    if config.server.tls is not None:
        for name in (config.server.tls.cert_file, config.server.tls.key_file):
            # req: SEC-1020
            if not os.access(name, os.R_OK):
                _fail(f"TLS file {name} is missing or unreadable")

    def announce(bound: BoundAddresses) -> None:
        # req: CFG-1013
        if as_json:
            click.echo(json.dumps(bound.as_json()), nl=True)
        else:
            click.echo(f"llorch serving gRPC on {bound.grpc} and HTTP on {bound.http} (pid {bound.pid})")
        sys.stdout.flush()

    try:
        asyncio.run(run(config, host=host, grpc_port=grpc_port, http_port=http_port, on_ready=announce))
    except (InsecureBindError, MissingTokenError) as exc:
        # req: SEC-1010
        _fail(str(exc))
    except LlorchError as exc:
        _fail(exc.message)
    except StoreError as exc:
        # req: PER-1014 (the message names the store's path)
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    except KeyboardInterrupt:
        pass


# ---- adapter serve --------------------------------------------------------------------------------


@click.group("adapter")
def adapter() -> None:
    """Worker adapters: host one as a llorch.v1.WorkerAdapter gRPC server."""


@adapter.command("serve")
@click.option("--engine", default="mock", show_default=True,
              help="mock, or a real engine configured with --param: llamacpp, openai, tgi, triton, "
                   "llama-inprocess.")
@click.option("--model", default="llorch-mock", show_default=True, help="Model the mock engine serves.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; only loopback (the WorkerAdapter server has no auth).")
@click.option("--port", type=click.IntRange(0, 65535), default=50061, show_default=True,
              help="gRPC port, 0 = free port.")
@click.option("--slots", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Concurrent generations of the mock engine.")
@click.option("--tokens-per-s", type=click.FloatRange(0), default=200.0, show_default=True,
              help="Mock token rate, 0 = as fast as possible.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Engine parameter for a real engine (repeatable); values are YAML scalars.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line {grpc, pid} once ready.")
def adapter_serve(engine: str, model: str, host: str, port: int, slots: int, tokens_per_s: float,
                  params: tuple[str, ...], as_json: bool) -> None:
    """Serve an engine adapter as a llorch.v1.WorkerAdapter gRPC server until SIGTERM/SIGINT."""
    import yaml
    from llorch.reference.adapters.base import Adapter
    from llorch.reference.errors import LlorchError
    from llorch.reference.server.security import InsecureBindError, check_bind

    try:
        check_bind(host, auth_required=False)
    except InsecureBindError as exc:
        _fail(str(exc))
    adapter: Adapter
    if engine == "mock":
        from llorch.reference.adapters.mock import MockAdapter
        from llorch.reference.config import MockEngineConfig

        adapter = MockAdapter(model, MockEngineConfig(tokens_per_s=tokens_per_s), slots=slots)
    else:
        from llorch.reference.adapters.registry import build_adapter

        settings: dict[str, Any] = {}
        for item in params:
            key, sep, value = item.partition("=")
            if not sep or not key:
                _fail(f"--param {item!r}: expected KEY=VALUE")
            settings[key] = yaml.safe_load(value)
        try:
            adapter = build_adapter(engine, settings)
        except LlorchError as exc:
            _fail(exc.message)

    def announce(address: str) -> None:
        # req: CFG-1014
        if as_json:
            click.echo(json.dumps({"grpc": address, "pid": os.getpid()}))
        else:
            click.echo(f"llorch adapter ({engine}) serving gRPC on {address} (pid {os.getpid()})")
        sys.stdout.flush()

    try:
        asyncio.run(_run_adapter(adapter, host, port, announce))
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    except KeyboardInterrupt:
        pass


async def _run_adapter(adapter: Any, host: str, port: int, announce: Callable[[str], None]) -> None:
    import signal

    from llorch.reference.adapters.serve import serve_adapter

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await serve_adapter(adapter, host, port)
    try:
        announce(server.address)
        await stop.wait()
    finally:
        await server.stop()
        await adapter.aclose()


# ---- submit, tasks, pools, stats --------------------------------------------------------------------


@click.command("submit")
@click.argument("prompt")
@click.option("--model", default=None, help="Model (default: the first the server serves).")
@click.option("--max-tokens", type=click.IntRange(1), default=64, show_default=True,
              help="Most tokens to generate.")
@click.option("--temperature", type=float, default=None,
              help="Sampling temperature (default: the server's, 0 = greedy).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Sampler seed, for reproducible output.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None,
              help="Queue priority class (default: normal).")
@click.option("--pool", "pin_pool", default=None, help="Pin the task to this pool.")
@URL_OPTION
@TOKEN_OPTION
@TENANT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line.")
def submit(prompt: str, model: str | None, max_tokens: int, temperature: float | None, seed: int | None,
           priority: str | None, pin_pool: str | None, url: str, token_env: str | None,
           tenant: str | None, as_json: bool) -> None:
    """Submit a task and stream its tokens to the terminal. Exits 1 if the task fails."""
    with _client(url, token_env, tenant) as client:
        if model is None:
            models = _call(client.capabilities).get("models") or []
            if not models:
                _fail("the server serves no model")
            model = str(models[0])
        sampler: dict[str, Any] = {}
        if temperature is not None:
            sampler["temperature"] = temperature
        if seed is not None:
            sampler["seed"] = seed
        extra: dict[str, Any] = {"placement": {"pin_pool": pin_pool}} if pin_pool else {}
        chosen_model = model
        task = _call(lambda: client.submit(model=chosen_model, prompt=prompt, max_tokens=max_tokens,
                                           sampler=sampler, priority=priority, **extra))
        if as_json:
            _dump({"event": "submitted", **_asdict(task)})
        last = None
        try:
            for event in client.events(task.task_id):
                last = event
                if as_json:
                    _dump({"event": event.kind, **event.data})
                elif event.kind == "token":
                    click.echo(event.data.get("text", ""), nl=False)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            _call(lambda: client.cancel(task.task_id))
            _fail(f"cancelled task {task.task_id}", 1)
        except ApiError as exc:
            _fail(f"{exc.status} {exc.code}: {exc.message}", 1)
        except ClientError as exc:
            _fail(str(exc))
        if not as_json:
            click.echo()
        if last is None or last.kind != "end":
            detail = last.data if last is not None else {}
            _fail(f"task {task.task_id} ended with {last.kind if last else 'no event'}: "
                  f"{detail.get('code', '')} {detail.get('message', detail.get('reason', ''))}".rstrip(), 1)
        if not as_json:
            click.echo(f"[{task.task_id}: {last.data.get('tokens_out')} tokens, "
                       f"{last.data.get('finish_reason')}]", err=True)


@click.group("tasks")
def tasks() -> None:
    """List or show tasks (the caller's tenant only)."""


@tasks.command("list")
@click.option("--state", type=click.Choice(["queued", "dispatched", "streaming", "completed", "cancelled",
                                            "failed", "expired"]), default=None,
              help="Only tasks in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Most tasks to list.")
@URL_OPTION
@TOKEN_OPTION
@TENANT_OPTION
@JSON_OPTION
def tasks_list(state: str | None, limit: int, url: str, token_env: str | None, tenant: str | None,
               as_json: bool) -> None:
    """List the caller's tasks, newest first."""
    with _client(url, token_env, tenant) as client:
        rows = _call(lambda: client.list_tasks(state=state, limit=limit))
    if as_json:
        _dump({"tasks": _asdict(rows)})
        return
    for t in rows:
        click.echo(f"{t.task_id}  {t.state:<10} {t.model:<16} {t.pool_id or '-':<12} "
                   f"in={t.tokens_in} out={t.tokens_out} {t.finish_reason}")


@tasks.command("show")
@click.argument("task_id")
@URL_OPTION
@TOKEN_OPTION
@TENANT_OPTION
@JSON_OPTION
def tasks_show(task_id: str, url: str, token_env: str | None, tenant: str | None, as_json: bool) -> None:
    """Show one task's record: state, placement, tokens, finish reason or error."""
    with _client(url, token_env, tenant) as client:
        task = _call(lambda: client.get_task(task_id))
    if as_json:
        _dump(_asdict(task))
        return
    for key, value in _asdict(task).items():
        click.echo(f"{key:>14}: {value}")


@click.group("pools")
def pools() -> None:
    """List pools; drain or reload one."""


@pools.command("list")
@URL_OPTION
@TOKEN_OPTION
@JSON_OPTION
def pools_list(url: str, token_env: str | None, as_json: bool) -> None:
    """List pools: model, engine, readiness, free slots, generation."""
    with _client(url, token_env, None) as client:
        rows = _call(client.pools)
    if as_json:
        _dump({"pools": _asdict(rows)})
        return
    for p in rows:
        state = "draining" if p.draining else ("ready" if p.ready else "unready")
        click.echo(f"{p.pool_id:<16} {p.model:<16} {p.engine:<8} {state:<9} "
                   f"slots {p.free_slots}/{p.total_slots} free, generation {p.generation}")


@pools.command("drain")
@click.argument("pool_id")
@click.option("--deadline-ms", type=click.IntRange(0), default=0, show_default=True,
              help="How long running tasks may finish before they are cancelled; 0 = the server's "
                   "runtime.drain_deadline_ms.")
@URL_OPTION
@TOKEN_OPTION
@JSON_OPTION
def pools_drain(pool_id: str, deadline_ms: int, url: str, token_env: str | None, as_json: bool) -> None:
    """Drain POOL_ID: place no new task on it, let running ones finish until the deadline, cancel
    the rest (admin token when auth is configured)."""
    with _client(url, token_env, None) as client:
        result = _call(lambda: client.drain(pool_id, deadline_ms=deadline_ms))
    if as_json:
        _dump(_asdict(result))
    else:
        click.echo(f"drained {result.pool_id}: {result.finished} finished, {result.cancelled} cancelled")


@pools.command("reload")
@click.argument("pool_id")
@click.option("--model", required=True, help="Model the pool serves after the reload.")
@URL_OPTION
@TOKEN_OPTION
@JSON_OPTION
def pools_reload(pool_id: str, model: str, url: str, token_env: str | None, as_json: bool) -> None:
    """Reload POOL_ID with --model atomically, rolled back on failure; exit 1 unless it succeeded
    (admin token when auth is configured)."""
    with _client(url, token_env, None) as client:
        result = _call(lambda: client.reload(pool_id, model))
    if as_json:
        _dump(_asdict(result))
    else:
        outcome = "reloaded" if result.success else "rolled back" if result.rolled_back else "failed"
        click.echo(f"{result.pool_id}: {outcome}, generation {result.generation}")
    if not result.success:
        sys.exit(1)


@click.command("stats")
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read usage from this SQLite store file instead of a running server.")
@URL_OPTION
@TOKEN_OPTION
@JSON_OPTION
def stats(store_path: Path | None, url: str, token_env: str | None, as_json: bool) -> None:
    """Usage per tenant and pool: tasks, tokens in and out."""
    # req: PER-1016, PER-1017
    rows: list[dict[str, Any]]
    if store_path is not None:
        rows = _store_usage(store_path)
    else:
        with _client(url, token_env, None) as client:
            rows = _asdict(_call(client.usage))
    if as_json:
        _dump({"usage": rows})
        return
    click.echo(f"{'tenant':<20} {'pool':<16} {'tasks':>7} {'tokens_in':>10} {'tokens_out':>10}")
    for r in rows:
        click.echo(f"{r['tenant']:<20} {r['pool_id']:<16} {r['tasks']:>7} {r['tokens_in']:>10} "
                   f"{r['tokens_out']:>10}")


def _store_usage(path: Path) -> list[dict[str, Any]]:
    """Usage rows of a store file, summed per (tenant, pool) with the task count per state."""
    if not path.is_file():
        _fail(f"no store at {path}")
    from llorch.reference.store.sqlite import SqliteStore, UsageRecord

    async def read() -> list[UsageRecord]:
        store = SqliteStore(str(path))
        await store.open()
        try:
            return await store.usage()
        finally:
            await store.close()

    try:
        records = asyncio.run(read())
    except Exception as exc:  # an unreadable or foreign file is a setup error
        _fail(f"cannot read usage from {path}: {exc}")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        row = rows.setdefault((rec.tenant, rec.pool_id), {
            "tenant": rec.tenant, "pool_id": rec.pool_id, "tasks": 0, "tokens_in": 0, "tokens_out": 0,
            "by_state": {}})
        row["tasks"] += rec.tasks
        row["tokens_in"] += rec.tokens_in
        row["tokens_out"] += rec.tokens_out
        row["by_state"][rec.state] = row["by_state"].get(rec.state, 0) + rec.tasks
    return list(rows.values())
