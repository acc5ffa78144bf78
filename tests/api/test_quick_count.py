"""The quick feasibility count (``POST /api/v1/feasibility/quick-count``): any researcher, no project;
the count is the policy's, small ones hidden, every count audited, and cohorts one criterion apart
are rationed so they cannot be subtracted."""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from mercia.privacy.disclosure import get_policy
from tests.api.api_world import circe

URL = "/api/v1/feasibility/quick-count"
RARE = 4_000_001   # a condition three of the world's people have


def _with_rare_condition(store) -> dict:
    store.insert_arrow("concept", pa.table({
        "concept_id": [RARE], "concept_name": ["A rare condition"], "domain_id": ["Condition"],
        "vocabulary_id": ["SNOMED"], "concept_class_id": ["Clinical Finding"], "standard_concept": ["S"],
        "concept_code": ["1"], "valid_start_date": [date(1970, 1, 1)], "valid_end_date": [date(2099, 12, 31)]}))
    store.insert_arrow("condition_occurrence", pa.table({
        "condition_occurrence_id": [901, 902, 903], "person_id": [30, 31, 32], "condition_concept_id": [RARE] * 3,
        "condition_start_date": [date(2016, 1, 1)] * 3, "condition_type_concept_id": [32020] * 3}))
    rare = circe(rule_drug=None)
    rare["ConceptSets"][0]["expression"]["items"][0] = {"concept": {"CONCEPT_ID": RARE}, "includeDescendants": False}
    return rare


def test_a_researcher_gets_the_policys_count_without_a_project(world):
    policy = get_policy()
    r = world.client.post(URL, headers=world.login("res"), json={"expression": circe(rule_drug=None)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["persons"] == policy.publish_count(24) and body["hidden"] is False   # 24 people have a GI bleed
    assert body["policy"] == policy.name and body["budget"] == {"used": 0, "limit": 10, "window_days": 30}
    r = world.client.post(URL, headers=world.login("clin"), json={"expression": circe()})   # 10 with aspirin before
    assert r.json()["persons"] == policy.publish_count(10)
    assert world.store.query_one("SELECT count(*) FROM cohort WHERE cohort_definition_id < 0") == 0   # scratch gone
    audited = world.gov.audit.search(action="feasibility.quick_count")
    assert [a["actor"] for a in audited] == ["clin", "res"] and audited[0]["detail"]["shown"] == policy.publish_count(10)


def test_a_small_count_is_hidden(world):
    r = world.client.post(URL, headers=world.login("res"), json={"expression": _with_rare_condition(world.store)})
    assert r.status_code == 200 and r.json()["persons"] is None and r.json()["hidden"] is True
    assert "3" not in str(world.gov.audit.search(action="feasibility.quick_count")[0]["detail"]["shown"])


def test_repeats_and_one_criterion_changes_spend_a_budget_then_429(world, monkeypatch):
    monkeypatch.setattr("mercia.services.quickcount.DIFFERENCING_LIMIT", 2)
    headers = world.login("res")
    base, minus_rule = circe(), circe(rule_drug=None)
    assert world.client.post(URL, headers=headers, json={"expression": base}).json()["differencing"] is False
    assert world.client.post(URL, headers=headers, json={"expression": minus_rule}).json()["differencing"] is True
    assert world.client.post(URL, headers=headers, json={"expression": base}).json()["budget"]["used"] == 2
    refused = world.client.post(URL, headers=headers, json={"expression": minus_rule})
    assert refused.status_code == 429 and "the limit is 2" in refused.json()["detail"]
    assert 29 * 86400 < int(refused.headers["Retry-After"]) <= 30 * 86400
    assert world.gov.audit.search(action="feasibility.quick_count.refused")[0]["actor"] == "res"
    unrelated = _with_rare_condition(world.store)   # primary criteria and concept set both differ
    unrelated["InclusionRules"] = []
    assert world.client.post(URL, headers=headers, json={"expression": unrelated}).status_code == 200
    assert world.client.post(URL, headers=world.login("res2"), json={"expression": minus_rule}).status_code == 200


def test_refusals(world):
    assert world.client.post(URL, json={"expression": circe()}).status_code == 401
    for role_without_counts in ("govo", "checker"):
        assert world.client.post(URL, headers=world.login(role_without_counts),
                                 json={"expression": circe()}).status_code == 403
    bad = world.client.post(URL, headers=world.login("res"), json={"expression": {"PrimaryCriteria": 5}})
    assert bad.status_code == 400 and "cannot be counted" in bad.json()["detail"]
    assert world.gov.db.scalar("SELECT count(*) FROM mercia_quick_count") == 0   # nothing spent on a refusal


def test_two_quick_counts_one_criterion_apart_do_not_give_a_small_difference(world, monkeypatch):
    """24 have a GI bleed, 21 of them are aged 45 or more: unrounded, the pair says 3 are younger."""
    from mercia.config import load_settings

    from .test_attrition_differencing import aged_at_least

    monkeypatch.setenv("MERCIA_DISCLOSURE_POLICY", "threshold10")
    load_settings.cache_clear()
    try:
        headers = world.login("res")
        answers = [world.client.post(URL, headers=headers, json={"expression": e}).json()
                   for e in (circe(rule_drug=None), aged_at_least(45))]
    finally:
        monkeypatch.delenv("MERCIA_DISCLOSURE_POLICY")
        load_settings.cache_clear()
    everyone, older = (a["persons"] for a in answers)
    assert None in (everyone, older) or not 1 <= everyone - older <= get_policy("threshold10").threshold
    assert everyone == 24 and answers[1]["hidden_reason"] == "near_earlier"
