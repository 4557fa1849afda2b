"""``llorch contracts``: regen | check | compat | cut-baseline (DECISIONS D3, D11).

Exit codes: 0 success; 1 drift, an invalid exported document, or a breaking change without a
major version bump; 2 a setup or usage error (no checkout, protoc failed, bad git ref).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from llorch.tools.contracts import ContractError
from llorch.tools.contracts import version as versions
from llorch.tools.contracts.compat import (
    OPENAPI,
    TREE_PATHS,
    Change,
    compare_trees,
    copy_tree,
    materialise_ref,
)
from llorch.tools.contracts.export import ValidationFailed
from llorch.tools.contracts.regen import Step, check_drift, find_root, regenerate_in_place

BASELINE = Path("contracts", "baseline")
CONTRACTS = Path("contracts")
F = TypeVar("F", bound=Callable[..., Any])

root_option = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                           help="source checkout (default: this package's, else the current directory); "
                                "exports always come from the importable llorch code")


def _setup_errors(func: F) -> F:
    """Report ContractError as a setup error (exit 2) and ValidationFailed as a failure (exit 1)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ContractError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from exc
        except ValidationFailed as exc:
            click.echo(f"FAIL {exc}", err=True)
            raise SystemExit(1) from exc
    return wrapper  # type: ignore[return-value]


def _echo_steps(steps: list[Step]) -> None:
    for step in steps:
        if step.status == "written":
            click.echo(f"generated {step.name}: {len(step.paths)} file(s)")
        else:
            click.echo(f"skipped   {step.name}: {step.reason}")


@click.group()
def contracts() -> None:
    """Regenerate the generated contracts, check them for drift, classify changes.

    Exit codes: 0 success; 1 drift, an invalid exported document, or a breaking change without a
    major bump of contracts/VERSION; 2 setup or usage error (no checkout, protoc failed, bad git ref).
    Compatibility rules: contracts/README.md.
    """


@contracts.command()
@root_option
@_setup_errors
def regen(root: Path | None) -> None:
    """Regenerate llorch/proto/ stubs, contracts/openapi/ and contracts/config-schema/."""
    checkout = find_root(root)
    steps, changed = regenerate_in_place(checkout)
    _echo_steps(steps)
    for path in changed:
        click.echo(f"updated   {path}")
    if not changed:
        click.echo("all generated files were up to date")


def _compat(checkout: Path, baseline: Path, label: str) -> dict[str, Any]:
    changes, notes = compare_trees(baseline, checkout / CONTRACTS)
    old, new = versions.read(baseline), versions.read(checkout / CONTRACTS)
    breaking = sum(c.breaking for c in changes)
    verdict = versions.judge(breaking, old, new)
    return {"baseline": label, "baseline_version": str(old) if old else None,
            "current_version": str(new) if new else None, "breaking": breaking,
            "compatible": len(changes) - breaking, "changes": [c.to_json() for c in changes],
            "notes": notes, "ok": verdict.ok, "verdict": verdict.reason, "_changes": changes}


def _echo_compat(result: dict[str, Any]) -> None:
    click.echo(f"compatibility against {result['baseline']} "
               f"(version {result['baseline_version'] or 'none'} -> {result['current_version'] or 'none'}):")
    changes: list[Change] = result["_changes"]
    for change in changes:
        click.echo(f"  {change}")
    for note in result["notes"]:
        click.echo(f"  note: {note}")
    click.echo(f"{result['breaking']} breaking, {result['compatible']} compatible: "
               f"{'OK' if result['ok'] else 'FAIL'} ({result['verdict']})")


