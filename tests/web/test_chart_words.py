"""Charts and tables in words people read: KM in years with numbers at risk, medians "not reached",
concept ids as they are looked up."""

from __future__ import annotations

from mercia.web import charts


def life_table(redacted=()):
    return {"kind": "life_table", "title": "New metformin users", "redacted": list(redacted), "redacted_marker": "[REDACTED]",
            "columns": [{"name": "time", "kind": "label"}, {"name": "count_at_risk_midpoint6_derived", "kind": "count"},
                        {"name": "survival", "kind": "derived"}],
            "rows": [{"time": 0, "count_at_risk_midpoint6_derived": 1200, "survival": 1.0},
                     {"time": 300, "count_at_risk_midpoint6_derived": 900, "survival": 0.9},
                     {"time": 500, "count_at_risk_midpoint6_derived": 400, "survival": 0.8},
                     {"time": 700, "count_at_risk_midpoint6_derived": 30, "survival": 0.7}]}


def test_km_axis_in_years_with_numbers_at_risk():
    svg = str(charts.survival_curves([life_table()]))
    assert "Years from index" in svg and "Days from index" not in svg and "Number at risk" in svg
    assert charts.numbers_at_risk(life_table(), [0, 365.25, 730.5]) == ["1,200", "400", "0"]
    hidden = life_table(redacted=[(2, "count_at_risk_midpoint6_derived")])
    assert charts.numbers_at_risk(hidden, [365.25]) == ["[REDACTED]"]  # never guessed from neighbours


def test_medians_not_reached_and_concept_ids_plain():
    table = {"title": "t", "redacted": [], "columns": [
        {"name": "concept_id", "kind": "label"}, {"name": "count_persons", "kind": "count"},
        {"name": "median_survival_days", "kind": "statistic"}],
        "rows": [{"concept_id": 1503297, "count_persons": 12345, "median_survival_days": None}]}
    assert charts.display_table(table)["rows"] == [["1503297", "12,345", "not reached"]]
