"""The one chart stack (``mercia.analytics.charts``): drawn from controlled numbers only, a redacted
cell is never a bar, inline SVG that says what it shows, carries no CSS and is the same bytes for the
same numbers."""

from __future__ import annotations

import re

import lxml.etree
import pytest

from mercia.analytics import charts
from mercia.analytics.survival import _km_rows, _life_table_stat
from mercia.privacy.disclosure import ColumnSpec, DisclosureError, Kind, StatTable, get_policy

SVG = "{http://www.w3.org/2000/svg}"
STEPS = [("People with a qualifying entry event", 1200), ("Rule 1: metformin within 6 months", 5),
         ("Rule 2: aged 18 or over", 640), ("People in the cohort", 633)]


def attrition_table(steps=STEPS) -> StatTable:
    raw = StatTable(name="attrition", title="Attrition", rows=[{"step": s, "count_persons": n} for s, n in steps],
                    columns=[ColumnSpec(name="step", kind=Kind.LABEL), ColumnSpec(name="count_persons", kind=Kind.COUNT)])
    return get_policy("opensafely").apply(raw)


def life_table(title: str = "New metformin users") -> StatTable:
    rows, _ = _km_rows([(100, 30, 10), (400, 20, 40), (800, 10, 90)])
    return get_policy("opensafely").apply(_life_table_stat("km_target", title, rows, 200))


def parsed(svg: str) -> lxml.etree._Element:
    return lxml.etree.fromstring(svg.encode())


def bar_widths(svg: str) -> dict[str, float]:
    """Each ``bar-<i>`` group's bar width in SVG units, read from its path."""
    widths = {}
    for group in parsed(svg).iter(f"{SVG}g"):
        if re.fullmatch(r"attrition-bar-\d+", group.get("id", "")):
            xs = [float(x) for x in re.findall(r"([-\d.]+) [-\d.]+", group.find(f"{SVG}path").get("d"))]
            widths[group.get("id")] = max(xs) - min(xs)
    return widths


def test_a_redacted_step_is_never_a_bar_and_is_said():
    table = attrition_table()
    assert table.rows[1]["count_persons"] is None  # 5 people: the policy hides it
    svg = charts.inline_svg(charts.attrition(table))
    widths = bar_widths(svg)
    assert sorted(widths) == ["attrition-bar-0", "attrition-bar-2", "attrition-bar-3"]  # no bar for step 1
    assert widths["attrition-bar-0"] > widths["attrition-bar-2"] > widths["attrition-bar-3"] > 0
    assert widths["attrition-bar-2"] / widths["attrition-bar-0"] == pytest.approx(640 / 1200, rel=0.01)
    texts = [t.text for t in parsed(svg).iter(f"{SVG}text")]
    assert "[REDACTED]" in " ".join(texts) and "People (1 redacted)" in texts
    assert "5" not in texts  # the true count is nowhere on the chart


def test_every_published_step_is_a_bar():
    shown = attrition_table([(s, 1000 - 100 * i) for i, (s, _) in enumerate(STEPS)])
    assert sorted(bar_widths(charts.inline_svg(charts.attrition(shown)))) == [f"attrition-bar-{i}" for i in range(4)]


def test_inline_svg_says_what_it_shows_scales_and_has_no_css():
    svg = charts.inline_svg(charts.attrition(attrition_table()))
    root = parsed(svg)
    assert root.get("role") == "img" and root.get("width") == "100%" and root.get("height") is None
    assert root.get("aria-labelledby") == "attrition-title attrition-desc" and root.get("class") == "chart"
    assert root.find(f"{SVG}title").text == "Cohort attrition"
    assert "the same numbers are in the table beside it" in root.find(f"{SVG}desc").text.lower()
    assert root.find(f".//{SVG}style") is None and not [e for e in root.iter() if e.get("style")]
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert all(i.startswith("attrition-") for i in ids) and len(ids) == len(set(ids))
    references = re.findall(r'(?:url\(#|href="#)([^)"]+)', svg)
    assert references and set(references) <= set(ids)  # every clip path and marker still resolves


def test_the_same_numbers_give_the_same_bytes():
    first = charts.inline_svg(charts.km_curves([life_table()]))
    again = charts.km_curves([life_table()])
    assert charts.inline_svg(again) == first == charts.inline_svg(again)


def test_km_in_years_with_numbers_at_risk_never_guessed():
    table = life_table()
    svg = charts.inline_svg(charts.km_curves([table]))
    texts = [t.text for t in parsed(svg).iter(f"{SVG}text")]
    assert "Years from index" in texts and "Days from index" not in texts
    after = texts[texts.index("Number at risk") + 1:]
    assert after[:2] == ["target", "200"]  # the curve's row label, then the released population at year 0
    assert parsed(svg).find(f".//{SVG}g[@id='kaplan_meier-km-0']") is not None
    column = table.find("count_at_risk")
    assert charts.numbers_at_risk(table, [0, 365.25, 730.5, 1000]) == [
        f"{table.rows[0][column]:,}", f"{table.rows[1][column]:,}", f"{table.rows[2][column]:,}", "0"]
    hidden = table.model_copy(update={"redacted": [(1, column)]})
    assert charts.numbers_at_risk(hidden, [365.25]) == ["[REDACTED]"]  # never guessed from neighbours


def test_uncontrolled_tables_are_refused():
    raw = StatTable(name="attrition", title="a", rows=[{"count_persons": 3}],
                    columns=[ColumnSpec(name="count_persons", kind=Kind.COUNT)])
    with pytest.raises(DisclosureError, match="disclosure control"):
        charts.attrition(raw)


def test_files_are_png_and_svg(tmp_path):
    written = charts.write_chart(charts.attrition(attrition_table()), tmp_path / "flow")
    assert [p.name for p in written] == ["flow.png", "flow.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "People in the cohort" in written[1].read_text()
    again = charts.write_chart(charts.attrition(attrition_table()), tmp_path / "again", ("svg",))
    assert again[0].read_bytes() == written[1].read_bytes()  # no date in the file
