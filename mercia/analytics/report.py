"""A self-contained HTML report of disclosure-controlled results, and its charts as files.

Everything here starts with ``require_controlled``: charts come from ``mercia.analytics.charts`` (the
one chart stack), drawn from published numbers only, so a plot cannot show what the tables redact.
The HTML has its CSS and SVG charts inline and loads nothing from anywhere.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from mercia.analytics.charts import charts, inline_svg, write_chart
from mercia.privacy.disclosure import AnalysisResult, Kind, StatTable, require_controlled

TABLE_ROW_LIMIT = 25


def write_charts(result: AnalysisResult, directory: Path | str, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Every chart of ``result`` as ``<analysis>_<chart>.<format>`` files in ``directory``."""
    return [path for chart in charts(result)
            for path in write_chart(chart, Path(directory) / f"{result.analysis}_{chart.name}", formats)]


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
    figures = [{"title": chart.title, "svg": inline_svg(chart)} for chart in charts(result)]
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
