"""A small region for trial tests: two practices (sites), people with type 2 diabetes diagnosed over five
years, a pseudonymised person link, governance people in every trial role, and an approved project."""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta

import pyarrow as pa
import pytest

from mercia.cdm import Store
from mercia.cdm.extensions import ensure_extension_tables
from mercia.governance import Governance, Role
from mercia.privacy.pseudonym import Pseudonymiser
from mercia.trials.prescreen import rerun_eligibility
from mercia.trials.randomise import KeyedStream
from mercia.trials.recruitment import Recruitment
from mercia.trials.register import TrialRegister, TrialRole
from tests.conftest import drop_store, postgres_url

T2DM = 201826
SITE_A, SITE_B = "A81001", "A81002"
N = 60   # people 1-40 at site A, 41-60 at site B; all have T2DM
FUTURE = (date.today() + timedelta(days=365)).isoformat()
PSEUDONYMISER = Pseudonymiser(b"k" * 32)


def nhs_number(person_id: int) -> str:
    return f"{9000000000 + person_id}"


def diagnosis_date(person_id: int) -> date:
    """Spread over 2021-2025, one person a month in turn."""
    return date(2021 + (person_id - 1) % 60 // 12, (person_id - 1) % 12 + 1, 15)


def fill_region(store) -> None:
    ensure_extension_tables(store)
    ids = list(range(1, N + 1))
    store.insert_arrow("care_site", pa.table({"care_site_id": [1, 2], "care_site_name": ["Practice A", "Practice B"],
                                              "care_site_source_value": [SITE_A, SITE_B]}))
    store.insert_arrow("person", pa.table({
        "person_id": ids, "gender_concept_id": [8507 if i % 2 else 8532 for i in ids],
        "year_of_birth": [1950 + i % 30 for i in ids], "race_concept_id": [0] * N, "ethnicity_concept_id": [0] * N,
        "care_site_id": [1 if i <= 40 else 2 for i in ids]}))
    store.insert_arrow("observation_period", pa.table({
        "observation_period_id": ids, "person_id": ids, "observation_period_start_date": [date(2010, 1, 1)] * N,
        "observation_period_end_date": [date(2035, 12, 31)] * N, "period_type_concept_id": [44814724] * N}))
    store.insert_arrow("condition_occurrence", pa.table({
        "condition_occurrence_id": ids, "person_id": ids, "condition_concept_id": [T2DM] * N,
        "condition_start_date": [diagnosis_date(i) for i in ids], "condition_type_concept_id": [32020] * N}))
    store.insert_arrow("concept", pa.table({
        "concept_id": [T2DM], "concept_name": ["Type 2 diabetes mellitus"], "domain_id": ["Condition"],
        "vocabulary_id": ["SNOMED"], "concept_class_id": ["Clinical Finding"], "standard_concept": ["S"],
        "concept_code": ["44054006"], "valid_start_date": [date(1970, 1, 1)], "valid_end_date": [date(2099, 12, 31)]}))
    store.insert_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": [T2DM], "descendant_concept_id": [T2DM], "min_levels_of_separation": [0],
        "max_levels_of_separation": [0]}))
    store.insert_arrow("death", pa.table({"person_id": [3], "death_date": [date(2024, 1, 1)],
                                          "death_type_concept_id": [32817]}))
    pseudonyms = PSEUDONYMISER.nhs_pseudonyms(pa.array([nhs_number(i) for i in ids])).to_pylist()
    store.insert_arrow("mercia_person_link", pa.table({
        "person_id": ids, "org": [SITE_A if i <= 40 else SITE_B for i in ids], "source_pseudonym": [f"s{i}" for i in ids],
        "nhs_pseudonym": pseudonyms, "nhs_status": ["verified"] * N, "record_hash": ["h"] * N,
        "gender_concept_id": [0] * N, "load_id": [1] * N}))
    store.execute("CREATE TABLE IF NOT EXISTS mercia_opt_out (nhs_pseudonym VARCHAR NOT NULL)")
    store.insert_arrow("mercia_opt_out", pa.table({"nhs_pseudonym": [pseudonyms[4]]}))   # person 5


def eligibility() -> dict:
    return {"ConceptSets": [{"id": 0, "name": "T2DM", "expression": {"items": [
        {"concept": {"CONCEPT_ID": T2DM}, "includeDescendants": True}]}}],
        "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0, "First": True}}],
                            "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                            "PrimaryCriteriaLimit": {"Type": "First"}},
        "InclusionRules": []}


@dataclass
class TrialWorld:
    store: object
    gov: Governance
    register: TrialRegister
    recruitment: Recruitment
    people: dict
    project: int
    trial_id: str


