"""``mercia vocab``: install, load, search and browse vocabularies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mercia.cdm.cli import DbOption, fail, open_store

app = typer.Typer(help="Vocabularies: starter (ICD-10 + HPO), Athena, search, hierarchy.", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


def _print_concepts(rows: list[dict], as_json: bool, title: str, versions: dict[str, str] | None = None) -> None:
    if as_json:
        import orjson

        typer.echo(orjson.dumps({"concepts": rows, "vocabulary_versions": versions or {}},
                                option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    if not rows:
        typer.echo("no concepts found")
        return
    columns = [c for c in rows[0] if c not in ("concept_class_id", "domain_id")]
    view = Table(*columns, title=title)
    for row in rows:
        view.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    console = Console()
    console.print(view)
    if versions:  # HPO's licence asks that its version be shown with results
        console.print("vocabulary versions: " + "; ".join(f"{k} {v}" for k, v in sorted(versions.items())),
                      highlight=False)


def _versions_for(store, rows: list[dict]) -> dict[str, str]:
    from mercia.cdm.stats import vocabulary_versions

    used = {r["vocabulary_id"] for r in rows}
    return {v["vocabulary_id"]: v["version"] for v in vocabulary_versions(store) if v["vocabulary_id"] in used}


@app.command("install-starter")
def install_starter_command(
    db: DbOption = None,
    force: Annotated[bool, typer.Option(help="reinstall even if these versions are present")] = False,
) -> None:
    """Install WHO ICD-10 2019 and the HPO (bundled in Python packages; no network)."""
    from mercia.vocab.starter import ensure_starter_vocabulary, install_starter

    with open_store(db) as store:
        outcome = install_starter(store) if force else ensure_starter_vocabulary(store)
        if not outcome:
            typer.echo("starter vocabulary already installed")
        for vocabulary_id, result in outcome.items():
            typer.echo(f"{vocabulary_id}: {result}")


@app.command("load-athena")
def load_athena_command(
    directory: Annotated[Path, typer.Argument(help="unzipped Athena download (CONCEPT.csv, ...)")],
    db: DbOption = None,
) -> None:
    """Load an OHDSI Athena vocabulary download, replacing the vocabulary tables it has."""
    from mercia.vocab.athena import load_athena

    with open_store(db) as store:
        report = load_athena(store, directory)
        for f in report.files:
            typer.echo(f"{f.table}: {f.rows:,} rows from {f.path.name}")
        for warning in report.warnings:
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(f"loaded in {report.seconds:.1f} s")


@app.command("search")
def search_command(
    text: Annotated[str, typer.Argument(help="words to look for in concept names and synonyms")],
    db: DbOption = None,
    vocabulary: Annotated[str | None, typer.Option("--vocabulary", "-v", help="e.g. ICD10, HPO, SNOMED")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    standard: Annotated[bool, typer.Option("--standard", help="standard concepts only")] = False,
    as_json: JsonOption = False,
) -> None:
    """Search concepts by name: exact, prefix, word, substring matches; standard concepts first."""
    from mercia.vocab.concepts import search

    with open_store(db) as store:
        rows = search(store, text, vocabulary=vocabulary, limit=limit, standard_only=standard)
        _print_concepts(rows, as_json, f"Concepts matching {text!r}", _versions_for(store, rows))


def _hierarchy_command(concept_id: int, db: str | None, as_json: bool, direction: str) -> None:
    from mercia.vocab.concepts import ancestors, concept, descendants

    with open_store(db) as store:
        root = concept(store, concept_id)
        if root is None:
            fail(f"concept {concept_id} is not in the concept table of {store!r}")
        rows = (descendants if direction == "descendants" else ancestors)(store, concept_id)
        title = f"{direction.capitalize()} of {concept_id} {root['concept_name']} ({root['vocabulary_id']} {root['concept_code']})"
        _print_concepts(rows, as_json, title, _versions_for(store, [root, *rows]))


@app.command("descendants")
def descendants_command(concept_id: int, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every concept below CONCEPT_ID (from concept_ancestor), nearest first."""
    _hierarchy_command(concept_id, db, as_json, "descendants")


@app.command("ancestors")
def ancestors_command(concept_id: int, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every concept above CONCEPT_ID (from concept_ancestor), nearest first."""
    _hierarchy_command(concept_id, db, as_json, "ancestors")
