"""Bulk load and export of OMOP CDM tables: a directory of ``<table>.csv|.csv.gz|.tsv|.parquet``, or of
``<table>/`` folders of Parquet parts (``part-*.parquet``, as ``mercia synth omop --format parquet`` and
Spark write a partitioned table).

Every file is parsed by DuckDB (``read_csv`` / ``read_parquet``) into the CDM's own column types and
streamed as Arrow record batches into the store's native bulk path (DuckDB Arrow scan, PostgreSQL
``COPY``), except Parquet on an engine that reads it itself (Spark: ``Store.load_parquet``, the same
rules in the engine's casts).  Nothing is inserted row by row.

Rules (documented in docs/cdm.md):

- **Atomic.** All files of one load go in one transaction; any error rolls everything back and raises
  ``LoadError`` naming the file, line (or Parquet row) and column.
- **Replace.** Each table that has a file in the directory is emptied inside that transaction before
  its rows go in, so loading the same directory twice gives the same tables, never duplicates.
- **Reported, not skipped.** A data file whose name is not a CDM table is an error (unless
  ``skip_unknown``, then a warning); other files (``schema.json``, ``README``) are listed as ignored.
  Columns the CDM does not have are warnings (their values are not loaded); missing optional
  columns load as NULL and are reported; a missing required column is an error.
- **OMOP convention.** A NULL in a required ``*_concept_id`` column becomes 0 ("No matching
  concept"); the report says how many.  Any other empty required value is an error.
- **Formats.** Comma-separated with standard quoting (``.csv``, ``.csv.gz``), or tab-separated
  without quoting as OHDSI Athena ships its vocabulary (``.tsv``, or a ``.csv`` whose header holds
  tabs, e.g. Athena's upper-case ``CONCEPT.csv``); dates as ``YYYY-MM-DD`` or Athena's ``YYYYMMDD``.
  Line numbers count the header as line 1 and one line per record.  An error in a partitioned
  table names the part file and the row within it.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mercia.cdm.schema import CDM_TABLES, VOCABULARY_CACHE_TABLES, Column, Table
from mercia.cdm.store import Store, StoreError, duckdb_type, quote, sql_string

DATA_SUFFIXES = (".csv.gz", ".tsv.gz", ".csv", ".tsv", ".parquet")
EXPORT_FORMATS = {"csv": ".csv", "csv.gz": ".csv.gz", "tsv": ".tsv", "parquet": ".parquet"}
_BATCH_ROWS = 256_000


class LoadError(StoreError):
    """A file could not be loaded; says which file, where, and why.  The store is unchanged."""

    def __init__(self, path: Path | str, reason: str, line: int | None = None, column: str | None = None,
                 row_word: str = "line"):
        self.path, self.reason, self.line, self.column = Path(path), reason, line, column
        where = [str(path)]
        if line is not None:
            where.append(f"{row_word} {line}")
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{', '.join(where)}: {reason}")


@dataclass
class FileLoad:
    """What happened to one file."""

    table: str
    path: Path
    rows: int = 0
    missing_columns: list[str] = field(default_factory=list)  # optional, loaded as NULL
    unknown_columns: list[str] = field(default_factory=list)  # not in the CDM, not loaded
    zeroed_concept_ids: dict[str, int] = field(default_factory=dict)  # required concept NULL -> 0


@dataclass
class LoadReport:
    files: list[FileLoad] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)
    unknown_tables: list[Path] = field(default_factory=list)  # only with skip_unknown
    seconds: float = 0.0

    @property
    def rows(self) -> dict[str, int]:
        return {f.table: f.rows for f in self.files}

    @property
    def warnings(self) -> list[str]:
        """Everything a user should read: skipped files, dropped and missing columns, zeroed ids."""
        out = [f"{p.name}: not a CDM table, skipped" for p in self.unknown_tables]
        out += [f"{p.name}: not a data file, ignored" for p in self.ignored_files]
        for f in self.files:
            if f.unknown_columns:
                out.append(f"{f.path.name}: columns not in CDM table {f.table}, not loaded: "
                           + ", ".join(f.unknown_columns))
            if f.missing_columns:
                out.append(f"{f.path.name}: optional columns absent, loaded as NULL: " + ", ".join(f.missing_columns))
            for col, n in f.zeroed_concept_ids.items():
                out.append(f"{f.path.name}: {n} empty {col} set to 0 (OMOP 'No matching concept')")
        return out


# -- discovery ------------------------------------------------------------------------------

def table_name_of(path: Path) -> str | None:
    """``CONCEPT.csv`` -> ``concept``; None if the file is not a data file by its suffix."""
    name = path.name.lower()
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def discover(directory: Path, skip_unknown: bool = False) -> tuple[dict[str, Path], LoadReport]:
    """Map CDM table -> file for a directory; unknown data files are errors unless ``skip_unknown``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LoadError(directory, "not a directory")
    report = LoadReport()
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        name = table_name_of(path) if path.is_file() else (path.name.lower() if parquet_parts(path) else None)
        if name is None:
            report.ignored_files.append(path)
        elif name not in CDM_TABLES:
            if not skip_unknown:
                close = difflib.get_close_matches(name, CDM_TABLES, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise LoadError(path, f"{name!r} is not an OMOP CDM v5.4 table{hint}; "
                                      "rename or remove the file, or pass --skip-unknown")
            report.unknown_tables.append(path)
        elif name in found:
            raise LoadError(path, f"a second file for table {name} (first: {found[name].name})")
        else:
            found[name] = path
    return found, report


def parquet_parts(path: Path) -> list[Path]:
    """The ``*.parquet`` parts of a partitioned table folder, in name order (empty for anything else)."""
    return sorted(p for p in path.glob("*.parquet") if p.is_file()) if path.is_dir() else []


# -- reading one file -----------------------------------------------------------------------

def _header_line(path: Path) -> str:
    """The first line of a (possibly gzipped) text file, decoded as UTF-8."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.readline(1 << 20)
    except (OSError, EOFError) as exc:
        raise LoadError(path, f"cannot read the file: {exc}", line=1) from None
    try:
        line = raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise LoadError(path, "not a UTF-8 text CSV file (undecodable bytes in the header)", line=1) from None
    if not line.strip():
        raise LoadError(path, "empty file: expected a header line naming the columns", line=1)
    return line


def _scan_sql(path: Path) -> tuple[str, list[str]]:
    """SQL reading every column as text, and the header names.  The header is read here and the
    dialect is fixed rather than sniffed, so a ragged or odd row is an error, never a new header."""
    if path.name.lower().endswith(".parquet"):
        return f"read_parquet({sql_string(path)})", []
    line = _header_line(path)
    if path.name.lower().endswith((".tsv", ".tsv.gz")) or "\t" in line:
        # Athena: tab-separated, no quoting at all (concept names contain bare quote characters).
        names, options = line.split("\t"), "delim='\\t', quote='', escape=''"
    else:
        names = next(csv.reader([line]))
        options = "delim=',', quote='\"', escape='\"', allow_quoted_nulls=false"
    names = [n.strip() for n in names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or not all(names):
        raise LoadError(path, f"header names must be unique and non-empty: {', '.join(duplicates) or repr(line)}",
                        line=1)
    columns = "{" + ", ".join(f"{sql_string(n)}: 'VARCHAR'" for n in names) + "}"
    return (f"read_csv({sql_string(path)}, header=true, auto_detect=false, columns={columns}, {options})", names)


def _conversion(raw: str, column: Column, source_type: str) -> str:
    """SQL turning a raw file value into the column's CDM type, NULL where it cannot."""
    target = duckdb_type(column)
    if source_type != "VARCHAR" or target == "VARCHAR":
        return raw if source_type == target else f"TRY_CAST({raw} AS {target})"
    if target == "DATE":
        return f"COALESCE(TRY_CAST({raw} AS DATE), TRY_STRPTIME({raw}, '%Y%m%d')::DATE)"
    return f"TRY_CAST(trim({raw}) AS {target})"


@dataclass
class _Part:
    """One file of a plan."""

    path: Path
    sql: str  # reads the file in CDM types, with the check columns
    schema: tuple[tuple[str, str], ...]  # the file's columns and their types as DuckDB reads them


@dataclass
class _Plan:
    """How one file (or a folder of Parquet parts) maps onto its CDM table."""

    table: Table
    path: Path
    parts: list[_Part]
    sources: dict[str, str]  # each CDM column present in the file -> its name there, in CDM order
    report: FileLoad

    @property
    def columns(self) -> list[str]:
        return list(self.sources)

    @property
    def schema_groups(self) -> list[list[Path]]:
        """The parts grouped by identical column types (in part order), for engines reading them together."""
        groups: dict[tuple, list[Path]] = {}
        for part in self.parts:
            groups.setdefault(part.schema, []).append(part.path)
        return list(groups.values())


def _plan(con: duckdb.DuckDBPyConnection, table: Table, path: Path) -> _Plan:
    """One file's plan; a partitioned table's parts must all have the columns of its first part."""
    parts = parquet_parts(path)
    if not parts:
        return _plan_file(con, table, path)
    plans = [_plan_file(con, table, part) for part in parts]
    first = plans[0]
    for other in plans[1:]:
        if (other.columns, other.report.unknown_columns) != (first.columns, first.report.unknown_columns):
            raise LoadError(other.path, f"columns differ from those of {first.path.name} in the same table folder")
    report = FileLoad(table.name, path, missing_columns=first.report.missing_columns,
                      unknown_columns=first.report.unknown_columns)
    return _Plan(table, path, [part for plan in plans for part in plan.parts], first.sources, report)


def _plan_file(con: duckdb.DuckDBPyConnection, table: Table, path: Path) -> _Plan:
    scan, header = _scan_sql(path)
    if header:
        described = [(name, "VARCHAR") for name in header]
    else:
        try:
            described = [(d[0], str(d[1])) for d in con.sql(f"SELECT * FROM {scan} LIMIT 0").description]
        except duckdb.Error as exc:
            raise _duck_error(path, exc) from None
    by_lower = {name.lower(): (name, type_) for name, type_ in described}
    report = FileLoad(table.name, path)
    report.unknown_columns = [name for name, _ in by_lower.values() if name.lower() not in table.column_names]
    missing_required = [c.name for c in table.columns if c.required and c.name not in by_lower]
    if missing_required:
        header = ", ".join(name for name, _ in by_lower.values())
        raise LoadError(path, f"missing required column(s) {', '.join(missing_required)} of table "
                              f"{table.name}; the header has: {header[:300]}", line=1)
    present = [c for c in table.columns if c.name in by_lower]
    report.missing_columns = [c.name for c in table.columns if c.name not in by_lower]

    inner, outer, bad_column, bad_value = [], [], [], []
    for i, col in enumerate(present):
        source_name, source_type = by_lower[col.name]
        raw, value = f"r{i}", f"v{i}"
        inner += [f"{quote(source_name)} AS {raw}", f"{_conversion(quote(source_name), col, source_type)} AS {value}"]
        outer.append(f"{value} AS {quote(col.name)}")
        bad_column.append(f"WHEN {raw} IS NOT NULL AND {value} IS NULL THEN '{col.name}'")
        bad_value.append(f"WHEN {raw} IS NOT NULL AND {value} IS NULL THEN CAST({raw} AS VARCHAR)")
        if col.required and not col.is_concept_id:
            bad_column.append(f"WHEN {raw} IS NULL THEN '{col.name}'")
            bad_value.append(f"WHEN {raw} IS NULL THEN NULL")
    # The first failing column of each row, so a failure can be reported by record and column.
    outer.append(f"CASE {' '.join(bad_column)} END AS _mercia_bad_column")
    outer.append(f"CASE {' '.join(bad_value)} END AS _mercia_bad_value")
    sql = f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {scan})"
    sources = {c.name: by_lower[c.name][0] for c in present}
    return _Plan(table, path, [_Part(path, sql, tuple(described))], sources, report)


