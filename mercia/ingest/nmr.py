"""Nightingale NMR biomarker panels (UK Biobank wide format and Nightingale long CSV) -> staged events.

The catalogue (``mercia.vocab.metabolites``) is the only list of biomarkers: a column or row naming
anything else is rejected.  Every transform runs in DuckDB over the whole file (no Python loop over
values), so a UK Biobank-sized file stays a handful of queries.

Formats
- wide: one row per sample; an id column (``eid``, ``sample_id`` or ``Sample id``) and one column per
  biomarker, named as the catalogue does (``Total_C``; case, ``-`` and ``.`` ignored) or as UK Biobank
  fields ``<field>-<instance>.<array>`` (``23400-0.0``; the sample is then ``<eid>_<instance>``).  QC
  flags: ``<Biomarker>_QC_Flag`` or the UK Biobank QC-flag field.  Sample QC columns of
  ``sample_qc_info.csv`` (plate, well, spectrometer, batch...) by name or UK Biobank field.
- long: ``sample_id, biomarker, value, unit`` and optionally ``qc_flag``; a value whose unit is not
  the catalogue's is rejected.

Landing (docs/metabolomics.md): each sample is one source record ``NMR/<sample>``: a ``specimen``
(SNOMED 119361006 plasma specimen) on the collection date, a ``measurement`` per value with the
Nightingale concept as source concept and the UCUM unit, and linked ``observation`` rows for the
sample QC fields and for each value-level QC flag (``qualifier_source_value`` = the biomarker).
QC exclusion comes first: a value whose QC flag is not in ``USABLE_QC_FLAGS`` is unusable, and so is
a composite/ratio whose formula uses an unusable value; both are kept in their ``QC flag`` observation
(``value_as_number`` = the value) and never become a measurement nor enter the re-derivation.
Then composite, ratio and percentage values are re-derived from the usable measured biomarkers with
the catalogue's ``Full.Formula``; a file value that differs by more than ``tolerance`` (relative) is
rejected as record ``NMR/<sample>/<biomarker>`` and not loaded.
The sample manifest links samples to persons: ``sample_id`` and ``nhs_number`` and/or
``local_id``, ``collection_date``, optionally ``birth_date`` and ``sex`` (then the manifest row is
also a person record); identifiers are pseudonymised by the load like every other.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from mercia.ingest.staging import (
    EVENT_SCHEMA,
    PERSON_SCHEMA,
    REJECT_SCHEMA,
    VALUE_SCHEMA,
    Columns,
    Staged,
    conform,
)
from mercia.ingest.nmr_technical import ADJUSTED, remove_technical_variation
from mercia.vocab.metabolites import UCUM_UNITS, catalogue_path, formula_names, formula_sql, \
    nightingale_catalogue, quote_name

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PLASMA_SPECIMEN = "119361006"  # SNOMED CT: Plasma specimen
ID_COLUMNS = ("eid", "sample_id", "sample id", "sampleid")
_UKB_COLUMN = re.compile(r"^(\d+)-(\d+)\.(\d+)$")
DEFAULT_TOLERANCE = 1e-6
# Wide rows (samples) per chunk of a streamed load: ~1.25 million measurement rows, small enough that a
# chunk's read and load stay under 1 GB, large enough that per-chunk fixed costs stay small (20,000
# samples: 28-29 CPU-s in chunks of 2,500, 22.5 in chunks of 5,000, 21.9 in chunks of 10,000).
CHUNK_SAMPLES = 5_000
SCAN_ROWS = 1_024  # rows per Arrow batch DuckDB scans (one thread takes one batch at a time)
# Nightingale value QC flags that still leave a usable measurement: a value below the limit of
# quantification is a real (low) reading, which ukbnmr (Ritchie et al. 2023) also keeps.  Every other
# flag (degraded sample, citrate plasma, ethanol, isopropyl alcohol, polysaccharides, unknown
# contamination, low glutamine or high glutamate, or a flag this list does not know) marks the value
# unusable.  Compared case-insensitively.
USABLE_QC_FLAGS = frozenset({"below limit of quantification"})


class NmrError(ValueError):
    """The file cannot be read as an NMR panel at all (nothing staged)."""


class ArrowColumns(Columns):
    """Staged columns already built as one Arrow table by a vectorised reader."""

    def __init__(self, table: pa.Table):
        super().__init__(table.schema)
        self._table, self._rows = table, table.num_rows

    def table(self) -> pa.Table:
        return self._table

    @property
    def data(self) -> dict[str, list]:
        return self._table.to_pydict()


def _key(name: str) -> str:
    return re.sub(r"[-_. ]", "", name).lower()


def _sample_qc_fields() -> dict[str, str]:
    """Sample QC column key (name or UKB field) -> sample QC name, from ``sample_qc_info.csv``."""
    path = catalogue_path().with_name("sample_qc_info.csv")
    out: dict[str, str] = {}
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                out[_key(row["Name"])] = row["Name"]
                if row["UKB.Field.ID"]:
                    out[row["UKB.Field.ID"]] = row["Name"]
    return out


def _read_strings(path: Path) -> pa.Table:
    return pa.Table.from_batches(list(_string_batches(path, None)))


def _string_batches(path: Path, rows: int | None) -> Iterator[pa.RecordBatch]:
    """The file as all-string record batches of ``rows`` rows (None: one batch of the whole file),
    streamed so that a chunked read never holds the whole file."""
    try:
        delimiter, names = _layout(path)
        parse = pa_csv.ParseOptions(delimiter=delimiter)
        convert = pa_csv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                        null_values=["", "NA", "NaN", "null"])
        if rows is None:
            table = pa_csv.read_csv(path, parse_options=parse, convert_options=convert)
            yield table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
                [], table.schema)
            return
        pending: list[pa.RecordBatch] = []
        pending_rows, any_rows = 0, False
        batches = pa_csv.open_csv(path, parse_options=parse, convert_options=convert)
        schema = batches.schema
        for batch in batches:
            any_rows = True
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= rows:
                table = pa.Table.from_batches(pending).combine_chunks()
                yield table.slice(0, rows).to_batches()[0]
                rest = table.slice(rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows or not any_rows:
            yield pa.Table.from_batches(pending, schema).combine_chunks().to_batches()[0] if pending_rows else \
                pa.RecordBatch.from_pylist([], schema)
    except (pa.ArrowInvalid, UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise NmrError(f"{path.name}: not a readable CSV/TSV NMR file: {str(exc).splitlines()[0][:200]}") from exc


def read_manifest(path: Path | str) -> pa.Table:
    """Sample manifest -> (sample_id, nhs_number, local_id, collection_date, birth_date, sex, line)."""
    table = _read_strings(Path(path))
    columns = {_key(c): c for c in table.column_names}
    if "sampleid" not in columns or "collectiondate" not in columns or not (
            "nhsnumber" in columns or "localid" in columns):
        raise NmrError(f"{Path(path).name}: a sample manifest needs columns sample_id, collection_date and "
                       f"nhs_number or local_id; found {', '.join(table.column_names)}")
    n = table.num_rows

    def col(key: str) -> pa.Array:
        return table.column(columns[key]).combine_chunks() if key in columns else pa.nulls(n, pa.string())

    return pa.table({"sample_id": col("sampleid"), "nhs_number": col("nhsnumber"), "local_id": col("localid"),
                     "collection_date": col("collectiondate"), "birth_date": col("birthdate"), "sex": col("sex"),
                     "line": pa.array(range(2, n + 2), pa.int64())})


class NmrReader:
    def __init__(self, extract: str, manifest: pa.Table, tolerance: float = DEFAULT_TOLERANCE,
                 remove_technical_variation: bool = False):
        self.extract, self.tolerance, self.adjust = extract, tolerance, remove_technical_variation
        self.catalogue = nightingale_catalogue()
        self.con = duckdb.connect()
        self.con.register("file_manifest", _scannable(manifest))
        self.con.register("catalogue", pa.table({
            "biomarker": [b.name for b in self.catalogue.values()], "kind": [b.kind for b in self.catalogue.values()],
            "ucum": [b.ucum for b in self.catalogue.values()]}))
        self.con.register("formula_parts", pa.table({
            "biomarker": [b.name for b in self.catalogue.values() if not b.measured for _ in formula_names(b.formula)],
            "part": [n for b in self.catalogue.values() if not b.measured for n in formula_names(b.formula)]}))
        self.rejects: list[pa.Table] = []
        self.mismatches: dict[str, int] = {}
        self.excluded: dict[str, int] = {}

    # -- formats -> vals (sample_id, line, biomarker, value, qc_flag), not-a-number rejects, values_read (cells
    #    read) + sample QC (sample_id, line, name, value)
    def read(self, table: pa.Table, file: str, lines: pa.Array, first_chunk: bool = True) -> Staged:
        """Rows of a wide file (or a whole long file) -> staged records; ``lines``: the file line of each
        row; column-level rejects are reported with the ``first_chunk`` only."""
        self.lines, self.first_chunk = lines, first_chunk
        if is_long_format(table.column_names):
            self._long(table, file)
        else:
            self._wide(table, file)
        return self._stage()

    def _wide(self, table: pa.Table, file: str) -> None:
        by_key = {_key(name): name for name in self.catalogue}
        by_field = {str(b.ukb_field): b.name for b in self.catalogue.values() if b.ukb_field}
        by_qc_field = {str(b.qc_field): b.name for b in self.catalogue.values() if b.qc_field}
        sample_fields = _sample_qc_fields()
        id_column = _id_column(table.column_names, file)
        values, flags, samples, unknown = [], [], [], []
        for column in table.column_names:
            if column == id_column:
                continue
            ukb = _UKB_COLUMN.match(column)
            field, instance = (ukb.group(1), ukb.group(2)) if ukb else (None, None)
            k = _key(column)
            if ukb and field in by_field:
                values.append((column, by_field[field], instance))
            elif ukb and field in by_qc_field:
                flags.append((column, by_qc_field[field], instance))
            elif ukb and field in sample_fields:
                samples.append((column, sample_fields[field], instance))
            elif k in by_key:
                values.append((column, by_key[k], None))
            elif k.endswith("qcflag") and k[:-6] in by_key:
                flags.append((column, by_key[k[:-6]], None))
            elif k in sample_fields:
                samples.append((column, sample_fields[k], None))
            else:
                unknown.append(column)
        if unknown and self.first_chunk:
            self._reject_rows([f"NMR/{file}/column/{c}" for c in unknown], [1] * len(unknown), unknown,
                              ["unknown biomarker: not in the Nightingale catalogue (nmr_info.csv); column not loaded"])
        if not values:
            raise NmrError(f"{file}: no column names a Nightingale biomarker")
        self.con.register("wide", _scannable(table.append_column("__line", self.lines)))
        ident = quote_name(id_column)

        def sample(instance):
            return f"CAST({ident} AS VARCHAR)" if instance is None else f"CAST({ident} AS VARCHAR) || '_{instance}'"

        def union(items, value_name, cast="CAST({} AS VARCHAR)"):
            """Columns -> rows (sample_id, line, name, value, __col), one UNPIVOT per UK Biobank instance;
            ``cast``: each cell's value (an empty cell, or one the cast makes NULL, gives no row)."""
            by_instance: dict[str | None, list[tuple[str, str]]] = {}
            for col, name, instance in items:
                by_instance.setdefault(instance, []).append((col, name))
            parts = []
            for instance, pairs in by_instance.items():
                # each cell's name by a hash join on its column (a CASE over ~250 columns compared each cell
                # with every column name before its own)
                names = ", ".join(f"({_literal(col)}, {_literal(name)})" for col, name in pairs)
                parts.append(f"""SELECT {sample(instance)} AS sample_id, __line AS line, n.name, {value_name}, __col
                                 FROM (UNPIVOT (SELECT {ident}, __line,
                                            {", ".join(f"{cast.format(quote_name(c))} AS {quote_name(c)}" for c, _ in pairs)}
                                            FROM wide)
                                       ON {", ".join(quote_name(c) for c, _ in pairs)} INTO NAME __col VALUE {value_name})
                                 JOIN (VALUES {names}) n(col, name) ON n.col = __col""")
            return " UNION ALL ".join(parts)

        # typed as it is unpivoted: a cell that is not a number gives no value; only the columns holding
        # such cells (fewer values than non-empty cells) are read again for their rejects
        flag, flagged = ("f.flag", f"LEFT JOIN ({union(flags, 'flag')}) f ON f.sample_id = v.sample_id "
                                   "AND f.name = v.name") if flags else ("NULL::VARCHAR", "")
        self.con.execute(f"""CREATE TABLE vals AS SELECT v.sample_id, v.line, v.name AS biomarker, v.value,
                                 {flag} AS qc_flag, v.__col
                             FROM ({union(values, 'value', 'TRY_CAST({} AS DOUBLE)')}) v {flagged}""")
        typed = dict(self.con.execute("SELECT __col, count(*) FROM vals GROUP BY 1").fetchall())
        self.con.execute("ALTER TABLE vals DROP COLUMN __col")
        cells = {column: table.num_rows - table.column(column).null_count for column, _, _ in values}
        self.values_read = sum(cells.values())
        for column, name, instance in values:
            if cells[column] != typed.get(column, 0):
                c = quote_name(column)
                self._reject_query(f"""SELECT 'NMR/' || {sample(instance)} || '/' || {_literal(name)} AS record,
                                              __line AS line, {_literal(name)} AS field,
                                              'value ''' || {c} || ''' is not a number' AS reason
                                       FROM wide WHERE {c} IS NOT NULL AND TRY_CAST({c} AS DOUBLE) IS NULL""")
        self.con.execute(f"""CREATE TABLE sample_qc AS SELECT * EXCLUDE (__col) FROM ({union(samples, 'value')
                             if samples else "SELECT NULL::VARCHAR AS sample_id, NULL::BIGINT AS line, "
                             "NULL::VARCHAR AS name, NULL::VARCHAR AS value, NULL AS __col WHERE false"})""")

    def _long(self, table: pa.Table, file: str) -> None:
        columns = {_key(c): c for c in table.column_names}
        by_key = {_key(name): name for name in self.catalogue}
        self.con.register("long_raw", table)
        names = self.con.execute(f"SELECT DISTINCT {quote_name(columns['biomarker'])} FROM long_raw").fetchall()
        self.con.register("names", pa.table({"given": [n for (n,) in names if n is not None],
                                             "biomarker": [by_key.get(_key(n)) for (n,) in names if n is not None]}))
        unit = f"CAST({quote_name(columns['unit'])} AS VARCHAR)" if "unit" in columns else "NULL"
        flag = f"CAST({quote_name(columns['qcflag'])} AS VARCHAR)" if "qcflag" in columns else "NULL"
        self.con.execute(f"""CREATE TABLE long_all AS SELECT CAST({quote_name(columns['sampleid'])} AS VARCHAR) AS sample_id,
                               row_number() OVER () + 1 AS line, r.{quote_name(columns['biomarker'])} AS given,
                               n.biomarker, CAST({quote_name(columns['value'])} AS VARCHAR) AS raw, {unit} AS unit,
                               {flag} AS qc_flag
                             FROM long_raw r LEFT JOIN names n ON n.given = r.{quote_name(columns['biomarker'])}""")
        self._reject_query("""SELECT 'NMR/' || sample_id || '/' || COALESCE(given, '') AS record, line,
                                     'biomarker' AS field,
                                     'unknown biomarker ' || COALESCE('''' || given || '''', '(empty)')
                                     || ': not in the Nightingale catalogue (nmr_info.csv)' AS reason
                              FROM long_all WHERE biomarker IS NULL""")
        self.con.register("ucum_units", pa.table({"given": list(UCUM_UNITS), "ucum": list(UCUM_UNITS.values())}))
        self._reject_query("""SELECT 'NMR/' || l.sample_id || '/' || l.biomarker AS record, l.line, 'unit' AS field,
                                     'unit ' || COALESCE('''' || l.unit || '''', '(empty)') || ' is not '
                                     || c.ucum || ', the unit of ' || l.biomarker || ' in the catalogue' AS reason
                              FROM long_all l JOIN catalogue c USING (biomarker)
                              LEFT JOIN ucum_units u ON u.given = l.unit
                              WHERE COALESCE(u.ucum, l.unit, '') <> c.ucum""")
        self.con.execute("""CREATE TABLE long AS SELECT l.sample_id, l.line, l.biomarker, l.raw, l.qc_flag
                            FROM long_all l JOIN catalogue c USING (biomarker)
                            LEFT JOIN ucum_units u ON u.given = l.unit
                            WHERE COALESCE(u.ucum, l.unit, '') = c.ucum""")
        self._one_line_per_biomarker()
        self._reject_query("""SELECT 'NMR/' || sample_id || '/' || biomarker AS record, line, biomarker AS field,
                                     'value ''' || raw || ''' is not a number' AS reason
                              FROM long WHERE raw IS NOT NULL AND TRY_CAST(raw AS DOUBLE) IS NULL""")
        self.con.execute("""CREATE TABLE vals AS SELECT sample_id, line, biomarker, TRY_CAST(raw AS DOUBLE) AS value,
                                   qc_flag
                            FROM long WHERE TRY_CAST(raw AS DOUBLE) IS NOT NULL""")
        self.values_read = self.con.execute("SELECT count(*) FROM long").fetchall()[0][0]
        self.con.execute("""CREATE TABLE sample_qc AS SELECT NULL::VARCHAR AS sample_id, NULL::BIGINT AS line,
                            NULL::VARCHAR AS name, NULL::VARCHAR AS value WHERE false""")

    def _one_line_per_biomarker(self) -> None:
        """A sample holds one value per biomarker.  Lines repeating one alike (value and QC flag) are
        loaded once, the repeats rejected naming the first; lines that disagree are all rejected, since
        nothing says which is right (a sample re-measured is a new sample id or a new file)."""
        self.con.execute("""CREATE TABLE repeats AS SELECT sample_id, biomarker, min(line) AS first,
                                   count(DISTINCT [raw, qc_flag]) AS versions,
                                   string_agg(CAST(line AS VARCHAR), ', ' ORDER BY line) AS lines
                            FROM long GROUP BY sample_id, biomarker HAVING count(*) > 1""")
        self.con.execute("""CREATE TABLE repeated_lines AS
                            SELECT l.sample_id, l.biomarker, l.line, r.first, r.versions, r.lines
                            FROM long l JOIN repeats r USING (sample_id, biomarker)
                            WHERE r.versions > 1 OR l.line > r.first""")
        self._reject_query("""SELECT 'NMR/' || sample_id || '/' || biomarker AS record, line,
                                     CASE WHEN versions > 1 THEN 'value' ELSE 'biomarker' END AS field,
                                     CASE WHEN versions > 1
                                          THEN biomarker || ' has ' || versions || ' different values in sample '
                                               || sample_id || ' (lines ' || lines || '): none loaded'
                                          ELSE 'repeats line ' || first || ' (' || biomarker || ' of sample '
                                               || sample_id || ', the same value): loaded once' END AS reason
                              FROM repeated_lines ORDER BY line""")
        self.con.execute("DELETE FROM long WHERE line IN (SELECT line FROM repeated_lines)")

    # -- common path ---------------------------------------------------------------------------
    def _reject_query(self, sql: str) -> None:
        self.rejects.append(self.con.sql(sql).to_arrow_table().cast(REJECT_SCHEMA))

    def _reject_rows(self, records, lines, fields, reasons) -> None:
        n = len(records)
        self.rejects.append(pa.table({"record": records, "line": lines, "field": fields,
                                      "reason": reasons * n if len(reasons) == 1 else reasons}, schema=REJECT_SCHEMA))

    def _exclude_unusable(self) -> None:
        """Move unusable values (``USABLE_QC_FLAGS``), and composites/ratios computed from them, out of
        ``vals`` into ``excluded`` so that neither the measurements nor the re-derivation use them."""
        usable = ", ".join(_literal(flag) for flag in sorted(USABLE_QC_FLAGS))
        self.con.execute(f"""CREATE TABLE excluded AS SELECT * FROM vals
                             WHERE qc_flag IS NOT NULL AND lower(trim(qc_flag)) NOT IN ({usable})""")
        self.con.execute("""INSERT INTO excluded
            SELECT v.sample_id, v.line, v.biomarker, v.value,
                   COALESCE(v.qc_flag || '; ', '') || 'computed from QC-flagged ' || p.parts
            FROM vals v JOIN (SELECT x.sample_id, f.biomarker, string_agg(DISTINCT f.part, ', ' ORDER BY f.part) AS parts
                              FROM excluded x JOIN formula_parts f ON f.part = x.biomarker
                              GROUP BY x.sample_id, f.biomarker) p USING (sample_id, biomarker)
            WHERE (v.sample_id, v.biomarker) NOT IN (SELECT sample_id, biomarker FROM excluded)""")
        self.con.execute("DELETE FROM vals WHERE (sample_id, biomarker) IN (SELECT sample_id, biomarker FROM excluded)")
        self.excluded = dict(self.con.execute(
            "SELECT biomarker, count(*) FROM excluded GROUP BY 1 ORDER BY 1").fetchall())

    def _rederived(self) -> str | None:
        """SQL of (sample_id, biomarker, derived): each composite/ratio/percentage in ``vals`` recomputed with
        the catalogue's ``Full.Formula`` from the sample's measured values (None: nothing to recompute)."""
        measured = [b.name for b in self.catalogue.values() if b.measured]
        present = {b for (b,) in self.con.execute("SELECT DISTINCT biomarker FROM vals").fetchall()}
        derived = [b for b in self.catalogue.values() if not b.measured and b.name in present
                   and set(formula_names(b.formula)) <= present]
        if not derived:
            return None
        names = ", ".join(_literal(m) for m in measured if m in present)
        self.con.execute(f"""CREATE OR REPLACE TABLE measured_wide AS PIVOT (SELECT sample_id, biomarker, value FROM vals
                                                                          WHERE biomarker IN ({names}))
                             ON biomarker IN ({names}) USING first(value) GROUP BY sample_id""")
        return ("UNPIVOT (SELECT sample_id, " + ", ".join(
            f"CAST({formula_sql(b.formula)} AS DOUBLE) AS {quote_name(b.name)}" for b in derived) + " FROM measured_wide) "
            f"ON {', '.join(quote_name(b.name) for b in derived)} INTO NAME biomarker VALUE derived")

    def _derive(self) -> None:
        """Re-derive every composite/ratio/percentage value in the file from the usable measured values and
        reject the file values that disagree."""
        rederived = self._rederived()
        if rederived is None:
            return
        self.con.execute(f"""CREATE TABLE mismatch AS
            SELECT v.sample_id, v.line, v.biomarker, v.value, d.derived FROM vals v
            JOIN ({rederived}) d USING (sample_id, biomarker)
            WHERE d.derived IS NOT NULL AND isfinite(d.derived)
              AND abs(v.value - d.derived) > {self.tolerance!r} * greatest(abs(d.derived), abs(v.value))""")
        self._reject_query("""SELECT 'NMR/' || sample_id || '/' || biomarker AS record, line, biomarker AS field,
                                     'value ' || value || ' differs from ' || derived || ' re-derived from the '
                                     || 'measured biomarkers (catalogue Full.Formula); value not loaded' AS reason
                              FROM mismatch""")
        self.mismatches = dict(self.con.execute(
            "SELECT biomarker, count(*) FROM mismatch GROUP BY 1 ORDER BY 1").fetchall())
        self.con.execute("DELETE FROM vals WHERE (sample_id, biomarker) IN (SELECT sample_id, biomarker FROM mismatch)")

    def _remove_technical_variation(self) -> None:
        """Adjust the measured values (``mercia.ingest.nmr_technical``), then replace every composite, ratio
        and percentage with its value recomputed from them; one that cannot be recomputed (a zero divisor)
        is excluded with that reason."""
        remove_technical_variation(self.con, [b.name for b in self.catalogue.values() if b.measured])
        rederived = self._rederived()
        self.con.execute(f"""CREATE TABLE rederived AS {rederived or
                             "SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS biomarker, NULL::DOUBLE AS derived"}""")
        self.con.execute("""INSERT INTO excluded
            SELECT v.sample_id, v.line, v.biomarker, v.value, 'not computable after technical-variation removal'
            FROM vals v JOIN catalogue c USING (biomarker) WHERE c.kind <> 'Non-derived' AND NOT EXISTS (
                SELECT 1 FROM rederived d WHERE d.sample_id = v.sample_id AND d.biomarker = v.biomarker
                AND isfinite(d.derived))""")
        self.con.execute("DELETE FROM vals WHERE (sample_id, biomarker) IN (SELECT sample_id, biomarker FROM excluded)")
        self.con.execute("""UPDATE vals SET value = d.derived FROM rederived d
                            WHERE vals.sample_id = d.sample_id AND vals.biomarker = d.biomarker""")

    def _stage(self) -> Staged:
        con = self.con
        self._exclude_unusable()
        self._derive()
        if self.adjust:
            self._remove_technical_variation()
        # a sample's content: the sum of its (biomarker, value, flag) triples' hashes, order-free (a sum, so
        # a repeated triple still counts), not a sorted text of them (that cost a tenth of a load's CPU).
        # DuckDB's hash(): a DuckDB upgrade that changed it would make the next resend a corrected one.
        con.execute("""CREATE TABLE samples AS SELECT sample_id, min(line) AS line,
                           sum(CAST(hash(biomarker, value, qc_flag) AS HUGEINT)) AS content
                       FROM (SELECT * FROM vals UNION ALL SELECT * FROM excluded) GROUP BY sample_id""")
        # the manifest rows of this chunk's samples: the window and joins below over the whole manifest made
        # each chunk of a million-sample load dearer by a manifest of a million rows
        con.execute("CREATE TABLE manifest AS SELECT * FROM file_manifest "
                    "WHERE sample_id IN (SELECT sample_id FROM samples)")
        self._reject_query("""SELECT 'NMR/' || s.sample_id AS record, s.line, 'sample_id' AS field,
                                     'sample not in the manifest: no person to attach it to' AS reason
                              FROM samples s WHERE s.sample_id NOT IN (SELECT sample_id FROM manifest
                                                                       WHERE sample_id IS NOT NULL)""")
        con.execute(f"""CREATE TABLE linked AS
            SELECT s.sample_id, s.line, 'NMR/' || s.sample_id AS record,
                   md5(CAST(s.content AS VARCHAR) || '|' || COALESCE(m.nhs_number, '') || '|' || COALESCE(m.local_id, '') || '|'
                       || COALESCE(m.collection_date, '')) AS record_hash,
                   {person_ref_sql("m")} AS person_ref,
                   m.collection_date AS start
            FROM samples s JOIN (SELECT * FROM manifest QUALIFY row_number() OVER (PARTITION BY sample_id
                                                                                   ORDER BY line DESC) = 1) m
              USING (sample_id)""")
        base = "l.record, l.record_hash, l.person_ref, NULL AS visit_ref"
        events = con.sql(f"""
            SELECT {base}, 'Specimen' AS kind, 'SNOMED' AS vocabulary, '{PLASMA_SPECIMEN}' AS code, l.start,
                   NULL::DOUBLE AS value_number, NULL AS value_code, NULL AS unit, NULL AS qualifier, l.line
            FROM linked l
            UNION ALL
            SELECT {base}, 'Observation', 'Nightingale', 'QC flag', l.start, NULL, v.qc_flag, NULL, v.biomarker, v.line
            FROM vals v JOIN linked l USING (sample_id) WHERE v.qc_flag IS NOT NULL
            UNION ALL
            SELECT {base}, 'Observation', 'Nightingale', 'QC flag', l.start, x.value, x.qc_flag, NULL, x.biomarker, x.line
            FROM excluded x JOIN linked l USING (sample_id)
            UNION ALL
            SELECT {base}, 'Observation', 'Nightingale', q.name, l.start, NULL, q.value, NULL, NULL, q.line
            FROM sample_qc q JOIN linked l USING (sample_id)
            UNION ALL
            SELECT {base}, 'Observation', 'Nightingale', 'Technical variation removed', l.start, NULL, {_literal(ADJUSTED)},
                   NULL, NULL, l.line
            FROM linked l WHERE {self.adjust}""").to_arrow_table()
        values = con.sql("""SELECT l.record, 'Nightingale' AS vocabulary, v.biomarker AS code, v.value AS value_number,
                                   c.ucum AS unit, v.line
                            FROM vals v JOIN linked l USING (sample_id) JOIN catalogue c USING (biomarker)""")
        persons = manifest_persons(con, "SELECT sample_id FROM linked")
        staged = Staged(self.extract, read=self.values_read)
        staged.events = ArrowColumns(conform(events, EVENT_SCHEMA))
        staged.values = values.to_arrow_table().cast(VALUE_SCHEMA)
        staged.persons = ArrowColumns(persons)
        staged.rejects = ArrowColumns(pa.concat_tables(self.rejects) if self.rejects else REJECT_SCHEMA.empty_table())
        return staged


