"""Staged records -> pseudonymised, linked, vocabulary-mapped OMOP rows, in one transaction.

The order matters for privacy: identifiers (NHS number, names, postcode, full date of birth) are
turned into keyed hashes, tokens and reduced values in memory first, and only those reach the
store.  The transformation runs in a private in-memory DuckDB so that both store engines get the
same vectorised path; the store only receives Arrow bulk inserts and a few keyed deletes.

Idempotency: every CDM row has provenance (organisation, extract, pseudonymised source record,
content hash).  A record already loaded with the same hash is skipped; with a different hash
(a corrected resend) its earlier rows are deleted and the new version inserted.

Versions: when a record comes several times (twice in one load, or again in a later one), the newest
version wins: the later ``meta.lastUpdated`` (as an instant, in UTC), on equal instants the higher
``meta.versionId`` (as numbers when both are), then reading order.  A version without lastUpdated
counts as at least as new as every version read before it (feeds without meta: the last one loaded
wins).  Losing versions are kept as ``superseded`` rejects; ``mercia_record_version`` remembers the
newest version loaded, so an older one sent later changes nothing.  A reader without versions that
repeats a record key with other content in one load has its last copy kept (``keep_last_copies``);
copies alike in content are stored once (``_store_copies_once``); and copies in different chunks of
one load are settled and counted as if they were in one (``_settle_earlier_chunks``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mercia.cdm import Store, quote
from mercia.ingest.proms import link_prom_items
from mercia.ingest.staging import CALL_CODE_VOCABULARY, CALL_SCHEMA, CALL_VALUE_VOCABULARY, CARE_SITE_KINDS, \
    EARLIEST_DATE, END_DATE_AHEAD, VALUE_SCHEMA, VERSIONED_REJECT_SCHEMA, Staged, conform, date_window, latest_date
from mercia.cdm.extensions import TOKEN_FIELDS, ensure_extension_tables, person_tables
from mercia.cdm.persons import EHR_TYPE, EVENT_DATES, max_id, rebuild_person_rows
from mercia.privacy.geography import GeographyLookup
from mercia.privacy.optout import stored_opt_outs, stored_source_opt_outs
from mercia.privacy.nhs import nhs_number_problems, normalise_nhs_numbers
from mercia.privacy.policy import DobPolicy, normalise_name, normalise_postcode, postcode_district, \
    reduced_birth_columns_sql, soundex, valid_partial_date
from mercia.privacy.pseudonym import Pseudonymiser

# OMOP standard concepts used as constants (OHDSI vocabulary, domain Type Concept / Gender / Visit).
LAB_TYPE = 32856          # "Lab"
REGISTRY_TYPE = 32879     # "Registry"
CLAIM_TYPE = 32810        # "Claim"
GENDER = {"male": 8507, "m": 8507, "female": 8532, "f": 8532}
VISIT_CLASS = {"AMB": 9202, "IMP": 9201, "ACUTE": 9201, "EMER": 9203, "HH": 581476}  # HL7 v3 ActCode

TYPE_CONCEPTS = {"fhir": EHR_TYPE, "csv": EHR_TYPE, "hl7v2": LAB_TYPE, "phenopackets": REGISTRY_TYPE,
                 "vcf": REGISTRY_TYPE, "nmr": LAB_TYPE, "mztab": LAB_TYPE}
DOMAIN_TABLE = {"Condition": "condition_occurrence", "Drug": "drug_exposure", "Procedure": "procedure_occurrence",
                "Measurement": "measurement", "Observation": "observation", "Device": "device_exposure",
                "Specimen": "specimen", "Visit": "visit_occurrence", "Note": "note"}
# The store's cache during a load (DuckDB): rows a long load inserts before its commit are written to the
# database file and evicted rather than held, so a 249-million-row NMR load stays within a few GB (200,000
# samples traced per chunk: RSS 0.84-0.97 GB over chunks 12-36 under 500 MB; 1,000,000 samples peaked at 2.1 GB).
LOAD_MEMORY_LIMIT = "512MB"
# The store's temporary table of the records the running load's earlier chunks read: each copy's content hash
# and line, what became of it (``FATES``) and, for one that replaced an earlier load's version, that version's hash.
SEEN_RECORDS = "mercia_tmp_seen_records"
# A record's fate in a chunk, as counted in its summary: each but 'loaded' has a count of its own.
FATES = ("withheld", "removed", "superseded", "rejected", "changed", "unchanged", "loaded")
# The summary's name of the rows written to a table, where it is not the table's
ROWS_KEY = {"mercia_registration": "registration"}
# The reason kept with each copy of a record that a later copy with other content replaced in one extract.
REPEATED_RECORD = "the record repeats in this extract with different content: only its last copy was loaded"
# The reason kept with each copy of a record that repeats another copy's content in one extract.
SAME_RECORD = "the record repeats in this extract with the same content: stored once"
# A VCF sample's call of one allele listed twice in a file (mercia.ingest.vcf): the sample is the record.
REPEATED_CALL = ("the sample's call of this allele repeats in the file with different content: only its last copy "
                 "was loaded")
SAME_CALL = "the sample's call of this allele repeats in the file with the same content: stored once"
# An ODS code (of an organisation or one of its sites): letters and digits, after upper(trim()).
ODS_CODE = "[A-Z0-9]{3,10}"
ODS_CODE_REASON = "the ODS code is not 3 to 10 letters and digits"
# When a site the store has (``stored_sites``) takes the name the chunk brings (``site_names``), the load's
# organisation being the two parameters: the site has no name yet, or the name comes from the organisation whose
# own ODS code the site's is, or from the organisation that gave the name it has (docs/ingest.md, "Care sites").
RENAMES = """s.care_site_id IS NOT NULL AND n.name IS NOT NULL AND n.name IS DISTINCT FROM s.care_site_name
             AND (s.care_site_name IS NULL OR n.site_key = ? OR s.named_by = ?)"""
NOTE_TEXT = ""  # note text is never loaded (docs/ingest.md: free text can identify people); the column is NOT NULL


# Token fields hashed under one key so they can be compared with each other (forename/surname
# swaps, day/month swaps); every other field has its own key.
TOKEN_PURPOSE = {"surname": "name", "forename": "name", "surname_sx": "soundex", "forename_sx": "soundex",
                 "dob": "dob", "dob_swap": "dob"}


class LoadError(Exception):
    """A load that cannot proceed at all; nothing was written."""


@dataclass
class LoadOptions:
    pseudonymiser: Pseudonymiser
    allow_synthetic_nhs_numbers: bool = False
    dob_policy: DobPolicy = DobPolicy.YEAR_MONTH
    opt_out: frozenset[str] = frozenset()
    geography: GeographyLookup | None = None
    type_concept_id: int | None = None  # default: by reader (TYPE_CONCEPTS)


@dataclass
class LoadSummary:
    load_id: int
    org: str
    extract: str
    read: int      # resources / lines / rows as the reader saw them (duplicates included)
    records: int   # distinct source records = loaded + rejected + withheld + removed
    loaded: int
    unchanged: int
    rejected: int
    withheld: int
    flagged: int
    rows: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    removed: int = 0  # records the source withdrew (entered-in-error, deleted): earlier rows removed
    changed: int = 0  # records loaded before whose earlier version this load replaced
    superseded: int = 0  # records not loaded: the version sent is older than the one loaded before


# ``variant_occurrence`` column -> the carrier call's (``Staged.calls``) column it is
VARIANT_COLUMNS = {"reference_sequence": "assembly", "chromosome": "chrom", "position": "pos", "reference_allele": "ref",
                   "alternate_allele": "alt", "target_gene_symbol": "gene", "hgvs": "hgvs", "genotype": "genotype",
                   "hgvs_p": "hgvs_p", "consequence": "consequence", "zygosity": "zygosity",
                   "read_depth": "read_depth", "genotype_quality": "genotype_quality", "source_line": "line"}


def _record_indices(record: pa.ChunkedArray, start: pa.ChunkedArray, records: pa.Table) -> pa.Array:
    """Each call's row in ``records`` (its record and date; null: none).  The reader's calls carry both as
    dictionary arrays over one index per sample: looked up once per dictionary entry, then taken by the
    index (decoding and joining the text of every call cost ~0.09 s a chunk of 500,000)."""
    def keys(record, start):
        return pc.binary_join_element_wise(pc.cast(record, pa.string()), pc.fill_null(pc.cast(start, pa.string()), ""),
                                           "\t")

    known = keys(records.column("record"), records.column("start"))
    if pa.types.is_dictionary(record.type) and pa.types.is_dictionary(start.type) and \
            record.num_chunks == start.num_chunks and \
            all(r.indices.equals(s.indices) for r, s in zip(record.chunks, start.chunks)):
        return pa.chunked_array([pc.index_in(keys(r.dictionary, s.dictionary), value_set=known).take(r.indices)
                                 for r, s in zip(record.chunks, start.chunks)], pa.int32()).combine_chunks()
    return pc.index_in(keys(record, start), value_set=known).combine_chunks()


def _table_from_query(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> pa.Table:
    return con.sql(sql, params=params).to_arrow_table()


class _StoreWrites:
    """The store as ``_Load.insert`` uses it: appends (``insert_arrow``) run in a thread of their own, in
    order, while the load's thread computes the next table's rows in the scratch DuckDB (both release
    the GIL, so the two cores share work that ran one step at a time); any other use of the store first
    waits for the appends queued before it, so the store sees the same statements in the same order."""

    def __init__(self, store: Store):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mercia-store-writes")
        self._pending: list[Future] = []
        self._failed = False  # an append failed: those queued after it do not reach the store

    def insert_arrow(self, table: str, data: pa.Table) -> int:
        self._pending.append(self._pool.submit(self._append, table, data))
        return data.num_rows

    def _append(self, table: str, data: pa.Table) -> None:
        if self._failed:
            return
        try:
            self.store.insert_arrow(table, data)
        except BaseException:
            self._failed = True
            raise

    def settle(self) -> None:
        """Wait for every queued append; the first that failed raises (after the others ended)."""
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self._pool.shutdown()

    def __getattr__(self, name: str):
        self.settle()
        return getattr(self.store, name)


class _Load:
    """One load: holds the scratch DuckDB and the running counts."""

    def __init__(self, store: Store, staged: Staged, org: str, reader: str, options: LoadOptions, load_id: int,
                 last_ids: dict[str, int], after_chunks: bool = False):
        self.store, self.staged, self.org, self.reader, self.options = store, staged, org, reader, options
        self.load_id, self.last_ids, self.after_chunks = load_id, last_ids, after_chunks
        self.con = duckdb.connect()
        self.rejects: list[dict] = []
        self.rows: Counter[str] = Counter()
        self.stored_opt_outs = stored_opt_outs(store)
        self.stored_source_opt_outs = stored_source_opt_outs(store, org)  # purged people's local ids, pseudonymised
        self.touched_persons: list[pa.Table] = []  # persons whose rows a deletion removed
        self.call_rows: pa.Table | None = None  # the carrier calls to write, numbered (``number_calls``)
        self.removed_records: set[str] = set()
        self.removed_owners: dict[str, int] = {}  # a withdrawn record -> the person its earlier rows belonged to
        self.affected_persons: pa.Table | None = None  # whose person rows to rebuild after the load's last chunk

    # -- helpers ---------------------------------------------------------------------------
    def reject(self, table: pa.Table, field_name: str, reason: str, action: str = "rejected") -> None:
        """Each (source_record, line) of ``table`` as a reject, with its ``person_id`` where ``table`` has
        one (so that an opt-out purge finds the reject of a record that wrote no row)."""
        persons = table.column("person_id").to_pylist() if "person_id" in table.column_names \
            else [None] * table.num_rows
        for rec, line, person in zip(table.column("source_record").to_pylist(), table.column("line").to_pylist(),
                                     persons):
            self.rejects.append(dict(source_record=rec, line=line, field=field_name, reason=reason, action=action,
                                     person_id=person))

    def register(self, name: str, table: pa.Table) -> None:
        self.con.register(name, table)

    def _first_id(self, table: str, pk: str) -> int:
        """The id after which this chunk numbers its ``table`` rows: the table's largest id for the load's
        first chunk, then carried from chunk to chunk (``_used_ids``), because a max() over a table the
        load keeps growing reads all of it again every chunk."""
        if table not in self.last_ids:
            self.last_ids[table] = max_id(self.store, table, pk)
        return self.last_ids[table]

    def _used_ids(self, table: str, count: int) -> None:
        """``count`` ids after ``_first_id`` are now taken."""
        self.last_ids[table] += count

    def _store_temp(self, name: str, table: pa.Table, columns: str) -> None:
        """``table`` as a temporary table of the store (keys to join there rather than fetch here)."""
        self.store.temp_table_from_arrow(name, columns, table)

    # -- steps -----------------------------------------------------------------------------
    def pseudonymise_records(self) -> None:
        """Record keys -> 'Type/<org-scoped HMAC of the key>' for provenance and rejects."""
        s = self.staged
        for name, columns in (("staged_persons_raw", s.persons), ("staged_events", s.events),
                              ("staged_sites", s.sites), ("staged_versions", s.versions)):
            self.register(name, columns.table())
        for name, columns in (("staged_rejects", s.rejects), ("staged_removals", s.removals)):
            self.register(name, conform(columns.table(), VERSIONED_REJECT_SCHEMA))
        self.register("staged_values", VALUE_SCHEMA.empty_table() if s.values is None else s.values)
        self.register("staged_calls", CALL_SCHEMA.empty_table() if s.calls is None else s.calls)
        self.con.execute("""CREATE TABLE read_records AS SELECT DISTINCT record FROM (
            SELECT record FROM staged_persons_raw UNION ALL SELECT record FROM staged_events
            UNION ALL SELECT record FROM staged_calls
            UNION ALL SELECT also_record FROM staged_events UNION ALL SELECT record FROM staged_sites
            UNION ALL SELECT record FROM staged_rejects UNION ALL SELECT record FROM staged_removals)
            WHERE record IS NOT NULL""")
        keys = _table_from_query(self.con, """SELECT DISTINCT record FROM (
            SELECT record FROM read_records UNION ALL SELECT visit_ref FROM staged_events
            UNION ALL SELECT site_ref FROM staged_events) WHERE record IS NOT NULL""")
        hashed = self.options.pseudonymiser.hash_values(f"record/{self.org}", keys.column("record"))
        self.register("record_hashes", keys.append_column("h", hashed))
        self.con.execute("""CREATE TABLE record_keys AS SELECT record,
            CASE WHEN contains(record, '/') THEN split_part(record, '/', 1) || '/' || h ELSE h END AS source_record
            FROM record_hashes""")
        self.records_read = self.con.execute("SELECT count(*) FROM read_records").fetchall()[0][0]
        self.withheld_records: set[str] = set()

    def choose_versions(self) -> None:
        """Each record's newest version (module docstring) stays staged; the others become
        ``superseded`` rejects, and a record whose stored version is newer than any it brings is not
        loaded.  A lastUpdated that is not an instant rejects that version."""
        self.superseded_records: set[str] = set()
        con = self.con
        con.execute("SET TimeZone = 'UTC'")  # an instant without offset is read as UTC
        con.execute("""CREATE TABLE versions AS SELECT v.*, k.source_record,
            timezone('UTC', TRY_CAST(v.last_updated AS TIMESTAMPTZ)) AS instant
            FROM staged_versions v JOIN record_keys k USING (record)""")
        self.has_versions = bool(con.execute("SELECT count(*) FROM versions").fetchall()[0][0])
        if not self.has_versions:
            return  # a reader without versions (everything but FHIR)
        stored = pa.table({})
        if self.store.query_one("SELECT count(*) FROM (SELECT 1 FROM mercia_record_version WHERE org = ? LIMIT 1) v",
                                [self.org]):  # a feed without meta never stores a version: nothing to compare
            self._store_temp("mercia_tmp_versioned", _table_from_query(
                con, "SELECT DISTINCT source_record FROM versions"), "source_record VARCHAR")
            stored = self.store.query_arrow(
                "SELECT source_record, last_updated, version_id FROM mercia_record_version WHERE org = ? "
                "AND source_record IN (SELECT source_record FROM mercia_tmp_versioned)", [self.org])
        self.register("stored_versions", conform(stored, pa.schema([
            ("source_record", pa.string()), ("last_updated", pa.timestamp("us")), ("version_id", pa.string())])))
        con.execute("""CREATE TABLE ranked AS
            WITH candidates AS (
                SELECT source_record, record_hash, instant, version_id, seq, last_updated IS NULL AS undated,
                       false AS stored FROM versions WHERE last_updated IS NULL OR instant IS NOT NULL
                UNION ALL
                SELECT source_record, NULL, last_updated, version_id, -1, false, true FROM stored_versions),
            several AS (SELECT source_record FROM candidates GROUP BY 1 HAVING count(*) > 1),
            effective AS (
                SELECT *, COALESCE(instant, max(instant) OVER (PARTITION BY source_record ORDER BY seq
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS effective
                FROM candidates SEMI JOIN several USING (source_record))
            SELECT *, row_number() OVER (PARTITION BY source_record ORDER BY effective DESC NULLS LAST,
                undated DESC, TRY_CAST(version_id AS BIGINT) DESC NULLS LAST, version_id DESC NULLS LAST,
                seq DESC) AS rank
            FROM effective
            UNION ALL  -- a record's only candidate is its newest, at its own instant (no sort needed)
            SELECT *, instant, 1 FROM candidates ANTI JOIN several USING (source_record)""")
        losers = _table_from_query(con, """
            SELECT DISTINCT v.record, v.record_hash, v.source_record, v.line, COALESCE(w.stored, false) AS stale,
                   v.last_updated IS NOT NULL AND v.instant IS NULL AS bad_instant
            FROM versions v LEFT JOIN ranked w ON w.source_record = v.source_record AND w.rank = 1
            WHERE (v.last_updated IS NOT NULL AND v.instant IS NULL) OR w.stored OR v.record_hash <> w.record_hash""")
        if not losers.num_rows:
            return
        self.register("losers", losers)
        self._drop_staged(("staged_persons_raw", "staged_events", "staged_sites", "staged_removals", "staged_rejects"),
                          "losers")
        bad, stale = pc.field("bad_instant"), pc.field("stale")
        # FHIR orders a record's versions by their meta; a reader without meta (HL7 v2) by reading order only
        by_meta = self.reader == "fhir"
        for which, field_name, reason, action in [
                (bad, "meta.lastUpdated", "meta.lastUpdated is not an instant (YYYY-MM-DDThh:mm:ss+zz:zz)", "rejected"),
                (stale & ~bad, "meta.lastUpdated", "older than the version loaded before: not loaded", "superseded"),
                (~stale & ~bad, *(("meta.lastUpdated", "a newer version of the record in the same load replaced it")
                                  if by_meta else ("record key", REPEATED_RECORD)), "superseded")]:
            self.reject(losers.filter(which), field_name, reason, action=action)
        self.superseded_records = set(losers.filter(stale & ~bad).column("source_record").to_pylist())

    def _drop_staged(self, tables: tuple[str, ...], losers: str) -> None:
        """Take the rows of the (record, record_hash) pairs in table ``losers`` out of the staged ``tables``."""
        con = self.con
        for name in tables:
            loser = f"SELECT 1 FROM {losers} l WHERE l.record = s.record AND l.record_hash = s.record_hash"
            if not con.execute(f"SELECT EXISTS (SELECT 1 FROM {name} s WHERE EXISTS ({loser}))").fetchall()[0][0]:
                continue  # two key columns scanned rather than every column copied
            self._replace_staged(name, f"SELECT * FROM {name} s WHERE NOT EXISTS ({loser})")

    def _replace_staged(self, name: str, rows_sql: str) -> None:
        """The staged table ``name`` (the reader's, registered, or one an earlier step rebuilt) replaced
        by the rows of ``rows_sql``, which may read it."""
        self.con.execute(f"CREATE TABLE kept AS {rows_sql}")
        self.con.unregister(name)
        self.con.execute(f"DROP TABLE IF EXISTS {name}")
        self.con.execute(f"ALTER TABLE kept RENAME TO {name}")

    def keep_last_copies(self) -> None:
        """A record without versions read with different contents in one extract (an ALT listed twice
        at a site, a CSV row id repeated) keeps the copy read last (readers stage rows in reading order;
        a line number restarts with each file); the other copies become ``superseded`` rejects, and
        their staged values go with them (a value has no content hash: it belongs to its copy's line).
        Loading every copy stored the record twice, and a resend, matching neither copy alone, deleted
        both and inserted none.  Then copies alike in content are stored once (``_store_copies_once``)."""
        staged = [self.staged.events.table(), self.staged.calls if self.staged.calls is not None
                  else CALL_SCHEMA.empty_table()]
        offsets = np.cumsum([0] + [t.num_rows for t in staged])
        for name, t, start in zip(("event_copies", "calls_copies"), staged, offsets):  # (the calls' keys: dictionaries)
            self.register(name, t.select(["record", "record_hash", "line"]).append_column(
                "pos", pa.array(np.arange(start, start + t.num_rows, dtype=np.int64))))
        self.con.execute("CREATE VIEW copies AS SELECT * FROM event_copies UNION ALL SELECT * FROM calls_copies")
        repeated = _table_from_query(self.con, """
            SELECT DISTINCT c.record, c.record_hash, c.line, k.source_record FROM copies c
            JOIN (SELECT record FROM copies ANTI JOIN versions USING (record)
                  GROUP BY record HAVING count(DISTINCT record_hash) > 1) r USING (record)
            JOIN record_keys k USING (record)
            QUALIFY c.record_hash <> first_value(c.record_hash) OVER (
                PARTITION BY c.record ORDER BY c.pos DESC)""")
        if repeated.num_rows:
            self.register("repeated", repeated)
            self._drop_staged(("staged_events", "staged_calls"), "repeated")
            self._replace_staged("staged_values", """SELECT * FROM staged_values v WHERE NOT EXISTS (
                SELECT 1 FROM repeated r WHERE r.record = v.record AND r.line = v.line)""")
            self.reject(repeated, "record key", REPEATED_RECORD, action="superseded")
        self._store_copies_once()
        self._keep_last_calls()

    def _keep_last_calls(self) -> None:
        """A VCF sample's allele listed twice in a chunk (an ALT repeated at a site, a line repeated) keeps
        its call on the later line; each other copy is a ``superseded`` reject naming its line (the record
        is the sample, which loads).  Found by one grouping of a 64-bit hash of the call keys (half the CPU of
        grouping the five columns; a hash shared by two keys only sends the chunk on to the exact window);
        the window that picks the copies runs only when a hash repeats."""
        key = "record, chrom, pos, ref, alt"
        if not self.con.execute(f"SELECT count(*) FROM (SELECT 1 FROM staged_calls GROUP BY hash({key}) "
                                "HAVING count(*) > 1 LIMIT 1)").fetchall()[0][0]:
            return
        content = ", ".join(quote(c) for c in CALL_SCHEMA.names if c != "line")
        self.con.execute(f"""CREATE TABLE call_copies AS SELECT *, row_number() OVER (
                                 PARTITION BY {key} ORDER BY line DESC, {content}) AS copy,
                             first_value(({content})) OVER (PARTITION BY {key} ORDER BY line DESC, {content})
                                 IS NOT DISTINCT FROM ({content}) AS alike
                             FROM staged_calls""")
        for alike, reason in ((True, SAME_CALL), (False, REPEATED_CALL)):
            self.reject(_table_from_query(self.con, f"""SELECT k.source_record, c.line FROM call_copies c
                JOIN record_keys k USING (record) WHERE c.copy > 1 AND c.alike = {alike} ORDER BY 2"""),
                        "ALT", reason, action="superseded")
        self._replace_staged("staged_calls", "SELECT * EXCLUDE (copy, alike) FROM call_copies WHERE copy = 1")

    def number_calls(self) -> None:
        """``call_rows``: the carrier calls of the records left in ``calls`` (a sample's row without an allele
        writes nothing: mercia.ingest.vcf) in reading order, numbered ``n`` from 1, with their record's keys
        (dictionary arrays over the call's row of ``calls``), person and dates, the gene's source and
        standard concepts (0 when unmapped; a gene mapped to several takes the smallest) and the genotype's
        (the smallest) as the value.  Taken from the reader's Arrow in Arrow: copying every call into DuckDB with
        its person and dates, then numbering, joining and selecting it there, materialised it four times
        (docs/performance/metabolomics.md); until 7 December the calls were also sorted by record, every column
        copied, so that a record's rows were numbered together."""
        if self.staged.calls is None:
            return
        con = self.con
        # (the reader's table, unless ``keep_last_copies`` rebuilt it: an allele or a file's record repeated)
        rebuilt = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'staged_calls'").fetchall()[0][0]
        staged = _table_from_query(con, "SELECT * FROM staged_calls") if rebuilt else self.staged.calls
        if staged.column("alt").null_count:  # (a filter copies every column: the sample rows are in one chunk)
            staged = staged.filter(pc.is_valid(staged.column("alt")))
        records = _table_from_query(con, """SELECT record, start, source_record, record_hash, person_id, start_date,
                                                   start_datetime FROM calls""")

        owner = _record_indices(staged.column("record"), staged.column("start"), records)
        if owner.null_count:  # records rejected, withheld, unchanged or withdrawn write nothing
            kept = pc.is_valid(owner)
            staged, owner = staged.filter(kept), owner.filter(kept)
        # each call's record as an index into ``records``: its keys are that record's dictionary entry, not text
        calls = pa.table({
            **{name: pa.DictionaryArray.from_arrays(owner, records.column(name).combine_chunks())
               for name in ("source_record", "record_hash")},
            **{name: records.column(name).take(owner) for name in ("person_id", "start_date", "start_datetime")}})
        for name in ("line", "code", "assembly", "chrom", "pos", "ref", "alt", "gene", "genotype", "hgvs", "hgvs_p",
                     "consequence", "zygosity", "read_depth", "genotype_quality"):
            calls = calls.append_column(name, staged.column(name))
        genes = _table_from_query(con, "SELECT code, source_concept_id, concept_id FROM mapped WHERE vocabulary = ? "
                                       "ORDER BY code, concept_id", [CALL_CODE_VOCABULARY])
        genotypes = _table_from_query(con, "SELECT code, min(concept_id) AS concept_id FROM mapped "
                                           "WHERE vocabulary = ? GROUP BY 1", [CALL_VALUE_VOCABULARY])
        gene = pc.index_in(calls.column("code"), value_set=genes.column("code"))  # (the first of a code's rows)
        unmapped = pa.scalar(0, pa.int64())
        self.call_rows = (calls.append_column("n", pa.array(np.arange(1, calls.num_rows + 1, dtype=np.int64)))
                          .append_column("source_concept_id", pc.coalesce(
                              genes.column("source_concept_id").take(gene), unmapped))
                          .append_column("concept_id", pc.coalesce(genes.column("concept_id").take(gene), unmapped))
                          .append_column("value_as_concept_id", genotypes.column("concept_id").take(
                              pc.index_in(calls.column("genotype"), value_set=genotypes.column("code")))))
        con.register("call_rows", self.call_rows)

    def supersede_earlier_chunk_calls(self) -> None:
        """A VCF sample's allele listed twice in an unsorted file, the copies in different chunks: the copy
        an earlier chunk of this load wrote goes (its measurement, variant and their provenance) and its
        line is a ``superseded`` reject, as ``_keep_last_calls`` does within a chunk.  Looked up only when
        the reader says this chunk reaches back into positions an earlier one held (``calls_revisit``), so
        a sorted file costs nothing."""
        if not (self.after_chunks and self.staged.calls_revisit):
            return
        store, content = self.store, ("genotype", "zygosity", "read_depth", "genotype_quality", "hgvs", "hgvs_p",
                                      "consequence")
        self._store_temp("mercia_tmp_calls", _table_from_query(self.con, f"""SELECT DISTINCT source_record, chrom,
            pos, ref, alt, gene, assembly, {", ".join(content)} FROM call_rows"""),
            "source_record VARCHAR, chrom VARCHAR, pos BIGINT, ref VARCHAR, alt VARCHAR, gene VARCHAR, "
            "assembly VARCHAR, genotype VARCHAR, zygosity VARCHAR, read_depth BIGINT, "
            "genotype_quality DOUBLE PRECISION, hgvs VARCHAR, hgvs_p VARCHAR, consequence VARCHAR")
        alike = " AND ".join([f"v.{c} IS NOT DISTINCT FROM t.{c}" for c in content]
                             + ["v.target_gene_symbol IS NOT DISTINCT FROM t.gene",
                                "v.reference_sequence IS NOT DISTINCT FROM t.assembly"])
        # in two steps, each joined against this chunk's few rows: the variants at its calls' alleles, then those of
        # them this load wrote for the same record.  As one join the planner built a hash table of the load's
        # provenance and variants, which outgrew the load's memory limit once tens of millions were loaded.
        store.drop_temp_table("mercia_tmp_hits")
        store.create_temp_table("mercia_tmp_hits", f"""
            SELECT t.source_record, v.source_line AS line, v.variant_occurrence_id, v.measurement_id, {alike} AS alike
            FROM mercia_tmp_calls t JOIN variant_occurrence v ON t.chrom = v.chromosome AND t.pos = v.position
                 AND t.ref = v.reference_allele AND t.alt = v.alternate_allele""")
        store.analyse_new_table("mercia_tmp_hits")
        earlier = store.query_arrow("""
            SELECT h.source_record, h.line, h.variant_occurrence_id, h.measurement_id, h.alike FROM mercia_tmp_hits h
            JOIN mercia_provenance p ON p.row_id = h.variant_occurrence_id AND p.source_record = h.source_record
            WHERE p.org = ? AND p.load_id = ? AND p.cdm_table = 'variant_occurrence'""", [self.org, self.load_id])
        if not earlier.num_rows:
            return
        self._store_temp("mercia_tmp_rows", earlier.select(["variant_occurrence_id", "measurement_id"]),
                         "variant_occurrence_id BIGINT, measurement_id BIGINT")
        for table in ("variant_occurrence", "measurement"):
            store.execute(f"DELETE FROM {table} WHERE {table}_id IN (SELECT {table}_id FROM mercia_tmp_rows)")
            store.execute(f"DELETE FROM mercia_provenance WHERE org = ? AND load_id = ? AND cdm_table = '{table}' "
                          f"AND row_id IN (SELECT {table}_id FROM mercia_tmp_rows)", [self.org, self.load_id])
            self.rows[table] -= earlier.num_rows
        for alike, reason in ((True, SAME_CALL), (False, REPEATED_CALL)):
            self.reject(earlier.filter(pc.equal(earlier.column("alike"), alike)).sort_by("line"), "ALT", reason,
                        action="superseded")

    def _store_copies_once(self) -> None:
        """A record read k times with the same content keeps one copy's rows: of each set of alike rows
        (every column but the line) the record staged, n/k stay, the rest go, and each other copy's line
        becomes a ``superseded`` reject.  k is the number of versions read for FHIR (a resource repeated
        in a Bulk export); other readers give no count of copies, so there k is the most times any one row
        repeats (a record staging the same row twice is stored once).  Copies used to be written twice."""
        con = self.con
        tables = ("staged_events", "staged_values")  # (calls: ``_keep_last_calls``)
        alike = {name: ", ".join(quote(c) for c in con.table(name).columns if c != "line") for name in tables}
        if self.has_versions:
            # records with several versions are those ``choose_versions`` ranked a second one for
            counted = """SELECT record, count(*) AS k FROM versions v
                         WHERE source_record IN (SELECT source_record FROM ranked WHERE rank = 2)
                           AND EXISTS (SELECT 1 FROM staged_events e WHERE e.record = v.record
                                       AND e.record_hash = v.record_hash) GROUP BY record"""
        else:  # alike rows counted among the records that stage several rows only (a call is one row a copy)
            counted = f"""SELECT record, count(*) AS k FROM staged_events WHERE record IN (
                              SELECT record FROM staged_events GROUP BY record HAVING count(*) > 1)
                          GROUP BY {alike["staged_events"]}"""
        con.execute(f"CREATE TABLE copied AS SELECT record, max(k) AS k FROM ({counted}) GROUP BY record HAVING max(k) > 1")
        if not con.execute("SELECT count(*) FROM copied").fetchall()[0][0]:
            return
        dropped = []
        for name in tables:
            con.execute(f"""CREATE TABLE copy_ranked AS SELECT s.*, c.k, count(*) OVER alike AS n,
                                row_number() OVER (alike ORDER BY s.line DESC NULLS LAST) AS copy
                            FROM {name} s JOIN copied c USING (record) WINDOW alike AS (PARTITION BY {alike[name]})""")
            dropped.append(f"SELECT record, line FROM {name}_dropped")
            con.execute(f"CREATE TABLE {name}_dropped AS SELECT record, line FROM copy_ranked WHERE copy > greatest(1, n // k)")
            self._replace_staged(name, f"""SELECT * FROM {name} ANTI JOIN copied USING (record) UNION ALL BY NAME
                                           SELECT * EXCLUDE (k, n, copy) FROM copy_ranked WHERE copy <= greatest(1, n // k)""")
            con.execute("DROP TABLE copy_ranked")
        self.reject(_table_from_query(con, f"""SELECT DISTINCT d.line, k.source_record FROM ({" UNION ALL ".join(dropped)}) d
                                              JOIN record_keys k USING (record) ORDER BY 2, 1"""),
                    "record key", SAME_RECORD, action="superseded")

    def record_versions(self, load_id: int) -> None:
        """Remember the newest version of each record this load wrote or removed (mercia_record_version)."""
        if not self.has_versions:  # choose_versions made no ranking
            return
        removed = sorted(self.removed_records)
        self.register("removed_now", pa.table({"source_record": pa.array(removed, pa.string()), "person_id": pa.array(
            [self.removed_owners.get(r) for r in removed], pa.int64())}))
        newest = _table_from_query(self.con, f"""
            SELECT ? AS org, source_record, effective AS last_updated, version_id, {load_id} AS load_id, o.person_id
            FROM ranked LEFT JOIN removed_now o USING (source_record)
            WHERE rank = 1 AND NOT stored AND (effective IS NOT NULL OR version_id IS NOT NULL)
              AND (source_record IN (SELECT source_record FROM prov_rows) OR o.source_record IS NOT NULL)""",
                                  [self.org])
        if not newest.num_rows:
            return
        self._store_temp("mercia_tmp_versioned", newest.select(["source_record"]), "source_record VARCHAR")
        self.store.execute("DELETE FROM mercia_record_version WHERE org = ? AND source_record IN "
                           "(SELECT source_record FROM mercia_tmp_versioned)", [self.org])
        self.store.insert_arrow("mercia_record_version", newest)

    def prepare_persons(self) -> pa.Table:
        """Validated, pseudonymised persons with identifiers replaced by tokens."""
        p = _table_from_query(self.con, """
            SELECT * EXCLUDE (pos) FROM (SELECT *, row_number() OVER () AS pos FROM staged_persons_raw)
            QUALIFY row_number() OVER (PARTITION BY record ORDER BY pos DESC) = 1 ORDER BY pos""")
        opt = self.options
        nhs = normalise_nhs_numbers(p.column("nhs_number").combine_chunks()) if p.num_rows else pa.array([], pa.string())
        problems = nhs_number_problems(nhs, opt.allow_synthetic_nhs_numbers) if p.num_rows else nhs
        valid = pc.and_(pc.is_null(problems), pc.invert(pc.is_null(nhs))) if p.num_rows else pa.array([], pa.bool_())
        nhs_list, valid_list = nhs.to_pylist(), valid.to_pylist()
        ps = opt.pseudonymiser
        valid_nhs = [n if v else None for n, v in zip(nhs_list, valid_list)]
        nhs_pseudonyms = ps.nhs_pseudonyms(valid_nhs)
        source_pseudonyms = ps.source_pseudonyms(self.org, p.column("person_ref"))
        opted_out = [(bool(n) and (n in opt.opt_out or p in self.stored_opt_outs)) or s in self.stored_source_opt_outs
                     for n, p, s in zip(valid_nhs, nhs_pseudonyms.to_pylist(), source_pseudonyms.to_pylist())]
        status = ["valid" if v else ("absent" if n in (None, "") else "invalid") for n, v in zip(nhs_list, valid_list)]
        family = [normalise_name(x) for x in p.column("family").to_pylist()]
        given = [normalise_name(x) for x in p.column("given").to_pylist()]
        dob = [valid_partial_date(b) for b in p.column("birth_date").to_pylist()]
        tokens = {
            "surname": family, "forename": given,
            "surname_sx": [soundex(x) for x in family], "forename_sx": [soundex(x) for x in given],
            "dob": [d if d and len(d) == 10 else None for d in dob],
            "dob_ym": [d[:7] if d and len(d) >= 7 else None for d in dob], "dob_y": [d[:4] if d else None for d in dob],
            "dob_swap": [f"{d[:4]}-{d[8:10]}-{d[5:7]}" if d and len(d) == 10 else None for d in dob],
            "sex": [(x or "").lower()[:1] or None for x in p.column("sex").to_pylist()],
            "district": [postcode_district(x) for x in p.column("postcode").to_pylist()],
        }
        safe = pa.table({
            "record": p.column("record"), "record_hash": p.column("record_hash"),
            "person_ref": p.column("person_ref"), "line": p.column("line"),
            "source_pseudonym": source_pseudonyms,
            "nhs_pseudonym": nhs_pseudonyms, "nhs_status": pa.array(status, pa.string()),
            "nhs_problem": problems, "opted_out": pa.array(opted_out, pa.bool_()),
            "birth_date": pa.array(dob, pa.string()), "sex": p.column("sex"),
            # the source gave a date of birth (valid or not): only a person given none can be kept age-unknown
            "birth_date_given": pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(
                p.column("birth_date"))), 0), False),
            "race_source_value": pc.binary_join_element_wise(
                pc.fill_null(p.column("ethnicity_vocabulary"), ""), pc.fill_null(p.column("ethnicity_code"), ""), ":"),
            "death_date": p.column("death_date"),
            "postcode": pa.array([normalise_postcode(x) for x in p.column("postcode").to_pylist()], pa.string()),
            **{f"tok_{k}": ps.linkage_tokens(TOKEN_PURPOSE.get(k, k), v) for k, v in tokens.items()},
        })
        self.register("persons_safe", safe)
        geo = opt.geography.table if opt.geography else pa.table(
            {"postcode": pa.array([], pa.string()), "lsoa": pa.array([], pa.string()),
             "imd_decile": pa.array([], pa.int32())})
        self.register("geography", geo)
        persons = _table_from_query(self.con, """
            SELECT p.* EXCLUDE (postcode), g.lsoa, CAST(g.imd_decile AS BIGINT) AS imd_decile, k.source_record
            FROM persons_safe p LEFT JOIN geography g ON g.postcode = p.postcode
            JOIN record_keys k ON k.record = p.record""")
        withheld = persons.filter(persons.column("opted_out"))
        self.withheld_records |= set(withheld.column("source_record").to_pylist())
        flagged = persons.filter(pc.and_(pc.invert(persons.column("opted_out")),
                                         pc.invert(pc.is_null(persons.column("nhs_problem")))))
        for reason in set(flagged.column("nhs_problem").to_pylist()):
            self.reject(flagged.filter(pc.equal(flagged.column("nhs_problem"), reason)), "nhs_number",
                        f"{reason}; loaded without NHS number, not used for linkage", action="flagged")
        persons = self._reject_implausible_person_dates(persons)
        live = pc.invert(persons.column("opted_out"))
        undated = pc.and_(live, pc.is_null(persons.column("birth_date")))
        age_unknown = pc.and_(pc.and_(undated, pc.invert(persons.column("birth_date_given"))),
                              pa.scalar(self.staged.birth_date_optional))
        field_name = self.staged.birth_date_field
        self.reject(persons.filter(pc.and_(undated, pc.invert(age_unknown))), field_name,
                    "date of birth missing or not a valid date")
        self.reject(persons.filter(age_unknown), field_name,
                    "no date of birth or age given; case kept with the age unknown (year of birth NULL)",
                    action="flagged")
        keep = pc.and_(live, pc.or_(pc.invert(undated), age_unknown))
        self.opted_out_refs = set(withheld.column("person_ref").to_pylist())
        self.opted_out_nhs = {n for n, o in zip(nhs_list, opted_out) if o} | set(opt.opt_out)
        return persons.filter(keep).drop_columns(["birth_date_given"])

    def _reject_implausible_person_dates(self, persons: pa.Table) -> pa.Table:
        """Births and deaths outside the plausible window (see ``staging.EARLIEST_DATE``) are rejected;
        ISO dates, partial or not, compare correctly as text."""
        self.register("persons_dated", persons)
        earliest, latest = EARLIEST_DATE.isoformat(), latest_date().isoformat()
        checks = [(self.staged.birth_date_field, "date of birth",
                   "birth_date IS NOT NULL AND (birth_date < ? OR birth_date > ?)"),
                  ("deceasedDateTime", "date of death", "death_date IS NOT NULL AND (TRY_CAST(left(death_date, 10) "
                   "AS DATE) IS NULL OR left(death_date, 10) < ? OR left(death_date, 10) > ?)")]
        for field_name, what, where in checks:
            bad = _table_from_query(self.con, f"SELECT source_record, line FROM persons_dated WHERE NOT opted_out "
                                              f"AND {where}", [earliest, latest])
            self.reject(bad, field_name, f"{what} not a date in the plausible window {date_window()}")
        return _table_from_query(self.con, f"""SELECT * FROM persons_dated WHERE opted_out OR NOT (
            COALESCE({checks[0][2]}, false) OR COALESCE({checks[1][2]}, false))""", [earliest, latest] * 2)

    def resolve_persons(self, persons: pa.Table) -> None:
        """person_id for every staged person: same organisation's earlier link, else NHS pseudonym
        (deterministic linkage across organisations), else a new person."""
        self.register("batch_persons", persons)
        self._register_ref_keys()
        # only the links this chunk can meet (its persons' and its events' pseudonyms): every link would
        # make each chunk of a large load read every person loaded before it
        self._store_temp("mercia_tmp_pseudonyms", _table_from_query(self.con, """
            SELECT source_pseudonym AS pseudonym FROM batch_persons UNION SELECT nhs_pseudonym FROM batch_persons
            UNION SELECT source_pseudonym FROM ref_keys UNION SELECT nhs_pseudonym FROM ref_keys"""),
            "pseudonym VARCHAR")
        links = self.store.query_arrow(
            "SELECT person_id, org, source_pseudonym, nhs_pseudonym, record_hash FROM mercia_person_link "
            "WHERE source_pseudonym IN (SELECT pseudonym FROM mercia_tmp_pseudonyms) "
            "OR nhs_pseudonym IN (SELECT pseudonym FROM mercia_tmp_pseudonyms)")
        if links.num_rows == 0:
            links = pa.table({"person_id": pa.array([], pa.int64()), "org": pa.array([], pa.string()),
                              "source_pseudonym": pa.array([], pa.string()), "nhs_pseudonym": pa.array([], pa.string()),
                              "record_hash": pa.array([], pa.string())})
        self.register("links", links)
        max_person = max(max_id(self.store, "person", "person_id"),
                         int(self.store.query_one("SELECT COALESCE(max(person_id), 0) FROM mercia_person_link") or 0))
        self.con.execute(f"""
            CREATE TABLE resolved AS
            WITH known AS (
                SELECT b.*, same.person_id AS same_org_id, same.record_hash AS old_hash,
                       (SELECT min(l.person_id) FROM links l WHERE l.nhs_pseudonym = b.nhs_pseudonym) AS nhs_id
                FROM batch_persons b
                LEFT JOIN links same ON same.org = ? AND same.source_pseudonym = b.source_pseudonym)
            SELECT *, COALESCE(same_org_id, nhs_id, {max_person} + dense_rank() OVER (
                       ORDER BY CASE WHEN same_org_id IS NULL AND nhs_id IS NULL
                                     THEN COALESCE(nhs_pseudonym, source_pseudonym) END)) AS person_id
            FROM known""", [self.org])
        # dense_rank numbers the NULL group too: renumber new persons densely from max_person + 1
        self.con.execute(f"""
            UPDATE resolved SET person_id = {max_person} + r.n FROM (
                SELECT g, dense_rank() OVER (ORDER BY g) AS n FROM (
                    SELECT DISTINCT COALESCE(nhs_pseudonym, source_pseudonym) AS g FROM resolved
                    WHERE same_org_id IS NULL AND nhs_id IS NULL)) r
            WHERE same_org_id IS NULL AND nhs_id IS NULL AND COALESCE(nhs_pseudonym, source_pseudonym) = r.g""")

    def _register_ref_keys(self) -> None:
        """``ref_keys``: each person reference of the staged events -> its source or NHS pseudonym and opt-out."""
        e = _table_from_query(self.con, "SELECT DISTINCT person_ref FROM staged_events "
                                        "UNION SELECT DISTINCT person_ref FROM staged_calls")
        refs = sorted({r for r in e.column("person_ref").to_pylist() if r and not r.startswith("?")})
        conditional = sorted({r for r in e.column("person_ref").to_pylist() if r and r.startswith("?")})
        ps = self.options.pseudonymiser
        ref_pseudonyms = ps.source_pseudonyms(self.org, refs).to_pylist()
        cond_nhs = [r.split("|", 1)[1] if "|" in r else None for r in conditional]
        cond_valid = nhs_number_problems(normalise_nhs_numbers(pa.array(cond_nhs, pa.string())),
                                         self.options.allow_synthetic_nhs_numbers).to_pylist()
        cond_pseudonyms = ps.nhs_pseudonyms([n if v is None else None for n, v in zip(cond_nhs, cond_valid)]).to_pylist()
        self.register("ref_keys", pa.table({
            "person_ref": refs + conditional,
            "source_pseudonym": ref_pseudonyms + [None] * len(conditional),
            "nhs_pseudonym": [None] * len(refs) + cond_pseudonyms,
            "opted_out": [r in self.opted_out_refs or s in self.stored_source_opt_outs
                          for r, s in zip(refs, ref_pseudonyms)] + [
                n in self.opted_out_nhs or p in self.stored_opt_outs for n, p in zip(cond_nhs, cond_pseudonyms)],
        }, schema=pa.schema([("person_ref", pa.string()), ("source_pseudonym", pa.string()),
                             ("nhs_pseudonym", pa.string()), ("opted_out", pa.bool_())])))

    def prepare_events(self) -> None:
        """Events and calls with their keys, person and dates; those withheld or failing the checks of
        person and date are taken out (rejected)."""
        # each person reference resolved once (a VCF chunk has 200,000 calls of a few samples)
        self.con.execute("""
            CREATE TABLE ref_persons AS
            SELECT r.person_ref, r.opted_out, COALESCE(bp.person_id, lo.person_id, bn.person_id, ln.person_id)
                   AS person_id
            FROM ref_keys r
            LEFT JOIN resolved bp ON bp.source_pseudonym = r.source_pseudonym
            LEFT JOIN (SELECT * FROM links WHERE org = ?) lo ON lo.source_pseudonym = r.source_pseudonym
            LEFT JOIN (SELECT nhs_pseudonym, min(person_id) AS person_id FROM resolved
                       WHERE nhs_pseudonym IS NOT NULL GROUP BY 1) bn ON bn.nhs_pseudonym = r.nhs_pseudonym
            LEFT JOIN (SELECT nhs_pseudonym, min(person_id) AS person_id FROM links
                       WHERE nhs_pseudonym IS NOT NULL GROUP BY 1) ln ON ln.nhs_pseudonym = r.nhs_pseudonym
        """, [self.org])
        dates = """TRY_CAST(left(e.start, 10) AS DATE) AS start_date,
                   TRY_CAST(replace(left(e.start, 19), 'T', ' ') AS TIMESTAMP) AS start_datetime,
                   TRY_CAST(left(e."end", 10) AS DATE) AS end_date,
                   TRY_CAST(replace(left(e."end", 19), 'T', ' ') AS TIMESTAMP) AS end_datetime"""
        # each reference joins only the keys it can meet (a hash table of the visits, not of every record)
        referred = "(SELECT * FROM record_keys SEMI JOIN (SELECT {0} AS record FROM staged_events) USING (record))"
        # routed by the standard concept's domain (else by the reader's default) as they are made: a second
        # table of every event with its concepts was a copy of all of them
        self.con.execute(f"""
            CREATE TABLE events AS
            SELECT e.*, k.source_record, v.source_record AS visit_record, a.source_record AS also_source_record,
                   st.source_record AS site_record, r.opted_out, r.person_id, {dates},
                   COALESCE(m.source_concept_id, 0) AS source_concept_id, COALESCE(m.concept_id, 0) AS concept_id,
                   CASE WHEN e.kind IN ('Visit', 'Specimen', 'Note', 'Cost') THEN e.kind
                        WHEN m.domain_id IN ({", ".join(f"'{d}'" for d in DOMAIN_TABLE)}) THEN m.domain_id
                        ELSE e.kind END AS domain,
                   COALESCE(u.concept_id, 0) AS unit_concept_id, vc.concept_id AS value_as_concept_id
            FROM staged_events e
            JOIN record_keys k ON k.record = e.record
            LEFT JOIN {referred.format("visit_ref")} v ON v.record = e.visit_ref
            LEFT JOIN {referred.format("also_record")} a ON a.record = e.also_record
            LEFT JOIN {referred.format("site_ref")} st ON st.record = e.site_ref
            LEFT JOIN ref_persons r ON r.person_ref = e.person_ref
            LEFT JOIN mapped m ON m.vocabulary = e.vocabulary AND m.code = e.code
            LEFT JOIN (SELECT code, min(concept_id) AS concept_id FROM mapped WHERE vocabulary = 'UCUM' GROUP BY 1) u
                   ON u.code = e.unit
            LEFT JOIN (SELECT vocabulary, code, min(concept_id) AS concept_id FROM mapped GROUP BY 1, 2) vc
                   ON vc.vocabulary = e.value_vocabulary AND vc.code = e.value_code""")
        # a VCF sample is one record whose calls share its person and date: ``calls`` holds a row per record (and
        # date: two files of one name), its lines, carriers and whether its row without an allele is here; the calls
        # themselves stay in the reader's Arrow (``number_calls``), not copied here with their person and dates
        self.con.execute(f"""
            CREATE TABLE calls AS
            SELECT e.*, k.source_record, r.opted_out, r.person_id, {dates}
            FROM (SELECT record, record_hash, person_ref, start, NULL::VARCHAR AS "end", min(line) AS line,
                         max(line) AS last_line, count(alt) AS carriers, bool_or(alt IS NULL) AS sample_row
                  FROM staged_calls GROUP BY record, record_hash, person_ref, start) e
            JOIN record_keys k ON k.record = e.record
            LEFT JOIN ref_persons r ON r.person_ref = e.person_ref""")
        for table in ("events", "calls"):
            self.withheld_records |= {r for (r,) in self.con.execute(
                f"SELECT DISTINCT source_record FROM {table} WHERE opted_out").fetchall()}
            self.con.execute(f"DELETE FROM {table} WHERE opted_out")
        # a staged value shares its record's person and date (and has no end): its line is named too when
        # the record is rejected for them
        self.con.execute("""CREATE VIEW value_events AS
            SELECT e.* EXCLUDE (line, "end", end_date), v.line, NULL::VARCHAR AS "end", NULL::DATE AS end_date
            FROM staged_values v JOIN (SELECT DISTINCT ON (record) * FROM events) e USING (record)""")
        earliest, latest = f"DATE '{EARLIEST_DATE}'", f"DATE '{latest_date()}'"
        latest_end = f"DATE '{latest_date() + END_DATE_AHEAD}'"
        for where, field_name, reason in [
                ("person_id IS NULL", "subject", "subject not found among this organisation's patients"),
                ("start_date IS NULL", "date", "date not parseable as YYYY-MM-DD"),
                (f"start_date < {earliest} OR start_date > {latest}", "date",
                 f"date outside the plausible window {date_window()}"),
                ("length(start) > 10 AND start_datetime IS NULL", "date", "time of day not valid (hh:mm:ss)"),
                (f'"end" IS NOT NULL AND (end_date IS NULL OR end_date < {earliest} OR end_date > {latest_end})',
                 "end", f"end date not a date between {EARLIEST_DATE} and a year from today")]:
            bad = _table_from_query(self.con,
                                    f"SELECT DISTINCT source_record, line, person_id FROM events WHERE {where}")
            if bad.num_rows:
                bad = _table_from_query(self.con, f"""SELECT source_record, line, person_id FROM events WHERE {where}
                    UNION SELECT source_record, line, person_id FROM value_events WHERE {where}""")
            self.reject(bad, field_name, reason)
            self.con.execute(f"DELETE FROM events WHERE record IN (SELECT record FROM events WHERE {where})")
            # a VCF sample is one record: rejected once, naming its smallest line (its file's #CHROM line)
            self.reject(_table_from_query(self.con, f"SELECT source_record, min(line) AS line, min(person_id) AS "
                                                    f"person_id FROM calls WHERE {where} GROUP BY 1 ORDER BY 1"),
                        field_name, reason)
            self.con.execute(f"DELETE FROM calls WHERE {where}")

    def skip_unchanged(self) -> int:
        """Drop records already loaded with the same content; delete earlier versions of changed ones.
        A record an earlier chunk of this load read is settled as if both copies were in one chunk
        (``_settle_earlier_chunks``)."""
        self.con.execute("""
            CREATE TABLE batch_records AS SELECT source_record, record_hash, max(line) AS line FROM (
                SELECT source_record, record_hash, line FROM events UNION ALL
                SELECT source_record, record_hash, line FROM sites UNION ALL
                SELECT source_record, record_hash, last_line FROM calls) GROUP BY 1, 2""")
        # only the records this chunk read, looked up in the provenance of earlier loads (their rows come first,
        # so DuckDB's row-group statistics skip this load's: reading the provenance a large load keeps adding
        # made each of its chunks dearer than the last) and among the records earlier chunks read
        self._store_temp("mercia_tmp_batch", _table_from_query(
            self.con, "SELECT source_record FROM record_keys SEMI JOIN read_records USING (record)"),
            "source_record VARCHAR")
        self._settle_earlier_chunks()
        existing = self.store.query_arrow(
            "SELECT DISTINCT source_record, record_hash FROM (SELECT source_record, record_hash FROM mercia_provenance "
            "WHERE org = ? AND load_id < ? UNION ALL SELECT source_record, record_hash FROM mercia_record_hash "
            "WHERE org = ? AND load_id < ?) s WHERE source_record IN (SELECT source_record FROM mercia_tmp_batch)",
            [self.org, self.load_id] * 2)
        if existing.num_rows == 0:
            existing = pa.table({"source_record": pa.array([], pa.string()), "record_hash": pa.array([], pa.string())})
        self.register("existing", existing)
        # an earlier chunk replaced the stored version (its rows are gone): this copy is compared with that version
        self.con.execute("""CREATE TABLE stored_hashes AS SELECT source_record, record_hash AS stored_hash FROM existing
            UNION ALL SELECT source_record, stored_hash FROM seen_replaced WHERE fate = 'changed'""")
        self.con.execute("""CREATE TABLE unchanged_records AS
            SELECT DISTINCT b.source_record FROM batch_records b JOIN stored_hashes x ON x.source_record = b.source_record
            AND x.stored_hash = b.record_hash""")
        unchanged = self.con.execute("SELECT count(*) FROM unchanged_records").fetchall()[0][0]
        changed = _table_from_query(self.con, """
            SELECT DISTINCT b.source_record FROM batch_records b JOIN stored_hashes x USING (source_record)
            WHERE x.stored_hash <> b.record_hash AND b.source_record NOT IN (SELECT source_record FROM continued)""")
        self.con.execute("""DELETE FROM events WHERE (source_record, record_hash) IN
                            (SELECT (source_record, record_hash) FROM existing)""")
        for table in ("sites", "calls"):
            self.con.execute(f"""DELETE FROM {table} WHERE (source_record, record_hash) IN
                                 (SELECT (source_record, record_hash) FROM existing)""")
        self.changed_records = set(changed.column("source_record").to_pylist()) | {
            r for (r,) in self.con.execute("SELECT source_record FROM continued WHERE fate = 'changed'").fetchall()}
        if changed.num_rows:
            self._delete_records(changed)
        # persons: unchanged links are kept; changed ones replaced under the same person_id
        unchanged += self.con.execute("SELECT count(*) FROM resolved WHERE old_hash = record_hash").fetchall()[0][0]
        self.con.execute("INSERT INTO unchanged_records SELECT source_record FROM resolved WHERE old_hash = record_hash")
        self.con.execute("DELETE FROM resolved WHERE old_hash = record_hash")
        replaced = _table_from_query(self.con, "SELECT source_pseudonym, source_record FROM resolved "
                                               "WHERE old_hash IS NOT NULL")
        self.changed_records |= set(replaced.column("source_record").to_pylist())
        if replaced.num_rows:
            self._store_temp("mercia_tmp_keys", replaced.select(["source_pseudonym"]), "source_pseudonym VARCHAR")
            self.store.execute("DELETE FROM mercia_person_link WHERE org = ? AND source_pseudonym IN "
                               "(SELECT source_pseudonym FROM mercia_tmp_keys)", [self.org])
        return unchanged

    def _settle_earlier_chunks(self) -> None:
        """Records an earlier chunk of this load read (``SEEN_RECORDS``) as if that copy were in this chunk:
        a copy alike in content to one loaded there is dropped here (``SAME_RECORD``); otherwise this copy
        is the later one and wins: the earlier copy's rows and rejects go, and it is named ``superseded``
        (``REPEATED_RECORD``).  ``uncounted`` takes back what the earlier chunk counted for records read
        here again, so the load's summary counts each record once, with its last copy's fate.  A VCF
        sample's record spans the chunks of its file with one content hash: met again with that hash it
        is ``continued``, its calls load (or not) with the fate the earlier chunk gave it, its stored rows
        are not deleted twice and its reject is not written twice."""
        con = self.con
        seen = pa.table({})
        if self.after_chunks:
            seen = self.store.query_arrow(f"SELECT * FROM {SEEN_RECORDS} WHERE source_record IN "
                                          "(SELECT source_record FROM mercia_tmp_batch)")
        self.register("seen", conform(seen, pa.schema([
            ("source_record", pa.string()), ("record_hash", pa.string()), ("line", pa.int64()),
            ("fate", pa.string()), ("stored_hash", pa.string())])))
        # (a sample rejected or withheld in an earlier chunk passed on no hash: its calls never reached the fates)
        con.execute("""CREATE TABLE continued AS SELECT s.* FROM seen s JOIN (
            SELECT DISTINCT k.source_record, c.record_hash
            FROM (SELECT DISTINCT record, record_hash FROM staged_calls) c JOIN record_keys k USING (record)
            ) c USING (source_record)
            WHERE s.record_hash = c.record_hash OR (s.record_hash IS NULL AND s.fate IN ('rejected', 'withheld'))""")
        con.execute("""CREATE TABLE seen_alike AS SELECT s.source_record, s.line FROM seen s
            SEMI JOIN batch_records b USING (source_record, record_hash) ANTI JOIN continued USING (source_record)
            WHERE s.fate IN ('loaded', 'changed', 'unchanged')""")
        con.execute("""CREATE TABLE seen_replaced AS SELECT * FROM seen SEMI JOIN batch_records USING (source_record)
                       ANTI JOIN seen_alike USING (source_record) ANTI JOIN continued USING (source_record)""")
        self.rejected_before = {r for (r,) in con.execute(
            "SELECT source_record FROM continued WHERE fate = 'rejected'").fetchall()}
        self.rejects = [r for r in self.rejects if r["source_record"] not in self.rejected_before]
        fates = dict(con.execute("SELECT fate, count(*) FROM seen ANTI JOIN seen_alike USING (source_record) "
                                 "GROUP BY 1").fetchall())
        self.uncounted = Counter({fate: -n for fate, n in fates.items() if fate != "loaded"})
        self.uncounted_reasons: Counter[str] = Counter()  # of the earlier chunks' rejects taken back
        self.uncounted["records"] = -con.execute("SELECT count(*) FROM seen").fetchall()[0][0]
        if not con.execute("SELECT count(*) FROM (SELECT 1 FROM seen LIMIT 1)").fetchall()[0][0]:
            return
        for table in ("events", "sites", "calls", "batch_records"):
            con.execute(f"DELETE FROM {table} WHERE source_record IN (SELECT source_record FROM seen_alike)")
        self.reject(_table_from_query(con, "SELECT source_record, line FROM seen_alike"), "record key", SAME_RECORD,
                    action="superseded")
        self.reject(_table_from_query(con, "SELECT source_record, line FROM seen_replaced"), "record key",
                    REPEATED_RECORD, action="superseded")
        written = _table_from_query(con, "SELECT source_record FROM seen_replaced WHERE fate IN ('loaded', 'changed')")
        if written.num_rows:
            self._delete_records(written)
        self._store_temp("mercia_tmp_records", _table_from_query(
            con, "SELECT source_record FROM seen_replaced WHERE fate = 'rejected'"), "source_record VARCHAR")
        earlier_rejects = "FROM mercia_reject WHERE load_id = ? AND org = ? AND action = 'rejected' AND " \
                          "source_record IN (SELECT source_record FROM mercia_tmp_records)"
        self.uncounted_reasons.update({reason: -n for reason, n in self.store.query(
            f"SELECT reason, count(*) {earlier_rejects} GROUP BY 1", [self.load_id, self.org])})
        self.store.execute(f"DELETE {earlier_rejects}", [self.load_id, self.org])

    def fate_sets(self) -> dict[str, set[str]]:
        """The records of each counted fate but 'loaded' and 'unchanged' (a record in one set only), once
        the chunk's rejects are all in ``rejects``."""
        settled = self.withheld_records | self.removed_records | self.superseded_records
        return {"withheld": self.withheld_records, "removed": self.removed_records,
                "superseded": self.superseded_records,
                "rejected": ({r["source_record"] for r in self.rejects if r["action"] == "rejected"}
                             | self.rejected_before) - settled,
                "changed": self.changed_records - self.removed_records}

    def record_fates(self) -> pa.Table:
        """This chunk's fate of each record it read (``fate_sets``), with its content hash, line and the
        version stored before, for the chunks after it (``SEEN_RECORDS``); a copy this chunk dropped as
        alike keeps the earlier chunk's.  Asked only when another chunk follows (a tenth of a single-chunk
        FHIR load's CPU otherwise)."""
        sets = self.fate_sets()
        counted = [fate for fate in FATES if fate in sets]
        self.register("fate_sets", pa.table({
            "source_record": pa.array([r for fate in counted for r in sets[fate]], pa.string()),
            "fate": pa.array(np.repeat(np.array(counted, dtype=object), [len(sets[fate]) for fate in counted]),
                             pa.string()),
            "rank": pa.array(np.repeat(np.arange(len(counted)), [len(sets[fate]) for fate in counted]), pa.int64())}))
        return _table_from_query(self.con, f"""
            SELECT k.source_record, b.record_hash, COALESCE(b.line, l.line) AS line, COALESCE(f.fate, 'loaded') AS fate,
                   x.stored_hash
            FROM (SELECT source_record FROM record_keys SEMI JOIN read_records USING (record)) k
            LEFT JOIN (SELECT source_record, min(record_hash) AS record_hash, max(line) AS line FROM batch_records
                       GROUP BY 1) b USING (source_record)
            LEFT JOIN (SELECT k.source_record, max(c.line) AS line FROM (
                           SELECT record, line FROM staged_rejects UNION ALL SELECT record, line FROM staged_persons_raw) c
                       JOIN record_keys k USING (record) GROUP BY 1) l USING (source_record)
            LEFT JOIN (SELECT source_record, arg_min(fate, rank) AS fate FROM (
                           SELECT * FROM fate_sets UNION ALL
                           SELECT source_record, 'unchanged', {len(counted)} FROM unchanged_records) GROUP BY 1) f
                   USING (source_record)
            LEFT JOIN (SELECT source_record, min(stored_hash) AS stored_hash FROM stored_hashes GROUP BY 1) x
                   USING (source_record)
            ANTI JOIN seen_alike USING (source_record)""")

    def pass_on_fates(self) -> None:
        """This chunk's records (``record_fates``) replace what earlier chunks left of them in ``SEEN_RECORDS``."""
        fates = self.record_fates()
        self._store_temp("mercia_tmp_records", fates.select(["source_record"]), "source_record VARCHAR")
        self.store.execute(f"DELETE FROM {SEEN_RECORDS} WHERE source_record IN "
                           "(SELECT source_record FROM mercia_tmp_records)")
        self.store.insert_arrow(SEEN_RECORDS, fates)

    def remove_withdrawn(self) -> None:
        """Records the source withdrew: their earlier rows go (and any version staged in this load)."""
        removed = _table_from_query(self.con, """SELECT DISTINCT k.source_record, min(r.line) AS line,
            min(r.field) AS field, min(r.reason) AS reason FROM staged_removals r JOIN record_keys k USING (record)
            GROUP BY 1""")
        self.removed_records = set(removed.column("source_record").to_pylist()) - self.withheld_records
        if not removed.num_rows:
            return
        self.register("removed", removed)
        for table in ("events", "sites", "calls"):
            self.con.execute(f"DELETE FROM {table} WHERE source_record IN (SELECT source_record FROM removed)")
        owners = self._owners(removed.select(["source_record"]))
        self.removed_owners = dict(zip(owners.column("source_record").to_pylist(),
                                       owners.column("person_id").to_pylist()))
        self._delete_records(removed.select(["source_record"]))
        for rec, line, field_name, reason in zip(*(removed.column(c).to_pylist()
                                                   for c in ("source_record", "line", "field", "reason"))):
            self.rejects.append(dict(source_record=rec, line=line, field=field_name, reason=reason, action="removed",
                                     person_id=self.removed_owners.get(rec)))

    def _owners(self, records: pa.Table) -> pa.Table:
        """(source_record, person_id) of ``records`` by the person rows this organisation's loads wrote for them:
        a withdrawn record's reject and version keep whose it was, for an opt-out purge."""
        self._store_temp("mercia_tmp_records", records, "source_record VARCHAR")
        tables = person_tables(self.store)
        of_records = "org = ? AND source_record IN (SELECT source_record FROM mercia_tmp_records)"
        written = [t for (t,) in self.store.query(
            f"SELECT DISTINCT cdm_table FROM mercia_provenance WHERE {of_records}", [self.org]) if t in tables]
        rows = " UNION ALL ".join(
            f"SELECT p.source_record, x.person_id FROM mercia_provenance p JOIN {quote(t)} x "
            f"ON x.{quote(tables[t] or 'person_id')} = p.row_id WHERE p.cdm_table = '{t}' AND p.{of_records}"
            for t in written)
        if not rows:
            return pa.table({"source_record": pa.array([], pa.string()), "person_id": pa.array([], pa.int64())})
        return self.store.query_arrow(f"SELECT source_record, min(person_id) AS person_id FROM ({rows}) o GROUP BY 1",
                                      [self.org] * len(written))

    def _delete_records(self, records: pa.Table) -> None:
        store = self.store
        self._store_temp("mercia_tmp_records", records, "source_record VARCHAR")
        doomed = """SELECT cdm_table, row_id FROM mercia_provenance WHERE org = ?
                     AND source_record IN (SELECT source_record FROM mercia_tmp_records)"""
        for (table,) in store.query(f"SELECT DISTINCT cdm_table FROM ({doomed}) d", [self.org]):
            if table == "care_site":
                continue  # a site stays, its id too (others' rows point at it): a resend names it in place
            pk = f"{table}_id"
            if table in EVENT_DATES:  # their persons' observation periods are rebuilt
                self.touched_persons.append(store.query_arrow(
                    f"SELECT DISTINCT person_id FROM {quote(table)} WHERE {quote(pk)} IN "
                    f"(SELECT row_id FROM ({doomed}) d WHERE cdm_table = ?)", [self.org, table]))
            store.execute(f"DELETE FROM {quote(table)} WHERE {quote(pk)} IN "
                          f"(SELECT row_id FROM ({doomed}) d WHERE cdm_table = ?)", [self.org, table])
        # rows an earlier chunk of this load wrote are not counted as written
        for table, count in store.query("SELECT cdm_table, count(*) FROM mercia_provenance WHERE org = ? AND "
                                        "load_id = ? AND cdm_table NOT IN ('person', 'care_site') AND source_record IN "
                                        "(SELECT source_record FROM mercia_tmp_records) GROUP BY 1",
                                        [self.org, self.load_id]):
            self.rows[ROWS_KEY.get(table, table)] -= count
        store.execute(f"DELETE FROM mercia_provenance WHERE org = ? AND "
                      f"(cdm_table, row_id) IN (SELECT cdm_table, row_id FROM ({doomed}) d)", [self.org, self.org])
        store.execute("DELETE FROM mercia_record_hash WHERE org = ? AND source_record IN "
                      "(SELECT source_record FROM mercia_tmp_records)", [self.org])

    def prepare_sites(self) -> None:
        """Each site record's last copy, its ODS code in capitals; an Organization without a name, or a site
        whose ODS code is not one, is rejected naming the field."""
        self.con.execute("""
            CREATE TABLE sites AS SELECT s.* REPLACE (upper(trim(s.ods_code)) AS ods_code), k.source_record FROM (
                SELECT * EXCLUDE (pos) FROM (SELECT *, row_number() OVER () AS pos FROM staged_sites)
                QUALIFY row_number() OVER (PARTITION BY record ORDER BY pos DESC) = 1) s
            JOIN record_keys k ON k.record = s.record""")
        for where, field_name, reason in [
                ("kind = 'Organization' AND NULLIF(trim(name), '') IS NULL", "name", "Organization has no name"),
                (f"ods_code IS NOT NULL AND NOT regexp_full_match(ods_code, '{ODS_CODE}')",
                 "identifier" if self.reader == "fhir" else "ods_code", ODS_CODE_REASON)]:
            self.reject(_table_from_query(self.con, f"SELECT source_record, line FROM sites WHERE {where}"),
                        field_name, reason)
            self.con.execute(f"DELETE FROM sites WHERE {where}")

    def map_codes(self) -> None:
        """Source codes -> (source concept, standard concept, domain) through 'Maps to', for every staged
        code (those of records rejected later too: a lookup only), so that ``prepare_events`` routes each
        event as it makes it."""
        codes = _table_from_query(self.con, """
            SELECT DISTINCT vocabulary, code FROM staged_events WHERE code IS NOT NULL AND vocabulary IS NOT NULL
            UNION SELECT DISTINCT value_vocabulary, value_code FROM staged_events WHERE value_code IS NOT NULL
              AND value_vocabulary IS NOT NULL
            UNION SELECT DISTINCT 'UCUM', unit FROM staged_events WHERE unit IS NOT NULL
            UNION SELECT DISTINCT vocabulary, code FROM staged_values
            UNION SELECT DISTINCT 'UCUM', unit FROM staged_values WHERE unit IS NOT NULL
            UNION SELECT DISTINCT ?, code FROM staged_calls WHERE alt IS NOT NULL
            UNION SELECT DISTINCT ?, genotype FROM staged_calls WHERE alt IS NOT NULL""",
                                  [CALL_CODE_VOCABULARY, CALL_VALUE_VOCABULARY])
        mapped = map_to_standard(self.store, codes)
        self.register("mapped", mapped)

    def insert(self, load_id: int, extract: str) -> None:
        """New and changed persons, sites and events -> the store, with their provenance; the appends
        overlap the scratch work of the next table (``_StoreWrites``)."""
        writes = _StoreWrites(self.store)
        self.store = writes
        try:
            self._insert_rows(load_id, extract)
        finally:  # an append's failure raised here carries the body's error, if any, as its context
            self.store = writes.store
            writes.close()

    def _insert_rows(self, load_id: int, extract: str) -> None:
        store, con = self.store, self.con
        # the sites and visits loaded before, looked up before this chunk's own provenance reaches the store
        old_sites = self._earlier_rows("care_site", "site_record")
        earlier_visits = self._earlier_rows("visit_occurrence", "visit_record")
        # new and changed persons -> links
        con.execute(f"""
            CREATE TABLE new_links AS SELECT person_id, ? AS org, source_pseudonym, nhs_pseudonym, nhs_status,
                record_hash, COALESCE(CASE lower(sex) {" ".join(f"WHEN '{k}' THEN {v}" for k, v in GENDER.items())}
                END, 0) AS gender_concept_id, sex AS gender_source_value,
                {reduced_birth_columns_sql("birth_date", self.options.dob_policy)},
                NULLIF(race_source_value, ':') AS race_source_value,
                TRY_CAST(left(death_date, 10) AS DATE) AS death_date, lsoa, imd_decile, {load_id} AS load_id,
                {", ".join(f"tok_{f}" for f in TOKEN_FIELDS)}, source_record
            FROM resolved""", [self.org])
        links = _table_from_query(con, "SELECT * EXCLUDE (source_record) FROM new_links")
        store.insert_arrow("mercia_person_link", links)
        self.rows["person_link"] += links.num_rows
        con.execute("CREATE TABLE prov_rows (cdm_table VARCHAR, row_id BIGINT, source_record VARCHAR, record_hash VARCHAR)")
        self._provenance("SELECT 'person', CAST(person_id AS BIGINT), source_record, record_hash FROM new_links")
        self._insert_sites()
        next_provider = self._first_id("provider", "provider_id")
        con.execute(f"""CREATE TABLE provider_rows AS SELECT {next_provider} + row_number() OVER (ORDER BY source_record) AS provider_id, *
                        FROM sites WHERE kind = 'Practitioner'""")
        providers = _table_from_query(con, """SELECT provider_id, left(source_record, 50) AS provider_source_value
                                              FROM provider_rows""")
        self.rows["provider"] += store.insert_arrow("provider", providers)
        self._used_ids("provider", providers.num_rows)
        self._provenance("SELECT 'provider', provider_id, source_record, record_hash FROM provider_rows")
        self.register("old_sites", old_sites)
        present = {d for (d,) in con.execute("SELECT DISTINCT domain FROM events").fetchall()}
        if self.staged.variants is not None and self.staged.variants.num_rows:
            present.add("Measurement")  # its rows (even none) are what the variant rows point at
        self.rows.update({DOMAIN_TABLE[d]: 0 for d in DOMAIN_TABLE if d not in present})  # reported as 0 rows
        if "Visit" in present:
            self._insert_domain("Visit")
        visit_ids = _table_from_query(con, "SELECT source_record, row_id FROM domain_rows") if "Visit" in present \
            else pa.table({"source_record": pa.array([], pa.string()), "row_id": pa.array([], pa.int64())})
        self.register("visit_ids", pa.concat_tables([visit_ids, earlier_visits.cast(visit_ids.schema)]))
        after_visits = [domain for domain in DOMAIN_TABLE if domain != "Visit" and domain in present]
        for domain in after_visits:  # the store asked for each table's last id now, not between the appends
            self._first_id(DOMAIN_TABLE[domain], f"{DOMAIN_TABLE[domain]}_id")
        for domain in after_visits:
            self._insert_domain(domain)
        self._insert_values(load_id, extract)
        self._insert_registrations()
        self._insert_costs()
        self._insert_variants()
        self._insert_calls(load_id, extract)

    def _insert_sites(self) -> None:
        """Organizations and Locations -> ``care_site``, one site per ODS code in the store (a site without
        one: per record), so ``site_rows`` gives each site record its site.  A code the store has a site for
        names that site in place under the naming rule (``RENAMES``); a new code gets a site numbered in record
        order (not in the order a parallel scan happens to return them).  Every record's provenance points at
        its site, and ``mercia_care_site_name`` keeps which organisation gave each name."""
        con, store = self.con, self.store
        con.execute(f"""CREATE TABLE site_records AS SELECT source_record, record_hash, kind, name,
                            COALESCE(ods_code, left(source_record, 50)) AS site_key
                        FROM sites WHERE kind IN {CARE_SITE_KINDS}""")
        # a code met several times in the chunk: an Organization's name first, then in record order
        con.execute("""CREATE TABLE site_names AS SELECT * FROM site_records QUALIFY row_number() OVER (
                           PARTITION BY site_key ORDER BY kind <> 'Organization', name IS NULL, source_record) = 1""")
        keys = _table_from_query(con, "SELECT site_key FROM site_names")
        stored = pa.table({})
        if keys.num_rows:
            self._store_temp("mercia_tmp_site_keys", keys, "site_key VARCHAR")
            stored = store.query_arrow("""
                SELECT s.care_site_source_value AS site_key, s.care_site_id, s.care_site_name, n.org AS named_by
                FROM care_site s LEFT JOIN mercia_care_site_name n ON n.care_site_id = s.care_site_id
                WHERE s.care_site_id IN (SELECT min(care_site_id) FROM care_site WHERE care_site_source_value IN
                                         (SELECT site_key FROM mercia_tmp_site_keys) GROUP BY care_site_source_value)""")
        self.register("stored_sites", conform(stored, pa.schema([
            ("site_key", pa.string()), ("care_site_id", pa.int64()), ("care_site_name", pa.string()),
            ("named_by", pa.string())])))
        next_site = self._first_id("care_site", "care_site_id")
        con.execute(f"""CREATE TABLE site_targets AS
            SELECT n.*, COALESCE(s.care_site_id, {next_site} + row_number() OVER (
                       PARTITION BY s.care_site_id IS NULL ORDER BY n.source_record)) AS care_site_id,
                   s.care_site_id IS NULL AS new_site, {RENAMES} AS renamed
            FROM site_names n LEFT JOIN stored_sites s USING (site_key)""", [self.org, self.org])
        con.execute("""CREATE TABLE site_rows AS SELECT r.source_record, r.record_hash, t.care_site_id
                       FROM site_records r JOIN site_targets t USING (site_key)""")
        care_sites = _table_from_query(con, """SELECT care_site_id, name AS care_site_name,
            site_key AS care_site_source_value, kind AS place_of_service_source_value FROM site_targets
            WHERE new_site ORDER BY care_site_id""")
        self.rows["care_site"] += store.insert_arrow("care_site", care_sites)
        self._used_ids("care_site", care_sites.num_rows)
        renamed = _table_from_query(con, "SELECT care_site_id, name FROM site_targets WHERE renamed")
        if renamed.num_rows:
            self._store_temp("mercia_tmp_site_names", renamed, "care_site_id BIGINT, name VARCHAR")
            store.execute("""UPDATE care_site SET care_site_name = t.name FROM mercia_tmp_site_names t
                             WHERE care_site.care_site_id = t.care_site_id""")
            store.execute("DELETE FROM mercia_care_site_name WHERE care_site_id IN "
                          "(SELECT care_site_id FROM mercia_tmp_site_names)")
            self.rows["care_site"] += renamed.num_rows
        store.insert_arrow("mercia_care_site_name", _table_from_query(
            con, f"SELECT care_site_id, ? AS org, {self.load_id} AS load_id FROM site_targets "
                 "WHERE renamed OR (new_site AND name IS NOT NULL)", [self.org]))
        self._provenance("SELECT 'care_site', care_site_id, source_record, record_hash FROM site_rows")

    def _earlier_rows(self, cdm_table: str, reference: str) -> pa.Table:
        """(source_record, row_id) of the ``cdm_table`` rows this organisation loaded before, for the
        events' ``reference`` column to point at (none looked up when no event refers to one)."""
        if self.con.execute(f"SELECT count(*) FROM (SELECT 1 FROM events WHERE {reference} IS NOT NULL LIMIT 1)"
                            ).fetchall()[0][0]:
            found = self.store.query_arrow("SELECT source_record, row_id FROM mercia_provenance WHERE org = ? "
                                           "AND cdm_table = ?", [self.org, cdm_table])
            if found.num_rows:
                return found.cast(pa.schema([("source_record", pa.string()), ("row_id", pa.int64())]))
        return pa.table({"source_record": pa.array([], pa.string()), "row_id": pa.array([], pa.int64())})

    def _provenance(self, sql: str) -> None:
        """Add the (cdm_table, row_id, source_record, record_hash) rows of ``sql`` to this load's provenance:
        appended to the store's now (overlapping what follows) and kept in ``prov_rows`` for the steps after."""
        rows = _table_from_query(self.con, sql).rename_columns(["cdm_table", "row_id", "source_record", "record_hash"])
        self.register("prov_part", rows)
        self.con.execute("INSERT INTO prov_rows SELECT * FROM prov_part")
        self.con.unregister("prov_part")
        count = rows.num_rows
        if count:
            self.store.insert_arrow("mercia_provenance", rows.add_column(2, "org", _constant(self.org, count))
                                    .add_column(3, "extract", _constant(self.staged.extract, count))
                                    .append_column("load_id", pa.array(np.full(count, self.load_id, dtype=np.int64))))

    def _insert_values(self, load_id: int, extract: str) -> None:
        """Staged values -> ``measurement`` and their provenance, set-based: each takes its record's person
        and date from the record's events still to load (none once the record is rejected, withheld or
        unchanged), its concepts from the mapping, and an id after the events' measurements in
        (source_record, code) order: the values before its record's plus its code's rank in the record
        (the sort stays within each record and carries no text; codes and units are looked up once each)."""
        if not self.con.execute("SELECT count(*) FROM (SELECT 1 FROM staged_values LIMIT 1)").fetchall()[0][0]:
            return
        start = self._first_id("measurement", "measurement_id")
        self.con.execute("""CREATE TABLE value_anchors AS
            SELECT a.record, a.source_record, a.record_hash, a.person_id, a.start_date, a.start_datetime,
                   n.value_count, CAST(COALESCE(sum(n.value_count) OVER (
                       ORDER BY a.source_record ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS BIGINT)
                       AS values_before
            FROM (SELECT DISTINCT ON (record) * FROM events) a
            JOIN (SELECT record, count(*) AS value_count FROM staged_values GROUP BY record) n USING (record)""")
        # a staged value is a number the reader already typed: its text here would be DuckDB's rendering of
        # value_as_number, not the source's, and writing it was a sixth of a large NMR load's CPU
        columns = {**_domain_columns("Measurement", self.options.type_concept_id or TYPE_CONCEPTS.get(self.reader,
                                                                                                   EHR_TYPE)),
                   "value_source_value": "NULL::VARCHAR"}
        select = ", ".join(f"{expr} AS {quote(col)}" for col, expr in columns.items())
        self.con.execute("""CREATE TABLE value_codes AS
            SELECT k.vocabulary, k.code, k.unit, dense_rank() OVER (ORDER BY k.code) AS code_order,
                   COALESCE(m.source_concept_id, 0) AS source_concept_id, COALESCE(m.concept_id, 0) AS concept_id,
                   COALESCE(u.concept_id, 0) AS unit_concept_id
            FROM (SELECT DISTINCT vocabulary, code, unit FROM staged_values) k
            LEFT JOIN mapped m ON m.vocabulary = k.vocabulary AND m.code = k.code
            LEFT JOIN (SELECT code, min(concept_id) AS concept_id FROM mapped WHERE vocabulary = 'UCUM' GROUP BY 1) u
                   ON u.code = k.unit""")
        rows = _table_from_query(self.con, f"""
            SELECT row_id AS measurement_id, person_id, {select} FROM (
                SELECT {start} + a.values_before + row_number() OVER (PARTITION BY a.values_before
                                                                      ORDER BY k.code_order) AS row_id,
                       a.person_id, a.start_date, a.start_datetime, v.code, v.value_number, v.unit,
                       k.source_concept_id, k.concept_id, k.unit_concept_id, NULL::BIGINT AS value_as_concept_id,
                       NULL::VARCHAR AS value_code, NULL::DOUBLE AS range_low, NULL::DOUBLE AS range_high,
                       NULL::BIGINT AS visit_occurrence_id
                FROM staged_values v JOIN value_anchors a USING (record)
                JOIN value_codes k ON k.vocabulary = v.vocabulary AND k.code = v.code
                                  AND k.unit IS NOT DISTINCT FROM v.unit)""")
        self.rows["measurement"] += self.store.insert_arrow("measurement", rows)
        self._used_ids("measurement", rows.num_rows)
        del rows
        # a record's values have consecutive ids, records in values_before order: the provenance rows are the
        # ids in turn, each with its record's keys as Arrow dictionaries over the chunk's records (unnesting
        # each record's id range in SQL was one thread's work and materialised every key once per value)
        anchors = _table_from_query(self.con, "SELECT source_record, record_hash, value_count FROM value_anchors "
                                              "ORDER BY values_before")
        owner = pa.array(np.repeat(np.arange(anchors.num_rows, dtype=np.int32),
                                   anchors.column("value_count").to_numpy()))
        count = len(owner)
        self.store.insert_arrow("mercia_provenance", pa.table({
            "cdm_table": _constant("measurement", count), "row_id": pa.array(np.arange(start + 1, start + 1 + count)),
            "org": _constant(self.org, count), "extract": _constant(extract, count),
            "source_record": pa.DictionaryArray.from_arrays(owner, anchors.column("source_record").combine_chunks()),
            "record_hash": pa.DictionaryArray.from_arrays(owner, anchors.column("record_hash").combine_chunks()),
            "load_id": pa.array(np.full(count, load_id, dtype=np.int64))}))

    def _insert_registrations(self) -> None:
        start = self._first_id("mercia_registration", "registration_id")
        self.con.execute(f"""CREATE TABLE registration_rows AS
            SELECT {start} + row_number() OVER (ORDER BY source_record) AS registration_id, person_id,
                   ? AS org, start_date, end_date, source_record, record_hash
            FROM events WHERE domain = 'Registration'""", [self.org])
        rows = _table_from_query(self.con, """SELECT registration_id, person_id, org, start_date, end_date
                                              FROM registration_rows""")
        self.rows["registration"] += self.store.insert_arrow("mercia_registration", rows)
        self._used_ids("mercia_registration", rows.num_rows)
        self._provenance("SELECT 'mercia_registration', registration_id, source_record, record_hash "
                         "FROM registration_rows")

    def _insert_costs(self) -> None:
        """Bills as cost rows of the visit they bill; a bill whose Encounter is not loaded is rejected."""
        # only what the cost rows, their provenance and the rejects use: a bill's other columns were
        # carried through the numbering sort for nothing
        self.con.execute("""CREATE TABLE billed AS
            SELECT r.source_record, r.also_source_record, r.record_hash, r.line, r.person_id, r.value_as_concept_id,
                   r.value_number,
                   r.paid_by_payer, r.paid_by_patient, v.row_id AS visit_occurrence_id
            FROM events r LEFT JOIN visit_ids v ON v.source_record = r.visit_record WHERE r.domain = 'Cost'""")
        self.reject(_table_from_query(self.con, "SELECT DISTINCT source_record, line, person_id FROM billed WHERE "
                                                "visit_occurrence_id IS NULL"),
                    "item.encounter", "the billed Encounter is not loaded: a cost row belongs to a visit")
        start = self._first_id("cost", "cost_id")
        self.con.execute(f"""CREATE TABLE cost_rows AS SELECT {start} + row_number() OVER (ORDER BY source_record)
                             AS cost_id, * FROM billed WHERE visit_occurrence_id IS NOT NULL""")
        rows = _table_from_query(self.con, f"""SELECT cost_id, visit_occurrence_id AS cost_event_id,
            'Visit' AS cost_domain_id, {CLAIM_TYPE} AS cost_type_concept_id, value_as_concept_id AS currency_concept_id,
            value_number AS total_charge, paid_by_payer, paid_by_patient FROM cost_rows""")
        self.rows["cost"] += self.store.insert_arrow("cost", rows)
        self._used_ids("cost", rows.num_rows)
        self._provenance("SELECT 'cost', cost_id, source_record, record_hash FROM cost_rows UNION ALL "
                         "SELECT 'cost', cost_id, also_source_record, record_hash FROM cost_rows "
                         "WHERE also_source_record IS NOT NULL")

    def _insert_variants(self) -> None:
        variants = self.staged.variants
        if variants is None or variants.num_rows == 0:
            return
        self.register("staged_variants", variants)
        start = self._first_id("variant_occurrence", "variant_occurrence_id")
        self.con.execute(f"""CREATE TABLE variant_rows AS
            SELECT {start} + row_number() OVER (ORDER BY m.row_id) AS variant_occurrence_id, m.person_id,
                   m.row_id AS measurement_id, v.assembly AS reference_sequence, v.chrom AS chromosome,
                   v.pos AS position, v.ref AS reference_allele, v.alt AS alternate_allele,
                   v.gene AS target_gene_symbol, v.hgvs, v.genotype, v.hgvs_p, v.consequence, v.zygosity,
                   v.read_depth, v.genotype_quality, m.source_record, m.record_hash
            FROM staged_variants v JOIN measurement_rows m ON m.record = v.record AND m.qualifier = v.key""")
        rows = _table_from_query(self.con, "SELECT * EXCLUDE (source_record, record_hash) FROM variant_rows")
        self.rows["variant_occurrence"] += self.store.insert_arrow("variant_occurrence", rows)
        self._used_ids("variant_occurrence", rows.num_rows)
        self._provenance("SELECT 'variant_occurrence', variant_occurrence_id, source_record, record_hash "
                         "FROM variant_rows")

    def _insert_calls(self, load_id: int, extract: str) -> None:
        """VCF carrier calls -> ``measurement`` (the gene; the genotype as value), ``variant_occurrence`` (with
        the call's ``source_line``) and the provenance of both from ``call_rows`` (``number_calls``:
        measurements in reading order, variants in the same order): the measurements one projection (the
        domain's columns, as for every event), the variants the calls' own Arrow columns renamed
        (``VARIANT_COLUMNS``; a query copied their text, 7 December).  A sample is one record, so the provenance
        keys are its record's, one Arrow dictionary entry per sample."""
        if self.staged.calls is None:
            return
        con = self.con
        self._keep_hashes_of_samples_without_rows(load_id)
        measurement_start = self._first_id("measurement", "measurement_id")
        variant_start = self._first_id("variant_occurrence", "variant_occurrence_id")
        columns = _domain_columns("Measurement", self.options.type_concept_id or TYPE_CONCEPTS.get(self.reader,
                                                                                                   EHR_TYPE))
        # (projections over an Arrow table keep its order: DuckDB's preserve_insertion_order)
        rows = _table_from_query(con, f"SELECT {measurement_start} + n AS measurement_id, person_id, "
                                      f"{', '.join(f'{expr} AS {quote(col)}' for col, expr in columns.items())} "
                                      """FROM (SELECT *, genotype AS value_code, NULL::DOUBLE AS value_number,
                                                      NULL::VARCHAR AS unit, 0 AS unit_concept_id,
                                                      NULL::DOUBLE AS range_low, NULL::DOUBLE AS range_high,
                                                      NULL::BIGINT AS visit_occurrence_id FROM call_rows)""")
        count = self.store.insert_arrow("measurement", rows)
        del rows
        # the call's columns renamed (no copy of their text, as a query's result would be), the ids added
        calls, n = self.call_rows, self.call_rows.column("n")
        rows = pa.table({"variant_occurrence_id": pc.add(n, variant_start), "person_id": calls.column("person_id"),
                         "measurement_id": pc.add(n, measurement_start),
                         **{name: calls.column(column) for name, column in VARIANT_COLUMNS.items()}})
        self.store.insert_arrow("variant_occurrence", rows)
        del rows
        for table in ("measurement", "variant_occurrence"):
            self.rows[table] += count
            self._used_ids(table, count)
        # two provenance rows per call (its measurement, its variant), each naming its record by the record's
        # dictionary entry (the calls' own, one chunk: ``number_calls``)
        record, record_hash = (calls.column(name).chunk(0) for name in ("source_record", "record_hash"))
        owner = pa.array(np.tile(record.indices.to_numpy(), 2))
        self.store.insert_arrow("mercia_provenance", pa.table({
            "cdm_table": pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(2, dtype=np.int32), count)),
                                                        pa.array(["measurement", "variant_occurrence"])),
            "row_id": pa.array(np.concatenate([np.arange(measurement_start + 1, measurement_start + 1 + count),
                                               np.arange(variant_start + 1, variant_start + 1 + count)])),
            "org": _constant(self.org, 2 * count), "extract": _constant(extract, 2 * count),
            "source_record": pa.DictionaryArray.from_arrays(owner, record.dictionary),
            "record_hash": pa.DictionaryArray.from_arrays(owner, record_hash.dictionary),
            "load_id": pa.array(np.full(2 * count, load_id, dtype=np.int64))}))

    def _keep_hashes_of_samples_without_rows(self, load_id: int) -> None:
        """A VCF sample record without a carrier call writes no row, so no provenance holds its hash:
        ``mercia_record_hash`` does, so that a resend of it is unchanged.  Its row is written with the
        sample's row without an allele (once per file, first chunk) unless the chunk holds a call of it,
        and taken back when a later chunk does."""
        self.store.insert_arrow("mercia_record_hash", _table_from_query(self.con, f"""
            SELECT ? AS org, source_record, record_hash, {load_id} AS load_id, person_id FROM calls s WHERE sample_row
            AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.source_record = s.source_record AND c.carriers > 0)""",
                                                                   [self.org]))
        if self.after_chunks:
            self._store_temp("mercia_tmp_records", _table_from_query(
                self.con, "SELECT DISTINCT source_record FROM calls WHERE carriers > 0"), "source_record VARCHAR")
            self.store.execute("DELETE FROM mercia_record_hash WHERE org = ? AND load_id = ? AND source_record IN "
                               "(SELECT source_record FROM mercia_tmp_records)", [self.org, load_id])

    def _insert_domain(self, domain: str) -> None:
        """The events of one domain -> its CDM table (ids after the table's largest), their
        provenance, and ``domain_rows`` left for the caller (visit ids; measurements for variants)."""
        table = DOMAIN_TABLE[domain]
        pk = f"{table}_id"
        start = self._first_id(table, pk)
        # ids numbered over the sort keys and the row's position only: sorting whole event rows (every
        # column carried through the sort) was most of a large load's time (docs/metabolomics.md)
        numbered = f"""SELECT n.row_id, r.* FROM (
                           SELECT {start} + row_number() OVER (ORDER BY source_record, code) AS row_id,
                                  rowid AS position
                           FROM events WHERE domain = '{domain}') n
                       JOIN events r ON r.rowid = n.position"""
        if domain == "Visit":  # at the care site loaded now, else at the one loaded before
            numbered = f"""SELECT d.*, COALESCE(q.care_site_id, os.row_id) AS care_site_id FROM ({numbered}) d
                           LEFT JOIN site_rows q ON q.source_record = d.site_record
                           LEFT JOIN old_sites os ON os.source_record = d.site_record"""
        else:
            numbered = f"""SELECT d.*, v.row_id AS visit_occurrence_id FROM ({numbered}) d
                           LEFT JOIN visit_ids v ON v.source_record = d.visit_record"""
        columns = _domain_columns(domain, self.options.type_concept_id or TYPE_CONCEPTS.get(self.reader, EHR_TYPE))
        # only the CDM columns and what provenance, visit ids and variants need are kept (not every event column)
        self.con.execute(f"""CREATE OR REPLACE TABLE domain_rows AS
            SELECT row_id, person_id, record, qualifier, source_record, also_source_record, record_hash,
                   {", ".join(f"{expr} AS {quote(col)}" for col, expr in columns.items())}
            FROM ({numbered})""")
        rows = _table_from_query(self.con, f"SELECT row_id AS {quote(pk)}, person_id, "
                                           f"{', '.join(quote(col) for col in columns)} FROM domain_rows")
        if domain == "Measurement" and self.staged.variants is not None and self.staged.variants.num_rows:
            self.con.execute("CREATE TABLE measurement_rows AS SELECT row_id, person_id, record, qualifier, source_record, "
                             "record_hash FROM domain_rows")
        self.rows[table] += self.store.insert_arrow(table, rows)
        self._used_ids(table, rows.num_rows)
        del rows
        self._provenance(f"""SELECT '{table}', row_id, source_record, record_hash FROM domain_rows
            UNION ALL SELECT '{table}', row_id, also_source_record, record_hash FROM domain_rows
            WHERE also_source_record IS NOT NULL""")


