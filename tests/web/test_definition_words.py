"""Cohort definitions in words (issue 16, point 7)."""

from __future__ import annotations

from mercia.demo import diabetes_cohort
from mercia.web.words import describe, window_words


def test_windows_in_words():
    assert window_words({"Start": {"Days": 0, "Coeff": 1}, "End": {"Days": 365, "Coeff": 1}}) == \
        "from index to 365 days after"
    assert window_words({"Start": {"Days": None, "Coeff": -1}, "End": {"Days": 30, "Coeff": -1}}) == \
        "from any time before to 30 days before"


def test_demo_cohort_in_words():
    assert describe(diabetes_cohort()) == [
        "Entry: the first condition occurrence of Type 2 diabetes mellitus, with at least 365 days of "
        "observation before it and 0 after.",
        "Rule 1, Metformin within a year: at least 1 drug exposure of Metformin from index to 365 days after.",
        "Rule 2, Aged 40 or over: aged at least 40 at entry."]
