"""Mercia's extension tables, beside the CDM and outside it (prefix ``mercia_``, plus the Genomic CDM's
``variant_occurrence``). Every capability that reads or writes them imports them from here.

- ``mercia_load``: one row per load (organisation, extract, counts).
- ``mercia_provenance``: every CDM row -> organisation, extract, source record (keyed by CDM table
  and row id).  Source record keys are ``Type/<pseudonym>``: the organisation-scoped HMAC of the
  local id, so a key holder can trace a row back while the table itself names nobody.
- ``mercia_reject``: records that failed validation (``action = 'rejected'``), were loaded with a
  problem flagged (``'flagged'``, e.g. an invalid NHS number), or were withheld by the national
  data opt-out (``'withheld'``, counted only: no record key); ``person_id`` where the record's person
  was known.  Never holds identifiers.
- ``variant_occurrence``: genomic variant calls (OHDSI Genomic CDM shape, see mercia.ingest.genomics).
- ``mercia_registration``: GP registrations, from which observation periods are built.
- ``mercia_person_link``: one row per organisation's person, with the keyed-hash NHS pseudonym
  and linkage tokens (computed before identifiers were dropped) and the person_id it links to.
- ``mercia_network_token``: per local person record, its network linkage token (mercia.federation);
  ``mercia_person_token``: the same per person, for questions.
- ``mercia_record_version``: the newest source version (lastUpdated, versionId) of each loaded record (and
  the person of a withdrawn one).
- ``mercia_record_hash``: the content hash (and person) of each loaded record that wrote no CDM row (a VCF sample).
- ``mercia_organisation``: the organisations (ODS codes) that send extracts, with their names.
- ``mercia_care_site_name``: which organisation's extract gave each named care site its current name.
- ``mercia_id_block``: the id counters behind ``Store.allocate_ids``.
"""

from __future__ import annotations

from mercia.cdm.schema import CDM_TABLES
from mercia.cdm.store import Store

# Id counters (Store.allocate_ids): one row per "table.column", moved atomically by UPDATE ... RETURNING.
ID_BLOCK_DDL = "CREATE TABLE IF NOT EXISTS mercia_id_block (name VARCHAR PRIMARY KEY, last_id BIGINT NOT NULL)"

TOKEN_FIELDS = ("surname", "forename", "surname_sx", "forename_sx", "dob", "dob_ym", "dob_y", "dob_swap",
                "sex", "district")

DDL = [
    """CREATE TABLE IF NOT EXISTS mercia_load (
        load_id BIGINT NOT NULL, org VARCHAR NOT NULL, extract VARCHAR NOT NULL, reader VARCHAR NOT NULL,
        loaded_at TIMESTAMP NOT NULL, records_read BIGINT, records_loaded BIGINT, records_unchanged BIGINT,
        records_rejected BIGINT, records_withheld BIGINT)""",
    """CREATE TABLE IF NOT EXISTS mercia_provenance (
        cdm_table VARCHAR NOT NULL, row_id BIGINT NOT NULL, org VARCHAR NOT NULL, extract VARCHAR NOT NULL,
        source_record VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, load_id BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS mercia_reject (
        load_id BIGINT NOT NULL, org VARCHAR NOT NULL, extract VARCHAR NOT NULL, source_record VARCHAR,
        line BIGINT, field VARCHAR, reason VARCHAR NOT NULL, action VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS mercia_person_link (
        person_id BIGINT NOT NULL, org VARCHAR NOT NULL, source_pseudonym VARCHAR NOT NULL,
        nhs_pseudonym VARCHAR, nhs_status VARCHAR NOT NULL, record_hash VARCHAR NOT NULL,
        gender_concept_id BIGINT NOT NULL, gender_source_value VARCHAR, year_of_birth BIGINT,
        month_of_birth BIGINT, day_of_birth BIGINT, birth_datetime TIMESTAMP, race_source_value VARCHAR,
        death_date DATE, lsoa VARCHAR, imd_decile BIGINT, load_id BIGINT NOT NULL, """
    + ", ".join(f"tok_{f} VARCHAR" for f in TOKEN_FIELDS) + ")",
]
# A subset of the OHDSI Genomic CDM's VARIANT_OCCURRENCE, keyed to the measurement row of the call.
DDL.append("""CREATE TABLE IF NOT EXISTS variant_occurrence (
        variant_occurrence_id BIGINT NOT NULL, person_id BIGINT NOT NULL, measurement_id BIGINT NOT NULL,
        reference_sequence VARCHAR, chromosome VARCHAR, position BIGINT, reference_allele VARCHAR,
        alternate_allele VARCHAR, target_gene_symbol VARCHAR, hgvs VARCHAR, genotype VARCHAR)""")
