"""The shape every reader produces: columns of staged persons, events, sites and rejects.

Readers only parse.  Staged persons still carry identifiers (NHS number, names, postcode) in
memory; ``mercia.ingest.load`` pseudonymises them and drops them before anything is written.
One source record (a FHIR resource, an HL7 OBX, a CSV row) may stage several events; each carries
the record key and a hash of the record's content so resends can be recognised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import pyarrow as pa

PERSON_SCHEMA = pa.schema([
    ("record", pa.string()), ("record_hash", pa.string()), ("person_ref", pa.string()),
    ("nhs_number", pa.string()), ("family", pa.string()), ("given", pa.string()),
    ("birth_date", pa.string()), ("sex", pa.string()), ("ethnicity_vocabulary", pa.string()),
    ("ethnicity_code", pa.string()), ("postcode", pa.string()), ("death_date", pa.string()),
    ("line", pa.int64()),
])

EVENT_SCHEMA = pa.schema([
    ("record", pa.string()), ("record_hash", pa.string()), ("person_ref", pa.string()),
    ("visit_ref", pa.string()), ("kind", pa.string()), ("vocabulary", pa.string()), ("code", pa.string()),
    ("start", pa.string()), ("end", pa.string()), ("value_number", pa.float64()),
    ("value_vocabulary", pa.string()), ("value_code", pa.string()), ("unit", pa.string()),
    ("range_low", pa.float64()), ("range_high", pa.float64()), ("qualifier", pa.string()),
    ("quantity", pa.float64()), ("days_supply", pa.int64()), ("site_ref", pa.string()),
    ("also_record", pa.string()), ("unique_device_id", pa.string()), ("production_id", pa.string()),
    ("title", pa.string()), ("paid_by_payer", pa.float64()), ("paid_by_patient", pa.float64()),
    ("line", pa.int64()),
])

SITE_SCHEMA = pa.schema([
    ("record", pa.string()), ("record_hash", pa.string()), ("kind", pa.string()),
    ("name", pa.string()), ("ods_code", pa.string()), ("line", pa.int64()),
])

# The staged site kinds that are care sites (a Practitioner is a provider), matched by ODS code (mercia.ingest.load).
CARE_SITE_KINDS = ("Organization", "Location")

REJECT_SCHEMA = pa.schema([
    ("record", pa.string()), ("line", pa.int64()), ("field", pa.string()), ("reason", pa.string()),
])
# What ``Staged`` keeps of rejects and removals: also the content hash of the record version they came
# from when the reader knows it, so a version superseded within the load takes its rejects with it.
VERSIONED_REJECT_SCHEMA = REJECT_SCHEMA.append(pa.field("record_hash", pa.string()))

# One row per resource version read: the source's meta.lastUpdated / meta.versionId and the position in
# reading order (``seq``), from which the load picks each record's newest version (``load._Load``).
VERSION_SCHEMA = pa.schema([
    ("record", pa.string()), ("record_hash", pa.string()), ("last_updated", pa.string()),
    ("version_id", pa.string()), ("seq", pa.int64()), ("line", pa.int64()),
])

# Values measured together on one source record (an NMR panel: ~250 per sample): the record's other
# events give them their person and date, so a value carries only what differs between them; the load
# writes them to ``measurement`` set-based, without passing each through the generic event path.
VALUE_SCHEMA = pa.schema([
    ("record", pa.string()), ("vocabulary", pa.string()), ("code", pa.string()), ("value_number", pa.float64()),
    ("unit", pa.string()), ("line", pa.int64()),
])

# Carrier calls of a VCF (a sample's calls in a file share one source record, ``record``), in the shape the
# load writes them set-based (no event per call): a ``measurement`` of the gene (``CALL_CODE_VOCABULARY``:
# ``code`` is the HGNC symbol, else chrom:pos) with the genotype as its value (``CALL_VALUE_VOCABULARY``),
# and the ``variant_occurrence`` row beside it.
# A sample's record, hash, person and date, and the file's assembly, are the same over its calls: each is a
# dictionary entry (one per sample), not its text repeated in every call.
PER_SAMPLE = pa.dictionary(pa.int32(), pa.string())
CALL_SCHEMA = pa.schema([
    ("record", PER_SAMPLE), ("record_hash", PER_SAMPLE), ("person_ref", PER_SAMPLE), ("start", PER_SAMPLE),
    ("line", pa.int64()), ("code", pa.string()), ("assembly", PER_SAMPLE), ("chrom", pa.string()),
    ("pos", pa.int64()), ("ref", pa.string()), ("alt", pa.string()), ("gene", pa.string()), ("genotype", pa.string()),
    ("hgvs", pa.string()), ("hgvs_p", pa.string()), ("consequence", pa.string()), ("zygosity", pa.string()),
    ("read_depth", pa.int64()), ("genotype_quality", pa.float64()),
])
CALL_CODE_VOCABULARY, CALL_VALUE_VOCABULARY = "HGNC", "VCF GT"

# Event kinds, named after the OMOP domain a record goes to when its code has no standard mapping.
EVENT_KINDS = ("Visit", "Condition", "Drug", "Procedure", "Measurement", "Observation", "Specimen", "Device",
               "Note", "Cost")


# The plausible window for clinical dates: nobody in an NHS record was born or treated before 1850,
# and no event (or birth, or death) happens after tomorrow (one day of slack for time zones).  End
# dates may lie up to a year ahead (a course of treatment in progress).  Outside it, a date is a
# data error (9999-12-31, 1066-10-14, 2999-01-01): the record is rejected with that reason.
EARLIEST_DATE = dt.date(1850, 1, 1)
END_DATE_AHEAD = dt.timedelta(days=366)


def latest_date() -> dt.date:
    return dt.date.today() + dt.timedelta(days=1)


def date_window() -> str:
    return f"{EARLIEST_DATE.isoformat()} to {latest_date().isoformat()}"


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns in order, absent ones null."""
    n = table.num_rows
    return pa.table({f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type)
                     for f in schema}).cast(schema)


