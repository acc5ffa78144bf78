"""Attack on a cohort's attrition by differencing adjacent steps: each step's remaining count is
published, so two steps 24 -> 21 say that exactly 3 people were removed by the rule between them.
Under a policy without rounding (threshold10) the published steps must never differ by 1..threshold."""

from __future__ import annotations

from mercia.config import load_settings
from mercia.privacy.disclosure import get_policy
from tests.api.api_world import circe

from .test_api import make_cohort, run


def aged_at_least(years: int) -> dict:
    """GI bleed, with one rule: aged ``years`` or more at the bleed (in the small store, 3 of the 24 are under 45)."""
    expression = circe(rule_drug=None)
    expression["InclusionRules"] = [{"name": f"Aged {years} or more", "expression": {
        "Type": "ALL", "CriteriaList": [], "Groups": [],
        "DemographicCriteriaList": [{"Age": {"Value": years, "Op": "gte"}}]}}]
    return expression


def test_adjacent_attrition_steps_never_differ_by_a_small_count(world, monkeypatch):
    monkeypatch.setenv("MERCIA_DISCLOSURE_POLICY", "threshold10")
    load_settings.cache_clear()
    try:
        h = world.login("res")
        cohort_id = make_cohort(world, h, expression=aged_at_least(45))
        assert run(world, h, cohort_id)["result"]["persons"] == 21
        steps = world.client.get(f"/api/v1/cohorts/{cohort_id}/attrition", headers=h).json()["steps"]
    finally:
        monkeypatch.delenv("MERCIA_DISCLOSURE_POLICY")
        load_settings.cache_clear()
    shown = [s["count_persons"] for s in steps if s["count_persons"] is not None]
    assert None in [s["count_persons"] for s in steps]                        # the 3 removed are protected
    threshold = get_policy("threshold10").threshold
    assert all(not 1 <= before - after <= threshold for before, after in zip(shown, shown[1:])), steps
