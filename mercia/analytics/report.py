"""Charts (matplotlib, Agg) and a self-contained HTML report of disclosure-controlled results.

Everything here starts with ``require_controlled``: a chart is drawn from published numbers only, so
a plot cannot show what the tables redact.  The HTML has its CSS and SVG charts inline and loads
nothing from anywhere.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

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
    risk_ax.set_xlabel("Years since index (numbers at risk, midpoint-rounded)")
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
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2733;background:#f5f7fa}
header{background:#1b3a5c;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:14px 18px;margin:16px 0}
h2{font-size:16px;margin:0 0 10px;color:#1b3a5c}
.policy{border-left:4px solid #d1495b;background:#fff6f6}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
.chart svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #e8ecf1;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.redacted{color:#b0263b;text-align:right}
tr.total td{font-weight:600;border-top:2px solid #c9d2dc}
.note{font-size:12px;color:#5a6776;margin:6px 0 0}
details summary{cursor:pointer;color:#1b6ca8;font-size:12.5px;margin-top:6px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px;margin:0}
dt{font-weight:600}
"""


def _table_html(table: StatTable, limit: int | None = TABLE_ROW_LIMIT) -> str:
    display = table.display_rows()
    hidden = set(table.redacted)
    numeric = {c.name for c in table.columns if c.kind != Kind.LABEL}
    head = "".join(f"<th>{html.escape(c.label or c.name)}</th>" for c in table.columns)

    def body(indices: list[int]) -> str:
        out = []
        for i in indices:
            cells = []
            for c in table.columns:
                cls = "redacted" if (i, c.name) in hidden else ("num" if c.name in numeric else "")
                cells.append(f'<td class="{cls}">{html.escape(display[i][c.name])}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        return "".join(out)

    totals = ""
    for total in table.totals if len(table.totals) <= 12 else []:
        cells = []
        for c in table.columns:
            value = total.get(c.name)
            if isinstance(value, int) and c.kind == Kind.COUNT:
                cells.append(f'<td class="num">{value:,}</td>')
            elif value is not None:
                cells.append(f"<td>{html.escape(str(value))}</td>")
            elif c.kind == Kind.LABEL and "Total" not in "".join(cells):
                cells.append("<td>Total (published cells)</td>")
            else:
                cells.append("<td></td>")
        totals += f'<tr class="total">{"".join(cells)}</tr>'
    rows = list(range(len(display)))
    shown = rows if limit is None or len(rows) <= limit else rows[:limit]
    html_table = f"<table><thead><tr>{head}</tr></thead><tbody>{body(shown)}{totals}</tbody></table>"
    if len(shown) < len(rows):
        rest = rows[len(shown):]
        html_table += (f"<details><summary>Show all {len(rows):,} rows</summary>"
                       f"<table><thead><tr>{head}</tr></thead><tbody>{body(rest)}</tbody></table></details>")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    return html_table + notes


def _features_html(table: StatTable) -> str:
    """The features table split by domain, window and level, each led by its most prevalent rows."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(table.rows):
        groups.setdefault((row["domain"], row["time_window"], row["level"]), []).append(i)
    parts = []
    for (domain, window, level), indices in groups.items():
        members = set(indices)
        dropped = ("domain", "time_window", "level")
        sub = table.model_copy(update={
            "rows": [{k: v for k, v in table.rows[i].items() if k not in dropped} for i in indices],
            "redacted": [(indices.index(i), c) for i, c in table.redacted if i in members],
            "columns": [c for c in table.columns if c.name not in dropped], "notes": []})
        parts.append(f"<h3 style='font-size:14px;margin:14px 0 6px'>{html.escape(domain.title())} — "
                     f"{html.escape(level)}s, {html.escape(window)} ({len(indices):,})</h3>"
                     + _table_html(sub, limit=10))
    return "".join(parts) + "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)


def render_html(result: AnalysisResult) -> str:
    """A self-contained HTML page: policy statement, parameters, charts and every table."""
    require_controlled(result)
    stamp = result.disclosure
    params = "".join(f"<dt>{html.escape(str(k))}</dt><dd style='margin:0'>{html.escape(_param(v))}</dd>"
                     for k, v in result.parameters.items())
    figures = "".join(
        f'<div class="chart">{_inline_svg(fig, f"c{n}")}</div>' for n, fig in enumerate(charts(result).values()))
    sections = []
    for table in result.tables:
        body = _features_html(table) if table.name == "features" else _table_html(table)
        sections.append(f'<section id="{html.escape(table.name)}"><h2>{html.escape(table.title)}</h2>{body}</section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(result.title)}</title><style>{_CSS}</style></head>
<body><header><h1>{html.escape(result.title)}</h1>
<p>Mercia {html.escape(result.analysis)} report · disclosure policy <b>{html.escape(stamp.policy)}</b> ·
generated {html.escape(stamp.applied_at)}</p></header>
<main>
<section class="policy"><h2>Disclosure control: {html.escape(stamp.policy)}</h2>
<p style="margin:0;font-size:13px">{html.escape(stamp.description)}. Redacted values are shown as
<b>{html.escape(stamp.redacted_marker)}</b>; totals are sums of the published cells.</p></section>
<section><h2>Parameters</h2><dl>{params}</dl></section>
{f'<section><h2>Charts</h2><div class="charts">{figures}</div></section>' if figures else ''}
{''.join(sections)}
</main></body></html>
"""


def _param(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "—" if value is None else str(value)


def write_html(result: AnalysisResult, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
