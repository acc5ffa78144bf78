"""``mercia db``: create, load, export and inspect the OMOP CDM store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The OMOP CDM store: init, load-omop, optimize, export, stats, backup, restore.", no_args_is_help=True)

# The one ``--db`` option of every command group (mounted sub-apps import it from here).
DB_HELP = "store URL: a DuckDB path, postgresql://…, spark://… or sc://…"
DbOption = Annotated[str | None, typer.Option("--db", help=f"{DB_HELP} (default: the configured store, see mercia.config)")]
# Commands that must name their store: a federation hub or node, or a synthetic write that must never land
# in the configured (real) store by default.
RequiredDbOption = Annotated[str, typer.Option("--db", help=DB_HELP)]


@contextmanager
def open_store(db: str | None) -> Iterator:
    """Open the store, turning any StoreError into a one-line message and exit code 1."""
    from mercia.cdm.store import Store, StoreError
    from mercia.config import ConfigError

    try:
        with Store.open(db) as store:
            yield store
    except (StoreError, ConfigError) as exc:
        fail(str(exc))


def fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def init(db: DbOption = None) -> None:
    """Create every OMOP CDM v5.4 table that is missing (idempotent)."""
    from mercia.config import load_settings

    with open_store(db) as store:
        store.init_schema(enforce_primary_keys=load_settings().enforce_primary_keys)
        typer.echo(f"CDM v5.4 schema ready in {store!r}")


@app.command("load-omop")
def load_omop(
    directory: Annotated[Path, typer.Argument(help="directory of <table>.csv|.csv.gz|.tsv|.parquet files")],
    db: DbOption = None,
    table: Annotated[list[str] | None, typer.Option("--table", help="load only this table (repeatable)")] = None,
    skip_unknown: Annotated[bool, typer.Option(help="warn about, instead of refusing, data files that "
                                                    "are not CDM tables")] = False,
) -> None:
    """Load an OMOP CDM directory in one transaction, replacing the tables it has files for."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from mercia.cdm.loader import load_omop_directory

    with open_store(db) as store:
        report = load_omop_directory(store, directory, tables=table, skip_unknown=skip_unknown)
        console = Console()
        view = RichTable("table", "file", "rows", title=f"Loaded into {store!r} in {report.seconds:.1f} s")
        for f in report.files:
            view.add_row(f.table, f.path.name, f"{f.rows:,}")
        console.print(view)
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command()
def optimize(
    db: DbOption = None,
    table: Annotated[list[str] | None, typer.Option("--table", help="only this clinical table (repeatable)")] = None,
) -> None:
    """Store the clinical tables in concept order (DuckDB), so cohort criteria read only their concepts'
    rows; run again after appending rows.  Nothing to do on PostgreSQL or Spark."""
    from mercia.cdm.optimize import optimize as cluster_tables

    with open_store(db) as store:
        try:
            done = cluster_tables(store, table)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"in concept order: {', '.join(done)}" if done else f"nothing to reorder in {store!r}")


@app.command()
def export(
    directory: Annotated[Path, typer.Argument(help="output directory (created if missing)")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, csv.gz, tsv (Athena style) or parquet")] = "csv",
    table: Annotated[list[str] | None, typer.Option("--table", help="export only this table (repeatable)")] = None,
) -> None:
    """Write every CDM table (or --table ones) to DIRECTORY/<table>.<format>."""
    from mercia.cdm.loader import export_omop

    import duckdb

    with open_store(db) as store:
        try:
            written = export_omop(store, directory, fmt=fmt, tables=table)
        except (OSError, duckdb.IOException) as exc:  # a full disk, a quota, a file size limit
            fail(f"export to {directory} failed while writing ({_io_cause(exc)}); "
                 "the files there are incomplete: free space and export again")
        typer.echo(f"wrote {len(written)} tables to {directory} as {fmt}")


def _io_cause(exc: Exception) -> str:
    """The operating system's words for a failed write (DuckDB wraps them in a JSON object)."""
    import orjson

    text = str(exc).splitlines()[0]
    try:
        return orjson.loads(text[text.index("{"):])["exception_message"]
    except (ValueError, KeyError, TypeError):
        return text


@app.command()
def stats(
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Row counts per table, the CDM version and the vocabulary versions."""
    from mercia.cdm.stats import store_stats

    with open_store(db) as store:
        summary = store_stats(store)
    if as_json:
        import orjson

        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console()
    source = summary["cdm_source"]
    console.print(f"{summary['store']}: OMOP CDM v{summary['cdm_version']}"
                  + (f"; source {source['name']!r} declares CDM {source['cdm_version']}, vocabulary "
                     f"{source['vocabulary_version']}" if source else ""), highlight=False)
    counts = RichTable("table", "rows")
    for name, n in summary["row_counts"].items():
        counts.add_row(name, f"{n:,}")
    console.print(counts)
    if summary["tables_missing"]:
        console.print(f"[yellow]missing tables:[/] {', '.join(summary['tables_missing'])} (run `mercia db init`)")
    vocab = RichTable("vocabulary", "version", "concepts", title="Vocabularies in use")
    for v in summary["vocabularies"]:
        vocab.add_row(v["vocabulary_id"], v["version"] or "", f"{v['concepts']:,}")
    console.print(vocab)


def _store_url(db: str | None) -> str:
    from mercia.config import load_settings

    return db or str(load_settings().db)


@app.command()
def backup(path: Annotated[Path, typer.Argument(help="backup file to write (must not exist)")],
           db: DbOption = None) -> None:
    """Back up the whole store: a consistent DuckDB copy, or pg_dump --format=custom on PostgreSQL."""
    from mercia.cdm import backup as backups
    from mercia.cdm.store import StoreError

    try:
        backups.backup(_store_url(db), path)
    except StoreError as exc:
        fail(str(exc))
    typer.echo(f"backup written to {path} ({path.stat().st_size:,} bytes)")


@app.command()
def restore(path: Annotated[Path, typer.Argument(help="backup file written by `mercia db backup`")],
            db: DbOption = None,
            replace: Annotated[bool, typer.Option("--replace", help="overwrite an existing DuckDB store")] = False,
            ) -> None:
    """Restore a backup into the store (all or nothing; stop `mercia serve` first on DuckDB)."""
    from mercia.cdm import backup as backups
    from mercia.cdm.store import StoreError

    try:
        backups.restore(path, _store_url(db), replace=replace)
    except StoreError as exc:
        fail(str(exc))
    typer.echo(f"restored {path}")
