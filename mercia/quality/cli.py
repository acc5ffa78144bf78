"""``mercia dq``: data-quality report on the console, as JSON, or as a standalone HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Data quality of the loaded CDM.", no_args_is_help=True)

_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Mercia data quality</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}.fail{background:#fdd}.pass{background:#dfd}</style>
</head><body><h1>Mercia data quality{% if r.org %} — {{ r.org }}{% endif %}</h1><p>Generated {{ r.generated }}</p>
<h2>Rows per domain and organisation</h2><table><tr><th>organisation</th><th>table</th><th>rows</th></tr>
{% for c in r.counts %}<tr><td>{{ c.org }}</td><td>{{ c.cdm_table }}</td><td>{{ c.row_count }}</td></tr>{% endfor %}</table>
<h2>Vocabulary mapping</h2><table><tr><th>table</th><th>rows</th><th>mapped</th><th>%</th></tr>
{% for m in r.mapping %}<tr><td>{{ m.table }}</td><td>{{ m.rows }}</td><td>{{ m.mapped }}</td><td>{{ m.mapped_pct }}</td></tr>{% endfor %}</table>
<h3>Most frequent unmapped source values</h3><table><tr><th>table</th><th>source value</th><th>rows</th></tr>
{% for u in r.unmapped %}<tr><td>{{ u.table }}</td><td>{{ u.source_value }}</td><td>{{ u.rows }}</td></tr>{% endfor %}</table>
<h2>Rejected and flagged records</h2><table><tr><th>organisation</th><th>action</th><th>field</th><th>reason</th><th>records</th></tr>
{% for x in r.rejects %}<tr><td>{{ x.org }}</td><td>{{ x.action }}</td><td>{{ x.field }}</td><td>{{ x.reason }}</td><td>{{ x.records }}</td></tr>{% endfor %}</table>
<h2>Checks</h2><table><tr><th>check</th><th>category</th><th>table</th><th>description</th><th>violations</th><th>rows</th><th>%</th><th>threshold %</th></tr>
{% for c in r.checks %}<tr class="{{ 'pass' if c.passed else 'fail' }}"><td>{{ c.name }}</td><td>{{ c.category }}</td><td>{{ c.table }}</td>
<td>{{ c.description }}</td><td>{{ c.violations }}</td><td>{{ c.rows }}</td><td>{{ c.pct }}</td><td>{{ c.threshold_pct }}</td></tr>{% endfor %}
</table></body></html>"""


def render_html(report) -> str:
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(_HTML).render(r=report.as_dict())


@app.command()
def report(db: str = typer.Option(None, "--db", help="DuckDB path or postgresql:// URL (default: configured)"),
           org: str = typer.Option(None, "--org", help="only this organisation's rows (ODS code)"),
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
            ("Rejected and flagged records", result.rejects, ["org", "action", "field", "reason", "records"])]:
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
