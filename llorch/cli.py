"""``llorch`` command line: one group; each area owns its subcommands and is imported lazily,
so ``llorch spec extract`` does not pay for importing the server, and a missing optional engine
dependency breaks only the command that needs it.

Exit codes of every command: 0 success, 1 failure found (gate failed, test failed), 2 usage or
setup error; ``conform`` adds 3 (known failures remain, not certified) per DECISIONS D10.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from llorch import __version__

# subcommand name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "spec": "llorch.tools.cli:spec",
    "trace": "llorch.tools.cli:trace",
    "contracts": "llorch.tools.contracts.cli:contracts",
    "serve": "llorch.reference.cli:serve",
    "adapter": "llorch.reference.cli:adapter",
    "submit": "llorch.reference.cli:submit",
    "tasks": "llorch.reference.cli:tasks",
    "pools": "llorch.reference.cli:pools",
    "stats": "llorch.reference.cli:stats",
    "conform": "llorch.harness.conform.cli:conform",
    "determinism": "llorch.harness.determinism.cli:determinism",
    "bundle": "llorch.harness.determinism.cli:bundle",
}

HELP = {
    "spec": "Specs: extract the requirement maps.",
    "trace": "Traceability: report and review links.",
    "contracts": "Contracts: regenerate, check drift, classify changes.",
    "serve": "Run the reference orchestrator (gRPC + HTTP).",
    "adapter": "Worker adapters: serve one as a WorkerAdapter gRPC server.",
    "submit": "Submit a task and stream its tokens.",
    "tasks": "List or show tasks.",
    "pools": "List pools; drain or reload one.",
    "stats": "Usage per tenant and pool.",
    "conform": "Certify an orchestrator, adapter or OpenAI-compatible server.",
    "determinism": "Run the determinism suite and write a proof bundle.",
    "bundle": "Verify or replay a determinism proof bundle.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
            command = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            return _unavailable(cmd_name, exc)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, exc: Exception) -> click.Command:
    @click.command(name=name, help=HELP.get(name, ""), context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: Any) -> None:
        raise click.ClickException(f"'llorch {name}' is not available in this build: {exc}")

    return stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llorch")
def main() -> None:
    """llorch: contracts, conformance suites and a reference orchestrator for LLM inference."""
