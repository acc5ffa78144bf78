"""``mercia privacy``: apply the national data opt-out to an existing store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from mercia.cdm.cli import DbOption

app = typer.Typer(help="Privacy operations on the CDM store.", no_args_is_help=True)


def _apply_list(path: Path, db: str | None, action: str, change: Callable[..., Any], result: str) -> tuple[int, Any]:
    """Read an NHS-number list, run ``change(store, numbers, pseudonymiser)`` on the store and audit it as
    ``action`` with counts only (the audit log never holds an NHS number); returns (listed, what it did)."""
    from mercia.cdm import Store
    from mercia.governance.audit import record_cli_write
    from mercia.privacy.optout import read_opt_out_file
    from mercia.privacy.pseudonym import Pseudonymiser, load_key

    numbers = read_opt_out_file(path)
    with Store.open(db) as store:
        done = change(store, numbers, Pseudonymiser(load_key()))
        record_cli_write(store, action, "opt-out", listed=len(numbers), **{result: done})
    return len(numbers), done


@app.command()
def purge(opt_out: Path = typer.Option(..., "--opt-out", exists=True, help="NHS numbers, one per line"),
          db: DbOption = None) -> None:
    """Remove everyone on the opt-out list from every table, and withhold them from later loads."""
    from rich.console import Console

    from mercia.privacy.optout import purge as purge_people

    listed, deleted = _apply_list(opt_out, db, "privacy.purge", purge_people, "removed")
    Console().print(f"{listed} NHS numbers on the list; rows removed: "
                    + (", ".join(f"{t} {n}" for t, n in sorted(deleted.items())) or "none"))


@app.command()
def readmit(opt_in: Path = typer.Option(..., "--opt-in", exists=True, help="NHS numbers, one per line"),
            db: DbOption = None) -> None:
    """Take people who opted back in off the stored opt-out list: later loads store them again."""
    from rich.console import Console

    from mercia.privacy.optout import readmit as readmit_people

    listed, readmitted = _apply_list(opt_in, db, "privacy.readmit", readmit_people, "readmitted")
    Console().print(f"{listed} NHS numbers on the list; {readmitted} taken off the stored opt-out list")
