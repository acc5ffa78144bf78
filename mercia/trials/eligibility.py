"""Computable eligibility: the trial's cohort definition run by the cohort engine on the research store.

A person's site is the organisation of their registered care site (``person.care_site_id`` ->
``care_site.care_site_source_value``, the ODS code).  Each run adds people newly meeting the criteria to
``mercia_trial_candidate`` with the day Mercia first saw them so, which is what "newly eligible since
last week" on a worklist means.  People are eligible *now* while a cohort entry covers ``data_as_of``.
"""

from __future__ import annotations

from datetime import date

from mercia.cdm import Store
from mercia.cdm.dialect import as_text
from mercia.cohorts import CohortResult, run_cohort
from mercia.governance.db import now
from mercia.trials.register import Trial

PERSON_SITE = """SELECT p.person_id, cs.care_site_source_value AS site FROM person p
                 JOIN care_site cs ON cs.care_site_id = p.care_site_id"""


def data_as_of(store: Store) -> date:
    """'Now' for eligibility: today, or the last day the records cover if they stop earlier."""
    latest = store.query_one("SELECT MAX(observation_period_end_date) FROM observation_period")
    return min(date.today(), latest) if latest else date.today()


def site_list(trial: Trial) -> str:
    return ", ".join("'" + s.replace("'", "''") + "'" for s in trial.sites)


def run_eligibility(store: Store, trial: Trial, ran_by: str, today: str | None = None) -> CohortResult:
    """Generate the trial's eligibility cohort, record people newly eligible at its sites, and when and by whom
    it was run (what worklists, which read the stored result, show)."""
    today = today or date.today().isoformat()
    with store.transaction():
        result = run_cohort(store, trial.eligibility, trial.cohort_id)
        store.execute(f"""
            INSERT INTO mercia_trial_candidate (trial_id, person_id, site, eligible_from, first_seen)
            SELECT ?, c.subject_id, ps.site, {as_text(store, "MIN(c.cohort_start_date)")}, ?
            FROM cohort c JOIN ({PERSON_SITE}) ps ON ps.person_id = c.subject_id
            WHERE c.cohort_definition_id = ? AND ps.site IN ({site_list(trial)})
              AND NOT EXISTS (SELECT 1 FROM mercia_trial_candidate t
                              WHERE t.trial_id = ? AND t.person_id = c.subject_id)
            GROUP BY c.subject_id, ps.site""", [trial.trial_id, today, trial.cohort_id, trial.trial_id])
        store.execute("UPDATE mercia_trial SET eligibility_run_at = ?, eligibility_run_by = ? WHERE trial_id = ?",
                      [now(), ran_by, trial.trial_id])
    return result
