"""Disclosure-controlled results (as stored JSON) in the words, numbers and charts a page shows."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from markupsafe import Markup

from mercia.analytics.charts import attrition, charts, inline_svg
from mercia.privacy.disclosure import AnalysisResult
from mercia.services.cohorts import shown_attrition


@functools.lru_cache(maxsize=256)
def result_charts(result_json: bytes) -> tuple[dict[str, Any], ...]:
    """Every chart of a stored analysis result (its JSON), as inline SVG with its name and title.
    Drawn once per content: a stored result never changes and drawing takes a tenth of a second."""
    return tuple({"name": c.name, "title": c.title, "svg": inline_svg(c)}
                 for c in charts(AnalysisResult.model_validate_json(result_json)))


@functools.lru_cache(maxsize=256)
def attrition_svg(shown_json: bytes) -> Markup | None:
    """The attrition chart of a cohort's shown result (``services.cohorts.controlled_result``, as JSON)."""
    chart = attrition(shown_attrition(orjson.loads(shown_json)))
    return inline_svg(chart) if chart else None


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