def _duck_error(path: Path, exc: duckdb.Error) -> LoadError:
    message = str(exc).strip()
    line = re.search(r"CSV Error on Line: (\d+)", message)
    reason = " ".join(message.split("\n\n")[0].split())
    if "Invalid unicode" in message:
        reason = "not a UTF-8 text CSV file (" + reason + ")"
    return LoadError(path, reason, line=int(line.group(1)) if line else None)


def _batches(con: duckdb.DuckDBPyConnection, plan: _Plan) -> Iterator[pa.RecordBatch]:
    """The plan's rows in CDM types, checked; raises LoadError at the first bad value."""
    for part in plan.parts:
        yield from _file_batches(con, plan, part.path, part.sql)


def _file_batches(con: duckdb.DuckDBPyConnection, plan: _Plan, path: Path, sql: str) -> Iterator[pa.RecordBatch]:
    row_word = "row" if path.name.lower().endswith(".parquet") else "line"
    first_line = 1 if row_word == "row" else 2  # line 1 is the header
    required_concepts = [c for c in plan.columns if plan.table.column(c).required and plan.table.column(c).is_concept_id]
    seen = 0
    try:
        reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
        for batch in reader:
            bad = batch.column("_mercia_bad_column")
            if bad.null_count < batch.num_rows:
                index = pc.index(pc.is_valid(bad), True).as_py()
                raise _bad_value(plan, path, first_line + seen + index, bad[index].as_py(),
                                 batch.column("_mercia_bad_value")[index].as_py(), row_word)
            seen += batch.num_rows
            batch = batch.drop_columns(["_mercia_bad_column", "_mercia_bad_value"])
            for name in required_concepts:
                nulls = batch.column(name).null_count
                if nulls:
                    plan.report.zeroed_concept_ids[name] = plan.report.zeroed_concept_ids.get(name, 0) + nulls
                    i = batch.schema.get_field_index(name)
                    batch = batch.set_column(i, name, pc.fill_null(batch.column(name), 0))
            yield batch
    except duckdb.Error as exc:
        raise _duck_error(path, exc) from None


