"""The demo's clinical trial and its eCRF study, made through the trial and eCRF services as their users
would (so every step is checked and audited like any other): a pragmatic open-label trial in the approved
diabetes project, run at the region's GP practices, with its team and signed delegation log, people
pre-screened, approached, consented and randomised over the last months, and the linked eCRF study with
baseline forms entered, an adverse event, an open monitor's query and a signed, locked form.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from mercia.governance import User
from mercia.trials.crf.service import CrfService, FormStatus, StudyRole
from mercia.trials.prescreen import worklist
from mercia.trials.randomise import KeyedStream
from mercia.trials.recruitment import Recruitment
from mercia.trials.register import TrialRegister, TrialRole

TRIAL_ID = "ISRCTN90000001"
TRIAL_TITLE = "StartWell: a pharmacist-led medicines review when starting metformin (demonstration)"
STUDY = "startwell"
DICTIONARY = Path(__file__).with_name("study.csv")
MANUAL_CRITERIA = ["HbA1c 58 mmol/mol or more at the last test", "Not taking insulin"]
ARM = "arm_1"   # the one schedule both trial arms follow (REDCap's arm naming)
BASELINE, MONTH_3, ADVERSE_EVENTS = "baseline_arm_1", "month_3_arm_1", "adverse_events_arm_1"
# What happens to each person taken from a site's worklist, in turn: most go on to randomisation; the
# others stop where real recruitment stops (declined, not eligible at screening, still being approached).
OUTCOMES = ["randomised", "randomised", "declined", "randomised", "ineligible", "randomised", "approached",
            "randomised", "prescreened", "randomised"]
REASONS = {"declined": "Prefers to keep their usual reviews with the practice nurse",
           "ineligible": "HbA1c below 58 mmol/mol at screening"}
SIGN_DELEGATION = "I delegate these duties and will supervise them"
SIGN_FORM = "I confirm the data on this form are accurate and complete"


def build_demo_trial(state, people: dict[str, User], passwords: dict[str, str], project_id: int,
                     practices: list[str], eligibility: dict, randomisation_key: bytes) -> None:
    """The trial, its team, its eCRF study and its recruitment so far (see the module docstring)."""
    register = TrialRegister(state.store, state.gov)
    recruitment = Recruitment(register, KeyedStream(randomisation_key))
    coordinator, clinician, nurse = people["coordinator"], people["clinician"], people["nurse"]
    today = date.today()
    opens = today - timedelta(days=180)
    factors = [{"name": "sex", "levels": ["F", "M"]}, {"name": "age", "levels": ["<65", "65+"]}]
    if len(practices) > 1:      # a small region has one practice, and a factor needs two levels
        factors.insert(0, {"name": "site", "levels": practices})
    register.create(
        coordinator, trial_id=TRIAL_ID, title=TRIAL_TITLE, project_id=project_id,
        sponsor="University of the Midlands (demonstration)", chief_investigator="Dr Lena Okafor",
        sites=practices, target=60 * len(practices), opens_on=opens.isoformat(),
        closes_on=(today + timedelta(days=365)).isoformat(), eligibility=eligibility,
        manual_criteria=MANUAL_CRITERIA, blinded=False,
        settings={"method": "minimisation", "arms": [{"code": "review"}, {"code": "usual_care"}],
                  "factors": factors, "probability": 0.8})
    home = practices[0]
    grants = [(clinician, TrialRole.SITE_INVESTIGATOR, home), (clinician, TrialRole.CARE_TEAM, home),
              (people["researcher"], TrialRole.STATISTICIAN, "")]
    grants += [(nurse, TrialRole.RESEARCH_NURSE, site) for site in practices]
    for member, role, site in grants:
        register.grant(coordinator, TRIAL_ID, member.id, role, site)
    # The trial manager signs off the investigator's and the statistician's roles, the investigator the
    # nurse's role at their own practice; the nurse's roles elsewhere await a site investigator there.
    for signer, member, role, site in [(coordinator, clinician, TrialRole.SITE_INVESTIGATOR, home),
                                       (coordinator, clinician, TrialRole.CARE_TEAM, home),
                                       (coordinator, people["researcher"], TrialRole.STATISTICIAN, ""),
                                       (clinician, nurse, TrialRole.RESEARCH_NURSE, home)]:
        register.sign_delegation(signer, TRIAL_ID, member.id, role, site, signer.username,
                                 passwords[signer.username], SIGN_DELEGATION)
    crf = recruitment.crf
    build_study(crf, people)
    recruitment.link_study(coordinator, TRIAL_ID, STUDY, {"review": ARM, "usual_care": ARM})
    records = recruit(register, recruitment, nurse, practices, opens)
    enter_forms(crf, people, passwords, records, home)


def build_study(crf: CrfService, people: dict[str, User]) -> None:
    """The eCRF study: the demo's own data dictionary, its schedule and its team."""
    coordinator = people["coordinator"]
    crf.create_study(coordinator, STUDY, "StartWell case report forms")
    for username, role in [("datamanager", StudyRole.DATA_MANAGER), ("nurse", StudyRole.DATA_ENTRY),
                           ("monitor", StudyRole.MONITOR), ("clinician", StudyRole.INVESTIGATOR)]:
        crf.add_member(coordinator, STUDY, username, role)
    crf.import_dictionary(coordinator, STUDY, DICTIONARY.read_text())
    crf.add_event(coordinator, STUDY, ARM, BASELINE, "Baseline", ["baseline", "eq5d"])
    crf.add_event(coordinator, STUDY, ARM, MONTH_3, "Month 3", ["month_3", "eq5d"], day_offset=91,
                  window_before=14, window_after=14)
    crf.add_event(coordinator, STUDY, ARM, ADVERSE_EVENTS, "Adverse events", ["adverse_event"])


