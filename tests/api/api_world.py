"""A Mercia server over a small hand-made CDM, with people in every role and projects in every state."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import pyarrow as pa
from fastapi.testclient import TestClient

from mercia.governance import Governance, Role
from mercia.services.state import MerciaState, ServerOptions
from mercia.web.app import create_app
from tests.conftest import drop_store

PASSWORD = "correct horse battery"
GI_BLEED, ASPIRIN = 192671, 1112807
FUTURE = (date.today() + timedelta(days=365)).isoformat()
# What submitting a project needs for the public register, beside purpose, domains and end date.
PUBLIC_TEXT = {"lay_summary": "We will look at health records with names removed to learn how to improve care.",
               "purpose_category": "research", "lead_organisation": "University of the Midlands"}


def fill_small_cdm(store) -> None:
    """40 people observed 2010-2020; people 1-24 have a GI bleed in 2015, 1-10 also took aspirin before it."""
    n = 40
    store.insert_arrow("person", pa.table({
        "person_id": list(range(1, n + 1)), "gender_concept_id": [8507 if i % 2 else 8532 for i in range(1, n + 1)],
        "year_of_birth": [1950 + i for i in range(n)], "race_concept_id": [0] * n, "ethnicity_concept_id": [0] * n}))
    store.insert_arrow("observation_period", pa.table({
        "observation_period_id": list(range(1, n + 1)), "person_id": list(range(1, n + 1)),
        "observation_period_start_date": [date(2010, 1, 1)] * n, "observation_period_end_date": [date(2020, 12, 31)] * n,
        "period_type_concept_id": [44814724] * n}))
    store.insert_arrow("condition_occurrence", pa.table({
        "condition_occurrence_id": list(range(1, 25)), "person_id": list(range(1, 25)),
        "condition_concept_id": [GI_BLEED] * 24, "condition_start_date": [date(2015, 6, 1)] * 24,
        "condition_type_concept_id": [32020] * 24}))
    store.insert_arrow("drug_exposure", pa.table({
        "drug_exposure_id": list(range(1, 11)), "person_id": list(range(1, 11)), "drug_concept_id": [ASPIRIN] * 10,
        "drug_exposure_start_date": [date(2015, 3, 1)] * 10, "drug_exposure_end_date": [date(2015, 4, 1)] * 10,
        "drug_type_concept_id": [38000177] * 10}))
    concepts = [(GI_BLEED, "Gastrointestinal hemorrhage", "Condition", "SNOMED"),
                (ASPIRIN, "Aspirin", "Drug", "RxNorm")]
    store.insert_arrow("concept", pa.table({
        "concept_id": [c[0] for c in concepts], "concept_name": [c[1] for c in concepts],
        "domain_id": [c[2] for c in concepts], "vocabulary_id": [c[3] for c in concepts],
        "concept_class_id": ["Clinical Finding", "Ingredient"], "standard_concept": ["S", "S"],
        "concept_code": ["74474003", "1191"], "valid_start_date": [date(1970, 1, 1)] * 2,
        "valid_end_date": [date(2099, 12, 31)] * 2}))
    store.insert_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": [GI_BLEED, ASPIRIN], "descendant_concept_id": [GI_BLEED, ASPIRIN],
        "min_levels_of_separation": [0, 0], "max_levels_of_separation": [0, 0]}))


def circe(entry=GI_BLEED, rule_drug: int | None = ASPIRIN) -> dict:
    """GI bleed (first), optionally requiring aspirin in the 365 days before."""
    sets = [{"id": 0, "name": "GI bleed", "expression": {"items": [
        {"concept": {"CONCEPT_ID": entry}, "includeDescendants": True}]}}]
    rules = []
    if rule_drug:
        sets.append({"id": 1, "name": "Aspirin", "expression": {"items": [
            {"concept": {"CONCEPT_ID": rule_drug}, "includeDescendants": True}]}})
        rules.append({"name": "Aspirin before", "expression": {"Type": "ALL", "CriteriaList": [{
            "Criteria": {"DrugExposure": {"CodesetId": 1}},
            "StartWindow": {"Start": {"Days": 365, "Coeff": -1}, "End": {"Days": 0, "Coeff": 1}},
            "Occurrence": {"Type": 2, "Count": 1}}], "DemographicCriteriaList": [], "Groups": []}})
    return {"ConceptSets": sets, "PrimaryCriteria": {
        "CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0, "First": True}}],
        "ObservationWindow": {"PriorDays": 0, "PostDays": 0}, "PrimaryCriteriaLimit": {"Type": "First"}},
        "InclusionRules": rules}


@dataclass
class World:
    client: TestClient
    gov: Governance
    people: dict
    approved: int      # approved project, res is its lead
    other: int         # approved project of res2's team
    draft: int
    expired: int

    @property
    def store(self):
        """The research store the server runs on."""
        return self.client.app.state.mercia.root_store

    def login(self, username: str) -> dict[str, str]:
        """Headers with a personal API token for ``username``."""
        _, secret = self.gov.create_token(self.people[username], "test")
        return {"Authorization": f"Bearer {secret}"}


def approve(gov, people, project_id):
    gov.submit(people["res"] if people["res"].id in gov.project(project_id).members else people["res2"], project_id)
    gov.decide(people["lead"], project_id, "approve")
    gov.decide(people["govo"], project_id, "approve")


@dataclass(frozen=True)
class Filled:
    """What ``fill_world`` made: the people and the projects, by id."""
    people: dict
    approved: int
    other: int
    draft: int
    expired: int


def fill_world(store, state_store=None) -> Filled:
    """The small CDM in the research ``store``; people and projects in every state in the state store
    (``state_store``, a Spark CDM's, or the research store itself)."""
    store.init_schema()
    fill_small_cdm(store)
    gov = MerciaState(store, ServerOptions(job_workers=1), state_store).gov
    spec = {"res": [(Role.RESEARCHER, "")], "res2": [(Role.RESEARCHER, "")], "clin": [(Role.CLINICIAN, "")],
            "lead": [(Role.PILLAR_LEAD, "cancer")], "govo": [(Role.GOVERNANCE_OFFICER, "")],
            "checker": [(Role.OUTPUT_CHECKER, "")], "checker2": [(Role.OUTPUT_CHECKER, ""), (Role.RESEARCHER, "")],
            "dm": [(Role.DATA_MANAGER, "OMOP CDM store")], "admin": [(Role.ADMIN, "")]}
    people = {name: gov.create_user(name, name.title(), PASSWORD, roles) for name, roles in spec.items()}
    fields = dict(pillar="cancer", purpose="Outcomes after GI bleeding",
                  scope_domains=["condition_occurrence", "drug_exposure", "person", "death"], expires_on=FUTURE,
                  **PUBLIC_TEXT)
    approved = gov.create_project(people["res"], title="GI bleed outcomes", **fields).id
    gov.add_member(people["res"], approved, people["checker2"].id)
    approve(gov, people, approved)
    other = gov.create_project(people["res2"], title="Other team", **fields).id
    approve(gov, people, other)
    draft = gov.create_project(people["res"], title="Draft idea", **fields).id
    expired = gov.create_project(people["res"], title="Old study", **fields).id
    approve(gov, people, expired)
    gov.db.execute("UPDATE mercia_project SET expires_on = ? WHERE id = ?",
                   [(date.today() - timedelta(days=1)).isoformat(), expired])
    return Filled(people, approved, other, draft, expired)


def open_world(store, filled: Filled, state_store=None) -> World:
    """The server over a store that ``fill_world`` filled (or over a copy of one)."""
    app = create_app(store, ServerOptions(secure_cookies=True, job_workers=1), state_store)
    client = TestClient(app, base_url="https://testserver")
    return World(client, app.state.mercia.gov, copy.deepcopy(filled.people), filled.approved, filled.other,
                 filled.draft, filled.expired)


def serve(store, filled: Filled) -> Iterator[World]:
    """For a fixture: the server running over a copy that ``fill_world`` (or a module's build on it)
    filled, the copy dropped after the test."""
    world = open_world(store, filled)
    with world.client:
        yield world
    drop_store(store)


def build_world(store, state_store=None) -> World:
    """The world over the research ``store``; governance in ``state_store`` when given (a Spark CDM)."""
    return open_world(store, fill_world(store, state_store), state_store)
