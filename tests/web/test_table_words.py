"""Tables in words people read: medians "not reached", concept ids as they are looked up.  (The
charts' words — KM in years, numbers at risk — are tested with the chart stack in
tests/analytics/test_charts.py.)"""

from __future__ import annotations

from mercia.web.results import display_table


def test_medians_not_reached_and_concept_ids_plain():
    table = {"title": "t", "redacted": [], "columns": [
        {"name": "concept_id", "kind": "label"}, {"name": "count_persons", "kind": "count"},
        {"name": "median_survival_days", "kind": "statistic"}],
        "rows": [{"concept_id": 1503297, "count_persons": 12345, "median_survival_days": None}]}
    assert display_table(table)["rows"] == [["1503297", "12,345", "not reached"]]
