"""``mercia dq``: data-quality report on the console, as JSON, or as a standalone HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from mercia.cdm.cli import DbOption
from mercia.ingest.cli import ods_code

app = typer.Typer(help="Data quality of the loaded CDM.", no_args_is_help=True)


def render_html(report) -> str:
    """The report as a standalone HTML page (templates/report.html, autoescaped)."""
    from jinja2 import Environment, PackageLoader

    environment = Environment(loader=PackageLoader("mercia.quality"), autoescape=True)
    return environment.get_template("report.html").render(r=report.as_dict())


@app.command()
def report(db: DbOption = None,
           org: str = typer.Option(None, "--org", help="only this organisation's rows (ODS code)", callback=ods_code),
           html: Path = typer.Option(None, "--html", help="also write a standalone HTML report here"),
           as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Counts per domain and organisation, mapping rates, rejects by reason and DQD-style checks."""
    from rich.console import Console
    from rich.table import Table

    from mercia.cdm import Store
    from mercia.quality.report import build_report

    with Store.open(db) as store:
        result = build_report(store, org)
    if html:
        html.write_text(render_html(result))
    if as_json:
        import orjson
        typer.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    for title, rows, columns in [
            ("Rows per domain and organisation", result.counts, ["org", "cdm_table", "row_count"]),
            ("Vocabulary mapping", result.mapping, ["table", "rows", "mapped", "mapped_pct"]),
            ("Rejected and flagged records", result.rejects, ["org", "action", "field", "reason", "records"]),
            ("Changed since the previous load (latest load per organisation)", result.changes,
             ["org", "load_id", "extract", "records", "new", "changed", "unchanged", "removed", "superseded",
              "rejected", "withheld"])]:
        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for row in rows:
            table.add_row(*(str(row[c]) for c in columns))
        console.print(table)
    checks = Table(title="Checks (conformance, completeness, plausibility)")
    for c in ("check", "category", "violations", "rows", "%", "status"):
        checks.add_column(c)
    for c in result.checks:
        if c.rows:
            checks.add_row(c.name, c.category, str(c.violations), str(c.rows), f"{c.pct:.2f}",
                           "[green]pass[/]" if c.passed else "[red]FAIL[/]")
    console.print(checks)
    if html:
        console.print(f"HTML report written to {html}")