def _bad_value(plan: _Plan, path: Path, line: int, column: str, value: str | None, row_word: str) -> LoadError:
    """The error for a value that cannot go into its CDM column (None: empty in a required column)."""
    spec = plan.table.column(column)
    reason = (f"empty value in required column (type {spec.sql_type})" if value is None
              else f"cannot read {value!r} as {spec.sql_type}")
    return LoadError(path, reason, line=line, column=column, row_word=row_word)


# -- loading --------------------------------------------------------------------------------

def load_omop_files(store: Store, files: dict[str, Path], report: LoadReport | None = None) -> LoadReport:
    """Load ``{table: file}`` into ``store`` in one transaction, replacing those tables."""
    started = time.perf_counter()
    report = report or LoadReport()
    unknown = sorted(set(files) - set(CDM_TABLES))
    if unknown:
        raise LoadError(files[unknown[0]], f"{unknown[0]!r} is not an OMOP CDM v5.4 table")
    con = duckdb.connect()  # private parser: its errors never touch the store's transaction
    try:
        plans = [_plan(con, CDM_TABLES[name], Path(path)) for name, path in files.items()]  # headers first
        with store.transaction():
            store.init_schema()
            if {"concept", "concept_synonym"} & set(files):
                for cache in VOCABULARY_CACHE_TABLES:
                    store.execute(f"DROP TABLE IF EXISTS {quote(cache)}")
            for plan in plans:
                store.truncate(plan.table.name)
                with store.indexes_deferred(plan.table.name):
                    _load_plan(store, con, plan)
                report.files.append(plan.report)
    finally:
        con.close()
    report.seconds = time.perf_counter() - started
    return report


