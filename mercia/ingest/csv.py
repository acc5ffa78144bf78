"""CSV/TSV extracts described by a declarative YAML mapping (see ``mappings/*.yaml``).

DuckDB reads every file (all columns as text, malformed lines captured with their line number
instead of failing the file) and one SQL query per mapping entry produces the staged columns, so
nothing here loops over rows in Python.  Field specs:

- ``column`` or ``"file.column"`` (file name without extension, after a ``join``), ``{columns: [...]}`` to concatenate a key, ``join: {source: F, key: C}`` for a second file,
- ``{constant: X}``, ``{column: C, map: {source: target}}``, ``vocabulary: V`` for codes,
- dates use the mapping's ``date_format`` (strptime) or a per-field ``format``.

Entries are ``persons``, ``events`` (each with its ``kind``) and ``sites`` (``record``, ``name``, ``ods_code``;
``kind`` Organization, the default, or Location): care sites, named and matched by ODS code as FHIR's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mercia.ingest.staging import CARE_SITE_KINDS, EVENT_SCHEMA, PERSON_SCHEMA, SITE_SCHEMA, Columns, Staged

MAPPINGS_DIR = Path(__file__).with_name("mappings")
_DATE_FIELDS = {"birth_date", "start", "end", "death_date"}
_NUMERIC_FIELDS = {"value_number", "range_low", "range_high", "quantity"}


class MappingError(Exception):
    """A mapping file that does not fit its extract, or an extract file that is not CSV at all;
    names the mapping entry and field, or the file."""


def _sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _column(name: str, default_table: str) -> str:
    table, _, column = name.rpartition(".")
    return f'"{table or default_table}"."{column}"'


class CsvReader:
    def __init__(self, mapping: dict[str, Any], extract: str):
        self.mapping = mapping
        self.staged = Staged(extract)
        self.con = duckdb.connect()
        self.loaded_views: set[str] = set()
        self.counted: set[str] = set()

    def _view(self, directory: Path, source: str) -> str:
        name = Path(source).stem
        if name in self.loaded_views:
            return name
        path = directory / source
        if not path.exists():
            raise MappingError(f"mapping names {source}, which is not in {directory}")
        delimiter = self.mapping.get("delimiter", "\t" if source.endswith(".tsv") else ",")
        rejects = f"rej_{name}"
        try:
            self.con.execute(f"""CREATE TABLE "{name}" AS SELECT *, CAST(NULL AS VARCHAR) AS _nothing FROM read_csv(?,
                header=true, all_varchar=true, delim={_sql_string(delimiter)}, store_rejects=true,
                rejects_table='{rejects}', rejects_scan='scan_{name}')""", [str(path)])
        except duckdb.Error as exc:  # not CSV at all (binary, no consistent dialect): the whole extract stops
            raise MappingError(f"{source} is not readable as CSV: {str(exc).splitlines()[0][:200]}") from None
        # each row's line in the file (the header is line 1; malformed lines skipped): rows are told apart
        # by their line, as a repeated record's copies are (a quoted line break is not counted)
        self.con.execute(f"""CREATE TABLE "{name}__lines" AS SELECT row_number() OVER (ORDER BY l) - 1 AS row, l AS line
            FROM range(2, 2 + (SELECT count(*) FROM "{name}") + (SELECT count(DISTINCT line) FROM {rejects})) t(l)
            WHERE l NOT IN (SELECT line FROM {rejects})""")
        bad = self.con.execute(f"SELECT line, error_message FROM {rejects} ORDER BY line").fetchall()
        for line, message in bad:
            self.staged.read += 1
            self.staged.reject(f"{source}:{line}", None, f"malformed CSV line: {message.split(chr(10))[0][:160]}", line)
        self.loaded_views.add(name)
        return name

    def _expr(self, spec: Any, table: str, field: str) -> str:
        if spec is None:
            return "CAST(NULL AS VARCHAR)"
        if isinstance(spec, (str, int)) and not isinstance(spec, bool):
            expr = _column(str(spec), table)
        elif "constant" in spec:
            return _sql_string(spec["constant"])
        elif "columns" in spec:
            expr = " || '/' || ".join(f"COALESCE({_column(c, table)}, '')" for c in spec["columns"])
        else:
            expr = _column(spec["column"], table)
        expr = f"NULLIF(trim({expr}), '')"
        if isinstance(spec, dict) and spec.get("map"):
            cases = " ".join(f"WHEN {_sql_string(k)} THEN {_sql_string(v)}" for k, v in spec["map"].items())
            expr = f"CASE {expr} {cases} ELSE {expr} END"
        if field in _DATE_FIELDS:
            fmt = (spec.get("format") if isinstance(spec, dict) else None) or self.mapping.get("date_format")
            if fmt:  # a date that does not parse keeps its text, so the loader rejects it by name
                expr = f"COALESCE(strftime(try_strptime({expr}, {_sql_string(fmt)}), '%Y-%m-%d'), {expr})"
        return expr

    def _from(self, directory: Path, entry: dict) -> tuple[str, str, str, str]:
        """(main view, FROM clause, SQL hashing the whole source row incl. joined columns, ORDER BY list
        keeping file order: the load keeps the last row of a record key repeated in one file)."""
        main = self._view(directory, entry["source"])
        clause = f'"{main}" JOIN "{main}__lines" ON "{main}__lines".row = "{main}".rowid'
        content = f'CAST("{main}" AS VARCHAR)'
        order = f'"{main}".rowid'
        join = entry.get("join")
        if join:
            other = self._view(directory, join["source"])
            clause += f' LEFT JOIN "{other}" ON "{other}"."{join["key"]}" = "{main}"."{join["key"]}"'
            content += f' || COALESCE(CAST("{other}" AS VARCHAR), \'\')'
            order += f', "{other}".rowid'
        return main, clause, f"md5({content})", order

    def _select(self, entry: dict, main: str, fields: list[str], context: str) -> str:
        parts = []
        for name in fields:
            spec = entry.get(name)
            if name == "vocabulary":
                code = entry.get("code")
                spec = {"constant": code["vocabulary"]} if isinstance(code, dict) and code.get("vocabulary") else None
            try:
                expr = self._expr(spec, main, name)
            except (KeyError, TypeError) as exc:
                raise MappingError(f"{context}: field {name}: bad spec {spec!r}") from exc
            if name in _NUMERIC_FIELDS:
                expr = f"TRY_CAST({expr} AS DOUBLE)"
            if name == "visit_ref" and spec is not None:  # visits are keyed by their own record key
                expr = f"{_sql_string(self._visit_source() + '/')} || {expr}"
            parts.append(f"{expr} AS {name}")
        return ", ".join(parts)

    def _visit_source(self) -> str:
        visits = [e["source"] for e in self.mapping.get("events") or [] if e.get("kind") == "Visit"]
        if not visits:
            raise MappingError("visit_ref is used but no events entry has kind: Visit")
        return visits[0]

    def read(self, directory: Path) -> Staged:
        directory = Path(directory)
        for i, entry in enumerate(self.mapping.get("persons") or []):
            self._stage(directory, entry, f"persons[{i}]", PERSON_SCHEMA, self.staged.persons, "Person")
        for i, entry in enumerate(self.mapping.get("events") or []):
            self._stage(directory, entry, f"events[{i}]", EVENT_SCHEMA, self.staged.events, entry.get("kind"))
        for i, entry in enumerate(self.mapping.get("sites") or []):
            kind = entry.get("kind", "Organization")
            if kind not in CARE_SITE_KINDS:
                raise MappingError(f"{entry['source']} sites[{i}]: kind {kind!r} is not one of "
                                   f"{', '.join(CARE_SITE_KINDS)}")
            self._stage(directory, entry, f"sites[{i}]", SITE_SCHEMA, self.staged.sites, kind)
        return self.staged

    def _stage(self, directory: Path, entry: dict, context: str, schema: pa.Schema, target: Columns,
               kind: str | None) -> None:
        main, clause, row_hash, order = self._from(directory, entry)
        fields = [f for f in schema.names if f not in ("record_hash", "line", "kind", "record")]
        select = self._select(entry, main, fields, f"{entry['source']} {context}")
        record = self._expr(entry.get("record"), main, "record")
        skip = f"WHERE {self._expr(entry['skip_if_empty'], main, 'x')} IS NOT NULL" if entry.get("skip_if_empty") else ""
        prefix = _sql_string(f"{entry['source']}/")
        sql = f"""SELECT {prefix} || COALESCE({record}, '?') AS record,
                         {row_hash} AS record_hash, {select}, "{main}__lines".line
                  FROM {clause} {skip} ORDER BY {order}"""
        try:
            rows = self.con.sql(sql).to_arrow_table()
        except duckdb.BinderException as exc:
            raise MappingError(f"{entry['source']} {context}: {str(exc).splitlines()[0]}") from exc
        if main not in self.counted:  # several entries may read one file (one event per score column)
            self.counted.add(main)
            self.staged.read += self.con.execute(f'SELECT count(*) FROM "{main}"').fetchall()[0][0]
        data = rows.to_pydict()
        if kind != "Person":
            data["kind"] = [kind] * rows.num_rows
        target.extend(data, rows.num_rows)


def load_mapping(name_or_path: str | Path) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.exists():
        path = MAPPINGS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise MappingError(f"no mapping file {name_or_path} (shipped: "
                           f"{', '.join(p.stem for p in sorted(MAPPINGS_DIR.glob('*.yaml')))})")
    import yaml  # here: every `mercia ingest` imports this module (MappingError), only a CSV load reads YAML

    return yaml.safe_load(path.read_text())


def read_csv_extract(directory: Path | str, mapping: str | Path) -> Staged:
    directory = Path(directory)
    return CsvReader(load_mapping(mapping), directory.name).read(directory)
