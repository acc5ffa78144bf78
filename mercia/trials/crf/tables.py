"""The eCRF tables (``mercia_crf_*``), beside the governance tables on the same Store.

Current values live in ``mercia_crf_value`` (one row per participant, event, form and field, the
entity-attribute-value shape REDCap uses, so a dictionary migration never rewrites a table).  Their
history is not here: every change is an entry of the platform's hash-chained audit log
(``mercia_audit``, ``mercia.governance.audit``) with old value, new value, who, when and why, and each
value row points at the entry that last set it (``audit_seq``).  Times are ISO-8601 UTC text.
"""

from __future__ import annotations

from mercia.cdm import Store

TABLES: dict[str, str] = {
    "mercia_crf_study": """study_id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
        project_id BIGINT, dictionary_version BIGINT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL""",
    "mercia_crf_dictionary": """study_id BIGINT NOT NULL, version BIGINT NOT NULL, dictionary TEXT NOT NULL,
        changes TEXT NOT NULL, reason TEXT NOT NULL, forced BOOLEAN NOT NULL, created_by TEXT NOT NULL,
        created_at TEXT NOT NULL""",
    "mercia_crf_member": "study_id BIGINT NOT NULL, username TEXT NOT NULL, role TEXT NOT NULL",
    "mercia_crf_event": """study_id BIGINT NOT NULL, arm TEXT NOT NULL, event_name TEXT NOT NULL, label TEXT NOT NULL,
        day_offset BIGINT NOT NULL, window_before BIGINT NOT NULL, window_after BIGINT NOT NULL,
        position BIGINT NOT NULL""",
    "mercia_crf_event_form": "study_id BIGINT NOT NULL, event_name TEXT NOT NULL, form_name TEXT NOT NULL",
    "mercia_crf_participant": """study_id BIGINT NOT NULL, record_id TEXT NOT NULL, arm TEXT NOT NULL,
        person_id BIGINT, start_date TEXT NOT NULL, created_at TEXT NOT NULL""",
    # A study whose participants come from a trial's randomisation: trial arm -> schedule arm (JSON).
    "mercia_crf_trial_link": """study_id BIGINT NOT NULL UNIQUE, trial_id TEXT NOT NULL UNIQUE, arm_map TEXT NOT NULL,
        linked_by TEXT NOT NULL, linked_at TEXT NOT NULL""",
    # A participant record enrolled by a randomisation later set aside as a duplicate enrolment of the same
    # human (mercia.trials.duplicates): its data stay, readable and audited, but it leaves exports by default
    # and takes no more entry.  ``kept_record`` is the same human's record that stands (if the study has one).
    "mercia_crf_set_aside": """study_id BIGINT NOT NULL, record_id TEXT NOT NULL, trial_id TEXT NOT NULL,
        duplicate_id BIGINT NOT NULL, kept_record TEXT, reason TEXT NOT NULL, set_aside_by TEXT NOT NULL,
        set_aside_at TEXT NOT NULL, audit_seq BIGINT NOT NULL, UNIQUE (study_id, record_id)""",
    "mercia_crf_value": """study_id BIGINT NOT NULL, record_id TEXT NOT NULL, event_name TEXT NOT NULL,
        form_name TEXT NOT NULL, field_name TEXT NOT NULL, value TEXT NOT NULL, saved_by TEXT NOT NULL,
        saved_at TEXT NOT NULL, reason TEXT, audit_seq BIGINT NOT NULL""",
    # Which OMOP row each form fact became (mercia.trials.crf.omop); content is the row as last written.
    "mercia_crf_omop": """study_id BIGINT NOT NULL, record_id TEXT NOT NULL, event_name TEXT NOT NULL,
        form_name TEXT NOT NULL, fact_key TEXT NOT NULL, omop_table TEXT NOT NULL, omop_id BIGINT NOT NULL,
        content TEXT NOT NULL""",
    "mercia_crf_form": """study_id BIGINT NOT NULL, record_id TEXT NOT NULL, event_name TEXT NOT NULL,
        form_name TEXT NOT NULL, status TEXT NOT NULL, locked BOOLEAN NOT NULL, deleted BOOLEAN NOT NULL,
        signed_by TEXT, signed_name TEXT, signed_at TEXT, signature_meaning TEXT, signature_voided_at TEXT,
        signature_voided_by TEXT, signature_void_reason TEXT, updated_at TEXT NOT NULL""",
    "mercia_crf_query": """query_id BIGINT PRIMARY KEY, study_id BIGINT NOT NULL, record_id TEXT NOT NULL,
        event_name TEXT NOT NULL, form_name TEXT NOT NULL, field_name TEXT NOT NULL, status TEXT NOT NULL,
        raised_by TEXT NOT NULL, raised_at TEXT NOT NULL""",
    "mercia_crf_query_message": """query_id BIGINT NOT NULL, seq BIGINT NOT NULL, action TEXT NOT NULL,
        author TEXT NOT NULL, written_at TEXT NOT NULL, text TEXT NOT NULL""",
    # A single-use link sending one scheduled form to its participant (mercia.trials.crf.surveys): only the
    # SHA-256 of the link's token is kept, so the table cannot be read back into working links.
    "mercia_crf_survey": """survey_id BIGINT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, study_id BIGINT NOT NULL,
        record_id TEXT NOT NULL, event_name TEXT NOT NULL, form_name TEXT NOT NULL, created_by TEXT NOT NULL,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT, revoked_at TEXT, revoked_by TEXT""",
}

INDEXES = [
    "CREATE INDEX IF NOT EXISTS mercia_crf_value_key ON mercia_crf_value (study_id, record_id, event_name, form_name)",
    "CREATE INDEX IF NOT EXISTS mercia_crf_form_key ON mercia_crf_form (study_id, record_id, event_name, form_name)",
]


def ensure_crf_tables(store: Store) -> None:
    """The eCRF tables, and the PROMs store's, which PROMs completed on forms are written into."""
    from mercia.proms.store import ensure_prom_tables

    with store.transaction():
        for name, columns in TABLES.items():
            store.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
        for ddl in INDEXES:
            store.execute(ddl)
        ensure_prom_tables(store)
