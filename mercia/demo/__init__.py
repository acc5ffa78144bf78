"""``mercia demo``: a working Mercia on this machine in one command.

Builds a demo store (a synthetic region from ``mercia.synth``), registers one person for each role
with a fresh random password (printed, never stored in the repository), registers the region's
organisations by ODS code, writes its own pseudonymisation key file in its data folder (outside the
repository), sets up approved projects with a cohort already run, a clinical trial recruiting with its
eCRF study (``mercia.demo.trial``, randomised with the demo's own key file), and serves the app on
http://127.0.0.1:8000.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import typer

from mercia.cdm import Store
from mercia.demo.trial import STUDY, TRIAL_ID, build_demo_trial
from mercia.governance.model import Role

KEY_FILE = "pseudonym.key"
RANDOMISATION_KEY_FILE = "randomisation.key"
# An organisation with no synthetic records, for trying uploads (a Synthea FHIR bundle, say).
UPLOAD_ORGANISATION = ("RRK", "Demo acute trust (uploads)", "acute")

# username, display name, roles (scope "SOURCE" becomes the demo store's source name, "ORGS" every
# registered organisation's ODS code), whether they work at the region's first GP practice, and where the
# demo has something for them to look at
DEMO_PEOPLE = [
    ("researcher", "Dr Asha Patel (researcher)", [(Role.RESEARCHER, "")], False,
     "Projects → Metformin uptake (cohorts); Trials → StartWell (trial statistician: allocations)"),
    ("coordinator", "Tom Hughes (trial coordinator)", [(Role.TRIAL_COORDINATOR, "")], False,
     f"Trials → {TRIAL_ID} StartWell (feasibility, recruitment, CONSORT, team); eCRF → {STUDY}"),
    ("clinician", "Dr Lena Okafor (clinician)", [(Role.CLINICIAN, "")], True,
     f"Trials → StartWell (site investigator, worklist); eCRF → {STUDY} (sign forms)"),
    ("nurse", "Grace Mensah (research nurse)", [(Role.CLINICIAN, "")], True,
     f"Trials → StartWell (worklists, randomise); eCRF → {STUDY} (data entry)"),
    ("monitor", "Daniel Reid (trial monitor)", [(Role.RESEARCHER, "")], False,
     f"eCRF → {STUDY} (the open query, the study team)"),
    ("datamanager", "Priya Singh (data manager)", [(Role.DATA_MANAGER, "SOURCE"), (Role.DATA_MANAGER, "ORGS")],
     False, f"Data sources (load an extract, data quality); eCRF → {STUDY} (lock forms, the study team)"),
    ("cancerlead", "Prof. Mark Evans (Cancer pillar lead)", [(Role.PILLAR_LEAD, "cancer")], False,
     "Projects → Breast cancer pathways (awaiting the pillar's review)"),
    ("chroniclead", "Dr Ruth Allen (Chronic Disease pillar lead)", [(Role.PILLAR_LEAD, "chronic")], False,
     "Projects (the chronic pillar's)"),
    ("checker", "Sam Wright (output checker)", [(Role.OUTPUT_CHECKER, "")], False,
     "Exports (release requests; none yet)"),
    ("governance", "Helen Clarke (governance officer)", [(Role.GOVERNANCE_OFFICER, "")], False,
     "Projects (approvals); Audit"),
    ("admin", "Platform administrator", [(Role.ADMIN, "")], False, "People; Audit"),
    ("layreviewer", "Joan Baker (public contributor)", [(Role.LAY_REVIEWER, "cancer")], False,
     "Projects → Breast cancer pathways (lay summary)"),
]

T2DM, METFORMIN = 201826, 1503297  # OMOP concepts (SNOMED 44054006, RxNorm 6809), present in mercia.synth
DIABETES = 201820  # "Diabetes mellitus" (SNOMED 73211009), the parent of T2DM in mercia.synth's hierarchy


@dataclass
class Demo:
    store: Store
    passwords: dict[str, str]
    source: str
    key_file: Path
    randomisation_key_file: Path
    organisations: list[tuple[str, str, str]]
    nmr_catalogue: Path | None  # None: no Nightingale catalogue on this machine, so no NMR panels


def default_directory() -> Path:
    """The demo's data folder: under Mercia's data directory, outside any repository (it holds a key)."""
    from mercia.config import load_settings

    return load_settings().data_dir / "demo"


def demo_secret(directory: Path, name: str) -> Path:
    """A key file of the demo's own in its folder (made once, readable by its owner only)."""
    path = directory.resolve() / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path


def demo_key(directory: Path) -> Path:
    """The demo's own pseudonymisation key."""
    from mercia.privacy.pseudonym import load_key

    path = demo_secret(directory, KEY_FILE)
    load_key(path)  # refuses a folder inside the repository, with the reason
    return path


