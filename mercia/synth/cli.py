"""``mercia synth``: build a synthetic region (extracts + truth) or an OMOP CDM straight into a store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mercia.cdm.cli import DB_HELP

# Never the configured store by default: a synthetic write must name where it goes (a store or --out).
DbOption = Annotated[str | None, typer.Option("--db", help=DB_HELP + "; or --out for Parquet files")]

app = typer.Typer(help="Synthetic West Midlands region with ground truth.", no_args_is_help=True)


@app.command()
def region(persons: int = typer.Option(20_000, "--persons", "-n", min=1, help="People in the region."),
           out: Path = typer.Option(..., "--out", help="Output directory (created; a previous region is replaced)."),
           seed: int = typer.Option(42, "--seed", help="Same seed, same bytes."),
           error_rate: float = typer.Option(0.02, "--error-rate", min=0.0, max=0.2,
                                            help="Share of records/identities made messy."),
           practices: int = typer.Option(None, "--practices", help="GP practices (default ~1 per 9,000 people)."),
           trusts: int = typer.Option(None, "--trusts", help="Acute trusts (default ~1 per 250,000 people)."),
           as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")) -> None:
    """Write every organisation's extract and the true OMOP CDM of a synthetic region."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from mercia.config import ConfigError
    from mercia.synth.region import generate_region

    started = time.perf_counter()
    try:
        manifest = generate_region(out, persons, seed, error_rate, practices, trusts)
    except ConfigError:
        raise  # a machine not set up (no Nightingale catalogue): the root command's one line
    except (FileExistsError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(orjson.dumps(manifest).decode())
        return
    table = Table(title=f"Synthetic region in {out} ({time.perf_counter() - started:.1f} s)")
    table.add_column("truth table")
    table.add_column("rows", justify="right")
    for name, rows in manifest["truth_rows"].items():
        table.add_row(name, f"{rows:,}")
    Console().print(table)
    typer.echo(f"{len(manifest['organisations'])} organisations, {len(manifest['files'])} extract files, "
               f"{manifest['errors_injected']:,} injected errors (truth/errors.parquet)")


@app.command()
def omop(db: DbOption = None,
         out: Path = typer.Option(None, "--out", help="Write partitioned Parquet here (new or empty directory) "
                                                      "instead of into a store."),
         fmt: str = typer.Option("parquet", "--format", help="File format with --out (parquet)."),
         persons: int = typer.Option(..., "--persons", "-n", min=1, help="People in the region."),
         seed: int = typer.Option(42, "--seed"),
         as_json: bool = typer.Option(False, "--json", help="Print row counts as JSON.")) -> None:
    """Write the region's OMOP CDM straight into a store (--db), or as Parquet files any engine loads
    with `mercia db load-omop` (--out); the fast path, no extracts."""
    import orjson

    from mercia.cdm import StoreError
    from mercia.synth.omop import write_omop, write_omop_parquet

    if (db is None) == (out is None):
        raise typer.BadParameter("give exactly one of --db (a store) or --out (a directory)")
    if fmt != "parquet":
        raise typer.BadParameter(f"--format {fmt!r}: only parquet is written")
    started = time.perf_counter()
    try:
        counts = write_omop(db, persons, seed) if out is None else write_omop_parquet(out, persons, seed)
    except (StoreError, FileExistsError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    elapsed = time.perf_counter() - started
    if as_json:
        typer.echo(orjson.dumps({"seconds": round(elapsed, 2), "rows": counts}).decode())
        return
    typer.echo(f"{sum(counts.values()):,} rows for {persons:,} people in {elapsed:.1f} s")
    for name, rows in counts.items():
        typer.echo(f"  {name:<22}{rows:>14,}")