def recruit(register: TrialRegister, recruitment: Recruitment, nurse: User, practices: list[str],
            opens: date) -> list[dict]:
    """Take each practice's worklist through ``OUTCOMES``, dated across the months the trial has been open;
    returns the randomised participants (person, site, eCRF record), in the order they were randomised."""
    randomised = []
    for s, site in enumerate(practices):
        persons = sorted(r["person_id"] for r in worklist(register, nurse, TRIAL_ID, site))[:len(OUTCOMES)]
        levels = minimisation_levels(register, persons, site, len(practices) > 1)
        for i, (person_id, outcome) in enumerate(zip(persons, OUTCOMES, strict=False)):
            approached = opens + timedelta(days=14 * i + 5 * s + 7)
            path = ["prescreened", "approached", "screened", "consented"]
            reached = {"randomised": 4, "prescreened": 1}.get(outcome, 2)   # declined, ineligible: once approached
            for k, status in enumerate(path[:reached]):
                recruitment.record(nurse, TRIAL_ID, person_id, status, site=site,
                                   on=(approached + timedelta(days=7 * (k - 1))).isoformat(),
                                   confirmed=MANUAL_CRITERIA if status == "screened" else None)
            if outcome in REASONS:
                recruitment.record(nurse, TRIAL_ID, person_id, outcome, site=site, reason=REASONS[outcome],
                                   on=(approached + timedelta(days=7)).isoformat())
            elif outcome == "randomised":
                allocated = recruitment.randomise(nurse, TRIAL_ID, person_id, levels[person_id])
                randomised.append({"person_id": person_id, "site": site, "record": allocated["crf_record"]})
    return randomised


def minimisation_levels(register: TrialRegister, persons: list[int], site: str, by_site: bool
                        ) -> dict[int, dict[str, str]]:
    """Each person's minimisation factors (sex, age band, and their site ``by_site``) from their OMOP person
    record."""
    if not persons:
        return {}
    rows = register.store.query_dicts(
        f"SELECT person_id, gender_concept_id, year_of_birth FROM person "
        f"WHERE person_id IN ({', '.join('?' for _ in persons)})", persons)
    year = date.today().year
    return {int(r["person_id"]): {**({"site": site} if by_site else {}),
                                  "sex": "F" if r["gender_concept_id"] == 8532 else "M",
                                  "age": "65+" if year - int(r["year_of_birth"]) >= 65 else "<65"} for r in rows}


def enter_forms(crf: CrfService, people: dict[str, User], passwords: dict[str, str], records: list[dict],
                home: str) -> None:
    """Baseline forms for every participant (EQ-5D-5L too where its value sets are installed), one adverse
    event, the monitor's open query and the investigator's signature (which locks the form)."""
    from mercia.proms.valuesets import ValueSetError, value_set

    nurse = people["nurse"]
    try:
        value_set("england_2018")
        proms = True
    except ValueSetError:
        proms = False          # the EQ-5D value sets come with the public test data; without them no scores
    today = date.today().isoformat()
    for r in records:
        p = r["person_id"]
        crf.save_form(nurse, STUDY, r["record"], BASELINE, "baseline", {
            "visit_date": today, "hba1c": str(58 + p % 30), "weight_kg": str(70 + p % 40),
            "sbp": str(120 + p % 35), "smoking": str(1 + p % 3), "metformin_mg": "500"},
            status=FormStatus.COMPLETE)
        if proms:
            crf.save_form(nurse, STUDY, r["record"], BASELINE, "eq5d", {
                "eq_mo": str(1 + p % 2), "eq_sc": "1", "eq_ua": str(1 + p % 3), "eq_pd": str(1 + p % 4),
                "eq_ad": str(1 + p % 2), "eq_vas": str(60 + p % 35)}, status=FormStatus.COMPLETE)
    if not records:
        return
    first = next((r for r in records if r["site"] == home), records[0])
    crf.save_form(nurse, STUDY, first["record"], ADVERSE_EVENTS, "adverse_event", {
        "ae_any": "1", "ae_description": "Stomach upset in the first week of metformin", "ae_onset": today,
        "ae_severity": "1", "ae_serious": "0", "ae_related": "2"}, status=FormStatus.COMPLETE)
    crf.sign(people["clinician"], STUDY, first["record"], BASELINE, "baseline", "clinician",
             passwords["clinician"], SIGN_FORM)
    queried = records[-1]
    crf.raise_query(people["monitor"], STUDY, queried["record"], BASELINE, "baseline", "weight_kg",
                    "Please check this weight against the practice record; it differs by more than 5 kg.")