def fill_world(store, method: str = "minimisation", blinded: bool = True) -> tuple[dict, int]:
    """The region, the governance people and the approved project, and the trial with its roles granted:
    returns the people and the project id."""
    fill_region(store)
    gov = Governance(store)
    spec = {"manager": ([(Role.TRIAL_COORDINATOR, "")], None), "lead": ([(Role.PILLAR_LEAD, "chronic")], None),
            "govo": ([(Role.GOVERNANCE_OFFICER, "")], None), "nurse_a": ([(Role.CLINICIAN, "")], SITE_A),
            "pi_a": ([(Role.CLINICIAN, "")], SITE_A), "gp_a": ([(Role.CLINICIAN, "")], SITE_A),
            "gp_b": ([(Role.CLINICIAN, "")], SITE_B), "stats": ([(Role.RESEARCHER, "")], None),
            "pharm": ([(Role.CLINICIAN, "")], SITE_A), "researcher": ([(Role.RESEARCHER, "")], SITE_A)}
    people = {n: gov.create_user(n, n.title(), None, roles, organisation=org) for n, (roles, org) in spec.items()}
    project = gov.create_project(people["manager"], title="Diabetes trial", pillar="chronic", purpose="A trial",
                                 scope_domains=["person", "condition_occurrence"], expires_on=FUTURE,
                                 lay_summary="A trial of a new way to help people with diabetes.",
                                 purpose_category="trial_feasibility", lead_organisation="Midlands NHS Trust").id
    gov.submit(people["manager"], project)
    gov.decide(people["lead"], project, "approve")
    gov.decide(people["govo"], project, "approve")
    register = TrialRegister(store, gov)
    factors = [{"name": "sex", "levels": ["F", "M"]}, {"name": "age", "levels": ["<65", "65+"]}]
    register.create(people["manager"], trial_id="ISRCTN12345678", title="Diabetes drug trial", project_id=project,
                    sponsor="Mercia NHS FT", chief_investigator="Dr Chief", sites=[SITE_A, SITE_B], target=40,
                    opens_on=(date.today() - timedelta(days=30)).isoformat(), closes_on=FUTURE,
                    eligibility=eligibility(), manual_criteria=["HbA1c over 58 mmol/mol", "no insulin"],
                    settings={"method": method, "arms": [{"code": "drug"}, {"code": "placebo"}], "factors": factors},
                    blinded=blinded)
    for name, role, site in (("nurse_a", TrialRole.RESEARCH_NURSE, SITE_A), ("pi_a", TrialRole.SITE_INVESTIGATOR, SITE_A),
                             ("gp_a", TrialRole.CARE_TEAM, SITE_A), ("gp_b", TrialRole.CARE_TEAM, SITE_B),
                             ("stats", TrialRole.STATISTICIAN, ""), ("pharm", TrialRole.UNBLINDED_PHARMACIST, SITE_A)):
        register.grant(people["manager"], "ISRCTN12345678", people[name].id, role, site)
    rerun_eligibility(register, people["nurse_a"], "ISRCTN12345678", SITE_A)
    return people, project


def open_world(store, people: dict, project: int) -> TrialWorld:
    """The services over a store that ``fill_world`` filled (or a copy of one)."""
    register = TrialRegister(store, Governance(store))
    recruitment = Recruitment(register, KeyedStream(b"test-randomisation-key-0123456789abcdef"))
    return TrialWorld(store, register.gov, register, recruitment, copy.deepcopy(people), project, "ISRCTN12345678")


def make_world(store, method: str = "minimisation", blinded: bool = True) -> TrialWorld:
    return open_world(store, *fill_world(store, method, blinded))


@pytest.fixture
def world(engine, prepared, tmp_path) -> TrialWorld:
    """The default world, built once per module and engine; each test writes to its own copy."""
    store, (people, project) = prepared(engine, fill_world, tmp_path)
    yield open_world(store, people, project)
    drop_store(store)


def second_server_waits_then_is_refused(world, first: Callable[[], object], second: Callable[[TrialRegister], object],
                                        error: type[Exception], match: str) -> None:
    """Two connections (two servers): ``second`` runs on a register of its own while ``first`` is inside a
    transaction not yet committed; it must wait for that commit, then be refused (``error`` matching ``match``)."""
    other = Store(postgres_url(), schema=world.store.schema)
    try:
        register = TrialRegister(other)    # made first: making it sets up tables, which would wait on ``first``
        with ThreadPoolExecutor(1) as pool:
            with world.register.db.transaction():
                first()
                racing = pool.submit(second, register)
                with pytest.raises(TimeoutError):
                    racing.result(timeout=1)                   # waits for the first to commit
            with pytest.raises(error, match=match):
                racing.result(timeout=30)
    finally:
        other.close()
