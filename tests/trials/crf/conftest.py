"""A study on each engine with the four study roles filled, and the baseline dictionary imported."""

from pathlib import Path

import pytest

from mercia.governance import Governance, Role
from mercia.trials.crf.service import CrfService, StudyRole
from tests.conftest import drop_store, open_store

DICTIONARIES = Path(__file__).parent / "dictionaries"
PASSWORD = "correct horse battery"


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


@pytest.fixture
def team(engine, tmp_path):
    store = open_store(engine, tmp_path)
    yield Team(Governance(store))
    drop_store(store)
