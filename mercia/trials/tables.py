"""The trial tables (``mercia_trial_*``), beside the CDM and the governance tables on the same Store.

Plain types and ``?`` placeholders, so one statement runs on DuckDB and PostgreSQL; times are ISO-8601
UTC text (as in governance), JSON is TEXT.  Nothing here holds an identifier: people are CDM
``person_id`` values; NHS numbers and MRNs live only in each organisation's re-identification store
(``mercia.trials.prescreen.ReidentificationService``).
"""

from __future__ import annotations

from mercia.cdm import Store
from mercia.cdm.extensions import TRIAL_DUPLICATE_COLUMNS, TRIAL_DUPLICATE_TABLE

TABLES: dict[str, str] = {
    # One row per trial; ``version`` is the current randomisation settings version.
    "mercia_trial": """trial_id TEXT PRIMARY KEY, title TEXT NOT NULL, pillar TEXT NOT NULL, sponsor TEXT NOT NULL,
        chief_investigator TEXT NOT NULL, project_id BIGINT NOT NULL, sites TEXT NOT NULL, target BIGINT NOT NULL,
        opens_on TEXT NOT NULL, closes_on TEXT NOT NULL, blinded BOOLEAN NOT NULL, eligibility TEXT NOT NULL,
        manual_criteria TEXT NOT NULL, cohort_id BIGINT NOT NULL, status TEXT NOT NULL, version BIGINT NOT NULL,
        created_by TEXT NOT NULL, created_at TEXT NOT NULL""",
    "mercia_trial_settings": """trial_id TEXT NOT NULL, version BIGINT NOT NULL, settings TEXT NOT NULL,
        reason TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL""",
    "mercia_trial_role": "trial_id TEXT NOT NULL, user_id BIGINT NOT NULL, role TEXT NOT NULL, site TEXT NOT NULL",
    # People found eligible by the computable criteria, with when Mercia first saw them so (worklists).
    "mercia_trial_candidate": """trial_id TEXT NOT NULL, person_id BIGINT NOT NULL, site TEXT NOT NULL,
        eligible_from TEXT NOT NULL, first_seen TEXT NOT NULL""",
    "mercia_trial_status": """trial_id TEXT NOT NULL, person_id BIGINT NOT NULL, site TEXT NOT NULL,
        status TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, recorded_on TEXT NOT NULL,
        recorded_by TEXT NOT NULL, recorded_at TEXT NOT NULL""",
    # The engine itself refuses a second allocation of a person or of a sequence number (two servers racing).
    "mercia_trial_allocation": """trial_id TEXT NOT NULL, version BIGINT NOT NULL, sequence BIGINT NOT NULL,
        person_id BIGINT NOT NULL, site TEXT NOT NULL, levels TEXT NOT NULL, arm TEXT NOT NULL,
        pack_code TEXT NOT NULL, allocated_by TEXT NOT NULL, allocated_at TEXT NOT NULL, audit_seq BIGINT NOT NULL,
        UNIQUE (trial_id, person_id), UNIQUE (trial_id, version, sequence)""",
    "mercia_trial_unblinding": """trial_id TEXT NOT NULL, person_id BIGINT NOT NULL, unblinded_by TEXT NOT NULL,
        reason TEXT NOT NULL, unblinded_at TEXT NOT NULL""",
    # Suspected duplicate enrolments found by linkage and their resolution (mercia.trials.duplicates); declared
    # beside the person tables because linkage writes it.
    TRIAL_DUPLICATE_TABLE: TRIAL_DUPLICATE_COLUMNS,
    "mercia_trial_notification": """trial_id TEXT NOT NULL, user_id BIGINT NOT NULL, message TEXT NOT NULL,
        created_at TEXT NOT NULL""",
    # The true counts behind each feasibility answer (pool or month, per site; zeros left out), to hide a count
    # a few from one the same user was given before (mercia.trials.feasibility).
    "mercia_trial_feasibility_count": """trial_id TEXT NOT NULL, user_id BIGINT NOT NULL, as_of TEXT NOT NULL,
        site TEXT NOT NULL, cell TEXT NOT NULL, persons BIGINT NOT NULL, asked_at TEXT NOT NULL""",
    # Patients who asked not to be contacted about research (recorded by their care team).
    "mercia_research_contact_dissent": """person_id BIGINT NOT NULL, recorded_by TEXT NOT NULL,
        recorded_at TEXT NOT NULL""",
}


# Columns added after a table was first released: ``ensure_trial_tables`` adds them to existing stores, and new
# stores get them the same way (as governance's ``ADDED_COLUMNS``).  When a notification was read (NULL:
# unread), and when a duplicate enrolment record's notification was raised (mercia.trials.notifications).
# The delegation log: each trial role's period, from its grant (by whom) to its end (by whom, why); NULL
# ``ended_at``: the role is held.  A role granted before the log has no ``granted_at``/``granted_by`` (unknown).
# Its sign-off by the responsible investigator (``TrialRegister.sign_delegation``): NULL ``signed_at``: unsigned.
# When the eligibility cohort was last run, and by whom (``run_eligibility``): what a worklist shows; NULL: never.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("mercia_trial_notification", "read_at", "TEXT"),
    (TRIAL_DUPLICATE_TABLE, "notified_at", "TEXT"),
    ("mercia_trial_role", "granted_at", "TEXT"),
    ("mercia_trial_role", "granted_by", "TEXT"),
    ("mercia_trial_role", "ended_at", "TEXT"),
    ("mercia_trial_role", "ended_by", "TEXT"),
    ("mercia_trial_role", "end_reason", "TEXT"),
    ("mercia_trial_role", "signed_by", "TEXT"),
    ("mercia_trial_role", "signed_name", "TEXT"),
    ("mercia_trial_role", "signed_at", "TEXT"),
    ("mercia_trial_role", "signature_meaning", "TEXT"),
    ("mercia_trial", "eligibility_run_at", "TEXT"),
    ("mercia_trial", "eligibility_run_by", "TEXT"),
]


def ensure_trial_tables(store: Store) -> None:
    """Create the trial tables when missing, and add the columns added since.  Idempotent."""
    with store.transaction():
        for name, columns in TABLES.items():
            store.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
        for table, column, definition in ADDED_COLUMNS:
            store.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}")
