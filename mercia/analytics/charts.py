"""Mercia's one chart stack: every chart is a matplotlib figure built here, from disclosure-controlled
tables only, then either inlined in a page (web app, HTML report) or written as PNG and SVG files.

Each builder starts with ``require_controlled`` and draws published cells only: a redacted cell is
never a bar, point or line; it is named (with the policy's marker) on the chart and counted in the
axis label.  Figures are made with ``matplotlib.figure.Figure``, not pyplot, so no global figure
registry holds them (nothing to close, safe in the server's threads).  SVG is deterministic (no
date, salted ids) and inline SVG carries no CSS, so it passes the web app's ``style-src 'self'``.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from lxml import etree
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mercia.privacy.disclosure import AnalysisResult, StatTable, require_controlled

TEXT = "#212b32"
MUTED = "#4c6272"
GRID = "#d8dde0"
PALETTE = ["#005eb8", "#d5281b", "#007f3b", "#7c2855", "#330072", "#00a499", "#ffb81c", "#4c6272"]
FINAL = "#007f3b"  # the last attrition step: the cohort itself
DAYS_PER_YEAR = 365.25
matplotlib.rcParams.update({
    "svg.fonttype": "none", "svg.hashsalt": "mercia", "font.size": 9, "font.family": "sans-serif",
    "text.color": TEXT, "axes.labelcolor": TEXT, "xtick.color": TEXT, "ytick.color": TEXT,
    "axes.edgecolor": "#aeb7bd", "axes.spines.top": False, "axes.spines.right": False})
SVG_METADATA = {"Date": None}  # no timestamp: the same numbers give the same bytes
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
THOUSANDS = FuncFormatter(lambda value, _: f"{abs(value):,.0f}")


@dataclass(frozen=True)
class Chart:
    """A drawn chart: ``name`` is its file stem and id prefix; ``title`` and ``description`` say
    what it shows (the inline SVG's <title> and <desc>, the page's heading)."""

    name: str
    title: str
    description: str
    figure: Figure

    def __post_init__(self) -> None:
        """Lay the figure out once and keep it: a layout engine left on moves things by a hair on
        every draw, and the same chart must give the same bytes however often it is rendered."""
        self.figure.draw_without_rendering()
        self.figure.set_layout_engine("none")


# -- builders ------------------------------------------------------------------------------------
def attrition(table: StatTable) -> Chart | None:
    """People remaining at each step of a cohort, one bar per step (``bar-<i>``), the cohort last."""
    require_controlled(table)
    if not table.rows:
        return None
    column = table.find("count_persons")
    counts = _published(table, column)
    top = max([n for n in counts if n] or [1])
    fig = Figure(figsize=(7.5, 0.45 * len(counts) + 0.9), layout="constrained")
    ax = fig.subplots()
    for i, n in enumerate(counts):
        if n is None:
            ax.text(0, i, f" {table.redacted_marker}", va="center", color=MUTED)
            continue
        bar = ax.barh(i, n, height=0.7, color=FINAL if i == len(counts) - 1 else PALETTE[0])[0]
        bar.set_gid(f"bar-{i}")
        ax.text(n + top * 0.01, i, f"{n:,}", va="center", fontweight="bold")
    ax.set_yticks(range(len(counts)), [_short(r["step"], 42) for r in table.rows])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.set_xlabel("People" + _redacted_note(counts))
    return Chart("attrition", "Cohort attrition", "People remaining at each step of the cohort definition, "
                 "from everyone with a qualifying entry event to the people in the cohort.", fig)


def age_sex_pyramid(table: StatTable) -> Chart | None:
    """Men to the left, women to the right, one row per age band (bars ``bar-<sex>-<band>``)."""
    require_controlled(table)
    bands = list(dict.fromkeys(r["age_band"] for r in table.rows))
    sexes = [s for s in ("Male", "Female") if any(r["sex"] == s for r in table.rows)]
    if not bands or not sexes:
        return None
    counts = _published(table, table.find("count_persons"))
    top = max([n for n in counts if n] or [1])
    fig = Figure(figsize=(7.0, 0.32 * len(bands) + 1.2), layout="constrained")
    ax = fig.subplots()
    for side, sex, colour in ((-1, "Male", PALETTE[0]), (1, "Female", PALETTE[5])):
        if sex not in sexes:
            continue
        for row, n in zip(table.rows, counts):
            if row["sex"] != sex:
                continue
            y = bands.index(row["age_band"])
            if n is None:
                ax.text(side * top * 0.02, y, table.redacted_marker, va="center", color=MUTED,
                        ha="left" if side > 0 else "right")
                continue
            ax.barh(y, side * n, height=0.8, color=colour)[0].set_gid(f"bar-{sex.lower()}-{y}")
        ax.text(side * top * 1.05, len(bands) - 0.4, sex, ha="right" if side < 0 else "left", fontweight="bold")
    ax.set_yticks(range(len(bands)), bands)
    ax.set_xlim(-top * 1.15, top * 1.15)
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.axvline(0, color=TEXT, linewidth=0.6)
    ax.set_xlabel("People" + _redacted_note(counts))
    return Chart("age_sex_pyramid", "Age and sex at index",
                 "People in each age band at index, men to the left and women to the right.", fig)


def top_covariates(table: StatTable, n: int = 20) -> Chart | None:
    """The most prevalent concepts in the first time window, coloured by domain."""
    require_controlled(table)
    rows = [r for r in table.rows if r["level"] == "concept"]
    window = rows[0]["time_window"] if rows else None
    rows = [r for r in rows if r["time_window"] == window]
    shown = sorted((r for r in rows if r["percent"] is not None), key=lambda r: -r["percent"])[:n]
    if not shown:
        return None
    domains = list(dict.fromkeys(r["domain"] for r in shown))
    fig = Figure(figsize=(7.5, 0.28 * len(shown) + 1.2), layout="constrained")
    ax = fig.subplots()
    for d, domain in enumerate(domains):
        rows_of = [i for i, r in enumerate(shown) if r["domain"] == domain]
        bars = ax.barh(rows_of, [shown[i]["percent"] for i in rows_of], color=PALETTE[d % len(PALETTE)], label=domain)
        for i, bar in zip(rows_of, bars):
            bar.set_gid(f"bar-{i}")
    ax.set_yticks(range(len(shown)), [_short(r["concept_name"], 48) for r in shown])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"% of cohort ({window})" + _redacted_note([r["percent"] for r in rows]))
    ax.legend(loc="lower right", frameon=False)
    return Chart("top_covariates", f"Top {len(shown)} covariates",
                 f"The {len(shown)} most common concepts in the cohort ({window}), as a percentage of people.", fig)


def smd_plot(table: StatTable, n: int = 30) -> Chart | None:
    """The largest standardised mean differences, beyond ±0.1 in red."""
    require_controlled(table)
    rows = [r for r in table.rows if " ancestor " not in r["covariate_type"]]
    shown = [r for r in rows if r["smd"] is not None][:n]
    if not shown:
        return None
    fig = Figure(figsize=(7.5, 0.26 * len(shown) + 1.4), layout="constrained")
    ax = fig.subplots()
    values = [r["smd"] for r in shown]
    ax.scatter(values, range(len(shown)), s=14, color=[PALETTE[1] if abs(v) > 0.1 else PALETTE[0] for v in values],
               gid="smd-points")
    for x in (-0.1, 0.1):
        ax.axvline(x, color=MUTED, linestyle="--", linewidth=0.8)
    ax.axvline(0, color=TEXT, linewidth=0.6)
    ax.set_yticks(range(len(shown)), [_short(r["covariate"], 55) for r in shown])
    ax.invert_yaxis()
    ax.set_xlabel("Standardised mean difference (target − comparator)"
                  + _redacted_note([r["smd"] for r in rows[:n]]))
    return Chart("smd", f"Largest {len(shown)} standardised differences",
                 "Standardised mean difference between target and comparator for each covariate; "
                 "dashed lines at ±0.1.", fig)


def incidence_by_stratum(table: StatTable) -> Chart | None:
    """Rate per 1,000 person-years with its exact 95% interval, overall, by sex and by age band
    (points ``rate-<i>``); a row with any redacted cell is named, not drawn."""
    require_controlled(table)
    hidden = {i for i, _ in table.redacted}
    rows = [(i, r) for i, r in enumerate(table.rows) if r.get("stratum_type") in ("Overall", "Sex", "Age band")]
    if not rows:
        return None
    fig = Figure(figsize=(7.5, 0.3 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    kinds = list(dict.fromkeys(r["stratum_type"] for _, r in rows))
    redacted = 0
    for y, (i, row) in enumerate(rows):
        rate, low, high = row.get("rate_per_1000py"), row.get("rate_lower"), row.get("rate_upper")
        if i in hidden or rate is None:
            redacted += 1
            ax.text(0, y, f" {table.redacted_marker}", va="center", color=MUTED)
            continue
        error = [[rate - low], [high - rate]] if low is not None and high is not None else None
        drawn = ax.errorbar(rate, y, xerr=error, fmt="o", markersize=5, capsize=3,
                            color=PALETTE[kinds.index(row["stratum_type"]) % len(PALETTE)])
        drawn.lines[0].set_gid(f"rate-{i}")
    labels = [f"{r['time_at_risk']} · {'all' if r['stratum_type'] == 'Overall' else r['stratum']}" for _, r in rows]
    ax.set_yticks(range(len(rows)), [_short(label, 40) for label in labels])
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("Incidence per 1,000 person-years (exact Poisson 95% CI)"
                  + (f" ({redacted} redacted)" if redacted else ""))
    return Chart("incidence_by_stratum", "Incidence rates",
                 "Rate per 1,000 person-years with its 95% confidence interval for each time at risk, "
                 "overall, by sex and by age band.", fig)


def km_curves(tables: list[StatTable]) -> Chart | None:
    """Kaplan–Meier step curves (``km-<k>``) with their confidence bands, in years from index, and
    the numbers at risk under the axis, all read from the controlled life tables."""
    for table in tables:
        require_controlled(table)
    tables = [t for t in tables if t.rows]
    if not tables:
        return None
    years = max(1, math.ceil(max(float(r["time"]) for t in tables for r in t.rows) / DAYS_PER_YEAR))
    ticks = [y * DAYS_PER_YEAR for y in range(0, years + 1, max(1, math.ceil(years / 8)))]
    fig = Figure(figsize=(7.5, 4.2 + 0.25 * len(tables)), layout="constrained")
    ax, risk_ax = fig.subplots(2, 1, height_ratios=[5, 0.6 + 0.4 * len(tables)])
    for k, table in enumerate(tables):
        colour = PALETTE[k % len(PALETTE)]
        rows = sorted((r for r in table.rows if r.get("survival") is not None), key=lambda r: float(r["time"]))
        times = [0.0] + [float(r["time"]) for r in rows] + [years * DAYS_PER_YEAR]
        surv = [1.0] + [float(r["survival"]) for r in rows]
        ax.step(times, surv + surv[-1:], where="post", color=colour, linewidth=2, label=table.title)[0] \
            .set_gid(f"km-{k}")
        band = [r for r in rows if r.get("survival_lower") is not None and r.get("survival_upper") is not None]
        if band:
            ax.fill_between([float(r["time"]) for r in band], [float(r["survival_lower"]) for r in band],
                            [float(r["survival_upper"]) for r in band], step="post", color=colour, alpha=0.15,
                            linewidth=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, years * DAYS_PER_YEAR)
    ax.set_ylabel("Probability free of the outcome")
    ax.grid(axis="y", color=GRID, linewidth=0.6)
    ax.legend(loc="lower left", frameon=False)
    ax.set_xticks(ticks, [f"{t / DAYS_PER_YEAR:.0f}" for t in ticks])
    ax.set_xlabel("Years from index")
    risk_ax.axis("off")
    risk_ax.set_xlim(ax.get_xlim())
    risk_ax.set_ylim(len(tables) - 0.5, -1.2)
    risk_ax.text(0, -1, "Number at risk", fontweight="bold", ha="left", va="center",
                 transform=risk_ax.get_yaxis_transform())
    for k, table in enumerate(tables):
        colour = PALETTE[k % len(PALETTE)]
        risk_ax.text(-0.04, k, table.name.removeprefix("km_"), ha="right", va="center", color=colour,
                     transform=risk_ax.get_yaxis_transform())
        for t, number in zip(ticks, numbers_at_risk(table, ticks)):
            risk_ax.text(t, k, number, ha="center", va="center")
    return Chart("kaplan_meier", "Kaplan–Meier survival",
                 "Probability of remaining free of the outcome over years from index, with 95% confidence "
                 "bands, and the numbers at risk under the axis.", fig)


def numbers_at_risk(table: StatTable, times: list[float]) -> list[str]:
    """People at risk at each time: the published at-risk count of the first row at or after it
    ("0" once nobody is followed that long); a redacted cell is the marker, never guessed."""
    column = table.find("count_at_risk")
    hidden = {i for i, c in table.redacted if c == column}
    rows = sorted(enumerate(table.rows), key=lambda item: float(item[1]["time"]))
    out = []
    for t in times:
        found = next(((i, r) for i, r in rows if float(r["time"]) >= t), None)
        if found is None:
            out.append("0")
            continue
        i, row = found
        out.append(table.redacted_marker if i in hidden else "" if row.get(column) is None else f"{row[column]:,}")
    return out


def feasibility(table: StatTable) -> Chart | None:
    """People newly eligible per year, one line per site (``site-<n>``); redacted months are left
    out of the yearly sums and counted in the axis label."""
    require_controlled(table)
    counts = _published(table, table.find("count_new"))
    by_site: dict[str, dict[str, int]] = {}
    for row, n in zip(table.rows, counts):
        year = row["month"][:4]
        per_year = by_site.setdefault(row["site"], {})
        per_year[year] = per_year.get(year, 0) + (n or 0)
    years = sorted({y for per_year in by_site.values() for y in per_year})
    if not years:
        return None
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.subplots()
    for n, (site, per_year) in enumerate(sorted(by_site.items())):
        ax.plot(years, [per_year.get(y, 0) for y in years], color=PALETTE[n % len(PALETTE)], linewidth=2,
                marker="o", markersize=3, label=site, gid=f"site-{n}")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylabel("People newly eligible")
    ax.set_xlabel("Year" + _redacted_note(counts, ": those months add nothing"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return Chart("feasibility", "Newly eligible per year",
                 "People newly meeting the computable eligibility each year at each site.", fig)


def charts(result: AnalysisResult) -> list[Chart]:
    """Every chart this analysis result supports, drawn from its controlled tables."""
    require_controlled(result)
    names = {t.name for t in result.tables}
    makers: list[Callable[[], Chart | None]] = []
    if "age_sex" in names:
        makers.append(lambda: age_sex_pyramid(result.table("age_sex")))
    if "features" in names:
        makers.append(lambda: top_covariates(result.table("features")))
    if "smd_binary" in names:
        makers.append(lambda: smd_plot(result.table("smd_binary")))
    if "incidence" in names:
        makers.append(lambda: incidence_by_stratum(result.table("incidence")))
    if "new_eligible" in names:
        makers.append(lambda: feasibility(result.table("new_eligible")))
    life_tables = [t for t in result.tables if t.kind == "life_table"]
    if life_tables:
        makers.append(lambda: km_curves(life_tables))
    return [chart for make in makers if (chart := make()) is not None]


def _published(table: StatTable, column: str) -> list[int | None]:
    """The column's published values, None where the policy redacted the cell."""
    hidden = {i for i, c in table.redacted if c == column}
    return [None if i in hidden else row.get(column) for i, row in enumerate(table.rows)]


