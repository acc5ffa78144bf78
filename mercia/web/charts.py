"""Charts as inline SVG built on the server: no chart library, no script, readable by screen
readers (each chart has a title, a description and a table of the same numbers beside it)."""

from __future__ import annotations

import math

from typing import Any

from markupsafe import Markup, escape

BAR = "#005eb8"
BAR_FINAL = "#007f3b"
TEXT = "#212b32"


def attrition(steps: list[dict[str, Any]], width: int = 720) -> Markup:
    """Horizontal bars: people at each step of a cohort, widest first."""
    label_w, bar_h, gap = 300, 26, 12
    top = max((s["count_persons"] or 0) for s in steps) or 1
    height = len(steps) * (bar_h + gap) + gap
    parts = [f'<svg class="chart" role="img" aria-labelledby="attr-title attr-desc" viewBox="0 0 {width} {height}" '
             f'width="100%" xmlns="http://www.w3.org/2000/svg">',
             '<title id="attr-title">Cohort attrition</title>',
             '<desc id="attr-desc">People remaining at each step; the same numbers are in the table below.</desc>']
    for i, step in enumerate(steps):
        y = gap + i * (bar_h + gap)
        n = step["count_persons"] or 0
        shown = "redacted" if step["count_persons"] is None else f"{n:,}"
        w = max(2, (width - label_w - 90) * n / top)
        colour = BAR_FINAL if i == len(steps) - 1 else BAR
        parts.append(f'<text x="0" y="{y + bar_h * 0.68}" fill="{TEXT}" font-size="14">'
                     f'{escape(_shorten(step["step"], 40))}</text>')
        parts.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}" rx="2">'
                     f'<title>{escape(step["step"])}: {shown} people</title></rect>')
        parts.append(f'<text x="{label_w + w + 8:.1f}" y="{y + bar_h * 0.68}" fill="{TEXT}" font-size="14" '
                     f'font-weight="600">{shown}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def display_table(table: dict[str, Any]) -> dict[str, Any]:
    """A disclosure-controlled table (as JSON) ready for a template: headers and text cells."""
    hidden = {(r, c) for r, c in table["redacted"]}
    marker = table.get("redacted_marker") or ""
    columns = table["columns"]
    rows = [[marker if (i, c["name"]) in hidden else _fmt(row.get(c["name"]), _is_code(c), _is_median(c))
             for c in columns] for i, row in enumerate(table["rows"])]
    return {"title": table["title"], "headers": [c.get("label") or c["name"] for c in columns],
            "numeric": [c["kind"] != "label" for c in columns], "rows": rows, "notes": table.get("notes", [])}


def _is_code(column: dict[str, Any]) -> bool:
    """Identifiers (concept ids, codes) are written as they are looked up: no thousands separators."""
    return column["kind"] == "label" or column["name"].endswith(("_id", "_code"))


def _is_median(column: dict[str, Any]) -> bool:
    return column["kind"] == "statistic" and "median" in column["name"]


def _fmt(value: Any, code: bool = False, median: bool = False) -> str:
    if value is None:
        return "not reached" if median else ""
    if code or isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


KM_COLOURS = ["#005eb8", "#d5281b", "#007f3b", "#7c2855"]


def survival_curves(tables: list[dict[str, Any]], width: int = 720, height: int = 360) -> Markup | None:
    """Kaplan–Meier step curves (with pointwise confidence bands) from disclosure-controlled life tables."""
    curves = [t for t in tables if t.get("kind") == "life_table" and t["rows"]]
    if not curves:
        return None
    years = max(1, math.ceil(max(float(r["time"]) for t in curves for r in t["rows"]) / DAYS_PER_YEAR))
    risk_h = 24 + 18 * len(curves)  # the numbers-at-risk rows under the axis
    left, right, top, bottom = 56, 16, 16, 44 + risk_h
    height += risk_h
    max_t = years * DAYS_PER_YEAR
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + plot_w * t / max_t

    def y(s: float) -> float:
        return top + plot_h * (1 - s)

    parts = [f'<svg class="chart" role="img" aria-labelledby="km-title km-desc" viewBox="0 0 {width} {height}" '
             f'width="100%" xmlns="http://www.w3.org/2000/svg"><title id="km-title">Kaplan–Meier survival</title>'
             '<desc id="km-desc">Probability of remaining free of the outcome over time; the life tables below '
             'hold the same numbers.</desc>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#d8dde0"/>'
                     f'<text x="{left - 8}" y="{y(tick) + 5:.1f}" font-size="12" text-anchor="end" fill="{TEXT}">'
                     f'{tick:.2f}</text>')
    step = max(1, math.ceil(years / 8))
    ticks = list(range(0, years + 1, step))
    axis_y = top + plot_h
    for year in ticks:
        parts.append(f'<text x="{x(year * DAYS_PER_YEAR):.1f}" y="{axis_y + 18}" font-size="12" text-anchor="middle" '
                     f'fill="{TEXT}">{year}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{axis_y + 36}" font-size="13" text-anchor="middle" '
                 f'fill="{TEXT}">Years from index</text>')
    parts.append(f'<text x="4" y="{axis_y + 58}" font-size="12" font-weight="bold" fill="{TEXT}">Number at risk</text>')
    for n, table in enumerate(curves):
        row_y = axis_y + 76 + 18 * n
        parts.append(f'<text x="4" y="{row_y}" font-size="11" fill="{KM_COLOURS[n % len(KM_COLOURS)]}">'
                     f'{escape(_shorten(table["title"], 8))}</text>')
        for year, count in zip(ticks, numbers_at_risk(table, [y * DAYS_PER_YEAR for y in ticks])):
            parts.append(f'<text x="{x(year * DAYS_PER_YEAR):.1f}" y="{row_y}" font-size="12" text-anchor="middle" '
                         f'fill="{TEXT}">{escape(count)}</text>')
    for n, table in enumerate(curves):
        colour = KM_COLOURS[n % len(KM_COLOURS)]
        rows = sorted(table["rows"], key=lambda r: float(r["time"]))
        line, band_hi, band_lo = [f"M{x(0):.1f},{y(1):.1f}"], [], []
        previous = 1.0
        for r in rows:
            s = r.get("survival")
            if s is None:
                continue
            line.append(f"H{x(float(r['time'])):.1f}V{y(float(s)):.1f}")
            previous = float(s)
            if r.get("survival_lower") is not None and r.get("survival_upper") is not None:
                band_hi.append((x(float(r["time"])), y(float(r["survival_upper"]))))
                band_lo.append((x(float(r["time"])), y(float(r["survival_lower"]))))
        line.append(f"H{x(max_t):.1f}")
        if band_hi:
            points = " ".join(f"{px:.1f},{py:.1f}" for px, py in band_hi + band_lo[::-1])
            parts.append(f'<polygon points="{points}" fill="{colour}" fill-opacity="0.12" stroke="none"/>')
        label = escape(table["title"])
        parts.append(f'<path d="{"".join(line)}" fill="none" stroke="{colour}" stroke-width="2.5">'
                     f'<title>{label}: final survival {previous:.3f}</title></path>')
        parts.append(f'<rect x="{width - right - 230}" y="{top + 6 + n * 20}" width="14" height="4" fill="{colour}"/>'
                     f'<text x="{width - right - 210}" y="{top + 12 + n * 20}" font-size="12" fill="{TEXT}">'
                     f'{escape(_shorten(table["title"], 32))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


DAYS_PER_YEAR = 365.25


def numbers_at_risk(table: dict[str, Any], times: list[float]) -> list[str]:
    """People still at risk at each time, read from the (disclosure-controlled) life table: the at-risk
    count of the first row at or after that time; blank once nobody is followed that long."""
    column = next((c["name"] for c in table["columns"] if c["name"].startswith("count_at_risk")), None)
    if column is None:
        return ["" for _ in times]
    hidden = {r for r, c in table["redacted"] if c == column}
    marker = table.get("redacted_marker") or ""
    rows = sorted(enumerate(table["rows"]), key=lambda item: float(item[1]["time"]))
    out = []
    for t in times:
        found = next(((i, r) for i, r in rows if float(r["time"]) >= t), None)
        if found is None:
            out.append("0")
        else:
            i, row = found
            out.append(marker if i in hidden else "" if row.get(column) is None else f"{row[column]:,}")
    return out


SEX_COLOURS = {"Female": "#005eb8", "Male": "#41b6e6"}


def age_sex_pyramid(tables: list[dict[str, Any]], width: int = 720) -> Markup | None:
    """Population pyramid of the ``age_sex`` table: women left, men right, one row per age band.
    Redacted cells are drawn as empty and marked, never guessed."""
    table = next((t for t in tables if t["name"] == "age_sex" and t["rows"]), None)
    if table is None:
        return None
    hidden = {r for r, c in table["redacted"] if c == "count_persons"}
    bands: dict[str, dict[str, int | None]] = {}
    for i, row in enumerate(table["rows"]):
        bands.setdefault(row["age_band"], {})[row["sex"]] = None if i in hidden else (row.get("count_persons") or 0)
    top = max([v for b in bands.values() for v in b.values() if v] or [1])
    bar_h, gap, label_w, head = 20, 6, 70, 28
    half = (width - label_w) / 2 - 40
    height = head + len(bands) * (bar_h + gap) + 10
    centre = width / 2
    parts = [f'<svg class="chart" role="img" aria-labelledby="pyr-title pyr-desc" viewBox="0 0 {width} {height}" '
             f'width="100%" xmlns="http://www.w3.org/2000/svg"><title id="pyr-title">Age and sex at index</title>'
             '<desc id="pyr-desc">Women to the left, men to the right; the table below holds the same numbers.</desc>',
             f'<text x="{centre - label_w / 2 - 8}" y="16" font-size="13" text-anchor="end" fill="{TEXT}">Female</text>',
             f'<text x="{centre + label_w / 2 + 8}" y="16" font-size="13" fill="{TEXT}">Male</text>']
    for i, (band, by_sex) in enumerate(bands.items()):
        y = head + i * (bar_h + gap)
        parts.append(f'<text x="{centre}" y="{y + 15}" font-size="12" text-anchor="middle" fill="{TEXT}">'
                     f'{escape(band)}</text>')
        for sex, side in (("Female", -1), ("Male", 1)):
            n = by_sex.get(sex, 0)
            w = 0 if not n else max(1.5, half * n / top)
            x0 = centre - label_w / 2 - w if side < 0 else centre + label_w / 2
            text = "redacted" if n is None else f"{n:,}"
            parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{SEX_COLOURS[sex]}">'
                         f'<title>{escape(band)}, {sex.lower()}: {text}</title></rect>')
            tx = x0 - 6 if side < 0 else x0 + w + 6
            parts.append(f'<text x="{tx:.1f}" y="{y + 15}" font-size="12" text-anchor="{"end" if side < 0 else "start"}" '
                         f'fill="{TEXT}">{text}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def incidence_rates(tables: list[dict[str, Any]], width: int = 720) -> Markup | None:
    """Rates per 1,000 person-years with 95% intervals (dot and whisker), overall, by sex and by age band."""
    table = next((t for t in tables if t["name"] == "incidence" and t["rows"]), None)
    if table is None:
        return None
    hidden = {r for r, _ in table["redacted"]}
    rows = [(i, r) for i, r in enumerate(table["rows"]) if r.get("stratum_type") in ("Overall", "Sex", "Age band")]
    values = [r.get("rate_upper") or r.get("rate_per_1000py") or 0 for i, r in rows if i not in hidden]
    top = max([float(v) for v in values if v is not None] or [1.0]) or 1.0
    label_w, row_h, head = 260, 26, 30
    plot_w = width - label_w - 70
    height = head + len(rows) * row_h + 10

    def x(v: float) -> float:
        return label_w + plot_w * v / top

    parts = [f'<svg class="chart" role="img" aria-labelledby="inc-title inc-desc" viewBox="0 0 {width} {height}" '
             f'width="100%" xmlns="http://www.w3.org/2000/svg"><title id="inc-title">Incidence rates</title>'
             '<desc id="inc-desc">Rate per 1,000 person-years with its 95% confidence interval for each group; '
             'the table below holds the same numbers.</desc>',
             f'<text x="{label_w}" y="16" font-size="12" fill="{TEXT}">0</text>',
             f'<text x="{label_w + plot_w}" y="16" font-size="12" text-anchor="end" fill="{TEXT}">'
             f'{top:,.1f} per 1,000 person-years</text>']
    for n, (i, r) in enumerate(rows):
        y = head + n * row_h + row_h / 2
        name = f"{r['time_at_risk']} · {r['stratum']}" if r["stratum_type"] != "Overall" else f"{r['time_at_risk']} · all"
        parts.append(f'<text x="0" y="{y + 4}" font-size="12" fill="{TEXT}">{escape(_shorten(name, 38))}</text>')
        rate, low, high = r.get("rate_per_1000py"), r.get("rate_lower"), r.get("rate_upper")
        if i in hidden or rate is None:
            parts.append(f'<text x="{label_w}" y="{y + 4}" font-size="12" fill="#4c6272">redacted</text>')
            continue
        if low is not None and high is not None:
            parts.append(f'<line x1="{x(float(low)):.1f}" x2="{x(float(high)):.1f}" y1="{y}" y2="{y}" '
                         f'stroke="{BAR}" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(float(rate)):.1f}" cy="{y}" r="5" fill="{BAR}"><title>{escape(name)}: '
                     f'{float(rate):,.2f} per 1,000 person-years</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))