# VCF call details (mercia.ingest.vcf): HGVS p., consequence, zygosity, FORMAT DP and GQ, and the call's line in
# its file (the provenance names the file and sample, one record per sample).
DDL.extend(f"ALTER TABLE variant_occurrence ADD COLUMN IF NOT EXISTS {column}" for column in (
    "hgvs_p VARCHAR", "consequence VARCHAR", "zygosity VARCHAR", "read_depth BIGINT",
    "genotype_quality DOUBLE PRECISION", "source_line BIGINT"))
# Registrations (GP EpisodeOfCare): the observation periods are derived from these.
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_registration (
        registration_id BIGINT NOT NULL, person_id BIGINT NOT NULL, org VARCHAR NOT NULL,
        start_date DATE NOT NULL, end_date DATE)""")
# Network linkage tokens (mercia.federation): a keyed hash under the federated network's key, per local
# record, so a node can de-duplicate across organisations without any identifier leaving it.
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_network_token (
        org VARCHAR NOT NULL, source_pseudonym VARCHAR NOT NULL, token_kind VARCHAR NOT NULL,
        token VARCHAR NOT NULL, load_id BIGINT NOT NULL)""")
# The newest version of each source record an organisation has loaded (FHIR meta.lastUpdated, versionId;
# ``last_updated`` in UTC): an older version arriving later is superseded, not loaded (mercia.ingest.load).
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_record_version (
        org VARCHAR NOT NULL, source_record VARCHAR NOT NULL, last_updated TIMESTAMP, version_id VARCHAR,
        load_id BIGINT NOT NULL)""")
# What each load changed: records replaced by a newer version, removed at the source, superseded (older
# than what was loaded before); the data-quality report shows them for each organisation's latest load.
DDL.extend(f"ALTER TABLE mercia_load ADD COLUMN IF NOT EXISTS {column} BIGINT" for column in (
    "records_changed", "records_removed", "records_superseded"))
# The same tokens per person (mercia.federation.tokens.refresh_person_tokens, after each load): a question
# joins its cohort to them on the integer person_id.  Each token is its first 16 bytes, in hex.
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_person_token (
        person_id BIGINT NOT NULL, nhs VARCHAR, demographic VARCHAR)""")
# What mercia_person_token was built from (a fingerprint of the links and tokens), so a change by any
# other path (linkage merging persons, an opt-out deletion) is seen and the table rebuilt.
DDL.append("CREATE TABLE IF NOT EXISTS mercia_person_token_source (fingerprint VARCHAR NOT NULL)")
# The content hash of each VCF sample record loaded without any row (mercia.ingest.vcf: a sample of a file is
# one record; without a carrier call it writes no CDM row and so no provenance, and a resend of it counted it
# loaded again rather than unchanged).  A record with rows keeps its hash in their provenance only, so that
# deleting its rows leaves no hash saying a resend is unchanged.
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_record_hash (
        org VARCHAR NOT NULL, source_record VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, load_id BIGINT NOT NULL)""")
# Whose record it is, where a record without a row knows (the sample's person; the person of an event rejected
# after its subject was found; the person whose rows a withdrawn record's removal deleted): an opt-out purge
# (mercia.privacy.optout) finds these by it, as it finds the records with rows by their rows' provenance, and
# linkage merging persons renumbers it as it does their rows.  NULL in rows written before the column.
PERSON_NAMED_RECORD_TABLES = ("mercia_record_hash", "mercia_reject", "mercia_record_version")
DDL.extend(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS person_id BIGINT" for table in PERSON_NAMED_RECORD_TABLES)
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_organisation (
        ods_code VARCHAR NOT NULL PRIMARY KEY, name VARCHAR NOT NULL, kind VARCHAR, registered_at TIMESTAMP NOT NULL)""")
# The organisation whose Organization (or CSV site row) gave a care site its name: it may change that name later,
# another organisation may not, unless the site is its own (mercia.ingest.load; docs/ingest.md, "Care sites").
DDL.append("""CREATE TABLE IF NOT EXISTS mercia_care_site_name (
        care_site_id BIGINT NOT NULL, org VARCHAR NOT NULL, load_id BIGINT NOT NULL)""")
INDEXES = [
    "CREATE INDEX IF NOT EXISTS idx_mercia_provenance_org_record ON mercia_provenance (org, source_record)",
    "CREATE INDEX IF NOT EXISTS idx_mercia_provenance_row ON mercia_provenance (cdm_table, row_id)",
    "CREATE INDEX IF NOT EXISTS idx_mercia_person_link_nhs ON mercia_person_link (nhs_pseudonym)",
    "CREATE INDEX IF NOT EXISTS idx_mercia_record_version ON mercia_record_version (org, source_record)",
    "CREATE INDEX IF NOT EXISTS idx_mercia_record_hash ON mercia_record_hash (org, source_record)",
]