def _id_column(names: list[str], file: str) -> str:
    """The sample id column of a wide file."""
    id_column = next((c for c in names if c.strip().lower() in ID_COLUMNS), None)
    if id_column is None:
        raise NmrError(f"{file}: no sample id column (one of {', '.join(ID_COLUMNS)}) and not the long format "
                       "(sample_id, biomarker, value, unit)")
    return id_column


def _read_rows(table: pa.Table, file: str, first_line: int, first_chunk: bool, manifest: pa.Table, tolerance: float,
               remove_technical_variation: bool) -> Staged:
    """Rows of the file from ``first_line`` on -> one staged chunk.  A sample whose row repeats (in this
    chunk) is read once per copy, so that each copy is a record version of its own and the load keeps
    the last as for any repeated record (``load._Load.keep_last_copies``): the rows are read in layers,
    each holding at most one row of a sample, the layer of every sample's last row read last (and the
    one the technical-variation model is fitted on).  Read as one, a sample's rows made one record with
    every row's values."""
    lines = pa.array(range(first_line, first_line + table.num_rows), pa.int64())
    layers = pa.array(np.ones(table.num_rows, dtype=np.int64))
    ids = None if is_long_format(table.column_names) else table.column(_id_column(table.column_names, file))
    if ids is not None and pc.count_distinct(ids).as_py() < pc.count(ids).as_py():
        con = duckdb.connect()
        con.register("ids", pa.table({"id": ids, "line": lines}))
        layers = con.sql("""SELECT CASE WHEN id IS NULL THEN 1 ELSE row_number() OVER (PARTITION BY id ORDER BY line DESC)
                                   END AS layer FROM ids ORDER BY line""").to_arrow_table().column("layer")
        con.close()
    parts = []
    for layer in range(pc.max(layers).as_py() or 1, 0, -1):
        rows = pc.equal(layers, layer)
        reader = NmrReader(file, manifest, tolerance, remove_technical_variation)
        parts.append(reader.read(table.filter(rows), file, lines.filter(rows), first_chunk and layer == 1))
        reader.con.close()  # the chunk's scratch tables go now, not when the collector finds them
    if len(parts) == 1:
        return parts[0]
    staged = Staged(parts[0].extract, read=sum(part.read for part in parts))
    for name in ("events", "persons", "rejects"):
        setattr(staged, name, ArrowColumns(pa.concat_tables([getattr(part, name).table() for part in parts])))
    staged.values = pa.concat_tables([part.values for part in parts])
    return staged


