"""The ``mercia`` command: a thin root that mounts each capability's own commands.

Each capability owns its command group in ``mercia/<capability>/cli.py``.  The root imports a group
only when it is used (``LazyGroup``), so ``mercia proms score`` starts without importing the cohort
compiler, the synthesiser or the web app; ``mercia --help`` still lists every group.
"""

from __future__ import annotations

import importlib
from functools import cache

import click
import typer
from typer.core import TyperGroup

from mercia import __version__

# command name -> (module, attribute): a Typer app mounted as a group, or a function as one command.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mercia.demo", "demo"),
    "serve": ("mercia.web.cli", "serve"),
    "db": ("mercia.cdm.cli", "app"),
    "vocab": ("mercia.vocab.cli", "app"),
    "synth": ("mercia.synth.cli", "app"),
    "ingest": ("mercia.ingest.cli", "app"),
    "privacy": ("mercia.privacy.cli", "app"),
    "dq": ("mercia.quality.cli", "app"),
    "cohort": ("mercia.cohorts.cli", "app"),
    "analyse": ("mercia.analytics.cli", "app"),
    "raredisease": ("mercia.raredisease.cli", "app"),
    "audit": ("mercia.governance.cli", "app"),
    "federation": ("mercia.federation.cli", "app"),
    "hub": ("mercia.federation.cli", "hub_app"),
    "node": ("mercia.federation.cli", "node_app"),
    "trials": ("mercia.trials.cli", "app"),
    "proms": ("mercia.proms.cli", "app"),
}


@cache
def load_command(name: str) -> click.Command:
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            return load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        """A machine not yet set up (no pseudonymisation key, a wrong configuration file) is one line naming
        what to set, exit 2, from every command: not a traceback."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from mercia.config import ConfigError
            from mercia.privacy.pseudonym import KeyError_

            if not isinstance(exc, (ConfigError, KeyError_)):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(name="mercia", help="Mercia: clinical research data platform (OMOP CDM).", cls=LazyGroup,
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def root() -> None:
    """Mercia: clinical research data platform (OMOP CDM)."""


@app.command()
def version() -> None:
    """Print the Mercia version."""
    typer.echo(__version__)


if __name__ == "__main__":  # `python -m mercia.cli ...`, as the tests and docs run it
    app()
