"""Attacks on an analysis's tables by subtracting one count from another beside it (third adversarial
review): a count a few short of the cohort it is part of gives the few it leaves out, even where the
table that counts those few hides them.  Under ``threshold10`` (no rounding) the difference is exact."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import pyarrow as pa

from mercia.cdm.extensions import ensure_extension_tables
from mercia.privacy.disclosure import get_policy
from tests.api.api_world import PASSWORD, circe
from tests.web.test_one_number import tables
from tests.web.test_pages import sign_in

from .test_api import make_cohort, run

THRESHOLD = get_policy("threshold10").threshold


def analysis_page(world, **body) -> dict[str, list[list[str]]]:
    """Run an analysis as the project's researcher (API) and read its page (web) as that researcher."""
    r = world.client.post("/api/v1/analyses", headers=world.login("res"), json={"project_id": world.approved, **body})
    assert r.status_code == 202, r.text
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 120)
    assert job["status"] == "succeeded", job
    sign_in(world.client, SimpleNamespace(passwords={"res": PASSWORD}), "res")
    return tables(world.client.get(f"/analyses/{job['result']['analysis_id']}").text)


def with_imd_deciles(store, persons: range) -> None:
    """Each of ``persons`` linked with an IMD decile (the rest of the cohort has none recorded)."""
    ensure_extension_tables(store)
    n = len(persons)
    store.insert_arrow("mercia_person_link", pa.table({
        "person_id": list(persons), "org": ["RX1"] * n, "source_pseudonym": [f"p{i}" for i in persons],
        "nhs_status": ["01"] * n, "record_hash": [f"h{i}" for i in persons], "gender_concept_id": [8507] * n,
        "imd_decile": [1 + i % 10 for i in persons], "load_id": [1] * n}))


def shown_count(text: str) -> int | None:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else None


def test_characterisation_summary_never_gives_the_people_a_hidden_cell_describes(world, threshold10):
    """24 people with a GI bleed, 21 of them with an IMD decile: the IMD table hides "Not recorded" (3)
    and its cover, but the summary showed 24 persons and 21 with a decile beside them."""
    with_imd_deciles(world.store, range(1, 22))
    cohort_id = make_cohort(world, world.login("res"), expression=circe(rule_drug=None))
    assert run(world, world.login("res"), cohort_id)["result"]["persons"] == 24
    page = analysis_page(world, kind="characterise", target_cohort_id=cohort_id)
    imd = {r[1]: r[2] for r in page["Characteristics at index"] if r[0] == "IMD decile"}
    assert shown_count(imd["Not recorded"]) is None                          # the 3 are hidden there
    summary = {r[0]: shown_count(r[1]) for r in page["Cohort"]}
    assert summary["Persons"] == 24
    for item, value in summary.items():                                       # and not given away beside it
        assert value is None or not 1 <= summary["Persons"] - value <= THRESHOLD, (item, summary)
    assert summary["Persons with an IMD decile"] is None
    continuous = {r[0]: shown_count(r[1]) for r in page["Continuous characteristics at index"]}
    assert all(v is None or not 1 <= 24 - v <= THRESHOLD for v in continuous.values()), continuous


EARLIER = 4_000_002   # a condition 21 of the 24 people with a GI bleed had before it


def outcome_before_index(world, persons: list[int]) -> int:
    """An outcome cohort (run) of ``persons``, each with the outcome a year before their GI bleed."""
    store = world.store
    store.insert_arrow("concept", pa.table({
        "concept_id": [EARLIER], "concept_name": ["An earlier condition"], "domain_id": ["Condition"],
        "vocabulary_id": ["SNOMED"], "concept_class_id": ["Clinical Finding"], "standard_concept": ["S"],
        "concept_code": ["2"], "valid_start_date": [date(1970, 1, 1)], "valid_end_date": [date(2099, 12, 31)]}))
    store.insert_arrow("condition_occurrence", pa.table({
        "condition_occurrence_id": [800 + i for i in persons], "person_id": list(persons),
        "condition_concept_id": [EARLIER] * len(persons), "condition_start_date": [date(2014, 6, 1)] * len(persons),
        "condition_type_concept_id": [32020] * len(persons)}))
    earlier = circe(entry=EARLIER, rule_drug=None)
    outcome_id = make_cohort(world, world.login("res"), expression=earlier)
    assert run(world, world.login("res"), outcome_id)["result"]["persons"] == len(persons)
    return outcome_id


