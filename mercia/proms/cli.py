"""``mercia proms``: score PROMs files, list value sets, load and re-score stored responses."""

from __future__ import annotations

from pathlib import Path

import typer

from mercia.cdm.cli import DbOption

app = typer.Typer(help="Patient-reported outcome measures (EQ-5D, Oxford scores).", no_args_is_help=True)



def _report_rejections(rejections, out: Path) -> None:
    import csv

    from mercia.privacy.spreadsheet import inert_rows

    reject_path = out.with_suffix(".rejected.csv")
    with reject_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "id", "field", "value", "reason"])
        writer.writerows(inert_rows([r.row, r.record, r.field, r.value, r.reason] for r in rejections))
    for r in rejections[:20]:
        typer.echo(str(r), err=True)
    typer.echo(f"{len(rejections)} answers rejected (not scored); all listed in {reject_path}", err=True)


@app.command()
def score(instrument: str = typer.Option(..., "--instrument", help="eq5d5l, eq5d3l, ohs or oks"),
          value_set_id: str | None = typer.Option(None, "--value-set", help="EQ-5D value set id (see value-sets)"),
          in_path: Path = typer.Option(..., "--in", exists=True, dir_okay=False),
          out_path: Path = typer.Option(..., "--out"),
          id_column: str = typer.Option("id", "--id-column")) -> None:
    """Score a CSV (EQ-5D: columns id,MO,SC,UA,PD,AD; Oxford: id,q1..q12) into OUT with the score added.

    Rejected rows keep an empty score and are listed, with the field and reason, in OUT.rejected.csv;
    the command then exits 1."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from mercia.privacy.spreadsheet import inert_table
    from mercia.proms.scoring import (
        INSTRUMENTS,
        OXFORD_ITEMS,
        ScoringError,
        score_eq5d,
        score_oxford,
    )
    from mercia.proms.valuesets import DIMENSIONS, ValueSetError

    if instrument not in INSTRUMENTS:
        raise typer.BadParameter(f"unknown instrument {instrument!r}; use one of {', '.join(INSTRUMENTS)}")
    answers = DIMENSIONS if instrument in ("eq5d5l", "eq5d3l") else OXFORD_ITEMS
    # Answers are read as text (no type inference, which costs more than the scoring) and checked by the scorer.
    table = pa_csv.read_csv(in_path, convert_options=pa_csv.ConvertOptions(
        column_types={c: pa.string() for c in (id_column, *answers)}, strings_can_be_null=True))
    try:
        if instrument in ("eq5d5l", "eq5d3l"):
            if not value_set_id:
                raise typer.BadParameter("EQ-5D scoring needs --value-set")
            scored = score_eq5d(table, value_set_id, instrument, id_column)
        else:
            scored = score_oxford(table, id_column)
    except (ScoringError, ValueSetError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    pa_csv.write_csv(inert_table(scored.table), out_path, pa_csv.WriteOptions(quoting_style="needed"))
    typer.echo(f"scored {scored.table.num_rows - len({r.row for r in scored.rejections})} of "
               f"{scored.table.num_rows} rows into {out_path}")
    if scored.rejections:
        _report_rejections(scored.rejections, out_path)
        raise typer.Exit(1)


@app.command("value-sets")
def value_sets() -> None:
    """List the value sets with their instrument and DOI (read from the eq5d tables' references.csv)."""
    from mercia.proms.valuesets import SPECS, value_set

    for spec in SPECS.values():
        typer.echo(f"{spec.id}\t{spec.instrument}\tdoi:{value_set(spec.id).doi}\t{spec.title}")


@app.command("import")
def import_returns(path: Path = typer.Argument(..., exists=True, dir_okay=False), db: DbOption = None) -> None:
    """Load the region's national PROMs returns CSV (proms/proms.csv) as responses."""
    from mercia.cdm import Store
    from mercia.proms.store import import_region_csv

    with Store.open(db) as store:
        typer.echo(f"{import_region_csv(store, path)} new responses")


@app.command("import-fhir")
def import_fhir(path: Path = typer.Argument(..., exists=True, dir_okay=False), db: DbOption = None) -> None:
    """Load EQ-5D QuestionnaireResponses from a FHIR JSON file (a resource, a Bundle) or NDJSON."""
    import orjson

    from mercia.cdm import Store
    from mercia.proms.store import import_fhir_responses

    text = path.read_bytes()
    if path.suffix == ".ndjson":
        resources = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    else:
        document = orjson.loads(text)
        resources = [e.get("resource", {}) for e in document.get("entry", [])] \
            if document.get("resourceType") == "Bundle" else [document]
    with Store.open(db) as store:
        loaded, problems = import_fhir_responses(store, resources)
    for problem in problems:
        typer.echo(problem, err=True)
    typer.echo(f"{loaded} new responses; {len(problems)} resources not loaded")


@app.command()
def rescore(value_set_id: str = typer.Option(..., "--value-set"), db: DbOption = None) -> None:
    """Score every stored response again with a value set, into new rows (old scores are kept)."""
    from mercia.cdm import Store
    from mercia.proms.store import rescore as rescore_all

    with Store.open(db) as store:
        n, rejections = rescore_all(store, value_set_id)
    typer.echo(f"{n} scores added with {value_set_id}; {len(rejections)} answers could not be scored")
    for r in rejections[:20]:
        typer.echo(str(r), err=True)
