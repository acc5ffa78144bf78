"""Charts (matplotlib, Agg) and a self-contained HTML report of disclosure-controlled results.

Everything here starts with ``require_controlled``: a chart is drawn from published numbers only, so
a plot cannot show what the tables redact.  The HTML has its CSS and SVG charts inline and loads
nothing from anywhere.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mercia.privacy.disclosure import AnalysisResult, Kind, StatTable, require_controlled  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "mercia", "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False})
COLOURS = ["#1b6ca8", "#d1495b", "#66a182", "#edae49", "#8e6c8a", "#00798c"]
TABLE_ROW_LIMIT = 25


# -- charts ------------------------------------------------------------------------------------
def age_sex_pyramid(table: StatTable) -> plt.Figure | None:
    bands = list(dict.fromkeys(r["age_band"] for r in table.rows))
    sexes = [s for s in ("Male", "Female") if any(r["sex"] == s for r in table.rows)]
    if not bands or not sexes:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(bands) + 1.4))
    redacted = 0
    for side, sex in zip((-1, 1), sexes):
        values = {r["age_band"]: r["count_persons"] for r in table.rows if r["sex"] == sex}
        redacted += sum(1 for b in bands if b in values and values[b] is None)
        ax.barh(bands, [side * (values.get(b) or 0) for b in bands], color=COLOURS[0 if side < 0 else 1],
                label=sex)
    limit = max(abs(v) for r in table.rows if (v := r["count_persons"]) is not None) if any(
        r["count_persons"] for r in table.rows) else 1
    ax.set_xlim(-limit * 1.1, limit * 1.1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{abs(int(x)):,}"))
    ax.axvline(0, color="#333", linewidth=0.6)
    ax.set_xlabel("Persons" + (f"  ({redacted} cells redacted)" if redacted else ""))
    ax.set_title("Age and sex at index")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def top_covariates(table: StatTable, n: int = 20) -> plt.Figure | None:
    rows = [r for r in table.rows if r["level"] == "concept" and r["percent"] is not None]
    first_window = rows[0]["time_window"] if rows else None
    rows = sorted((r for r in rows if r["time_window"] == first_window), key=lambda r: -r["percent"])[:n]
    if not rows:
        return None
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(rows) + 1.2))
    names = [_short(r["concept_name"], 48) for r in rows][::-1]
    ax.barh(names, [r["percent"] for r in rows][::-1],
            color=[COLOURS[domains.index(r["domain"]) % len(COLOURS)] for r in rows][::-1])
    for d, domain in enumerate(domains):
        ax.barh([names[-1]], [0], color=COLOURS[d % len(COLOURS)], label=domain)
    ax.set_xlabel(f"% of cohort ({first_window})")
    ax.set_xlim(0, 100)
    ax.set_title(f"Top {len(rows)} covariates")
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


def km_curves(tables: list[StatTable]) -> plt.Figure | None:
    tables = [t for t in tables if t.rows]
    if not tables:
        return None
    fig, (ax, risk_ax) = plt.subplots(2, 1, figsize=(7.5, 4.8), gridspec_kw={"height_ratios": [5, 1]},
                                      sharex=True)
    horizon = max(t.rows[-1]["time"] for t in tables)
    ticks = _year_ticks(horizon)
    for k, table in enumerate(tables):
        colour = COLOURS[k % len(COLOURS)]
        times = [0] + [r["time"] for r in table.rows]
        surv = [1.0] + [r["survival"] for r in table.rows]
        lower = [1.0] + [r["survival_lower"] for r in table.rows]
        upper = [1.0] + [r["survival_upper"] for r in table.rows]
        ax.step(times, surv, where="post", color=colour, label=table.title)
        ax.fill_between(times, lower, upper, step="post", color=colour, alpha=0.18, linewidth=0)
        at_risk = table.find("count_at_risk")
        numbers = [_at_risk(table, at_risk, t) for t in ticks]
        for t, number in zip(ticks, numbers):
            risk_ax.text(t, k, "–" if number is None else f"{number:,}", ha="center", va="center",
                         color=colour, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Survival probability")
    ax.set_title("Kaplan–Meier estimate with 95% confidence band")
    ax.legend(loc="lower left", frameon=False)
    risk_ax.set_ylim(len(tables) - 0.5, -0.5)
    risk_ax.set_yticks(range(len(tables)), [t.name.removeprefix("km_") for t in tables])
    risk_ax.set_xticks(ticks, [f"{t / 365.25:.0f}" for t in ticks])
    risk_ax.set_xlabel("Years since index (numbers at risk, disclosure-controlled)")
    risk_ax.spines["left"].set_visible(False)
    risk_ax.tick_params(left=False)
    fig.tight_layout()
    return fig


def incidence_by_stratum(table: StatTable) -> plt.Figure | None:
    tars = list(dict.fromkeys(r["time_at_risk"] for r in table.rows))
    rows = [r for r in table.rows if r["time_at_risk"] == (tars[0] if tars else None)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(rows) + 1.4))
    labels = [f"{r['stratum_type']}: {r['stratum']}" for r in rows][::-1]
    for y, row in enumerate(rows[::-1]):
        if row["rate_per_1000py"] is None:
            ax.text(0, y, " redacted", va="center", fontsize=8, color="#777")
            continue
        colour = COLOURS[list(dict.fromkeys(r["stratum_type"] for r in rows)).index(row["stratum_type"]) % 6]
        ax.errorbar(row["rate_per_1000py"], y, xerr=[[row["rate_per_1000py"] - row["rate_lower"]],
                                                     [row["rate_upper"] - row["rate_per_1000py"]]],
                    fmt="o", color=colour, capsize=3, markersize=4)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Incidence per 1,000 person-years (exact Poisson 95% CI)")
    ax.set_title(f"Incidence by stratum — {tars[0]}")
    ax.set_xlim(left=0)
    fig.tight_layout()
    return fig


def smd_plot(table: StatTable, n: int = 30) -> plt.Figure | None:
    rows = [r for r in table.rows if r["smd"] is not None and " ancestor " not in r["covariate_type"]][:n]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.26 * len(rows) + 1.4))
    labels = [_short(r["covariate"], 55) for r in rows][::-1]
    values = [r["smd"] for r in rows][::-1]
    ax.scatter(values, range(len(rows)), color=[COLOURS[1] if abs(v) > 0.1 else COLOURS[0] for v in values], s=14)
    for x in (-0.1, 0.1):
        ax.axvline(x, color="#999", linestyle="--", linewidth=0.8)
    ax.axvline(0, color="#333", linewidth=0.6)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Standardised mean difference (target − comparator)")
    ax.set_title(f"Largest {len(rows)} standardised differences")
    fig.tight_layout()
    return fig


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _year_ticks(horizon: int) -> list[int]:
    years = max(1, int(horizon / 365.25))
    step = max(1, round(years / 8))
    return [int(y * 365.25) for y in range(0, years + 1, step)]


def _at_risk(table: StatTable, column: str, day: int) -> int | None:
    """People at risk at ``day``: the first published row at or after it (None past the end)."""
    for row in table.rows:
        if row["time"] >= day:
            return row[column]
    return None


def charts(result: AnalysisResult) -> dict[str, plt.Figure]:
    """Every chart this result supports, by name, drawn from its controlled tables."""
    require_controlled(result)
    names = {t.name for t in result.tables}
    makers: dict[str, Callable[[], plt.Figure | None]] = {}
    if "age_sex" in names:
        makers["age_sex_pyramid"] = lambda: age_sex_pyramid(result.table("age_sex"))
    if "features" in names:
        makers["top_covariates"] = lambda: top_covariates(result.table("features"))
    if "smd_binary" in names:
        makers["smd"] = lambda: smd_plot(result.table("smd_binary"))
    if "incidence" in names:
        makers["incidence_by_stratum"] = lambda: incidence_by_stratum(result.table("incidence"))
    km = [t for t in result.tables if t.kind == "life_table"]
    if km:
        makers["kaplan_meier"] = lambda: km_curves(km)
    drawn = {name: make() for name, make in makers.items()}
    return {name: fig for name, fig in drawn.items() if fig is not None}


def write_charts(result: AnalysisResult, directory: Path | str, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in charts(result).items():
        for fmt in formats:
            path = directory / f"{result.analysis}_{name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=150)
            written.append(path)
        plt.close(fig)
    return written


def _inline_svg(fig: plt.Figure, prefix: str) -> str:
    """The figure as inline SVG whose ids cannot clash with another chart on the same page."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r'(url\(#|href="#)([^)"]+)', lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    return svg


