"""Attack on two saved cohorts of one project, one criterion apart (third adversarial review): GI bleed
(24) and GI bleed aged 45 or more (21), both saved and run, gave 24 and 21 on the project's cohort list,
each cohort's page, the job results, the attrition and the analyses: 3 people exactly under
``threshold10``.  The size of the cohort run second is withheld, decided once when its run is recorded."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import lxml.html

from mercia.config import load_settings
from mercia.privacy.disclosure import get_policy
from tests.api.api_world import PASSWORD, circe
from tests.web.test_one_number import tables
from tests.web.test_pages import sign_in

from .test_api import run
from .test_attrition_differencing import aged_at_least

THRESHOLD = get_policy("threshold10").threshold
REASON = f"within {THRESHOLD} people of cohort 'GI bleed' in this project"


def saved(world, name: str, expression: dict) -> int:
    r = world.client.post("/api/v1/cohorts", headers=world.login("res"),
                          json={"project_id": world.approved, "name": name, "expression": expression})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def released_everywhere(world, cohort_id: int) -> set:
    """Every count of the cohort's size that leaves: the API's cohort, its list entry and attrition's last
    step, and the web pages' cohort stat, attrition table and project list (None: hidden)."""
    h = world.login("res")
    cohort = world.client.get(f"/api/v1/cohorts/{cohort_id}", headers=h).json()["result"]
    listed = {c["id"]: c for c in world.client.get("/api/v1/cohorts", headers=h,
                                                   params={"project_id": world.approved}).json()}
    attrition = world.client.get(f"/api/v1/cohorts/{cohort_id}/attrition", headers=h).json()["steps"]
    sign_in(world.client, SimpleNamespace(passwords={"res": PASSWORD}), "res")
    page = world.client.get(f"/cohorts/{cohort_id}").text
    stat = lxml.html.fromstring(page).find_class("stat__value")[0].text_content()
    steps = tables(page)["People remaining after each step"]
    project = lxml.html.fromstring(world.client.get(f"/projects/{world.approved}").text)
    row = next(tr for tr in project.iter("tr") if tr.find(f".//a[@href='/cohorts/{cohort_id}']") is not None)
    return {cohort["persons"], listed[cohort_id]["result"]["persons"], attrition[-1]["count_persons"],
            shown(stat), shown(steps[-1][1]), shown(row.findall("td")[1].text_content())}


def shown(text: str) -> int | None:
    """A count as a page shows it (None: hidden, whatever words follow the marker)."""
    digits = text.split()[0].replace(",", "") if text.split() else ""
    return int(digits) if digits.isdigit() else None