class Columns:
    """Rows staged by a reader, in order: one at a time (``add``, a dict of the fields given; readers give
    a third of them) or as whole Arrow tables (``add_table``); ``table`` is all of them in schema shape.
    Rows added one at a time become Arrow in one conversion of the dicts to a struct array per run of
    them (Arrow's C++ converter reads the dicts: 2.6x cheaper than ``Table.from_pylist``, which builds a
    Python list per column first, and three times cheaper than appending to a list per column)."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self._rows: list[dict] = []
        self._chunks: list[pa.Table] = []

    def add(self, **values) -> None:
        self._rows.append(values)

    def add_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._flush()
            self._chunks.append(conform(table, self.schema))

    def extend(self, columns: dict[str, list], rows: int) -> None:
        """Append ``rows`` rows given as column lists (missing columns are null)."""
        self.add_table(pa.table({name: columns.get(name) or [None] * rows for name in self.schema.names},
                                schema=self.schema))

    def _flush(self) -> None:
        if self._rows:
            unknown = set().union(*self._rows) - set(self.schema.names)  # the conversion would drop them silently
            if unknown:
                raise ValueError(f"staged fields not in the schema: {', '.join(sorted(unknown))}")
            self._chunks.append(pa.Table.from_struct_array(pa.array(self._rows, pa.struct(self.schema))))
            self._rows = []

    @property
    def data(self) -> dict[str, list]:
        """Every row as aligned lists."""
        return self.table().to_pydict()

    def __len__(self) -> int:
        return len(self._rows) + sum(chunk.num_rows for chunk in self._chunks)

    def table(self) -> pa.Table:
        self._flush()
        return pa.concat_tables(self._chunks) if self._chunks else self.schema.empty_table()


# The staged row tables of ``Staged``, by attribute name.
STAGED_TABLES = ("persons", "events", "sites", "rejects", "removals", "versions")


@dataclass
class Staged:
    """Everything one extract produced, before privacy and linkage."""

    extract: str
    read: int = 0
    persons: Columns = field(default_factory=lambda: Columns(PERSON_SCHEMA))
    events: Columns = field(default_factory=lambda: Columns(EVENT_SCHEMA))
    sites: Columns = field(default_factory=lambda: Columns(SITE_SCHEMA))
    rejects: Columns = field(default_factory=lambda: Columns(VERSIONED_REJECT_SCHEMA))
    # records the source withdrew (entered-in-error, bulk-export deletions): their earlier rows are removed
    removals: Columns = field(default_factory=lambda: Columns(VERSIONED_REJECT_SCHEMA))
    # resource versions with their source metadata (FHIR); readers without versions leave it empty
    versions: Columns = field(default_factory=lambda: Columns(VERSION_SCHEMA))
    # genomic variants of records that also stage an event (phenopackets), already in their own table shape
    variants: pa.Table | None = None
    # VCF carrier calls (CALL_SCHEMA), a sample's calls in a file one source record
    calls: pa.Table | None = None
    # the calls reach back into positions an earlier chunk of their file held (an unsorted VCF): a call
    # may repeat one an earlier chunk wrote, which the load then looks up
    calls_revisit: bool = False
    # measured values of records that also stage an event (VALUE_SCHEMA; NMR panels)
    values: pa.Table | None = None
    # names of local concepts the extract introduces: (vocabulary, code) -> name (metabolite identifiers)
    concept_names: dict[tuple[str, str], str] = field(default_factory=dict)
    # the source's name for the date of birth, named in its rejects and flags
    birth_date_field: str = "birthDate"
    # a person without any date of birth is kept with the age unknown (flagged) rather than rejected: only
    # for case reports (phenopackets), which often give no age; an invalid date is rejected either way
    birth_date_optional: bool = False

    def reject(self, record: str | None, field_name: str | None, reason: str, line: int | None = None,
               record_hash: str | None = None) -> None:
        self.rejects.add(record=record, line=line, field=field_name, reason=reason, record_hash=record_hash)

    def codes(self) -> pa.Table:
        """(vocabulary, code) of every staged event and value."""
        events = self.events.table().select(["vocabulary", "code"])
        return pa.concat_tables([events, self.values.select(["vocabulary", "code"])]) if self.values is not None \
            else events
