"""``llorch conform``: certify an orchestrator or a worker adapter over the wire (D10, D12).

    llorch conform                                   # orchestrator: an embedded reference it starts
    llorch conform orchestrator grpc://H:P --http http://H:Q
    llorch conform adapter grpc://H:P
    llorch conform openai URL…                       # registered lazily from llorch.harness.openai

Writes into ``--report-dir`` (default ``out/conform/<run-id>/``): ``junit.xml``, ``results.json``,
``trace/`` (the HTML trace report), ``certification.json`` and ``certification.md``. Exit codes:
0 certified, 3 only known failures remain, 1 unexpected failures or stale entries, 2 usage/setup.
"""

from __future__ import annotations

import importlib
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import click

EXIT_USAGE = 2


class ConformUsageError(click.ClickException):
    """A usage or setup error: exit code 2 (D10)."""

    exit_code = EXIT_USAGE


@dataclass
class Options:
    profiles: list[str] = field(default_factory=list)
    known_failing: Path | None = None
    report_dir: Path | None = None
    token_env: str | None = None
    target: str | None = None
    http: str | None = None
    suites: list[str] = field(default_factory=list)
    keyword: str | None = None


def load_config(path: Path) -> dict[str, Any]:
    """conform.yaml: endpoints, claimed profiles, known-failing file; unknown fields are an error."""
    import yaml
    from pydantic import BaseModel, ConfigDict, ValidationError

    class ConformConfig(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        target: str | None = None
        http: str | None = None
        adapter: str | None = None
        openai: list[str] | None = None
        profiles: list[str] = []
        known_failing: str | None = None
        token_env: str | None = None
        report_dir: str | None = None

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        cfg = ConformConfig.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConformUsageError(f"--config {path}: {exc}") from exc
    data = cfg.model_dump(exclude_none=True)
    base = path.parent
    for key in ("known_failing", "report_dir"):
        if key in data:
            data[key] = str((base / data[key]).resolve())
    return data


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--profile", "profiles", multiple=True,
                     help="claimed conformance profile(s), repeatable or comma separated"),
        click.option("--known-failing", type=click.Path(path_type=Path, dir_okay=False),
                     help="known-failing list: `PATTERN reason` per line (* within a segment, ** across)"),
        click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="where to write the reports (default out/conform/<run-id>/)"),
        click.option("--token-env", metavar="VAR", help="environment variable holding the bearer token"),
        click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                     help="conform.yaml: endpoints, claimed profiles, known-failing file"),
        click.option("--suite", "suites", multiple=True,
                     help="run only these suites, repeatable (orchestrator: contract, properties, bdd, "
                          "schema, metrics; adapter: adapter; not used by conform openai)"),
        click.option("-k", "keyword", metavar="EXPR", help="pytest -k expression to select tests"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def resolve_options(ctx: click.Context, kw: dict[str, Any]) -> Options:
    parent: Options = ctx.obj if isinstance(ctx.obj, Options) else Options()
    cfg: dict[str, Any] = {}
    if kw.get("config_file"):
        cfg = load_config(kw["config_file"])
    profiles = [p.strip() for item in kw.get("profiles") or () for p in item.split(",") if p.strip()]
    kf = kw.get("known_failing") or (Path(cfg["known_failing"]) if cfg.get("known_failing") else None)
    rd = kw.get("report_dir") or (Path(cfg["report_dir"]) if cfg.get("report_dir") else None)
    return Options(
        profiles=profiles or list(cfg.get("profiles", [])) or parent.profiles,
        known_failing=kf or parent.known_failing,
        report_dir=rd or parent.report_dir,
        token_env=kw.get("token_env") or cfg.get("token_env") or parent.token_env,
        target=cfg.get("target"), http=cfg.get("http"),
        suites=list(kw.get("suites") or ()) or parent.suites,
        keyword=kw.get("keyword") or parent.keyword,
    ) if not cfg.get("adapter") else Options(
        profiles=profiles or list(cfg.get("profiles", [])), known_failing=kf, report_dir=rd,
        token_env=kw.get("token_env") or cfg.get("token_env"), target=cfg.get("adapter"),
        suites=list(kw.get("suites") or ()), keyword=kw.get("keyword"))


class ConformGroup(click.Group):
    """Registers ``openai`` lazily from the OpenAI suite's own module, tolerating its absence."""

    LAZY: ClassVar[dict[str, str]] = {"openai": "llorch.harness.openai.cli:openai"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.LAZY:
            return cmd
        module_name, attr = self.LAZY[cmd_name].split(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            reason = str(exc)

            @click.command(cmd_name, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: Any) -> None:
                raise ConformUsageError(f"'llorch conform {cmd_name}' is not available: {reason}")

            return unavailable
        return found if isinstance(found, click.Command) else None


@click.group("conform", cls=ConformGroup, invoke_without_command=True)
@common_options
@click.pass_context
def conform(ctx: click.Context, **kw: Any) -> None:
    """Certify a target against the llorch conformance suites; bare: the embedded reference.

    Without a subcommand, runs `conform orchestrator` against an embedded reference it starts.
    Reports go to --report-dir (default out/conform/<run-id>/): junit.xml, results.json,
    certification.md and .json, trace/index.html. Exit codes: 0 certified, 3 only known failures
    remain, 1 unexpected failures or stale known-failing entries, 2 usage or setup error.
    """
    opts = resolve_options(ctx, kw)
    ctx.obj = opts
    if ctx.invoked_subcommand is None:
        ctx.exit(_run_orchestrator(opts.target, opts.http, opts))


@conform.command("orchestrator")
@click.argument("target", required=False)
@click.option("--http", "http_url", metavar="URL", help="the orchestrator's HTTP base (http://H:Q)")
@common_options
@click.pass_context
def orchestrator_cmd(ctx: click.Context, target: str | None, http_url: str | None, **kw: Any) -> None:
    """Certify an orchestrator: TARGET is grpc://H:P; without it, an embedded reference is started.

    Claims the profiles the target reports in /v1/capabilities (less openai*, certified by
    `conform openai`) unless --profile is given. Exit codes as for `llorch conform`.
    """
    opts = resolve_options(ctx, kw)
    ctx.exit(_run_orchestrator(target or opts.target, http_url or opts.http, opts))


@conform.command("adapter")
@click.argument("target", required=False)
@common_options
@click.pass_context
def adapter_cmd(ctx: click.Context, target: str | None, **kw: Any) -> None:
    """Certify a WorkerAdapter at TARGET (grpc://H:P); without it, `llorch adapter serve` is started.

    Claims adapter-core, adapter-streaming, adapter-cancel and adapter-determinism unless --profile
    is given. Exit codes as for `llorch conform`.
    """
    opts = resolve_options(ctx, kw)
    ctx.exit(_run_adapter(target or opts.target, opts))


# ---- runs -----------------------------------------------------------------------------------


def _run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def make_report_dir(opts: Options) -> Path:
    path = opts.report_dir or Path("out") / "conform" / _run_id()
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_known(opts: Options) -> list[Any]:
    from .knownfailing import KnownFailingError, load

    if opts.known_failing is None:
        return []
    try:
        return load(opts.known_failing)
    except KnownFailingError as exc:
        raise ConformUsageError(str(exc)) from exc


def _run_orchestrator(target: str | None, http_url: str | None, opts: Options) -> int:
    from llorch.harness import targets
    from llorch.harness.plugin import OrchestratorTarget, orchestrator_summary

    entries = load_known(opts)
    served = None
    try:
        if target is None and http_url is None:
            click.echo("starting the embedded reference orchestrator…", err=True)
            served = targets.start_reference()
            grpc_addr = targets.grpc_address(served.info["grpc"])
            http_addr: str | None = targets.http_base(served.info["http"])
        else:
            grpc_addr = targets.grpc_address(target) if target else ""
            http_addr = targets.http_base(http_url) if http_url else None
        caps = _probe_orchestrator(grpc_addr, http_addr, opts)
        info = orchestrator_summary(OrchestratorTarget(grpc_addr or None, http_addr,
                                                       embedded=served is not None, capabilities=caps))
        claimed = opts.profiles or [p for p in caps.get("profiles", []) if not p.startswith("openai")]
        args = []
        if grpc_addr:
            args.append(f"--target=grpc://{grpc_addr}")
        if http_addr:
            args.append(f"--target-http={http_addr}")
        suites = opts.suites or ["contract", "properties", "bdd", "schema", "metrics"]
        return execute(suites, args, claimed, entries, info, opts)
    except targets.TargetError as exc:
        raise ConformUsageError(str(exc)) from exc
    finally:
        if served is not None:
            served.stop()


def _probe_orchestrator(grpc_addr: str, http_addr: str | None, opts: Options) -> dict[str, Any]:
    """Capabilities, or a setup error (exit 2) when the target cannot be reached at all."""
    import os

    import httpx

    token = os.environ.get(opts.token_env) if opts.token_env else None
    if opts.token_env and not token:
        raise ConformUsageError(f"--token-env {opts.token_env}: the variable is not set")
    if http_addr:
        try:
            resp = httpx.get(http_addr + "/v1/capabilities", timeout=10,
                             headers={"Authorization": f"Bearer {token}"} if token else {})
            resp.raise_for_status()
            caps: dict[str, Any] = resp.json()
            return caps
        except (httpx.HTTPError, ValueError) as exc:
            raise ConformUsageError(f"cannot read capabilities from {http_addr}: {exc}") from exc
    if not grpc_addr:
        raise ConformUsageError("no target address given")
    import grpc
    from llorch.harness.clients import message_json, orchestrator_stub

    from llorch.proto import orchestrator_pb2

    try:
        with grpc.insecure_channel(grpc_addr) as channel:
            msg = orchestrator_stub(channel).GetCapabilities(
                orchestrator_pb2.GetCapabilitiesRequest(), timeout=10,
                metadata=(("authorization", f"Bearer {token}"),) if token else ())
    except grpc.RpcError as exc:
        raise ConformUsageError(f"cannot reach grpc://{grpc_addr}: {exc.code()}") from exc
    return message_json(msg)


def _run_adapter(target: str | None, opts: Options) -> int:
    from llorch.harness import targets
    from llorch.harness.plugin import adapter_summary

    entries = load_known(opts)
    served = None
    try:
        if target is None:
            click.echo("starting the reference adapter (`llorch adapter serve`)…", err=True)
            served = targets.start_adapter()
            addr = targets.grpc_address(served.info["grpc"])
        else:
            addr = targets.grpc_address(target)
        info = adapter_summary(addr)
        if "engine_info_error" in info:
            raise ConformUsageError(f"cannot reach adapter grpc://{addr}: {info['engine_info_error']}")
        claimed = opts.profiles or ["adapter-core", "adapter-streaming", "adapter-cancel",
                                    "adapter-determinism"]
        return execute(opts.suites or ["adapter"], [f"--adapter-target=grpc://{addr}"], claimed, entries,
                        info, opts)
    except targets.TargetError as exc:
        raise ConformUsageError(str(exc)) from exc
    finally:
        if served is not None:
            served.stop()


def execute(suites: list[str], target_args: list[str], claimed: list[str], entries: list[Any],
             target_info: dict[str, Any], opts: Options) -> int:
    """Run the suites with progress, then write JUnit, results, trace report and certification."""
    from llorch.harness.plugin import requirement_index
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import certify
    from .runner import TestRecord, run_suites

    report = make_report_dir(opts)
    args = [*target_args, f"--junitxml={report / 'junit.xml'}", f"--llorch-results={report / 'results.json'}",
            f"--report-dir={report}"]
    for prof in claimed:
        args.append(f"--profile={prof}")
    if opts.token_env:
        args.append(f"--token-env={opts.token_env}")
    if opts.known_failing:
        args.append(f"--known-failing={opts.known_failing}")
    if opts.keyword:
        args += ["-k", opts.keyword]

    console = Console(stderr=True)
    failures: list[TestRecord] = []
    with Progress(TextColumn("[bold]conform"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as progress:
        task = progress.add_task("collecting…", total=None)

        def on_total(n: int) -> None:
            progress.update(task, total=n, description="")

        def on_done(rec: TestRecord) -> None:
            if rec.outcome in ("failed", "error"):
                failures.append(rec)
            tail = escape(rec.nodeid[-60:])
            progress.update(task, advance=1, description=f"{len(failures)} failed · {tail}")

        result = run_suites(suites, args, on_total=on_total, on_done=on_done)

    if result.exit_code >= 2 or result.collected == 0:
        errs = [r for r in result.records.values() if r.outcome == "error" and not r.reqs]
        detail = "; ".join(f"{r.nodeid}: {r.message}" for r in errs[:5])
        console.print(f"[red]the suites did not run (pytest exit {result.exit_code}) {escape(detail)}")
        return EXIT_USAGE

    cert = certify.certify(result.records.values(), entries, claimed, requirement_index(), target_info)
    certify.write(cert, report)
    _trace_report(report, claimed, console)
    for rec in failures:
        console.print(failure_line(rec))
    click.echo(f"{cert.verdict}: {sum(cert.counts.values())} tests "
               f"({', '.join(f'{k} {v}' for k, v in sorted(cert.counts.items()))}); "
               f"report in {report}")
    return cert.exit_code


def failure_line(rec: Any) -> str:
    """One FAILED line as rich markup; node ids carry brackets (``[chat]``, ``[/v1/…]``) and
    messages anything, so every piece of test text is escaped, never read as markup."""
    from rich.markup import escape

    first = (rec.message or "").splitlines()[0] if rec.message else ""
    reqs = "[" + ", ".join(rec.reqs) + "]"
    return f"[red]FAILED[/] {escape(rec.nodeid)} {escape(reqs)}: {escape(first)}"


def _trace_report(report: Path, profiles: list[str], console: Any) -> None:
    """The HTML trace report of this run, through the tooling API (llorch.tools.trace)."""
    from rich.markup import escape

    try:
        trace = importlib.import_module("llorch.tools.trace")
        build = trace.build_report
    except (ImportError, AttributeError):
        console.print("[yellow]trace report skipped: llorch.tools.trace.build_report is not available")
        return
    try:
        build(results=[report / "results.json"], out_dir=report / "trace", profiles=profiles or None)
    except Exception as exc:  # the certification stands on its own; a report failure is shown
        console.print(f"[yellow]trace report failed: {escape(str(exc))}")


def main() -> None:  # pragma: no cover - `python -m llorch.harness.conform.cli`
    sys.exit(conform())
