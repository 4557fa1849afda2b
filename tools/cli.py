"""The ``llorch spec`` and ``llorch trace`` command groups (mapped in ``llorch/cli.py``).

Exit codes: 0 success, 1 a problem found (specs inconsistent, maps drifted, gate failed),
2 usage or setup error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _root(value: Path | None) -> Path:
    """The repository root: ``--root``, else the working directory when it holds ``specs/``, else
    the checkout this package runs from."""
    if value is not None:
        if not (value / "specs").is_dir():
            raise click.UsageError(f"{value} has no specs/ folder", None)
        return value
    if Path("specs").is_dir():
        return Path.cwd()
    from llorch import resources

    root = resources.repo_root()
    if root is None:
        raise click.UsageError("no specs/ here; run from the repository root or pass --root", None)
    return root


@click.group()
def spec() -> None:
    """Specs: extract the requirement maps."""


@spec.command("extract")
@click.option("--check", is_flag=True, help="Regenerate in memory; exit 1 if the checked-in maps differ.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Repository root (default: the current directory or this checkout).")
def extract(check: bool, root: Path | None) -> None:
    """Parse specs/*.md and the links in code and tests into requirements/<stem>.yaml."""
    from llorch.tools import spec as specmod

    base = _root(root)
    try:
        wanted = specmod.build_maps(base)
    except specmod.ExtractError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"spec extract: {len(exc.problems)} problem(s)", err=True)
        sys.exit(1)
    except (OSError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    total = sum(text.count("\n- id: ") for text in wanted.values())
    if check:
        drift = specmod.diff_maps(base, wanted)
        if drift:
            click.echo("requirements/ is out of date with specs/ and the links; run `llorch spec extract`:",
                       err=True)
            for line in drift:
                click.echo(line, err=True)
            sys.exit(1)
        click.echo(f"spec extract --check: {len(wanted)} map(s), {total} requirement(s), up to date")
        return
    changed = specmod.write_maps(base, wanted)
    click.echo(f"spec extract: {len(wanted)} map(s), {total} requirement(s); "
               f"{len(changed)} file(s) changed" + (": " + ", ".join(changed) if changed else ""))


@click.group()
def trace() -> None:
    """Traceability: report and review links."""


@trace.command("report")
@click.option("--results", "results", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Results JSON or JUnit XML file, or a folder of them (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/trace"),
              show_default=True, help="Folder for index.html, report.md and report.json.")
@click.option("--profile", "profiles", multiple=True, help="Profiles the gate covers (default: all).")
@click.option("--gate", is_flag=True, help="Exit 1 when a MUST of the selected profiles is not met.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Repository root holding requirements/ (default: as for spec extract).")
def report(results: tuple[Path, ...], out: Path, profiles: tuple[str, ...], gate: bool, as_json: bool,
           root: Path | None) -> None:
    """Write index.html, report.md and report.json from the maps and test results.

    With --gate, exit 1 when a MUST of the selected profiles failed, or is untested or skipped
    without a waiver (requirements/waivers.yaml) or a declared skip; exit 2 on unreadable inputs.
    """
    from llorch.tools import trace as tracemod

    base = _requirements_root(root)
    try:
        rep = tracemod.build_report(list(results), out, list(profiles) or None, root=base)
    except tracemod.TraceInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"summary": rep.summary, "gate": rep.gate_dict()}, indent=2, sort_keys=True))
    else:
        click.echo(rep.summary_line())
        for warning in rep.warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"wrote {out / 'index.html'}, {out / 'report.md'}, {out / 'report.json'}")
    if gate:
        for failure in rep.gate_failures:
            click.echo(f"gate: {failure.id} ({failure.profile}) {failure.reason}", err=True)
        if rep.gate_failures:
            click.echo(f"gate failed: {len(rep.gate_failures)} MUST requirement(s) not met", err=True)
            sys.exit(1)
        click.echo("gate passed")


@trace.command("review")
@click.argument("req_id")
@click.option("--test", "tests", multiple=True, help="Only this linked test node id (repeatable).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Repository root (default: the current directory or this checkout).")
def review(req_id: str, tests: tuple[str, ...], root: Path | None) -> None:
    """Record that REQ_ID's links were reviewed against its current text.

    Stores the requirement's fingerprint per linked test in requirements/reviews.yaml; a link whose
    requirement text changes later shows as suspect in the trace report until reviewed again.
    """
    from llorch.tools.trace import review as reviewmod

    base = _root(root)
    try:
        done = reviewmod.review(base, req_id, list(tests) or None)
    except reviewmod.ReviewError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for nodeid, fp in done:
        click.echo(f"reviewed {req_id} <- {nodeid} at {fp}")


def _requirements_root(value: Path | None) -> Path:
    try:
        return _root(value)
    except click.UsageError:
        from llorch import resources

        return resources.requirements_dir().parent
