"""One store for every capability: an OMOP CDM on embedded DuckDB or on a PostgreSQL server.

Capabilities talk SQL to a ``Store`` and never to a driver, so the same code path serves both
engines (and, through sqlglot dialects, Spark).  The store owns connection, schema placement,
transactions and the native bulk paths (DuckDB's Arrow scans, PostgreSQL's COPY).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv

from mercia.cdm.schema import CDM_TABLES, Table

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Quoted strings, quoted identifiers and comments, where a ``?`` or ``%`` is text, not a parameter.
_LITERAL_OR_MARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|%", re.S)


def _to_pyformat(sql: str) -> str:
    """Every caller writes ``?`` placeholders; psycopg wants ``%s`` and a literal ``%`` doubled."""
    def swap(m: re.Match) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        return "%%" if token == "%" else token.replace("%", "%%")
    return _LITERAL_OR_MARK.sub(swap, sql)


class StoreError(Exception):
    """A problem with the store that the user can act on; the message says what and where."""


def quote(identifier: str) -> str:
    """Quote an identifier for every engine here (names such as ``offset`` are reserved)."""
    if not _IDENTIFIER.match(identifier):
        raise StoreError(f"not a valid SQL identifier: {identifier!r}")
    return f'"{identifier}"'


class Store:
    """A connection to one OMOP CDM schema.

    ``url`` is a DuckDB file path, ``:memory:``, ``duckdb:///path`` or ``postgresql://...``.
    ``schema`` places the CDM in a named schema (created if missing), which is how tests isolate
    themselves on a shared PostgreSQL server.
    """

    dialect: str

    def __init__(self, url: str, schema: str | None = None, read_only: bool = False):
        self.url = url
        self.schema = schema
        self._in_transaction = False
        if url.startswith(("postgresql://", "postgres://")):
            import psycopg

            self.dialect = "postgres"
            try:
                self._pg = psycopg.connect(url, autocommit=True)
            except psycopg.OperationalError as exc:
                raise StoreError(f"cannot connect to PostgreSQL at {_redact(url)}: {exc}") from exc
            if schema:
                self._pg.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                self._pg.execute(f"SET search_path TO {quote(schema)}")
        else:
            self.dialect = "duckdb"
            path = url.removeprefix("duckdb://").removeprefix("/") if url.startswith("duckdb:///") else url
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._duck = duckdb.connect(path, read_only=read_only)
            except duckdb.Error as exc:
                raise StoreError(f"cannot open DuckDB database {path}: {exc}") from exc
            if schema:
                self._duck.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                self._duck.execute(f"SET schema = '{schema}'")

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | None = None, schema: str | None = None, read_only: bool = False) -> Store:
        """Open the store at ``url``, or the configured default (see ``mercia.config``)."""
        if url is None:
            from mercia.config import load_settings

            url = load_settings().db
        return cls(str(url), schema=schema, read_only=read_only)

    def close(self) -> None:
        (self._pg if self.dialect == "postgres" else self._duck).close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({_redact(self.url)!r}, dialect={self.dialect!r}, schema={self.schema!r})"

    @property
    def duckdb_connection(self) -> duckdb.DuckDBPyConnection:
        """The raw DuckDB connection, for DuckDB-only fast paths (Arrow scans, COPY to Parquet)."""
        if self.dialect != "duckdb":
            raise StoreError("this operation needs an embedded DuckDB store")
        return self._duck

    # -- SQL -------------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement (or, without params, a script of several) for its effect.
        Parameters are ``?`` on every engine."""
        if self.dialect == "postgres":
            self._pg.execute(_to_pyformat(sql) if params is not None else sql, params)
        else:
            self._duck.execute(sql, params) if params is not None else self._duck.execute(sql)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        if self.dialect == "postgres":
            return self._pg.execute(_to_pyformat(sql) if params is not None else sql, params).fetchall()
        return self._duck.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        if self.dialect == "duckdb":
            return self._duck.sql(sql, params=params).to_arrow_table()
        cur = self._pg.execute(_to_pyformat(sql) if params is not None else sql, params)
        names = [d.name for d in cur.description]
        rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}) if rows else \
            pa.table({n: pa.array([], pa.null()) for n in names})

    def query_dicts(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        return self.query_arrow(sql, params).to_pylist()

    def try_execute(self, sql: str) -> bool:
        """Run an optional statement (say, creating an extension); False if the engine refused.
        On PostgreSQL it runs in a savepoint, so a refusal does not spoil an open transaction."""
        if self.dialect == "postgres":
            import psycopg

            try:
                with self._pg.transaction():
                    self._pg.execute(sql)
            except psycopg.Error:
                return False
            return True
        try:
            self._duck.execute(sql)
        except duckdb.Error:
            return False
        return True

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """All or nothing: everything inside commits together or not at all.  Nested use joins
        the outer transaction, so a capability can be transactional on its own and inside a
        larger load."""
        if self._in_transaction:
            yield self
            return
        self._in_transaction = True
        try:
            if self.dialect == "postgres":
                with self._pg.transaction():
                    yield self
            else:
                self._duck.execute("BEGIN TRANSACTION")
                try:
                    yield self
                except BaseException:
                    self._duck.execute("ROLLBACK")
                    raise
                self._duck.execute("COMMIT")
        finally:
            self._in_transaction = False

    # -- schema ----------------------------------------------------------------------------
    def table_exists(self, name: str) -> bool:
        sql = "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = current_schema()"
        if self.dialect == "duckdb":
            sql += " AND table_catalog = current_database()"
        return bool(self.query_one(sql, [name]))

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, data type) of a table's columns as the engine reports them, in order."""
        sql = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? " \
              "AND table_schema = current_schema()"
        if self.dialect == "duckdb":
            sql += " AND table_catalog = current_database()"
        sql += " ORDER BY ordinal_position"
        return [(r[0], r[1]) for r in self.query(sql, [table])]

    def create_table_sql(self, table: Table, enforce_primary_key: bool = False) -> list[str]:
        cols = [f"{quote(c.name)} {c.sql_type}{' NOT NULL' if c.required else ''}" for c in table.columns]
        if enforce_primary_key and table.primary_key:
            cols.append(f"PRIMARY KEY ({quote(table.primary_key)})")
        statements = [f"CREATE TABLE IF NOT EXISTS {quote(table.name)} (\n  " + ",\n  ".join(cols) + "\n)"]
        if self.dialect == "postgres":
            index_cols = list(table.indexed_columns)
            if table.primary_key and not enforce_primary_key:
                index_cols.insert(0, table.primary_key)
            statements += [f"CREATE INDEX IF NOT EXISTS {quote(f'idx_{table.name}_{c}')} "
                           f"ON {quote(table.name)} ({quote(c)})" for c in index_cols]
        return statements

    def init_schema(self, enforce_primary_keys: bool = False) -> None:
        """Create every CDM v5.4 table that is missing.  Idempotent.

        Primary keys are declared in the schema but enforced only on request: OHDSI ships them as
        an optional DDL script, and real sources break them (GiBleed's measurement_id repeats).
        """
        with self.transaction():
            for table in CDM_TABLES.values():
                for statement in self.create_table_sql(table, enforce_primary_keys):
                    self.execute(statement)

    def table_counts(self, tables: Sequence[str] | None = None) -> dict[str, int]:
        """Row counts of the CDM tables that exist, in one round trip."""
        names = [t for t in (tables or CDM_TABLES) if self.table_exists(t)]
        if not names:
            return {}
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {quote(t)}" for t in names)
        return {name: int(n) for name, n in self.query(sql)}

    # -- bulk ------------------------------------------------------------------------------
    def insert_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> int:
        """Append an Arrow table by column name through the engine's bulk path; returns rows."""
        if isinstance(data, pa.RecordBatchReader):
            data = data.read_all()
        if data.num_rows == 0:
            return 0
        cols = ", ".join(quote(c) for c in data.column_names)
        if self.dialect == "duckdb":
            self._duck.register("_mercia_arrow_in", data)
            try:
                self._duck.execute(f"INSERT INTO {quote(table)} ({cols}) SELECT {cols} FROM _mercia_arrow_in")
            finally:
                self._duck.unregister("_mercia_arrow_in")
        else:
            buffer = io.BytesIO()
            pa_csv.write_csv(data, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
            with self._pg.cursor() as cur, cur.copy(
                    f"COPY {quote(table)} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buffer.getvalue())
        return data.num_rows


def _redact(url: str) -> str:
    """Hide a password in a connection URL before it reaches a message or a log."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
