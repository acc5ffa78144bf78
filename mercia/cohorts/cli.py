"""``mercia cohort``: run Circe cohort definitions, show their SQL and their attrition."""

from __future__ import annotations

from pathlib import Path

import typer

from mercia.cdm.cli import DbOption

app = typer.Typer(help="ATLAS/Circe cohort definitions: run them, print their SQL and attrition.", no_args_is_help=True)


def _definitions(path: Path, cohort_id: int | None) -> list[tuple[int, Path]]:
    """(cohort id, file) pairs: one file, or every ``<id>.json`` of a directory."""
    if path.is_dir():
        if cohort_id is not None:
            raise typer.BadParameter("--cohort-id needs a single definition file, not a directory")
        files = sorted(path.glob("*.json"))
        if not files:
            raise typer.BadParameter(f"no *.json cohort definitions in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise typer.BadParameter(f"no such file or directory: {path}")
    pairs = []
    for f in files:
        if cohort_id is not None:
            pairs.append((cohort_id, f))
        elif f.stem.isdigit():
            pairs.append((int(f.stem), f))
        else:
            raise typer.BadParameter(f"{f.name}: cannot take a cohort id from the file name; use --cohort-id")
    return sorted(pairs)


def _claim(store, pairs: list[tuple[int, Path]]) -> None:
    """Register each id to the CLI before any rows are written; an id a project, trial or other
    maker holds is refused (``mercia.cohorts.registry``)."""
    from mercia.cohorts.registry import CLI, CohortIdTaken, claim_cohort_id

    try:
        with store.transaction():
            for cid, f in pairs:
                claim_cohort_id(store, cid, f.name, CLI, f.read_text())
    except CohortIdTaken as exc:
        typer.echo(f"{exc} (--cohort-id)", err=True)
        raise typer.Exit(2) from None


def _load(f: Path):
    from mercia.cohorts.model import CohortDefinitionError
    from mercia.cohorts.runner import load_expression

    try:
        return load_expression(f)
    except CohortDefinitionError as exc:
        typer.echo(f"{f}: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    path: Path = typer.Argument(..., help="A <id>.json definition or a directory of them"),
    db: DbOption = None,
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Write <id>.csv and summary.json here"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    cohort_id: int | None = typer.Option(None, "--cohort-id", help="Cohort id for a single file"),
    one_by_one: bool = typer.Option(
        False, "--one-by-one", help="Generate a directory's cohorts one at a time instead of as one batch"
    ),
) -> None:
    """Generate cohorts into the ``cohort`` table (replacing each id's earlier rows; an id held by a
    project's or a trial's cohort is refused).  A directory
    is generated as one batch (concept sets and domain-table scans shared); the rows are the same."""
    import orjson
    import pyarrow.csv as pa_csv
    from rich.console import Console
    from rich.table import Table

    from mercia.cdm import Store
    from mercia.cohorts.batch import run_batch
    from mercia.cohorts.runner import run_cohort

    pairs = _definitions(path, cohort_id)
    expressions = [(cid, _load(f)) for cid, f in pairs]
    summaries = []
    with Store.open(db) as store:
        _claim(store, pairs)
        if one_by_one or len(expressions) == 1:
            results = [run_cohort(store, expr, cid) for cid, expr in expressions]
        else:
            results = run_batch(store, expressions)
        for result in results:
            cid = result.cohort_id
            summaries.append(result.summary())
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                rows = store.query_arrow(
                    "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort "
                    "WHERE cohort_definition_id = ? ORDER BY subject_id, cohort_start_date, cohort_end_date",
                    [cid],
                )
                _write_rows_csv(rows, out_dir / f"{cid}.csv", pa_csv)
    if out_dir is not None:
        (out_dir / "summary.json").write_bytes(orjson.dumps(summaries, option=orjson.OPT_INDENT_2))
    if as_json:
        typer.echo(orjson.dumps(summaries).decode())
        return
    table = Table("cohort_id", "persons", "entries", "seconds")
    for s in summaries:
        table.add_row(str(s["cohort_id"]), str(s["persons"]), str(s["entries"]), f"{s['seconds']:.3f}")
    Console().print(table)


def _write_rows_csv(rows, target: Path, pa_csv) -> None:
    """The cohort rows as CSV with a plain header (Arrow would quote the header names)."""
    import io

    import pyarrow as pa

    header = b"subject_id,cohort_start_date,cohort_end_date\n"
    rows = rows.cast(
        pa.schema([("subject_id", pa.int64()), ("cohort_start_date", pa.date32()), ("cohort_end_date", pa.date32())])
    )
    body = io.BytesIO()
    if rows.num_rows:
        pa_csv.write_csv(rows, body, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    target.write_bytes(header + body.getvalue())


@app.command()
def sql(
    path: Path = typer.Argument(..., help="A cohort definition JSON file"),
    dialect: str = typer.Option("duckdb", "--dialect", help="duckdb, postgres or spark"),
    cohort_id: int | None = typer.Option(None, "--cohort-id", help="Cohort id (default: file name)"),
) -> None:
    """Print the SQL that generates the cohort, exactly as it runs."""
    from mercia.cohorts.compiler import DIALECTS, compile_cohort

    if dialect not in DIALECTS:
        raise typer.BadParameter(f"--dialect must be one of {', '.join(DIALECTS)}")
    if path.is_dir():
        raise typer.BadParameter("sql takes one definition file")
    [(cid, f)] = _definitions(path, cohort_id)
    for statement in compile_cohort(_load(f), cid, dialect):
        typer.echo(statement + ";")


@app.command()
def attrition(
    path: Path = typer.Argument(..., help="A cohort definition JSON file"),
    db: DbOption = None,
    cohort_id: int | None = typer.Option(None, "--cohort-id", help="Cohort id (default: file name)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Generate the cohort and print its attrition: each inclusion rule's own pass count, the
    events/persons remaining after it, and those lost to it alone."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from mercia.cdm import Store
    from mercia.cohorts.runner import run_cohort

    if path.is_dir():
        raise typer.BadParameter("attrition takes one definition file")
    [(cid, f)] = _definitions(path, cohort_id)
    expr = _load(f)
    with Store.open(db) as store:
        _claim(store, [(cid, f)])
        result = run_cohort(store, expr, cid)
    if as_json:
        typer.echo(orjson.dumps(result.summary()).decode())
        return
    table = Table(
        "mode",
        "rule",
        "name",
        "passing",
        "remaining",
        "lost only here",
        "total",
        title=f"cohort {cid}: {result.persons} persons, {result.entries} entries",
    )
    for mode, label in ((0, "events"), (1, "persons")):
        table.add_row(label, "-", "qualifying", str(result.base_count.get(mode, 0)), "", "", "")
        for row in (a for a in result.attrition if a.mode_id == mode):
            table.add_row(
                label,
                str(row.rule_sequence),
                row.name,
                str(row.person_count),
                str(row.remaining),
                str(row.gain_count),
                str(row.person_total),
            )
        table.add_row(label, "-", "final", str(result.final_count.get(mode, 0)), "", "", "")
    Console().print(table)