def demo_organisations(persons: int) -> list[tuple[str, str, str]]:
    from mercia.synth.omop import Organisations

    rows = Organisations.for_region(persons).rows()
    return [(r["org_code"], r["name"], r["org_type"]) for r in rows] + [UPLOAD_ORGANISATION]


def diabetes_cohort() -> dict:
    """Type 2 diabetes (first diagnosis, a year of prior observation), metformin within a year after."""
    def concept_set(set_id, name, concept_id):
        return {"id": set_id, "name": name, "expression": {"items": [
            {"concept": {"CONCEPT_ID": concept_id, "CONCEPT_NAME": name}, "includeDescendants": True}]}}
    return {
        "ConceptSets": [concept_set(0, "Type 2 diabetes mellitus", T2DM), concept_set(1, "Metformin", METFORMIN)],
        "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0, "First": True}}],
                            "ObservationWindow": {"PriorDays": 365, "PostDays": 0},
                            "PrimaryCriteriaLimit": {"Type": "First"}},
        "InclusionRules": [{"name": "Metformin within a year", "expression": {
            "Type": "ALL", "DemographicCriteriaList": [], "Groups": [], "CriteriaList": [{
                "Criteria": {"DrugExposure": {"CodesetId": 1}},
                "StartWindow": {"Start": {"Days": 0, "Coeff": 1}, "End": {"Days": 365, "Coeff": 1}},
                "Occurrence": {"Type": 2, "Count": 1}}]}},
            {"name": "Aged 40 or over", "expression": {
                "Type": "ALL", "CriteriaList": [], "Groups": [],
                "DemographicCriteriaList": [{"Age": {"Value": 40, "Op": "gte"}}]}}],
        "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0},
    }


def nmr_glucose_cohort(store: Store) -> dict:
    """Metabolomics study participants with NMR glucose above 7 mmol/L (a measurement value criterion)."""
    from mercia.cohorts import builder as cb
    from mercia.cohorts.omics import biomarker_above

    high = biomarker_above(store, 0, "Glucose", 7.0)
    return cb.cohort([high.criterion], concept_sets=[high.concept_set]).to_dict()


