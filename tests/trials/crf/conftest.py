"""A study on each engine with the four study roles filled, and the baseline dictionary imported."""

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from argon2 import PasswordHasher

from mercia.governance import Governance, Role
from mercia.trials.crf.service import CrfService, StudyRole
from tests.conftest import drop_store, open_store

DICTIONARIES = Path(__file__).parent / "dictionaries"
PASSWORD = "correct horse battery"
BMI, SBP, MMHG = 3038553, 3004249, 8876


class Team:
    def __init__(self, gov: Governance):
        self.gov = gov
        self.crf = CrfService(gov)

        def make(name, role):
            return gov.create_user(name, name.replace("_", " ").title(), PASSWORD, [(role, "")])

        self.manager = make("dm_dana", Role.TRIAL_COORDINATOR)
        self.entry = make("nurse_ed", Role.RESEARCHER)
        self.monitor = make("cra_mo", Role.RESEARCHER)
        self.signer = make("dr_pi", Role.CLINICIAN)
        self.outsider = make("someone_else", Role.RESEARCHER)
        self.crf.create_study(self.manager, "heart", "HEART trial")
        for user, role in ((self.entry, StudyRole.DATA_ENTRY), (self.monitor, StudyRole.MONITOR),
                           (self.signer, StudyRole.INVESTIGATOR)):
            self.crf.add_member(self.manager, "heart", user.username, role)
        self.crf.import_dictionary(self.manager, "heart", (DICTIONARIES / "baseline.csv").read_text())
        self.crf.add_event(self.manager, "heart", "arm_1", "enrolment_arm_1", "Enrolment", ["enrolment"])
        self.crf.add_event(self.manager, "heart", "arm_1", "baseline_arm_1", "Baseline", ["demographics"],
                           day_offset=7, window_before=2, window_after=5)
        self.crf.add_participant(self.manager, "heart", "H001", "arm_1", "2024-03-01")
        self.crf.add_participant(self.manager, "heart", "H002", "arm_1", "2024-03-02")

    def look_alike(self):
        """Another trial coordinator's study 'he_rt' (LIKE's '_' matches the 'a' of 'heart'), with its own
        H001; returns its data manager."""
        other = self.gov.create_user("other_dm", "Other", PASSWORD, [(Role.TRIAL_COORDINATOR, "")])
        self.crf.create_study(other, "he_rt", "Look-alike")
        self.crf.import_dictionary(other, "he_rt", (DICTIONARIES / "baseline.csv").read_text())
        self.crf.add_event(other, "he_rt", "arm_1", "enrolment_arm_1", "Enrolment", ["enrolment"])
        self.crf.add_participant(other, "he_rt", "H001", "arm_1", "2024-03-01")
        return other


@pytest.fixture
def team(engine, tmp_path):
    store = open_store(engine, tmp_path)
    yield Team(Governance(store))
    drop_store(store)


@pytest.fixture
def prom_team(engine, tmp_path, monkeypatch):
    """The study with PROMs and OMOP-mapped fields (with_proms.csv), a Month 3 EQ-5D-5L visit, and P042, a
    participant with an OMOP person, on a store with the CDM tables and the two mapped concepts."""
    monkeypatch.setattr("mercia.governance.passwords.hasher", PasswordHasher(time_cost=1, memory_cost=1024))
    store = open_store(engine, tmp_path)
    store.init_schema()
    store.insert_arrow("concept", pa.table({
        "concept_id": [BMI, SBP], "concept_name": ["Body mass index", "Systolic blood pressure"],
        "domain_id": ["Measurement", "Measurement"], "vocabulary_id": ["LOINC", "LOINC"],
        "concept_class_id": ["Clinical Observation"] * 2, "standard_concept": ["S", "S"],
        "concept_code": ["39156-5", "8480-6"], "valid_start_date": [date(1970, 1, 1)] * 2,
        "valid_end_date": [date(2099, 12, 31)] * 2}))
    built = Team(Governance(store))
    crf, dm = built.crf, built.manager
    crf.import_dictionary(dm, "heart", (DICTIONARIES / "with_proms.csv").read_text(), reason="PROMs and blood pressure")
    crf.add_event(dm, "heart", "arm_1", "month_3_arm_1", "Month 3", ["eq5d"], day_offset=90)
    crf.add_participant(dm, "heart", "P042", "arm_1", "2024-03-01", person_id=42)
    yield built
    drop_store(store)
