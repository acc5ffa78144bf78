"""Property: whatever the data, no analytics output carries an unredacted count of 1..threshold, and
no statistic of a group whose size is withheld.

Per example the four analyses run once, raw, on one in-memory DuckDB built once per module (only the
rows change, by Arrow bulk insert), and every policy is applied to the same raw results: the policy is
what is under test, and ``finish`` is exactly ``policy.apply(raw)``.  That engine choice does not weaken
the property: the analyses' engine equivalence is tested on every engine in the other analytics tests.
Examples: the ``disclosure-dev`` profile locally, ``disclosure-ci`` (500) in CI (tests/conftest.py).
"""

from __future__ import annotations

from datetime import date, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercia.analytics.base import AnalyticsError
from mercia.analytics.characterise import characterise
from mercia.analytics.compare import compare
from mercia.analytics.incidence import incidence
from mercia.analytics.survival import survival
from mercia.cdm import Store
from mercia.privacy.disclosure import POLICIES, POPULATION, AnalysisResult, Kind
from tests.analytics.conftest import Cdm
from tests.conftest import DISCLOSURE_PROFILE

START = date(2015, 1, 1)
TABLES = ["person", "observation_period", "cohort", "condition_occurrence", "drug_exposure"]

person = st.fixed_dictionaries({
    "sex": st.sampled_from([8507, 8532]),
    "born": st.integers(1930, 2010),
    "index_day": st.integers(0, 1500),
    "obs_days": st.integers(1, 2500),
    "in_comparator": st.booleans(),
    "outcome_day": st.none() | st.integers(-200, 2000),
    "conditions": st.lists(st.tuples(st.sampled_from([201, 202, 203]), st.integers(-400, 10)), max_size=3),
    "codes": st.lists(st.sampled_from(["I21.0", "I50.9", "E11.2", "C78.1", "F32.0"]), max_size=2),
    "imd": st.none() | st.integers(1, 10),
})


@pytest.fixture(scope="module")
def cdm():
    """One in-memory CDM for every example of the module; ``load`` replaces its rows."""
    store = Store(":memory:")
    store.execute("SET threads = 1")  # tiny tables: one thread avoids scheduling overhead per query
    store.init_schema()
    store.execute("CREATE TABLE mercia_person_link (person_id BIGINT, imd_decile BIGINT, load_id BIGINT)")
    yield Cdm(store)
    store.close()


def load(cdm, people: list[dict]) -> None:
    for table in [*TABLES, "mercia_person_link"]:
        cdm.store.execute(f"DELETE FROM {table}")
    rows: dict[str, list[dict]] = {t: [] for t in TABLES}
    deciles = []
    condition_id = 0
    for pid, p in enumerate(people, start=1):
        index = START + timedelta(days=p["index_day"])
        rows["person"].append({"person_id": pid, "gender_concept_id": p["sex"], "year_of_birth": p["born"],
                               "race_concept_id": 0, "ethnicity_concept_id": 0})
        rows["observation_period"].append({
            "observation_period_id": pid, "person_id": pid, "observation_period_start_date": START,
            "observation_period_end_date": index + timedelta(days=p["obs_days"]), "period_type_concept_id": 0})
        rows["cohort"].append({"cohort_definition_id": 1, "subject_id": pid, "cohort_start_date": index,
                               "cohort_end_date": index + timedelta(days=30)})
        if p["in_comparator"]:
            rows["cohort"].append({"cohort_definition_id": 3, "subject_id": pid, "cohort_start_date": index,
                                   "cohort_end_date": index + timedelta(days=30)})
        if p["outcome_day"] is not None:
            day = index + timedelta(days=p["outcome_day"])
            rows["cohort"].append({"cohort_definition_id": 2, "subject_id": pid, "cohort_start_date": day,
                                   "cohort_end_date": day})
        for concept, offset in p["conditions"]:
            condition_id += 1
            rows["condition_occurrence"].append({
                "condition_occurrence_id": condition_id, "person_id": pid, "condition_concept_id": concept,
                "condition_start_date": index + timedelta(days=offset), "condition_type_concept_id": 0})
        for code in p["codes"]:
            condition_id += 1
            rows["condition_occurrence"].append({
                "condition_occurrence_id": condition_id, "person_id": pid, "condition_concept_id": 0,
                "condition_start_date": index - timedelta(days=10), "condition_type_concept_id": 0,
                "condition_source_value": code})
        if p["imd"] is not None:
            deciles.append(f"({pid}, {p['imd']}, 1)")
    for table, found in rows.items():
        if found:
            cdm.insert(table, found)
    cdm.flush()
    if deciles:
        cdm.store.execute(f"INSERT INTO mercia_person_link VALUES {', '.join(deciles)}")


def assert_safe(result: AnalysisResult, policy) -> None:
    orjson.dumps(result.to_json_dict())
    assert result.disclosure.policy == policy.name
    for table in result.tables:
        counts = [c.name for c in table.columns if c.kind == Kind.COUNT]
        if table.kind == "life_table":
            assert all(name.endswith(f"_midpoint{policy.life_table_bin}_derived") for name in counts)
            assert not table.rows or table.population > policy.threshold
            continue
        assert table.population is None or not 1 <= table.population <= policy.threshold
        for row in table.rows:
            for name in counts:
                value = row[name]
                assert value is None or value == 0 or value > policy.threshold, (table.name, name, row)
                if value is not None and policy.rounding_base:
                    assert value % policy.rounding_base == 0
            for col in table.columns:
                if col.kind in (Kind.STATISTIC, Kind.DERIVED) and row.get(col.name) is not None:
                    for basis in [*col.basis, *(a for a in col.args if a in counts or a == POPULATION)]:
                        published = table.population if basis == POPULATION else row[basis]
                        assert published is not None, (table.name, col.name, basis, row)
        for total in table.totals if policy.totals_from_published_cells else []:
            for part in table.partitions:
                if set(total) == {part.column, *part.within}:
                    members = [r for r in table.rows if all(r[w] == total.get(w) for w in part.within)]
                    assert total[part.column] == sum(r[part.column] or 0 for r in members)


@settings(settings.get_profile(DISCLOSURE_PROFILE))
@given(people=st.lists(person, min_size=1, max_size=30))
def test_no_analytics_output_reveals_a_small_count(cdm, people):
    load(cdm, people)
    store = cdm.store
    raw = [characterise(store, 1, windows=["-365:0", "-30:0"], domains=["condition", "drug"], raw=True),
           incidence(store, 1, 2, tars=["0:365", "0:end"], raw=True)]
    if any(p["in_comparator"] for p in people):
        raw.append(compare(store, 1, 3, domains=["condition"], raw=True))
    try:
        raw.append(survival(store, 1, 2, raw=True))
    except AnalyticsError as exc:  # nobody followed: an error naming the cohort, never output
        assert "nobody is in observation" in str(exc)
    for policy in POLICIES.values():  # opensafely, nhse-hes, threshold10: each on the same raw results
        for result in raw:
            assert_safe(policy.apply(result), policy)