def test_two_saved_cohorts_one_criterion_apart_never_give_a_small_difference(world, threshold10):
    everyone, older = saved(world, "GI bleed", circe(rule_drug=None)), saved(world, "Aged 45", aged_at_least(45))
    assert run(world, world.login("res"), everyone)["result"]["persons"] == 24
    job = run(world, world.login("res"), older)["result"]
    assert job["persons"] is None and job["entries"] is None and job["withheld"] == REASON
    assert all(s["count_persons"] is None for s in job["steps"] if s["step"] != "People with a qualifying entry event")

    assert released_everywhere(world, everyone) == {24}           # the cohort released first keeps its number
    assert released_everywhere(world, older) == {None}            # one "withheld" everywhere, never 21
    h = world.login("res")
    assert world.client.get(f"/api/v1/cohorts/{older}", headers=h).json()["result"]["withheld"] == REASON
    assert world.client.get(f"/api/v1/cohorts/{older}/attrition", headers=h).json()["withheld"] == REASON
    page = world.client.get(f"/cohorts/{older}").text
    assert "Size withheld" in page and REASON.replace("'", "&#39;") in page
    project_page = world.client.get(f"/projects/{world.approved}").text
    assert REASON.replace("'", "&#39;") in project_page

    # an analysis or an export of it would give the size: refused, with the reason
    r = world.client.post("/api/v1/analyses", headers=h,
                          json={"project_id": world.approved, "kind": "characterise", "target_cohort_id": older})
    assert r.status_code == 400 and REASON in r.json()["detail"], r.text
    r = world.client.post("/api/v1/analyses", headers=h, json={
        "project_id": world.approved, "kind": "compare", "target_cohort_id": everyone, "comparator_cohort_id": older})
    assert r.status_code == 400 and REASON in r.json()["detail"], r.text
    csrf = sign_in(world.client, SimpleNamespace(passwords={"res": PASSWORD}), "res")
    r = world.client.post(f"/cohorts/{older}/analyses", data={"csrf_token": csrf, "kind": "survival"})
    assert r.status_code == 400 and REASON.replace("'", "&#39;") in r.text
    r = world.client.post("/api/v1/exports", headers=h, json={"project_id": world.approved, "kind": "cohort_attrition",
                                                               "ref": str(older), "justification": "paper"})
    assert r.status_code == 400 and REASON in r.json()["detail"], r.text

    # the true counts stay in the trusted store, and the decision with them
    stored = world.client.app.state.mercia.gov.db.row("SELECT result FROM mercia_cohort WHERE id = ?", [older])
    assert '"persons":21' in stored["result"] and '"cohort_name":"GI bleed"' in stored["result"]


def test_a_criterion_that_changes_nobody_does_not_unlock_the_pair(world, threshold10):
    """Aged 45 or more, and 30 days of observation before the bleed (everyone has years): two criteria from
    GI bleed, the same 21 people, so still withheld beside its 24."""
    padded = aged_at_least(45)
    padded["PrimaryCriteria"]["ObservationWindow"] = {"PriorDays": 30, "PostDays": 0}
    everyone, older = saved(world, "GI bleed", circe(rule_drug=None)), saved(world, "Aged 45, observed", padded)
    assert run(world, world.login("res"), everyone)["result"]["persons"] == 24
    assert run(world, world.login("res"), older)["result"]["withheld"] == REASON
    assert world.client.app.state.mercia.gov.db.row(
        "SELECT result FROM mercia_cohort WHERE id = ?", [older])["result"].count('"persons":21') == 1


def test_two_cohorts_each_with_people_the_other_lacks_keep_their_sizes(world, threshold10):
    """Aged 45 or more (21) and aged under 60 (18: the 3 under 45 and 15 of the 45s): 3 apart, but each holds
    people the other lacks, so the difference is no group of people and both are released."""
    younger = circe(rule_drug=None)
    younger["InclusionRules"] = [{"name": "Aged under 60", "expression": {
        "Type": "ALL", "CriteriaList": [], "Groups": [], "DemographicCriteriaList": [{"Age": {"Value": 60, "Op": "lt"}}]}}]
    older, under60 = saved(world, "Aged 45", aged_at_least(45)), saved(world, "Under 60", younger)
    assert run(world, world.login("res"), older)["result"]["persons"] == 21
    assert run(world, world.login("res"), under60)["result"]["persons"] == 18


def test_the_cohort_released_first_keeps_its_number_and_a_rerun_is_judged_again(world, threshold10):
    older, everyone = saved(world, "Aged 45", aged_at_least(45)), saved(world, "GI bleed", circe(rule_drug=None))
    assert run(world, world.login("res"), older)["result"]["persons"] == 21
    assert run(world, world.login("res"), everyone)["result"]["withheld"] \
        == f"within {THRESHOLD} people of cohort 'Aged 45' in this project"
    # the other's size was never released, so this one, run again, is released again
    assert run(world, world.login("res"), older)["result"]["persons"] == 21
    assert released_everywhere(world, older) == {21} and released_everywhere(world, everyone) == {None}
    r = world.client.post("/api/v1/analyses", headers=world.login("res"),
                          json={"project_id": world.approved, "kind": "characterise", "target_cohort_id": older})
    assert r.status_code == 202, r.text


