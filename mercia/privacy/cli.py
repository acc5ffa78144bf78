"""``mercia privacy``: apply the national data opt-out to an existing store."""

from __future__ import annotations

from pathlib import Path

import typer

from mercia.cdm.cli import DbOption

app = typer.Typer(help="Privacy operations on the CDM store.", no_args_is_help=True)


@app.command()
def purge(opt_out: Path = typer.Option(..., "--opt-out", exists=True, help="NHS numbers, one per line"),
          db: DbOption = None) -> None:
    """Remove everyone on the opt-out list from every table, and withhold them from later loads."""
    from rich.console import Console

    from mercia.cdm import Store
    from mercia.governance.audit import record_cli_write
    from mercia.privacy.optout import purge as purge_people
    from mercia.privacy.optout import read_opt_out_file
    from mercia.privacy.pseudonym import Pseudonymiser, load_key

    numbers = read_opt_out_file(opt_out)
    with Store.open(db) as store:
        deleted = purge_people(store, numbers, Pseudonymiser(load_key()))
        # Counts only: the audit log never holds an NHS number.
        record_cli_write(store, "privacy.purge", "opt-out", listed=len(numbers), removed=deleted)
    Console().print(f"{len(numbers)} NHS numbers on the list; rows removed: "
                    + (", ".join(f"{t} {n}" for t, n in sorted(deleted.items())) or "none"))


@app.command()
def readmit(opt_in: Path = typer.Option(..., "--opt-in", exists=True, help="NHS numbers, one per line"),
            db: DbOption = None) -> None:
    """Take people who opted back in off the stored opt-out list: later loads store them again."""
    from rich.console import Console

    from mercia.cdm import Store
    from mercia.governance.audit import record_cli_write
    from mercia.privacy.optout import read_opt_out_file
    from mercia.privacy.optout import readmit as readmit_people
    from mercia.privacy.pseudonym import Pseudonymiser, load_key

    numbers = read_opt_out_file(opt_in)
    with Store.open(db) as store:
        readmitted = readmit_people(store, numbers, Pseudonymiser(load_key()))
        record_cli_write(store, "privacy.readmit", "opt-out", listed=len(numbers), readmitted=readmitted)
    Console().print(f"{len(numbers)} NHS numbers on the list; {readmitted} taken off the stored opt-out list")