def _scannable(table: pa.Table) -> pa.Table:
    """``table`` in batches of ``SCAN_ROWS`` rows: DuckDB scans an Arrow table batch by batch, one thread
    a batch, so a table of one batch is read (and unpivoted, joined...) on one core."""
    return pa.Table.from_batches(table.to_batches(SCAN_ROWS), table.schema)


def person_ref_sql(m: str) -> str:
    """The person a manifest row (alias ``m``) names: its own person record when it carries a birth date,
    else the organisation's patient (local id), else whoever has the NHS number (resolved at load)."""
    return (f"CASE WHEN {m}.birth_date IS NOT NULL THEN 'Participant/' || COALESCE({m}.local_id, {m}.nhs_number) "
            f"WHEN {m}.local_id IS NOT NULL THEN 'Patient/' || {m}.local_id "
            f"ELSE '?{NHS_NUMBER_SYSTEM}|' || {m}.nhs_number END")


def manifest_persons(con: duckdb.DuckDBPyConnection, used_samples_sql: str) -> pa.Table:
    """Person records of the manifest rows with a birth date whose samples are in the file."""
    persons = con.sql(f"""
        SELECT 'Participant/' || COALESCE(local_id, nhs_number) AS record,
               md5(concat_ws('|', nhs_number, local_id, birth_date, sex)) AS record_hash,
               'Participant/' || COALESCE(local_id, nhs_number) AS person_ref, nhs_number, birth_date, sex, line
        FROM manifest WHERE birth_date IS NOT NULL AND sample_id IN ({used_samples_sql})
        QUALIFY row_number() OVER (PARTITION BY COALESCE(local_id, nhs_number) ORDER BY line DESC) = 1""")
    return conform(persons.to_arrow_table(), PERSON_SCHEMA)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def is_long_format(column_names: list[str]) -> bool:
    return {"sampleid", "biomarker", "value"} <= {_key(c) for c in column_names}