# -- HTML --------------------------------------------------------------------------------------
@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("mercia.analytics"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def _table_view(table: StatTable, limit: int | None = TABLE_ROW_LIMIT) -> dict[str, Any]:
    """A table as the template shows it: header labels, (css class, text) cells for the first
    ``limit`` rows and the rest, the totals row(s) and the notes."""
    display = table.display_rows()
    hidden = set(table.redacted)
    numeric = {c.name for c in table.columns if c.kind != Kind.LABEL}
    cells = [[("redacted" if (i, c.name) in hidden else ("num" if c.name in numeric else ""), display[i][c.name])
              for c in table.columns] for i in range(len(display))]
    totals = []
    for total in table.totals if len(table.totals) <= 12 else []:
        row: list[tuple[str, str]] = []
        for c in table.columns:
            value = total.get(c.name)
            if isinstance(value, int) and c.kind == Kind.COUNT:
                row.append(("num", f"{value:,}"))
            elif value is not None:
                row.append(("", str(value)))
            elif c.kind == Kind.LABEL and not any("Total" in text for _, text in row):
                row.append(("", "Total (published cells)"))
            else:
                row.append(("", ""))
        totals.append(row)
    shown = len(cells) if limit is None else limit
    return {"head": [c.label or c.name for c in table.columns], "rows": cells[:shown], "rest": cells[shown:],
            "totals": totals, "notes": table.notes}


def _feature_groups(table: StatTable) -> list[dict[str, Any]]:
    """The features table split by domain, window and level, each led by its most prevalent rows."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(table.rows):
        groups.setdefault((row["domain"], row["time_window"], row["level"]), []).append(i)
    out = []
    dropped = ("domain", "time_window", "level")
    for (domain, window, level), indices in groups.items():
        members = set(indices)
        sub = table.model_copy(update={
            "rows": [{k: v for k, v in table.rows[i].items() if k not in dropped} for i in indices],
            "redacted": [(indices.index(i), c) for i, c in table.redacted if i in members],
            "columns": [c for c in table.columns if c.name not in dropped], "notes": []})
        out.append({"heading": f"{domain.title()} — {level}s, {window} ({len(indices):,})",
                    "view": _table_view(sub, limit=10)})
    return out


def render_html(result: AnalysisResult) -> str:
    """A self-contained HTML page (templates/report.html): policy statement, parameters, charts and every table."""
    require_controlled(result)
    sections = [{"name": t.name, "title": t.title,
                 "groups": _feature_groups(t) if t.name == "features" else [{"heading": None, "view": _table_view(t)}],
                 "notes": t.notes if t.name == "features" else []}
                for t in result.tables]
    figures = [Markup(_inline_svg(fig, f"c{n}")) for n, fig in enumerate(charts(result).values())]
    return _templates().get_template("report.html").render(
        result=result, stamp=result.disclosure, parameters=[(k, _param(v)) for k, v in result.parameters.items()],
        figures=figures, sections=sections) + "\n"


def _param(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "—" if value is None else str(value)


def write_html(result: AnalysisResult, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
