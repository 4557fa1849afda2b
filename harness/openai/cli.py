"""``llorch conform openai URL [URL …]``: certify OpenAI-compatible servers, ours or anyone's.

Each URL is one run of the OpenAI suite through the conform machinery (``harness/conform``: pytest,
known-failing, certification, trace report) into ``<report-dir>/<target>/``; with several URLs a
compatibility matrix (requirement × target) is written beside them as ``matrix.md`` and
``matrix.json``. Each target is certified on its own; the exit code is the worst target's (D10:
0 certified, 3 known failures only, 1 unexpected failures or stale entries, 2 usage/setup error).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import httpx
from llorch.harness.conform.cli import (
    ConformUsageError,
    Options,
    common_options,
    execute,
    load_config,
    load_known,
    make_report_dir,
    resolve_options,
)

__all__ = ["openai", "worst_exit", "write_matrix"]

DEFAULT_PROFILES = ["openai"]
# Severity of exit codes, worst last (D10).
_SEVERITY = {0: 0, 3: 1, 1: 2, 2: 3}


def worst_exit(codes: list[int]) -> int:
    """The exit code of a multi-target run: the worst target's."""
    return max(codes, key=lambda c: _SEVERITY.get(c, 3)) if codes else 2


def _slug(url: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_") or "target"


def _first_model(url: str, token: str | None) -> str:
    """``--model`` default: the first id of ``/v1/models``; unreachable or malformed is a setup error."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(f"{url}/v1/models", headers=headers, timeout=30.0)
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConformUsageError(f"cannot list models at {url}/v1/models ({exc}); pass --model") from exc


def _base_url(url: str) -> str:
    from llorch.harness.targets import TargetError, http_base

    try:
        base = http_base(url)
    except TargetError as exc:
        raise ConformUsageError(str(exc)) from exc
    return base[: -len("/v1")] if base.endswith("/v1") else base


def write_matrix(report: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``matrix.json`` and ``matrix.md``: per requirement, each target's status (from its
    ``certification.json``), and each target's verdict."""
    rows: dict[str, dict[str, Any]] = {}
    targets: list[dict[str, Any]] = []
    for run in runs:
        cert_path = Path(run["report_dir"]) / "certification.json"
        cert = json.loads(cert_path.read_text(encoding="utf-8")) if cert_path.is_file() else {}
        targets.append({"url": run["url"], "model": run["model"], "exit_code": run["exit_code"],
                        "verdict": cert.get("verdict", "not run"), "per_profile": cert.get("per_profile", {}),
                        "report_dir": str(run["report_dir"])})
        for req in cert.get("requirements", []):
            row = rows.setdefault(req["id"], {"id": req["id"], "profile": req.get("profile"),
                                              "level": req.get("level"), "targets": {}})
            row["targets"][run["url"]] = req.get("status")
    matrix = {"schema": "llorch-openai-matrix/1", "targets": targets,
              "requirements": [rows[k] for k in sorted(rows)]}
    report.mkdir(parents=True, exist_ok=True)
    (report / "matrix.json").write_text(json.dumps(matrix, indent=2) + "\n", encoding="utf-8")
    urls = [t["url"] for t in targets]
    lines = ["# OpenAI compatibility matrix", "",
             "| target | model | verdict | exit |", "|---|---|---|---|",
             *[f"| `{t['url']}` | `{t['model']}` | {t['verdict']} | {t['exit_code']} |" for t in targets], "",
             "| requirement | profile | level | " + " | ".join(f"`{u}`" for u in urls) + " |",
             "|---|---|---|" + "---|" * len(urls)]
    for req_row in (rows[k] for k in sorted(rows)):
        cells = [req_row["targets"].get(u) or "—" for u in urls]
        lines.append(f"| {req_row['id']} | {req_row['profile']} | {req_row['level']} | "
                     + " | ".join(cells) + " |")
    (report / "matrix.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return matrix


def _per_target_known(items: tuple[str, ...], bases: list[str]) -> dict[str, Path]:
    """``URL=FILE`` pairs → base URL → file; a URL that is not one of the targets is a usage error."""
    out: dict[str, Path] = {}
    for item in items:
        url, sep, file = item.partition("=")
        if not sep or not file:
            raise ConformUsageError(f"--target-known-failing {item!r}: want URL=FILE")
        base = _base_url(url)
        if base not in bases:
            raise ConformUsageError(f"--target-known-failing {item!r}: {base} is not one of the targets")
        out[base] = Path(file)
    return out


@click.command("openai")
@click.argument("urls", nargs=-1)
@click.option("--model", metavar="NAME",
              help="model to request from every target (default: each target's first id of /v1/models)")
@click.option("--target-known-failing", "target_known", multiple=True, metavar="URL=FILE",
              help="a known-failing list for one target, used instead of --known-failing for it "
                   "(targets differ in their gaps; an entry is stale per target)")
@common_options
@click.pass_context
def openai(ctx: click.Context, urls: tuple[str, ...], model: str | None, target_known: tuple[str, ...],
           **kw: Any) -> None:
    """Certify OpenAI-compatible servers at URLS (http://H:P); profiles openai, openai-strict,
    openai-tools (default: openai).

    Each URL is certified on its own (in <report-dir>/<target>/ when there are several), and
    matrix.md and matrix.json compare the targets requirement by requirement. URLs may also come
    from `openai:` in --config. The exit code is the worst target's (0 certified, 3 only known
    failures, 1 unexpected failures or stale entries, 2 usage or setup error).
    """
    opts: Options = resolve_options(ctx, kw)
    if not urls and kw.get("config_file"):
        urls = tuple(load_config(kw["config_file"]).get("openai") or ())
    if not urls:
        raise ConformUsageError("no target: pass one or more URLs (or `openai:` in --config)")
    claimed = opts.profiles or DEFAULT_PROFILES
    token = os.environ.get(opts.token_env) if opts.token_env else None
    if opts.token_env and not token:
        raise ConformUsageError(f"--token-env {opts.token_env}: the variable is not set")
    bases = [_base_url(u) for u in urls]
    per_target = _per_target_known(target_known, bases)
    entries = {base: load_known(replace(opts, known_failing=per_target.get(base, opts.known_failing)))
               for base in bases}
    plan = [(base, model or _first_model(base, token)) for base in bases]  # setup errors before any run
    report = make_report_dir(opts)
    runs: list[dict[str, Any]] = []
    for base, name in plan:
        sub_dir = report / _slug(base) if len(plan) > 1 else report
        click.echo(f"conform openai {base} (model {name}, profiles {', '.join(claimed)})", err=True)
        code = execute(["openai"], [f"--openai-target={base}", f"--openai-model={name}"], claimed,
                        entries[base], {"kind": "openai", "address": base, "model": name},
                        replace(opts, report_dir=sub_dir,
                                known_failing=per_target.get(base, opts.known_failing)))
        runs.append({"url": base, "model": name, "exit_code": code, "report_dir": sub_dir})
    write_matrix(report, runs)
    click.echo(f"compatibility matrix: {report / 'matrix.md'}")
    ctx.exit(worst_exit([r["exit_code"] for r in runs]))
