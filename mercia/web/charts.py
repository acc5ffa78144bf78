"""Charts as inline SVG built on the server: no chart library, no script, readable by screen
readers (each chart has a title, a description and a table of the same numbers beside it)."""

from __future__ import annotations

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
        w = max(2, (width - label_w - 90) * n / top)
        colour = BAR_FINAL if i == len(steps) - 1 else BAR
        parts.append(f'<text x="0" y="{y + bar_h * 0.68}" fill="{TEXT}" font-size="14">'
                     f'{escape(_shorten(step["step"], 40))}</text>')
        parts.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}" rx="2">'
                     f'<title>{escape(step["step"])}: {n:,} people</title></rect>')
        parts.append(f'<text x="{label_w + w + 8:.1f}" y="{y + bar_h * 0.68}" fill="{TEXT}" font-size="14" '
                     f'font-weight="600">{n:,}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def display_table(table: dict[str, Any]) -> dict[str, Any]:
    """A disclosure-controlled table (as JSON) ready for a template: headers and text cells."""
    hidden = {(r, c) for r, c in table["redacted"]}
    marker = table.get("redacted_marker") or ""
    columns = table["columns"]
    rows = [[marker if (i, c["name"]) in hidden else _fmt(row.get(c["name"])) for c in columns]
            for i, row in enumerate(table["rows"])]
    return {"title": table["title"], "headers": [c.get("label") or c["name"] for c in columns],
            "numeric": [c["kind"] != "label" for c in columns], "rows": rows, "notes": table.get("notes", [])}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