def build_demo(directory: Path, persons: int, seed: int) -> Demo:
    from mercia.services.cohorts import create_cohort, start_run
    from mercia.services.conceptsets import create_concept_set
    from mercia.services.sources import register_organisation
    from mercia.services.state import MerciaState, ServerOptions
    from mercia.synth.omop import write_omop
    from mercia.vocab.metabolites import catalogue_path

    directory.mkdir(parents=True, exist_ok=True)
    key_file = demo_key(directory)
    randomisation_key_file = demo_secret(directory, RANDOMISATION_KEY_FILE)
    path = directory / "mercia-demo.duckdb"
    for stale in (path, path.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    store = Store(str(path))
    # The NMR panels need the Nightingale catalogue (public data, not shipped in the repository); a
    # machine without it still gets the whole demo, less the metabolomics study.
    nmr_catalogue = catalogue_path() if catalogue_path().exists() else None
    write_omop(store, persons, seed, metabolomics=nmr_catalogue is not None)
    source = store.query_one("SELECT cdm_source_name FROM cdm_source LIMIT 1") or "OMOP CDM store"
    organisations = demo_organisations(persons)
    for code, name, kind in organisations:
        register_organisation(store, code, name, kind)
    state = MerciaState(store, ServerOptions(job_workers=1))
    gov = state.gov
    passwords, people = {}, {}
    practices = [code for code, _, kind in organisations if kind == "gp"]
    for username, name, roles, at_practice, _ in DEMO_PEOPLE:
        passwords[username] = secrets.token_urlsafe(12)
        roles = [(role, org) for role, scope in roles
                 for org in ([code for code, _, _ in organisations] if scope == "ORGS" else [scope])]
        roles = [(role, source if scope == "SOURCE" else scope) for role, scope in roles]
        people[username] = gov.create_user(username, name, passwords[username], roles, actor="demo",
                                           organisation=practices[0] if at_practice else None)
    gov.set_pillar_leads(people["admin"], "cancer", clinical=people["cancerlead"].id, academic=None, executive=None)
    gov.set_pillar_leads(people["admin"], "chronic", clinical=people["chroniclead"].id, academic=None, executive=None)
    year = (date.today() + timedelta(days=365)).isoformat()
    scope = ["person", "condition_occurrence", "drug_exposure", "measurement", "observation", "visit_occurrence",
             "procedure_occurrence", "death"]
    diabetes = gov.create_project(
        people["researcher"], title="Metformin uptake after a type 2 diabetes diagnosis", pillar="chronic",
        purpose="How soon do people newly diagnosed with type 2 diabetes start metformin, and who does not?",
        themes=["health_inequalities"], ppi_notes="Reviewed by the regional diabetes patient panel (3 sessions).",
        scope_sources=[source], scope_domains=scope, scope_start="2000-01-01", expires_on=year,
        lay_summary="Metformin is the usual first medicine for type 2 diabetes. We want to find out how soon "
                    "people start taking it after they are told they have diabetes, and which groups of people "
                    "are less likely to be offered it, so that care can be made fairer.",
        purpose_category="research", legal_basis="UK GDPR Article 6(1)(e) and Article 9(2)(j)",
        approval_refs="REC 26/WM/0001 (demonstration)", lead_organisation="University of the Midlands")
    gov.add_member(people["researcher"], diabetes.id, people["coordinator"].id)
    for project, lead in ((diabetes, "chroniclead"),):
        gov.submit(people["researcher"], project.id)
        gov.decide(people[lead], project.id, "approve", "Within the pillar's priorities.")
        gov.decide(people["governance"], project.id, "approve", "Scope proportionate to purpose.")
    screening = gov.create_project(
        people["clinician"], title="Breast cancer pathways across the region", pillar="cancer",
        purpose="Describe time from first presentation to diagnosis for breast cancer.",
        scope_sources=[source], scope_domains=["person", "condition_occurrence", "procedure_occurrence"],
        expires_on=year, ppi_notes="Co-designed with a breast cancer charity's research panel.",
        lay_summary="Some people wait a long time between first seeing a doctor and finding out they have breast "
                    "cancer. We want to see where the waits are longest so that services can be improved.",
        purpose_category="service_evaluation", lead_organisation="Midlands Cancer Alliance")
    gov.submit(people["clinician"], screening.id)
    gov.create_project(people["researcher"], title="Childhood asthma and air quality", pillar="womens_childrens",
                       purpose="Draft: link asthma admissions to local air quality.", scope_domains=["person"])
    create_concept_set(state, people["researcher"], diabetes.id, "Diabetes mellitus and every more specific kind",
                       {"items": [{"concept": {"CONCEPT_ID": DIABETES}, "includeDescendants": True}]})
    cohort = create_cohort(state, people["researcher"], diabetes.id, "New type 2 diabetes starting metformin",
                           "First T2DM diagnosis with a year of prior observation.", diabetes_cohort())
    state.jobs.wait(start_run(state, people["researcher"], cohort["id"]), timeout=600)
    if nmr_catalogue:
        glucose = create_cohort(state, people["researcher"], diabetes.id, "NMR glucose above 7 mmol/L",
                                "Metabolomics study participants whose Nightingale NMR glucose exceeds 7 mmol/L.",
                                nmr_glucose_cohort(store))
        state.jobs.wait(start_run(state, people["researcher"], glucose["id"]), timeout=600)
    state.jobs.shutdown()
    build_demo_trial(state, people, passwords, diabetes.id, practices, diabetes_cohort(),
                     randomisation_key_file.read_text().encode())
    return Demo(store, passwords, source, key_file, randomisation_key_file, organisations, nmr_catalogue)


def demo(persons: int = typer.Option(10_000, help="people in the synthetic region"),
         seed: int = typer.Option(42, help="random seed of the synthetic region"),
         host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
         directory: Path = typer.Option(None, "--dir", help="where the demo store and its key are written "
                                        "(outside the repository; default: <data_dir>/demo)")) -> None:
    """Build a demo region with users for every role and serve Mercia on http://127.0.0.1:8000."""
    import uvicorn
    from rich.console import Console
    from rich.table import Table

    from mercia.services.state import ServerOptions
    from mercia.trials.randomise import KEY_ENV, KEY_FILE_ENV
    from mercia.vocab.metabolites import catalogue_path
    from mercia.web.app import create_app
    from mercia.web.cli import is_loopback

    console = Console()
    with console.status(f"Generating a synthetic region of {persons:,} people..."):
        built = build_demo(directory or default_directory(), persons, seed)
    table = Table("username", "password", "role", "where to look", title="Demo sign-ins (new passwords each start)")
    for username, name, _, _, look in DEMO_PEOPLE:
        table.add_row(username, built.passwords[username], name, look)
    console.print(table)
    console.print(f"Open [bold]http://{host}:{port}[/] and sign in. Data: {built.source}. Ctrl+C stops.")
    console.print(f"Pseudonymisation key for uploads: {built.key_file}")
    # The server randomises too (from a worklist page), which needs a key: the one the demo trial's allocations
    # were drawn with, so that the trial keeps one random stream.
    os.environ.pop(KEY_ENV, None)
    os.environ[KEY_FILE_ENV] = str(built.randomisation_key_file)
    if built.nmr_catalogue is None:
        console.print(f"No NMR metabolomics panels: the Nightingale catalogue is not at {catalogue_path()} "
                      "(set MERCIA_NMR_CATALOGUE to the ukbnmr package's nmr_info.csv to add them).")
    app = create_app(built.store, ServerOptions(secure_cookies=not is_loopback(host), pseudonym_key_file=built.key_file))
    uvicorn.run(app, host=host, port=port, log_level="warning")