def ensure_extension_tables(store: Store) -> None:
    """Create the CDM (if missing) and ingestion tables.  Idempotent.  One transaction: one commit to disk
    rather than one per statement (a new DuckDB file: 0.05 s instead of 0.10-0.15 s of a cold CLI load)."""
    store.require_row_transactions("Ingestion and federation (Mercia's load, provenance and link tables)")
    with store.transaction():
        store.init_schema()
        for statement in [*DDL, ID_BLOCK_DDL]:
            store.execute(statement)
        if store.wants_indexes:
            for statement in INDEXES:
                store.execute(statement)


# Extension tables holding person rows -> their row-id column.
EXTRA_PERSON_TABLES = {"variant_occurrence": "variant_occurrence_id", "mercia_registration": "registration_id"}
# Tables other capabilities keep that name a person -> the column naming them; linkage merging persons
# renumbers them all (mercia.linkage.probabilistic.merge_persons).  Derived: what was derived from people's
# data before any consent (a cohort's members, a trial's pre-screening candidates), which an opt-out purge
# deletes.  Participant: a participant's trial and eCRF records and a patient's dissent from research
# contact, which a purge keeps (their own legal basis).
DERIVED_PERSON_TABLES = {"cohort": "subject_id", "mercia_trial_candidate": "person_id"}
PARTICIPANT_TABLES = {"mercia_trial_status": "person_id", "mercia_trial_allocation": "person_id",
                      "mercia_trial_unblinding": "person_id", "mercia_research_contact_dissent": "person_id",
                      "mercia_crf_participant": "person_id", "mercia_trial_duplicate": "person_id"}
# Of those, the tables holding at most one row per person and value of a column (a trial's candidate, its
# allocation) -> that column: a merge keeps the merged-into person's candidate row, and leaves apart persons
# each randomised in one trial (mercia.linkage.probabilistic.merge_persons).
ONE_ROW_PER_PERSON = {"mercia_trial_candidate": "trial_id", "mercia_trial_allocation": "trial_id"}

# A cohort whose persons linkage merged after it was generated (cohort_definition_id, marked_at, reason): its
# rows are renumbered with the persons, but one person may now hold two entries that a run would have made one,
# so its results are refused until it is generated again (created and cleared with the cohort's result tables,
# mercia.cohorts; written by mercia.linkage, read by mercia.analytics).
STALE_COHORT_TABLE = "mercia_cohort_stale"
STALE_COHORT_COLUMNS = [("cohort_definition_id", "BIGINT"), ("marked_at", "TIMESTAMP"), ("reason", "VARCHAR(1000)")]


def stale_cohort_reason(store: Store, cohort_id: int) -> str | None:
    """Why the cohort's rows are out of date (``STALE_COHORT_TABLE``), or None when they are current."""
    if not store.table_exists(STALE_COHORT_TABLE):
        return None
    return store.query_one(f"SELECT MIN(reason) FROM {STALE_COHORT_TABLE} WHERE cohort_definition_id = ?",
                           [int(cohort_id)])


# Suspected duplicate enrolments: persons linkage found to be one human, each randomised in one trial.  One row per
# randomisation of the duplicate (``duplicate_id``), a copy of its ``mercia_trial_allocation`` row as found
# (``randomised_as``: its person_id then; ``person_id`` follows later merges), ``status`` open or resolved; once
# resolved, ``kept`` says whose randomisation stands and the others' allocation rows live on here only
# (mercia.trials.duplicates).  Declared here because linkage writes it and must not import the trials code.
TRIAL_DUPLICATE_TABLE = "mercia_trial_duplicate"
TRIAL_DUPLICATE_COLUMNS = """duplicate_id BIGINT NOT NULL, trial_id TEXT NOT NULL, person_id BIGINT NOT NULL,
        randomised_as BIGINT NOT NULL, version BIGINT NOT NULL, sequence BIGINT NOT NULL, site TEXT NOT NULL,
        levels TEXT NOT NULL, arm TEXT NOT NULL, pack_code TEXT NOT NULL, allocated_by TEXT NOT NULL,
        allocated_at TEXT NOT NULL, audit_seq BIGINT NOT NULL, found_at TEXT NOT NULL, status TEXT NOT NULL,
        kept BOOLEAN, reason TEXT, resolved_by TEXT, resolved_at TEXT, resolution_audit_seq BIGINT,
        UNIQUE (duplicate_id, version, sequence)"""


def person_tables(store: Store) -> dict[str, str | None]:
    """Every table holding person rows -> its row-id column (None for person-keyed tables)."""
    tables = {name: table.primary_key for name, table in CDM_TABLES.items()
              if "person_id" in table.column_names and store.table_exists(name)}
    tables.update({t: pk for t, pk in EXTRA_PERSON_TABLES.items() if store.table_exists(t)})
    return tables