def test_an_analysis_queued_before_a_run_withholds_its_cohort_is_refused_when_it_runs(world, threshold10):
    """The decision is read again when the analysis runs: a run of the cohort recorded after the analysis
    was queued (here the data changed in between, 10 aged 45 or more, then 21) may have withheld its size."""
    store, state = world.store, world.client.app.state.mercia
    everyone, older = saved(world, "GI bleed", circe(rule_drug=None)), saved(world, "Aged 45", aged_at_least(45))
    assert run(world, world.login("res"), everyone)["result"]["persons"] == 24
    store.execute("UPDATE person SET year_of_birth = year_of_birth + 30 WHERE person_id BETWEEN 11 AND 21")
    assert run(world, world.login("res"), older)["result"]["persons"] == 10     # 14 from 24: released
    store.execute("UPDATE person SET year_of_birth = year_of_birth - 30 WHERE person_id BETWEEN 11 AND 21")
    h, gate = world.login("res"), threading.Event()
    state.jobs.submit("hold", world.people["res"].id, world.approved, lambda progress: gate.wait(60) and {})
    rerun = world.client.post(f"/api/v1/cohorts/{older}/run", headers=h).json()["job_id"]
    r = world.client.post("/api/v1/analyses", headers=h,
                          json={"project_id": world.approved, "kind": "characterise", "target_cohort_id": older})
    assert r.status_code == 202, r.text                                       # released when it was queued
    gate.set()
    assert state.jobs.wait(rerun, 60)["result"]["withheld"] == REASON
    analysis = state.jobs.wait(r.json()["job_id"], 60)
    assert analysis["status"] == "failed" and REASON in analysis["error"], analysis


def test_cohorts_run_together_are_judged_in_turn(world, threshold10):
    """A batch records its runs one after another: the first keeps its number, the second is judged beside it."""
    everyone, older = saved(world, "GI bleed", circe(rule_drug=None)), saved(world, "Aged 45", aged_at_least(45))
    r = world.client.post(f"/api/v1/projects/{world.approved}/cohorts/run", headers=world.login("res"),
                          json={"cohort_ids": [everyone, older]})
    assert r.status_code == 202, r.text
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 60)
    assert [(c["cohort_id"], c["persons"], c["withheld"]) for c in job["result"]["cohorts"]] == \
        [(everyone, 24, None), (older, None, REASON)]


def test_cohorts_further_apart_than_the_threshold_keep_their_sizes(world, threshold10):
    """24 and 10 (on aspirin before the bleed): one criterion apart, but 14 people, more than the threshold."""
    everyone, on_aspirin = saved(world, "GI bleed", circe(rule_drug=None)), saved(world, "On aspirin", circe())
    assert run(world, world.login("res"), everyone)["result"]["persons"] == 24
    assert run(world, world.login("res"), on_aspirin)["result"].get("withheld") is None
    assert released_everywhere(world, on_aspirin) == {10} and released_everywhere(world, everyone) == {24}


def test_a_policy_that_rounds_instead_of_hiding_releases_both(world, monkeypatch):
    """Under nhse-hes rounding answers for differences (``DisclosurePolicy.too_close``, as quick counts): 25 and 20."""
    monkeypatch.setenv("MERCIA_DISCLOSURE_POLICY", "nhse-hes")
    load_settings.cache_clear()
    try:
        everyone, older = saved(world, "GI bleed", circe(rule_drug=None)), saved(world, "Aged 45", aged_at_least(45))
        shown_sizes = [run(world, world.login("res"), c)["result"] for c in (everyone, older)]
    finally:
        monkeypatch.delenv("MERCIA_DISCLOSURE_POLICY")
        load_settings.cache_clear()
    assert [(s["persons"], s.get("withheld")) for s in shown_sizes] == [(25, None), (20, None)]