def _redacted_note(values: list, what: str = "") -> str:
    redacted = sum(1 for v in values if v is None)
    return f" ({redacted} redacted{what})" if redacted else ""


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- output --------------------------------------------------------------------------------------
def inline_svg(chart: Chart) -> Markup:
    """The chart as SVG markup for a page: ``role="img"`` with a <title> and <desc>, ids prefixed
    with the chart's name (several charts share a page), every CSS ``style`` turned into
    presentation attributes (no inline CSS for the page's policy to block), scaled to the width
    of its container."""
    buffer = io.BytesIO()
    chart.figure.savefig(buffer, format="svg", metadata=SVG_METADATA, bbox_inches="tight")
    root = etree.fromstring(buffer.getvalue(), etree.XMLParser(resolve_entities=False, no_network=True))
    ns = "{http://www.w3.org/2000/svg}"
    for element in root.iter(f"{ns}metadata", f"{ns}style"):
        element.getparent().remove(element)
    prefix = chart.name
    for element in root.iter():
        style = element.attrib.pop("style", None)
        for declaration in (style or "").split(";"):
            name, _, value = declaration.partition(":")
            if name.strip():
                element.set(name.strip(), value.strip())
        for attribute, value in element.attrib.items():
            if attribute == "id":
                element.set("id", f"{prefix}-{value}")
            elif attribute == XLINK_HREF and value.startswith("#"):
                element.set(attribute, f"#{prefix}-{value[1:]}")
            elif "url(#" in value:
                element.set(attribute, re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", value))
    for attribute in ("width", "height"):
        root.attrib.pop(attribute, None)
    root.attrib.update({"width": "100%", "class": "chart", "role": "img", "stroke-linejoin": "round",
                        "stroke-linecap": "butt", "aria-labelledby": f"{prefix}-title {prefix}-desc"})
    title = etree.Element(f"{ns}title", id=f"{prefix}-title")
    title.text = chart.title
    desc = etree.Element(f"{ns}desc", id=f"{prefix}-desc")
    desc.text = f"{chart.description} The same numbers are in the table beside it."
    root.insert(0, desc)
    root.insert(0, title)
    return Markup(etree.tostring(root, encoding="unicode"))


def write_chart(chart: Chart, base: Path | str, formats: tuple[str, ...] = ("png", "svg"),
                dpi: int = 150) -> list[Path]:
    """Write ``<base>.<format>`` for each format (SVG without a date, so reruns are identical)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        chart.figure.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight",
                             metadata=SVG_METADATA if fmt == "svg" else None)
        written.append(path)
    return written

