"""``mercia audit``: check and read the audit log, and register people, from the command line."""

from __future__ import annotations

import orjson
import typer

from mercia.cdm.cli import DbOption
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Audit log and governance administration.", no_args_is_help=True)
console = Console()



def _governance(db: str | None):
    from mercia.cdm import Store
    from mercia.governance import Governance

    return Governance(Store.open(db))


@app.command()
def verify(db: DbOption = None, json: bool = typer.Option(False, "--json")) -> None:
    """Recompute the hash chain; exit 1 and name the first bad entry if anything was altered."""
    result = _governance(db).audit.verify()
    if json:
        typer.echo(orjson.dumps(result.__dict__).decode())
    elif result.ok:
        console.print(f"[green]audit log intact[/]: {result.entries} entries, head {result.head}")
    else:
        verdict = "audit log in the legacy format" if result.legacy else "audit log altered"
        console.print(f"[red]{verdict}[/]: {result.problem} (checked {result.entries} good entries)")
    raise typer.Exit(0 if result.ok else 1)


@app.command("list")
def list_entries(db: DbOption = None, actor: str | None = None, action: str | None = None,
                 project: int | None = None, limit: int = 50, json: bool = typer.Option(False, "--json")) -> None:
    """Show the newest audit entries, filtered."""
    rows = _governance(db).audit.search(actor=actor, action=action, project_id=project, limit=limit)
    if json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table("seq", "when (UTC)", "who", "what", "target", "project")
    for r in rows:
        table.add_row(str(r["seq"]), r["logged_at"][:19], r["actor"], r["action"], r["target"], str(r["project_id"] or ""))
    console.print(table)


@app.command("add-user")
def add_user(username: str, display_name: str = typer.Option(..., "--name"),
             role: list[str] = typer.Option(..., "--role", help="role or role:scope, repeatable"),
             organisation: str | None = None, db: DbOption = None) -> None:
    """Register a person; a random first password is printed once."""
    import secrets

    from mercia.governance import Role

    roles = [(Role(r.split(":")[0]), r.split(":", 1)[1] if ":" in r else "") for r in role]
    password = secrets.token_urlsafe(12)
    import getpass

    _governance(db).create_user(username, display_name, password, roles, organisation=organisation,
                                actor=f"cli:{getpass.getuser()}")
    console.print(f"created {username}; first password: {password}")


@app.command("reset-second-factor")
def reset_second_factor(username: str, db: DbOption = None) -> None:
    """Clear someone's lost authenticator app; they set up a new one at their next sign-in."""
    import getpass

    gov = _governance(db)
    user = gov.user_by_name(username)
    if user is None:
        console.print(f"[red]no user {username!r}[/]")
        raise typer.Exit(1)
    gov.clear_second_factor(user, f"cli:{getpass.getuser()}")
    console.print(f"{username} will set up a new authenticator at their next sign-in")