def read_nmr(path: Path | str, manifest: Path | str | pa.Table, tolerance: float = DEFAULT_TOLERANCE,
             remove_technical_variation: bool = False) -> Staged:
    """The whole file as one staged extract (see ``read_nmr_chunks`` for large files)."""
    return next(read_nmr_chunks(path, manifest, tolerance, remove_technical_variation, chunk_samples=None))


def read_nmr_chunks(path: Path | str, manifest: Path | str | pa.Table, tolerance: float = DEFAULT_TOLERANCE,
                    remove_technical_variation: bool = False,
                    chunk_samples: int | None = CHUNK_SAMPLES) -> Iterator[Staged]:
    """The file as staged chunks of ``chunk_samples`` wide rows each, streamed, for one load
    (``load_staged`` takes them in one transaction), so memory stays flat whatever the file's size.

    Every value of a sample is in its row, so a chunk holds whole source records.  A person record
    (a manifest row with a birth date) is staged with the first chunk that uses it.  The whole file is
    one chunk when ``chunk_samples`` is None, for the long format (a sample's rows may be anywhere in
    the file) and when removing technical variation (``remove_technical_variation``: land values
    adjusted as ``mercia.ingest.nmr_technical`` describes; it models plates and batches over all samples)."""
    path = Path(path)
    table = manifest if isinstance(manifest, pa.Table) else read_manifest(manifest)
    whole = chunk_samples is None or remove_technical_variation or is_long_format(_header(path))
    first_line, staged_persons = 2, pa.array([], pa.string())
    for batch in _string_batches(path, None if whole else chunk_samples):
        staged = _read_rows(pa.Table.from_batches([batch]), path.name, first_line, first_line == 2, table, tolerance,
                            remove_technical_variation)
        persons = staged.persons.table()
        new = persons.filter(pc.invert(pc.is_in(persons.column("record"), value_set=staged_persons)))
        staged.persons = ArrowColumns(new)
        staged_persons = pa.concat_arrays([staged_persons, new.column("record").combine_chunks()])
        first_line += batch.num_rows
        yield staged


def _layout(path: Path) -> tuple[str, list[str]]:
    """(delimiter, column names) from the header line; a repeated column name is an error."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline().decode("utf-8-sig")
        delimiter = "\t" if header.count("\t") > header.count(",") else ","
        names = next(csv.reader([header.strip("\r\n")], delimiter=delimiter))
    except (UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise NmrError(f"{path.name}: not a readable CSV/TSV NMR file: {str(exc).splitlines()[0][:200]}") from exc
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise NmrError(f"{path.name}: line 1: column {duplicated[0]!r} appears more than once")
    return delimiter, names


def _header(path: Path) -> list[str]:
    return _layout(path)[1]
