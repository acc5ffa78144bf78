"""``mercia analyse``: characterise, compare, incidence and survival on cohorts in the cohort table.

Every command prints (or writes) the disclosure-controlled result only; ``--policy`` picks another
configured policy, never none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mercia.cdm.cli import DbOption, fail, open_store

app = typer.Typer(help="Cohort analytics with disclosure control: characterise, compare, incidence, survival.",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print the disclosure-controlled result as JSON")]
HtmlOption = Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report here")]
ChartsOption = Annotated[Path | None, typer.Option("--charts", help="write PNG and SVG charts to this folder")]
PolicyOption = Annotated[str | None, typer.Option("--policy", help="opensafely, nhse-hes or threshold10 "
                                                                   "(default: the configured policy)")]
WindowOption = Annotated[list[str] | None, typer.Option(
    "--window", help="feature window START:END in days relative to index, repeatable (default -365:0)")]
DomainOption = Annotated[list[str] | None, typer.Option(
    "--domain", help="condition, drug, procedure, measurement, observation, device, visit; repeatable")]
ROWS_SHOWN = 15


def _run(db: str | None, policy: str | None, analysis: Callable[..., Any], json_out: bool,
         html_out: Path | None, charts_out: Path | None) -> None:
    from mercia.analytics.base import AnalyticsError
    from mercia.privacy.disclosure import DisclosureError, get_policy

    try:
        chosen = get_policy(policy)
        with open_store(db) as store:
            result = analysis(store, chosen)
    except (AnalyticsError, DisclosureError) as exc:
        fail(str(exc))
    if html_out is not None:
        from mercia.analytics.report import write_html

        typer.echo(f"wrote {write_html(result, html_out)}", err=True)
    if charts_out is not None:
        from mercia.analytics.report import write_charts

        for path in write_charts(result, charts_out):
            typer.echo(f"wrote {path}", err=True)
    if json_out:
        import orjson

        typer.echo(orjson.dumps(result.to_json_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print(result)


def _print(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{result.title}[/] — disclosure policy [bold]{result.disclosure.policy}[/]")
    for table in result.tables:
        shown = Table(title=table.title, title_justify="left")
        for col in table.columns:
            shown.add_column(col.label or col.name, justify="left" if col.kind == "label" else "right")
        rows = table.display_rows()
        for row in rows[:ROWS_SHOWN]:
            shown.add_row(*(row[c.name] for c in table.columns))
        if len(rows) > ROWS_SHOWN:
            shown.caption = f"{len(rows) - ROWS_SHOWN:,} more rows in --json / --html"
        console.print(shown)


@app.command()
def characterise(cohort_id: Annotated[int, typer.Option("--cohort-id", help="cohort_definition_id")],
                 db: DbOption = None, json: JsonOption = False, html: HtmlOption = None,
                 charts: ChartsOption = None, policy: PolicyOption = None, window: WindowOption = None,
                 domain: DomainOption = None) -> None:
    """Who is in a cohort at index: demographics, IMD, features, labs, comorbidity."""
    from mercia.analytics.characterise import DEFAULT_DOMAINS
    from mercia.analytics.characterise import characterise as run

    _run(db, policy, lambda store, p: run(store, cohort_id, window or ["-365:0"], domain or DEFAULT_DOMAINS,
                                          policy=p), json, html, charts)


@app.command()
def compare(target: Annotated[int, typer.Option("--target", help="target cohort id")],
            comparator: Annotated[int, typer.Option("--comparator", help="comparator cohort id")],
            db: DbOption = None, json: JsonOption = False, html: HtmlOption = None, charts: ChartsOption = None,
            policy: PolicyOption = None, window: WindowOption = None, domain: DomainOption = None) -> None:
    """Standardised mean differences of every covariate between two cohorts."""
    from mercia.analytics.characterise import DEFAULT_DOMAINS
    from mercia.analytics.compare import compare as run

    _run(db, policy, lambda store, p: run(store, target, comparator, window or ["-365:0"],
                                          domain or DEFAULT_DOMAINS, policy=p), json, html, charts)


@app.command()
def incidence(target: Annotated[int, typer.Option("--target", help="target cohort id")],
              outcome: Annotated[int, typer.Option("--outcome", help="outcome cohort id")],
              tar: Annotated[list[str] | None, typer.Option(
                  "--tar", help="time at risk START:END, e.g. 0:365, 0:end, 1:end+30; repeatable")] = None,
              db: DbOption = None, json: JsonOption = False, html: HtmlOption = None,
              charts: ChartsOption = None, policy: PolicyOption = None) -> None:
    """Incidence per 1,000 person-years (exact Poisson CIs) by stratum, and prevalence."""
    from mercia.analytics.incidence import DEFAULT_TARS
    from mercia.analytics.incidence import incidence as run

    _run(db, policy, lambda store, p: run(store, target, outcome, tar or DEFAULT_TARS, policy=p),
         json, html, charts)


@app.command()
def survival(target: Annotated[int, typer.Option("--target", help="target cohort id")],
             outcome: Annotated[str, typer.Option("--outcome", help="outcome cohort id, or 'death'")],
             comparator: Annotated[int | None, typer.Option("--comparator", help="comparator cohort id "
                                                                                  "(adds a Cox hazard ratio)")] = None,
             max_days: Annotated[int | None, typer.Option("--max-days", help="censor follow-up here")] = None,
             db: DbOption = None, json: JsonOption = False, html: HtmlOption = None,
             charts: ChartsOption = None, policy: PolicyOption = None) -> None:
    """Kaplan-Meier curves with numbers at risk; Cox hazard ratio against a comparator."""
    from mercia.analytics.survival import survival as run

    _run(db, policy, lambda store, p: run(store, target, outcome, comparator, max_days, policy=p),
         json, html, charts)