def _constant(value: str, count: int) -> pa.DictionaryArray:
    """``count`` times ``value`` as an Arrow dictionary (one string, not ``count`` copies)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(count, dtype=np.int32)), pa.array([value], pa.string()))


def _domain_columns(domain: str, type_concept: int) -> dict[str, str]:
    """CDM column -> SQL over the events (routed to their domain), per target table."""
    src = "left(code, 50)"  # the code verbatim (OMOP convention); its vocabulary is in *_source_concept_id
    if domain == "Visit":
        visit = "CASE code " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in VISIT_CLASS.items()) + " ELSE 0 END"
        return {"visit_concept_id": visit, "visit_start_date": "start_date", "visit_start_datetime": "start_datetime",
                "visit_end_date": "COALESCE(end_date, start_date)", "visit_end_datetime": "end_datetime",
                "visit_type_concept_id": str(type_concept), "visit_source_value": "left(code, 50)",
                "care_site_id": "care_site_id"}
    common = {"visit_occurrence_id": "visit_occurrence_id"}
    if domain == "Condition":
        return {"condition_concept_id": "concept_id", "condition_start_date": "start_date",
                "condition_start_datetime": "start_datetime", "condition_end_date": "end_date",
                "condition_end_datetime": "end_datetime", "condition_type_concept_id": str(type_concept),
                "condition_source_value": src, "condition_source_concept_id": "source_concept_id", **common}
    if domain == "Drug":
        return {"drug_concept_id": "concept_id", "drug_exposure_start_date": "start_date",
                "drug_exposure_start_datetime": "start_datetime",
                "drug_exposure_end_date": "COALESCE(end_date, start_date + CAST(COALESCE(days_supply, 0) AS INTEGER))",
                "drug_exposure_end_datetime": "end_datetime", "drug_type_concept_id": str(type_concept),
                "quantity": "quantity", "days_supply": "days_supply", "drug_source_value": src,
                "drug_source_concept_id": "source_concept_id", **common}
    if domain == "Procedure":
        return {"procedure_concept_id": "concept_id", "procedure_date": "start_date",
                "procedure_datetime": "start_datetime", "procedure_end_date": "end_date",
                "procedure_type_concept_id": str(type_concept), "procedure_source_value": src,
                "procedure_source_concept_id": "source_concept_id", "modifier_source_value": "left(qualifier, 50)",
                **common}
    if domain == "Device":
        return {"device_concept_id": "concept_id", "device_exposure_start_date": "start_date",
                "device_exposure_start_datetime": "start_datetime", "device_exposure_end_date": "end_date",
                "device_exposure_end_datetime": "end_datetime", "device_type_concept_id": str(type_concept),
                "unique_device_id": "unique_device_id", "production_id": "production_id",
                "device_source_value": src, "device_source_concept_id": "source_concept_id", **common}
    if domain == "Note":  # the document's type is its class (OMOP: note_type_concept_id is the provenance)
        return {"note_date": "start_date", "note_datetime": "start_datetime", "note_type_concept_id": str(type_concept),
                "note_class_concept_id": "concept_id", "note_title": "left(title, 250)", "note_text": f"'{NOTE_TEXT}'",
                "encoding_concept_id": "0", "language_concept_id": "0", "note_source_value": src, **common}
    if domain == "Specimen":
        return {"specimen_concept_id": "concept_id", "specimen_type_concept_id": str(type_concept),
                "specimen_date": "start_date", "specimen_datetime": "start_datetime",
                "specimen_source_value": src}
    value_source = "left(COALESCE(value_code, CAST(value_number AS VARCHAR)), 50)"
    if domain == "Measurement":
        return {"measurement_concept_id": "concept_id", "measurement_date": "start_date",
                "measurement_datetime": "start_datetime", "measurement_type_concept_id": str(type_concept),
                "value_as_number": "value_number", "value_as_concept_id": "value_as_concept_id",
                "unit_concept_id": "CASE WHEN unit IS NULL THEN NULL ELSE unit_concept_id END",
                "range_low": "range_low", "range_high": "range_high", "measurement_source_value": src,
                "measurement_source_concept_id": "source_concept_id", "unit_source_value": "left(unit, 50)",
                "value_source_value": value_source, **common}
    return {"observation_concept_id": "concept_id", "observation_date": "start_date",
            "observation_datetime": "start_datetime", "observation_type_concept_id": str(type_concept),
            "value_as_number": "value_number", "value_as_concept_id": "value_as_concept_id",
            "unit_concept_id": "CASE WHEN unit IS NULL THEN NULL ELSE unit_concept_id END",
            "observation_source_value": src, "observation_source_concept_id": "source_concept_id",
            "unit_source_value": "left(unit, 50)", "qualifier_source_value": "qualifier",
            "value_source_value": value_source, **common}


def map_to_standard(store: Store, codes: pa.Table) -> pa.Table:
    """(vocabulary, code) -> source_concept_id, standard concept_id and its domain, through
    ``mercia.vocab.maps_to`` (valid 'Maps to' links; one query per vocabulary present).
    Codes not in the vocabulary are absent from the result; phenopackets' ``OMIM:`` prefix is
    dropped for the lookup only (the OMOP OMIM concept_code is the bare number)."""
    from mercia.vocab import maps_to

    empty = pa.table({"vocabulary": pa.array([], pa.string()), "code": pa.array([], pa.string()),
                      "source_concept_id": pa.array([], pa.int64()), "concept_id": pa.array([], pa.int64()),
                      "domain_id": pa.array([], pa.string())})
    if codes.num_rows == 0 or not store.query_one("SELECT count(*) FROM (SELECT 1 FROM concept LIMIT 1) c"):
        return empty
    codes = codes.rename_columns(["vocabulary", "code"])
    parts = []
    for vocabulary in sorted(set(codes.column("vocabulary").to_pylist())):
        original = codes.filter(pc.equal(codes.column("vocabulary"), vocabulary)).column("code").to_pylist()
        lookup = {c.removeprefix("OMIM:") if vocabulary == "OMIM" else c: c for c in original}
        found = maps_to(store, vocabulary, lookup).filter(
            pc.invert(pc.is_null(pc.field("source_concept_id"))))
        parts.append(pa.table({
            "vocabulary": pa.array([vocabulary] * found.num_rows, pa.string()),
            "code": pa.array([lookup[c] for c in found.column("source_code").to_pylist()], pa.string()),
            "source_concept_id": found.column("source_concept_id").cast(pa.int64()),
            "concept_id": found.column("target_concept_id").cast(pa.int64()),
            "domain_id": found.column("target_domain_id").cast(pa.string())}))
    return pa.concat_tables(parts) if parts else empty


def load_staged(store: Store, staged: Staged | Iterable[Staged], org: str, reader: str,
                options: LoadOptions) -> LoadSummary:
    """Load one extract as one transaction; see the module docstring for the order of work.

    ``staged`` may be a sequence of chunks of the same extract (a reader streaming a large file):
    each chunk runs the whole path in its own scratch DuckDB, so memory is bounded by the chunk,
    but all chunks share one transaction, one load id and one summary.  A record's copies may fall
    in different chunks (the later settles the earlier, ``_Load._settle_earlier_chunks``), but a
    chunk must hold every row of a copy (the rest of it in a later chunk would look like a copy)."""
    if not org or not org.replace("-", "").isalnum():
        raise LoadError(f"organisation must be an ODS code (letters and digits), got {org!r}")
    ensure_extension_tables(store)
    chunks = [staged] if isinstance(staged, Staged) else staged
    parts: list[LoadSummary] = []
    last_ids: dict[str, int] = {}  # per table, the last id this load used (``_Load._first_id``)
    with store.bulk_writes(LOAD_MEMORY_LIMIT), store.transaction():
        load_id = int(store.query_one("SELECT COALESCE(max(load_id), 0) FROM mercia_load") or 0) + 1
        store.execute(f"DROP TABLE IF EXISTS {SEEN_RECORDS}")
        store.execute(f"CREATE TEMP TABLE {SEEN_RECORDS} (source_record VARCHAR, record_hash VARCHAR, line BIGINT, "
                      "fate VARCHAR, stored_hash VARCHAR)")
        previous = None  # the last chunk's load: its records are written for the next chunk only, if one comes
        affected: list[pa.Table] = []  # the persons whose rows each chunk wrote or removed
        for chunk in chunks:
            if not parts:
                store.execute("DELETE FROM mercia_reject WHERE org = ? AND extract = ?", [org, chunk.extract])
            if previous is not None:
                previous.pass_on_fates()
                previous.con.close()
            part, previous = _load_chunk(store, chunk, org, reader, options, load_id, last_ids, bool(parts))
            parts.append(part)
            affected.append(previous.affected_persons)
        if previous is not None:
            previous.con.close()
        store.execute(f"DROP TABLE {SEEN_RECORDS}")
        if not parts:
            raise LoadError("the reader produced nothing to load")
        # once, after every chunk: a person's observation period spans all their events, so rebuilt after each
        # chunk it read every event of the chunk's persons again (a trio VCF's 3 persons: 74 million measurements
        # by the end of the 3 GB file, the load's main thread 0.5 -> 1.5 CPU-s a chunk until 7 December)
        rebuild_person_rows(store, pa.table({"person_id": pc.unique(pa.chunked_array(
            [t.column("person_id") for t in affected], pa.int64()))}))
        summary = _combined(parts)
        link_prom_items(store, load_id)
        store.execute("""INSERT INTO mercia_load (load_id, org, extract, reader, loaded_at, records_read,
                         records_loaded, records_unchanged, records_rejected, records_withheld, records_changed,
                         records_removed, records_superseded) VALUES (""" + ", ".join(["?"] * 13) + ")",
                      [load_id, org, summary.extract, reader, dt.datetime.now(dt.UTC).replace(tzinfo=None),
                       summary.records, summary.loaded, summary.unchanged, summary.rejected, summary.withheld,
                       summary.changed, summary.removed, summary.superseded])
    return summary


def _combined(parts: list[LoadSummary]) -> LoadSummary:
    """The chunks' summaries of one load summed into the load's."""
    rows: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for part in parts:
        rows.update(part.rows)
        reasons.update(part.reject_reasons)
    counts = {name: sum(getattr(part, name) for part in parts)
              for name in ("read", "records", "loaded", "unchanged", "rejected", "withheld", "flagged", "removed",
                           "changed", "superseded")}
    return LoadSummary(parts[0].load_id, parts[0].org, parts[0].extract, rows=dict(rows),
                       reject_reasons=dict(+reasons), **counts)  # a reason taken back by a later chunk goes


def _load_chunk(store: Store, staged: Staged, org: str, reader: str, options: LoadOptions,
                load_id: int, last_ids: dict[str, int], after_chunks: bool) -> tuple[LoadSummary, _Load]:
    """One chunk's whole path (inside the load's transaction): its counts, rejects written, and the
    job, its scratch DuckDB still open for ``pass_on_fates``; ``after_chunks``: earlier chunks of the load ran."""
    job = _Load(store, staged, org, reader, options, load_id, last_ids, after_chunks)
    job.pseudonymise_records()
    job.choose_versions()
    job.keep_last_copies()
    persons = job.prepare_persons()
    job.resolve_persons(persons)
    job.map_codes()
    job.prepare_events()
    job.prepare_sites()
    unchanged = job.skip_unchanged()
    job.remove_withdrawn()
    job.number_calls()
    job.supersede_earlier_chunk_calls()
    job.insert(load_id, staged.extract)
    job.record_versions(load_id)
    for rec, line, field_name, reason in job.con.execute("""
            SELECT k.source_record, r.line, r.field, r.reason FROM staged_rejects r
            LEFT JOIN record_keys k ON k.record = r.record""").fetchall():
        job.rejects.append(dict(source_record=rec, line=line, field=field_name, reason=reason, action="rejected"))
    withheld_records = len(job.withheld_records)
    if withheld_records:
        job.rejects.append(dict(source_record=None, line=None, field="nhs_number",
                                reason=f"national data opt-out ({withheld_records} records withheld)",
                                action="withheld"))
    rejects = pa.Table.from_pylist([{**r, "load_id": load_id, "org": org, "extract": staged.extract}
                                    for r in job.rejects],
                                   schema=pa.schema([("load_id", pa.int64()), ("org", pa.string()),
                                                     ("extract", pa.string()), ("source_record", pa.string()),
                                                     ("line", pa.int64()), ("field", pa.string()),
                                                     ("reason", pa.string()), ("action", pa.string()),
                                                     ("person_id", pa.int64())]))
    store.insert_arrow("mercia_reject", rejects)
    job.register("touched_persons", pa.concat_tables([t.select(["person_id"]).cast(
        pa.schema([("person_id", pa.int64())])) for t in job.touched_persons])
        if job.touched_persons else pa.table({"person_id": pa.array([], pa.int64())}))
    job.affected_persons = _table_from_query(job.con, """SELECT DISTINCT person_id FROM resolved UNION
                                  SELECT DISTINCT person_id FROM events
                                  UNION SELECT DISTINCT person_id FROM calls WHERE carriers > 0
                                  UNION SELECT person_id FROM touched_persons""")
    sets = job.fate_sets()
    # each record counted once per load, with its last copy's fate (what an earlier chunk counted is taken back)
    counts = Counter({name: len(members) for name, members in sets.items()})
    counts.update({"records": job.records_read, "unchanged": unchanged})
    counts.update(job.uncounted)
    loaded = counts["records"] - sum(counts[name] for name in ("rejected", "withheld", "removed", "superseded"))
    reasons = Counter(r["reason"] for r in job.rejects if r["action"] == "rejected")
    reasons.update(job.uncounted_reasons)
    summary = LoadSummary(load_id, org, staged.extract, staged.read, counts["records"], loaded, counts["unchanged"],
                          counts["rejected"], counts["withheld"], sum(1 for r in job.rejects if r["action"] == "flagged"),
                          dict(job.rows), dict(reasons), counts["removed"], counts["changed"], counts["superseded"])
    return summary, job