def _load_plan(store: Store, con: duckdb.DuckDBPyConnection, plan: _Plan) -> None:
    """Append one plan's rows: Parquet read by the engine itself where it can (Spark), else Arrow
    batches parsed and checked here."""
    if all(part.path.name.lower().endswith(".parquet") for part in plan.parts):
        loaded = store.load_parquet(plan.table, plan.schema_groups, plan.sources)
        if loaded is not None:
            if loaded.bad is not None:
                path = next(p.path for p in plan.parts if p.path.name == loaded.bad.file_name)
                raise _bad_value(plan, path, loaded.bad.row, loaded.bad.column, loaded.bad.value, "row")
            plan.report.rows += loaded.rows
            plan.report.zeroed_concept_ids = {c: n for c, n in loaded.zeroed_concept_ids.items() if n}
            return
    for batch in _batches(con, plan):
        plan.report.rows += store.insert_arrow(plan.table.name, pa.Table.from_batches([batch]))


def load_omop_directory(store: Store, directory: Path | str, tables: Sequence[str] | None = None,
                        skip_unknown: bool = False) -> LoadReport:
    """Load every CDM table file in ``directory`` (or only ``tables``) atomically; see module doc."""
    found, report = discover(Path(directory), skip_unknown=skip_unknown)
    if tables is not None:
        wanted = [t.lower() for t in tables]
        absent = [t for t in wanted if t not in found]
        if absent:
            raise LoadError(directory, f"no file for table(s) {', '.join(absent)}")
        found = {t: found[t] for t in wanted}
    if not found:
        raise LoadError(directory, "no OMOP CDM table files (<table>.csv, .csv.gz, .tsv, .parquet, or <table>/ "
                                   "folders of .parquet parts) found")
    return load_omop_files(store, found, report)