def test_follow_up_and_time_at_risk_never_give_a_hidden_analysed_group(world, threshold10):
    """21 of the 24 had the outcome before index: the 3 left to follow are hidden (and so is the curve),
    but "persons 24, excluded 21" and "with time at risk 24, excluded 21" gave them beside it."""
    # also 4 people without a GI bleed, so neither cohort's people lie within the other's and both sizes are
    # released (services.cohorts.size_withheld): what is tested is what the analyses show beside them
    outcome_id = outcome_before_index(world, [*range(1, 22), *range(25, 29)])
    target_id = make_cohort(world, world.login("res"), expression=circe(rule_drug=None))
    run(world, world.login("res"), target_id)

    survival = analysis_page(world, kind="survival", target_cohort_id=target_id, outcome_cohort_id=outcome_id)
    persons, excluded, followed = (shown_count(v) for v in survival["Follow-up and outcomes"][0][1:4])
    assert persons == 24 and followed is None                                 # 3 followed: hidden
    assert excluded is None or not 1 <= persons - excluded <= THRESHOLD, survival["Follow-up and outcomes"]

    incidence = analysis_page(world, kind="incidence", target_cohort_id=target_id, outcome_cohort_id=outcome_id)
    overall = [r for r in incidence["Incidence per 1,000 person-years"] if r[1] == "Overall"]
    assert overall and all(shown_count(r[3]) is None for r in overall)      # 3 at risk: hidden
    for _, target, at_risk, prevalent in incidence["People and time at risk"]:
        at_risk, prevalent = shown_count(at_risk), shown_count(prevalent)
        assert at_risk is None or prevalent is None or not 1 <= at_risk - prevalent <= THRESHOLD, \
            incidence["People and time at risk"]


def test_a_comparison_never_shows_a_characteristic_the_characterisation_hides_beside_its_cover(world, threshold10):
    """Of the 24 with a GI bleed, 3 are in their 70s, 10 in their 50s and 11 in their 60s.  The
    characterisation hides the 3 and, as their cover, the 10; the comparison listed the same age bands
    as binary covariates without their partition, so 24 - 10 - 11 gave the 3."""
    world.store.execute("UPDATE person SET year_of_birth = CASE WHEN person_id <= 3 THEN 1940 "
                        "WHEN person_id <= 13 THEN 1960 ELSE 1950 END")
    target_id = make_cohort(world, world.login("res"), expression=circe(rule_drug=None))
    comparator_id = make_cohort(world, world.login("res"))
    for cohort_id in (target_id, comparator_id):
        run(world, world.login("res"), cohort_id)
    page = analysis_page(world, kind="compare", target_cohort_id=target_id, comparator_cohort_id=comparator_id)
    binary = page["Binary covariates: standardised mean differences"]
    # the target's count is the cell after the covariate's name
    bands = {cells[i]: shown_count(cells[i + 1]) for cells in binary
             for i, text in enumerate(cells) if text.startswith("Age band: ")}
    assert len(bands) == 3 and bands["Age band: 70-79"] is None, binary
    hidden = 24 - sum(v for v in bands.values() if v is not None)
    assert not 1 <= hidden <= THRESHOLD, bands


def test_no_distribution_gives_the_youngest_or_oldest_persons_age(world):
    """The 10 with aspirin before their bleed are aged 56 to 65.  P10 and P90 are observed values
    (PERCENTILE_DISC): in a group of 10 or fewer the P10 is the youngest person's age, and in one of 9 or
    fewer the P90 the oldest's, which the analytics promise never to give (docs/disclosure.md)."""
    cohort_id = make_cohort(world, world.login("res"))
    assert run(world, world.login("res"), cohort_id)["result"]["persons"] == get_policy().publish_count(10)
    ages = [world.store.query_one(f"SELECT {2015} - year_of_birth FROM person WHERE person_id = {i}")
            for i in range(1, 11)]
    page = analysis_page(world, kind="characterise", target_cohort_id=cohort_id)
    continuous = page["Continuous characteristics at index"]
    age = next(r for r in continuous if r[0] == "Age at index (years)")
    assert shown_count(age[1]) == get_policy().publish_count(10)
    quantiles = [float(q) if q[0].isdigit() else None for q in age[4:9]]    # P10, P25, median, P75, P90
    assert min(ages) not in quantiles and max(ages) not in quantiles, (ages, age)
    assert None not in quantiles[1:4], age                                   # the middle ones are still shown