# req: CTR-1016
def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@contracts.command()
@root_option
@_setup_errors
def check(root: Path | None) -> None:
    """Fail on drift of any generated file or a breaking change against contracts/baseline/.

    Regenerates into a scratch folder and compares with the committed files, validates the exported
    OpenAPI and config schema, then runs `compat` against the baseline (what `nox -s contracts` runs).
    """
    checkout = find_root(root)
    steps, drifts = check_drift(checkout)
    _echo_steps(steps)
    for drift in drifts:
        click.echo(f"DRIFT {drift.message()}")
        for line in drift.diff[:40]:
            click.echo(f"    {line}")
    if drifts:
        click.echo(f"{len(drifts)} generated file(s) drifted: run `llorch contracts regen` and commit")
    else:
        click.echo("no drift: every generated file matches a fresh regeneration")
    baseline = checkout / BASELINE
    if not baseline.is_dir():
        click.echo(f"FAIL no baseline at {BASELINE}: run `llorch contracts cut-baseline`")
        raise SystemExit(1)
    result = _compat(checkout, baseline, str(BASELINE))
    _echo_compat(result)
    openapi = checkout / CONTRACTS / OPENAPI
    if openapi.is_file() and result["current_version"]:
        stated = json.loads(openapi.read_text()).get("info", {}).get("version")
        if stated != result["current_version"]:
            click.echo(f"note: {OPENAPI} states info.version {stated!r}, contracts/VERSION is "
                       f"{result['current_version']!r}")
    if drifts or not result["ok"]:
        raise SystemExit(1)


@contracts.command()
@root_option
@click.option("--against", "ref", metavar="GIT_REF", default=None,
              help="compare with the contract files at this git ref (git show REF:contracts/...)")
@click.option("--baseline", "baseline_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="compare with this baseline directory (default: contracts/baseline)")
@click.option("--json", "as_json", is_flag=True, help="print the classification as JSON")
@_setup_errors
def compat(root: Path | None, ref: str | None, baseline_dir: Path | None, as_json: bool) -> None:
    """Classify each proto/OpenAPI/config-schema change as compatible or breaking.

    Exit 1 when a change is breaking and contracts/VERSION's major is not above the compared one's,
    or when contracts/VERSION is missing or went backwards.
    """
    if ref and baseline_dir:
        raise click.UsageError("give --against or --baseline, not both")
    checkout = find_root(root)
    with tempfile.TemporaryDirectory() as tmp:
        if ref:
            baseline, label = materialise_ref(checkout, ref, Path(tmp)), f"git ref {ref}"
        else:
            baseline = baseline_dir or checkout / BASELINE
            label = str(baseline_dir or BASELINE)
            if not baseline.is_dir():
                raise ContractError(f"no baseline at {baseline}: run `llorch contracts cut-baseline`")
        result = _compat(checkout, baseline, label)
    if as_json:
        click.echo(json.dumps(_public(result), indent=2, sort_keys=True))
    else:
        _echo_compat(result)
    if not result["ok"]:
        raise SystemExit(1)


# req: CTR-1805
@contracts.command("cut-baseline")
@root_option
@_setup_errors
def cut_baseline(root: Path | None) -> None:
    """Freeze the current contracts as contracts/baseline/ (after bumping contracts/VERSION)."""
    checkout = find_root(root)
    _, drifts = check_drift(checkout)
    if drifts:
        raise ContractError("generated files drifted; run `llorch contracts regen` first: "
                            + "; ".join(d.message() for d in drifts))
    baseline = checkout / BASELINE
    current = versions.read(checkout / CONTRACTS)
    if current is None:
        raise ContractError("contracts/VERSION is missing (one line, MAJOR.MINOR)")
    if baseline.is_dir():
        previous = versions.read(baseline)
        if previous is not None and current <= previous:
            raise ContractError(f"contracts/VERSION ({current}) must be above the baseline's "
                                f"({previous}) to cut a new baseline")
        result = _compat(checkout, baseline, str(BASELINE))
        _echo_compat(result)
        if not result["ok"]:
            raise SystemExit(1)
        for rel in TREE_PATHS:
            target = baseline / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.is_file():
                target.unlink()
    written = copy_tree(checkout / CONTRACTS, baseline)
    for path in written:
        click.echo(f"baseline  {path.relative_to(checkout)}")
    click.echo(f"cut baseline {current} ({len(written)} file(s))")