# -- export ---------------------------------------------------------------------------------

def _copy_options(fmt: str) -> str:
    return {"csv": "FORMAT csv, HEADER", "csv.gz": "FORMAT csv, HEADER, COMPRESSION gzip",
            "tsv": "FORMAT csv, HEADER, DELIMITER '\t', QUOTE ''",
            "parquet": "FORMAT parquet"}[fmt]


def export_omop(store: Store, directory: Path | str, fmt: str = "csv",
                tables: Iterable[str] | None = None) -> dict[str, Path]:
    """Write each CDM table (or ``tables``) to ``directory/<table><ext>``; returns table -> file.

    The file formats are exactly what ``load_omop_directory`` reads back, so export -> load gives
    identical tables.  TSV is Athena style (no quoting), so a text value holding a tab or a line
    break cannot be written as TSV: that is an error naming the table and column.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    names = list(tables) if tables is not None else [t for t in CDM_TABLES if store.table_exists(t)]
    for name in names:
        if name not in CDM_TABLES:
            raise StoreError(f"{name!r} is not an OMOP CDM v5.4 table")
        if not store.table_exists(name):
            raise StoreError(f"table {name} does not exist in {store!r}; run `mercia db init`")
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in names:
        table = CDM_TABLES[name]
        if fmt == "tsv":
            _check_tsv_safe(store, table)
        target = out_dir / f"{name}{EXPORT_FORMATS[fmt]}"
        store.export_table(table, target, _copy_options(fmt))
        written[name] = target
    return written


def _check_tsv_safe(store: Store, table: Table) -> None:
    text = [c.name for c in table.columns if c.sql_type == "VARCHAR"]
    if not text:
        return
    counts = store.query("SELECT " + ", ".join(
        f"count(*) FILTER (WHERE strpos({quote(c)}, chr(9)) + strpos({quote(c)}, chr(10)) "
        f"+ strpos({quote(c)}, chr(13)) > 0)" for c in text) + f" FROM {quote(table.name)}")[0]
    offending = [c for c, n in zip(text, counts) if n]
    if offending:
        raise StoreError(f"table {table.name}, column {', '.join(offending)}: values contain tabs or line breaks, "
                         "which Athena-style TSV cannot hold; export as csv, csv.gz or parquet instead")
