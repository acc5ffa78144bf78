"""Pre-screening worklists for the direct care team, and re-identification inside the patient's own
organisation only.

The research store is pseudonymised: a worklist there names people by ``person_id`` and NHS-number
pseudonym.  Each organisation runs its own ``ReidentificationService`` over its own store (a key map
pseudonym -> NHS number and local MRN, written when the organisation's extract is ingested, never in the
research store); it turns a worklist for *its* site into identities for that site's care team and nobody
else.  Names stay in the organisation's own record system.  Patients who dissent from research contact,
who have died, or who are on the national data opt-out never appear.  Every view is audited.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mercia.cdm import Store
from mercia.cdm.extensions import ensure_extension_tables
from mercia.governance import Forbidden, NotFound, User
from mercia.governance.db import now
from mercia.privacy.optout import OPT_OUT_DDL, OPTED_OUT_PERSONS
from mercia.privacy.pseudonym import Pseudonymiser
from mercia.trials.eligibility import data_as_of, run_eligibility
from mercia.trials.register import TrialError, TrialRegister, TrialRole

WORKLIST_ROLES = (TrialRole.CARE_TEAM, TrialRole.SITE_INVESTIGATOR, TrialRole.RESEARCH_NURSE)
IDENTITY_DDL = """CREATE TABLE IF NOT EXISTS mercia_reid_identity (
    nhs_pseudonym TEXT NOT NULL, nhs_number TEXT NOT NULL, local_mrn TEXT NOT NULL)"""


def record_dissent(register: TrialRegister, actor: User, person_id: int) -> None:
    """Record that a patient does not want to be contacted about research (by any care-team member)."""
    if not register.db.row("SELECT user_id FROM mercia_trial_role WHERE user_id = ? AND role = ? "
                           "AND ended_at IS NULL",
                           [actor.id, TrialRole.CARE_TEAM.value]):
        raise Forbidden("only a patient's care team records their research-contact preference")
    with register.db.transaction():
        register.db.insert("mercia_research_contact_dissent", {"person_id": person_id, "recorded_by": actor.username,
                                                               "recorded_at": now()})
        register.gov.audit.record(actor.username, "trial.dissent", f"person:{person_id}")


def ensure_screening_tables(store: Store) -> None:
    """The tables screening reads beside the trial tables: the person link and the opt-out list."""
    ensure_extension_tables(store)
    store.execute(OPT_OUT_DDL)


def rerun_eligibility(register: TrialRegister, actor: User, trial_id: str, site: str | None = None) -> dict[str, Any]:
    """Run the trial's eligibility cohort again so that newly loaded data count (a write that runs the whole cohort:
    asked for on purpose, never by reading a worklist or the feasibility); audited.  For ``site``'s worklist,
    whoever may read it; for the whole trial (no site), whoever may ask its feasibility."""
    from mercia.trials.feasibility import FEASIBILITY_ROLES

    trial = register.require(actor, trial_id, *(WORKLIST_ROLES if site is not None else FEASIBILITY_ROLES), site=site)
    ensure_screening_tables(register.store)
    result = run_eligibility(register.store, trial, actor.username)
    run = register.trial(trial_id)
    register.gov.audit.record(actor.username, "trial.eligibility.run",
                              f"trial:{trial_id}/site:{site}" if site is not None else f"trial:{trial_id}",
                              trial.project_id, persons=result.persons)
    return {"trial_id": trial_id, "site": site, "run_at": run.eligibility_run_at, "run_by": run.eligibility_run_by,
            "persons": result.persons}


def worklist(register: TrialRegister, actor: User, trial_id: str, site: str, *, since: str | None = None
             ) -> list[dict[str, Any]]:
    """People at ``site`` meeting the computable criteria now (see ``data_as_of``) as the eligibility cohort's
    last run found them (``rerun_eligibility``), pseudonymous, with their recruitment status; death, dissent
    and the opt-out are applied as of now.

    ``since`` (a date) keeps only those Mercia first found eligible on or after it.
    """
    trial = register.require(actor, trial_id, *WORKLIST_ROLES, site=site)
    store = register.store
    ensure_screening_tables(store)
    since_clause = "AND c.first_seen >= ?" if since else ""
    rows = store.query_dicts(f"""
        SELECT c.person_id, link.nhs_pseudonym, c.eligible_from, c.first_seen,
               (SELECT s.status FROM mercia_trial_status s WHERE s.trial_id = c.trial_id AND s.person_id = c.person_id
                ORDER BY s.recorded_at DESC LIMIT 1) AS status
        FROM mercia_trial_candidate c
        LEFT JOIN (SELECT person_id, MIN(nhs_pseudonym) AS nhs_pseudonym FROM mercia_person_link
                   GROUP BY person_id) link ON link.person_id = c.person_id
        WHERE c.trial_id = ? AND c.site = ? {since_clause}
          AND c.person_id IN (SELECT subject_id FROM cohort WHERE cohort_definition_id = ?
                              AND cohort_end_date >= CAST(? AS DATE))
          AND c.person_id NOT IN (SELECT person_id FROM death)
          AND c.person_id NOT IN (SELECT person_id FROM mercia_person_link WHERE death_date IS NOT NULL)
          AND c.person_id NOT IN (SELECT person_id FROM mercia_research_contact_dissent)
          AND c.person_id NOT IN ({OPTED_OUT_PERSONS})
        ORDER BY c.first_seen DESC, c.person_id""",
        [trial_id, site, *([since] if since else []), trial.cohort_id, data_as_of(store).isoformat()])
    register.gov.audit.record(actor.username, "trial.worklist", f"trial:{trial_id}/site:{site}", trial.project_id,
                              since=since, persons=[int(r["person_id"]) for r in rows])
    return rows


def last_week() -> str:
    return (date.today() - timedelta(days=7)).isoformat()


class ReidentificationService:
    """One organisation's key map and the only way from a pseudonym back to a patient.

    ``store`` is the organisation's own store (never the research store); ``org`` its ODS code.
    """

    def __init__(self, store: Store, org: str):
        self.store = store
        self.org = org.strip().upper()
        store.execute(IDENTITY_DDL)

    def record_identities(self, pseudonymiser: Pseudonymiser, nhs_numbers: list[str] | pa.Array,
                          local_mrns: list[str] | pa.Array) -> int:
        """Called at ingest with the organisation's extract: keep pseudonym -> NHS number and local MRN.

        A resend or a later extract replaces the entries of the patients it holds and keeps the rest
        (the last MRN seen for an NHS number wins), so loads can come in any number of pieces."""
        if len(nhs_numbers) != len(local_mrns):
            raise TrialError("each NHS number needs its local MRN (the lists differ in length)")
        nhs = pa.array(nhs_numbers, pa.string()) if not isinstance(nhs_numbers, pa.Array) else nhs_numbers
        table = pa.table({"nhs_pseudonym": pseudonymiser.nhs_pseudonyms(nhs), "nhs_number": nhs,
                          "local_mrn": pa.array(local_mrns, pa.string())})
        with self.store.transaction():
            self.store.temp_table_from_arrow("mercia_reid_incoming", "nhs_pseudonym TEXT, nhs_number TEXT, local_mrn TEXT",
                                             table)
            self.store.execute("DELETE FROM mercia_reid_identity WHERE nhs_pseudonym IN "
                               "(SELECT nhs_pseudonym FROM mercia_reid_incoming)")
            self.store.execute("""INSERT INTO mercia_reid_identity (nhs_pseudonym, nhs_number, local_mrn)
                SELECT nhs_pseudonym, MAX(nhs_number), MAX(local_mrn) FROM mercia_reid_incoming GROUP BY nhs_pseudonym""")
            return int(self.store.query_one("SELECT COUNT(DISTINCT nhs_pseudonym) FROM mercia_reid_incoming"))

    def worklist(self, register: TrialRegister, actor: User, trial_id: str, *, since: str | None = None
                 ) -> list[dict[str, Any]]:
        """This site's worklist with NHS number and local MRN, for this organisation's care team only.

        The worklist is rebuilt here (never taken from the caller), so its exclusions always apply."""
        if actor.organisation != self.org:
            register.gov.audit.record(actor.username, "trial.reidentify.refused", f"trial:{trial_id}/site:{self.org}",
                                      organisation=actor.organisation)
            raise Forbidden(f"identities at {self.org} are shown only to {self.org}'s own staff")
        try:
            trial = register.require(actor, trial_id, TrialRole.CARE_TEAM, site=self.org)
        except (Forbidden, NotFound):
            register.gov.audit.record(actor.username, "trial.reidentify.refused", f"trial:{trial_id}/site:{self.org}")
            raise
        rows = worklist(register, actor, trial_id, self.org, since=since)
        pseudonyms = sorted({r["nhs_pseudonym"] for r in rows if r["nhs_pseudonym"]})
        found: dict[str, dict[str, Any]] = {}
        if pseudonyms:
            self.store.temp_table_from_arrow("mercia_reid_request", "nhs_pseudonym TEXT",
                                             pa.table({"nhs_pseudonym": pa.array(pseudonyms, pa.string())}))
            found = {r["nhs_pseudonym"]: r for r in self.store.query_dicts(
                "SELECT i.nhs_pseudonym, i.nhs_number, i.local_mrn FROM mercia_reid_identity i "
                "JOIN mercia_reid_request q ON q.nhs_pseudonym = i.nhs_pseudonym")}
        out = [{**r, "nhs_number": found.get(r["nhs_pseudonym"], {}).get("nhs_number"),
                "local_mrn": found.get(r["nhs_pseudonym"], {}).get("local_mrn")} for r in rows]
        register.gov.audit.record(actor.username, "trial.reidentify", f"trial:{trial_id}/site:{self.org}",
                                  trial.project_id, persons=[int(r["person_id"]) for r in rows])
        return out


def record_extract_identities(reid_store: Store, org: str, persons: pa.Table, pseudonymiser: Pseudonymiser,
                              allow_synthetic: bool = False) -> int:
    """Fill ``org``'s key map from an extract's staged persons (called by ingest after the load): every
    person with a valid NHS number, their local record id as the MRN."""
    from mercia.privacy.nhs import nhs_number_problems, normalise_nhs_numbers

    if not persons.num_rows:
        return 0
    nhs = normalise_nhs_numbers(persons.column("nhs_number").combine_chunks())
    valid = pc.and_(pc.is_null(nhs_number_problems(nhs, allow_synthetic)), pc.is_valid(nhs))
    return ReidentificationService(reid_store, org).record_identities(
        pseudonymiser, nhs.filter(valid), persons.column("record").combine_chunks().filter(valid))
