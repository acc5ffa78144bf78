"""The PostgreSQL store: psycopg with ``?`` converted inside, ``COPY`` for bulk paths, a pool for sessions."""

from __future__ import annotations

import io
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv

from mercia.cdm.dialect import TemporaryTable
from mercia.cdm.schema import Table
from mercia.cdm.store import Store, StoreError, StoreUnavailable, duckdb_type, quote, redact, sql_string

# Quoted strings, quoted identifiers and comments, where a ``?`` or ``%`` is text, not a parameter.
_LITERAL_OR_MARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|%", re.DOTALL)

# Arrow types of PostgreSQL's built-in type OIDs (pg_type.dat), so an empty result keeps its types.
_ARROW_BY_OID: dict[int, pa.DataType] = {
    16: pa.bool_(), 17: pa.binary(), 18: pa.string(), 19: pa.string(), 20: pa.int64(), 21: pa.int16(),
    23: pa.int32(), 25: pa.string(), 26: pa.int64(), 700: pa.float32(), 701: pa.float64(),
    1042: pa.string(), 1043: pa.string(), 1082: pa.date32(), 1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"), 1700: pa.decimal128(38, 10),
}
_INFERRED_WHEN_ROWS = {1700}  # numeric: the values' own precision and scale


def to_pyformat(sql: str) -> str:
    """Every caller writes ``?`` placeholders; psycopg wants ``%s`` and a literal ``%`` doubled."""
    def swap(m: re.Match) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        return "%%" if token == "%" else token.replace("%", "%%")
    return _LITERAL_OR_MARK.sub(swap, sql)


# A script's settings, for its transaction (``SET LOCAL``: they end with it; a script sent outside one is its own
# implicit transaction).  A script is generated SQL, planned and run once: JIT compiling a statement cost more
# than it saved (cohort 29's primary events at GiBleed x 20: 1.3 s compiling for 0.3 s of work), and the
# statistics of its temporary tables need the row count and a coarse picture of the columns, which ANALYZE
# reads from a 3,000-row sample (target 10) at a fifth of the default's 30,000 (~3 ms against 18 for 20,000 rows).
_SCRIPT_SETTINGS = ("SET LOCAL jit = off", "SET LOCAL default_statistics_target = 10")


def _with_statistics(statement: str) -> list[str]:
    if isinstance(statement, TemporaryTable):
        return [statement, f"ANALYZE {quote(statement.name)}"]
    return [statement]


class PostgresStore(Store):
    dialect = "postgres"
    wants_indexes = True
    savepoints = True
    scripts = True
    pool_size = 8  # connections shared by the sessions of one store (one per concurrent request/job)
    pool_timeout = 10.0  # seconds a session waits for a connection before the store counts as unavailable

    def __init__(self, url: str, schema: str | None = None, read_only: bool = False):
        super().__init__(url, schema, read_only)
        try:
            self._pg = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}", engine=self.dialect) from exc
        self._release: Callable[[], None] = self._close_all
        self._pool = None
        self._pool_lock = threading.Lock()
        if schema:
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            self.execute(f"SET search_path TO {quote(schema)}")

    def _close_all(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pg.close()

    def close(self) -> None:
        self._release()

    def _configure(self, conn: psycopg.Connection) -> None:
        if self.schema:
            conn.execute(f"SET search_path TO {quote(self.schema)}")

    def _open_session(self) -> PostgresStore:
        """A connection from this store's pool (opened on first use), returned on close.

        The pool checks each connection as it hands it out and replaces one the server dropped
        (a PostgreSQL restart), so a new session works as soon as the server is back; until then,
        or while every connection stays busy, opening one raises ``StoreUnavailable``."""
        from psycopg_pool import ConnectionPool, PoolTimeout

        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(self.url, min_size=1, max_size=self.pool_size, open=True,
                                            kwargs={"autocommit": True}, configure=self._configure,
                                            check=ConnectionPool.check_connection)
        pool = self._pool
        try:
            conn = pool.getconn(timeout=self.pool_timeout)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable(f"the database at {redact(self.url)} cannot be reached now; try again shortly",
                                   engine=self.dialect) from exc
        child = object.__new__(PostgresStore)
        Store.__init__(child, self.url, self.schema, self.read_only)
        child._adopt(self)
        child._pg, child._pool, child._pool_lock = conn, None, threading.Lock()
        child._release = lambda: pool.putconn(conn)
        return child

    def _error(self, exc: Exception, sql: str, action: str = "could not run a statement") -> StoreError:
        """A lost connection (the server restarted or went away) is ``StoreUnavailable``: the
        request may be sent again; the pool replaces the connection."""
        if isinstance(exc, psycopg.OperationalError) and self._lost():
            return StoreUnavailable("the database connection was lost; try again in a moment", sql=sql,
                                    engine=self.dialect)
        return super()._error(exc, sql, action)

    def _lost(self) -> bool:
        return self._pg.closed or self._pg.broken

    def _create_id_table(self) -> None:
        """On a short connection of its own, so it commits even inside the caller's transaction;
        one creator at a time in this process (concurrent CREATEs of one table collide)."""
        from mercia.cdm.extensions import ID_BLOCK_DDL

        with self._shared.ids, psycopg.connect(self.url, autocommit=True) as conn:
            self._configure(conn)
            conn.execute(ID_BLOCK_DDL)

    # -- SQL -------------------------------------------------------------------------------
    def _run(self, sql: str, params: Sequence[Any] | None) -> psycopg.Cursor:
        try:
            return self._pg.execute(to_pyformat(sql) if params is not None else sql, params)
        except psycopg.Error as exc:
            raise self._error(exc, sql) from exc

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._run(sql, params)

    def execute_script(self, statements: Sequence[str]) -> None:
        """After ``_SCRIPT_SETTINGS``, and each temporary table analysed after it is made: autovacuum never sees
        temporary tables, so without statistics the planner guesses their sizes, and a join on a guess of one
        row becomes a nested loop over thousands (cohort 134's rule: 25.6 million comparisons)."""
        if statements:
            super().execute_script([*_SCRIPT_SETTINGS, *(s for st in statements for s in _with_statistics(st))])

    def create_temp_table(self, name: str, select_sql: str, params: Sequence[Any] | None = None) -> None:
        super().create_temp_table(name, select_sql, params)
        self.analyse_new_table(name)

    def analyse_new_table(self, name: str) -> None:
        """Autovacuum never sees temporary tables, nor a table before its transaction commits: without ANALYZE
        the planner guesses their size, and a guess far above the truth puts a statement over the JIT
        thresholds (rebuild_person_rows' observation periods: 4.6 s compiling 344 functions for ~50 ms of
        work, 20 times a test; the concept search's join: 3.7 s of JIT for 0.6 s of work)."""
        self.execute(f"ANALYZE {quote(name)}")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        return self._fetch(self._run(sql, params), sql)

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        cur = self._run(sql, params)
        rows = self._fetch(cur, sql)
        columns = {}
        for i, d in enumerate(cur.description or []):
            values = [r[i] for r in rows]
            known = _ARROW_BY_OID.get(d.type_code)
            if rows and (known is None or d.type_code in _INFERRED_WHEN_ROWS):
                columns[d.name] = pa.array(values)
            else:
                columns[d.name] = pa.array(values, known or pa.string())
        return pa.table(columns)

    def _fetch(self, cur: psycopg.Cursor, sql: str) -> list[tuple]:
        try:
            return cur.fetchall()
        except psycopg.Error as exc:
            raise self._error(exc, sql) from exc

    def try_execute(self, sql: str) -> bool:
        """In a savepoint, so a refusal does not spoil an open transaction."""
        try:
            with self._pg.transaction():
                self._pg.execute(sql)
        except psycopg.Error:
            return False
        return True

    def _begin(self) -> None:
        self.execute("BEGIN")

    def _commit(self) -> None:
        self.execute("COMMIT")

    def _rollback(self) -> None:
        if self._lost():
            return  # the server dropped the connection, and the transaction with it
        if self._pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.execute("ROLLBACK")

    def snapshot_reads(self) -> None:
        self.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    @contextmanager
    def exclusive(self, name: str, reads: Sequence[str] = ()) -> Iterator[None]:
        """Also across processes (the server and a CLI run, two servers): a transaction-scoped advisory
        lock, held until the block's transaction — the caller's, when it has one — commits, so the next
        claimer reads the row the first one wrote."""
        with super().exclusive(name, reads), self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [f"mercia/{self.schema or ''}/{name}"])
            yield

    def forbid_changes(self, table: str) -> bool:
        """A statement trigger raising on UPDATE, DELETE and TRUNCATE (a superuser can still drop
        it, which is why append-only logs also chain their rows' hashes)."""
        guard = quote(f"{table}_append_only")
        self.execute(f"""CREATE OR REPLACE FUNCTION {guard}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$;
CREATE OR REPLACE TRIGGER {guard} BEFORE UPDATE OR DELETE OR TRUNCATE ON {quote(table)}
FOR EACH STATEMENT EXECUTE FUNCTION {guard}();""")
        return True

    def lookup_index(self, table: str, column: str, prefix: bool = False) -> None:
        opclass = " text_pattern_ops" if prefix else ""   # LIKE 'x%' uses the index whatever the collation
        self.execute(f"CREATE INDEX IF NOT EXISTS {quote(f'idx_{table}_{column}')} ON {quote(table)} "
                     f"({quote(column)}{opclass})")

    def truncate(self, table: str) -> None:
        self.execute(f"TRUNCATE {quote(table)}")

    @contextmanager
    def indexes_deferred(self, table: str) -> Iterator[None]:
        """The table's indexes (not a constraint's) dropped while the block fills it and made again after it:
        one sort per index instead of a B-tree insert per row.  In the caller's transaction, so a load that
        fails leaves them as they were."""
        indexes = self.query(
            "SELECT x.indexrelid::regclass::text, pg_get_indexdef(x.indexrelid) FROM pg_index x "
            "WHERE x.indrelid = to_regclass(?) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)", [quote(table)])
        for name, _ in indexes:
            self.execute(f"DROP INDEX {name}")
        yield
        for _, definition in indexes:
            self.execute(definition)

    # -- bulk ------------------------------------------------------------------------------
    def _insert(self, table: str, data: pa.Table, cols: str) -> None:
        sql = f"COPY {quote(table)} ({cols}) FROM STDIN WITH (FORMAT csv)"
        buffer = io.BytesIO()
        pa_csv.write_csv(data, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
        try:
            with self._pg.cursor() as cur, cur.copy(sql) as copy:
                copy.write(buffer.getvalue())
        except psycopg.Error as exc:
            raise self._error(exc, sql) from exc

    def export_table(self, table: Table, target: Path, copy_options: str) -> None:
        """COPY streams the table out as CSV; DuckDB rewrites it in the CDM types and format."""
        columns = ", ".join(quote(c) for c in table.column_names)
        sql = f"COPY (SELECT {columns} FROM {quote(table.name)}) TO STDOUT WITH (FORMAT csv, HEADER)"
        spec = "{" + ", ".join(f"'{c.name}': '{duckdb_type(c)}'" for c in table.columns) + "}"
        with tempfile.TemporaryDirectory(prefix="mercia-export-") as scratch:
            staged = Path(scratch) / f"{table.name}.csv"
            try:
                with staged.open("wb") as f, self._pg.cursor() as cur, cur.copy(sql) as copy:
                    while chunk := copy.read():
                        f.write(chunk)
            except psycopg.Error as exc:
                raise self._error(exc, sql) from exc
            con = duckdb.connect()
            try:
                con.execute(f"COPY (SELECT * FROM read_csv({sql_string(staged)}, header=true, columns={spec}, "
                            f"delim=',', quote='\"', escape='\"', allow_quoted_nulls=false)) "
                            f"TO {sql_string(target)} ({copy_options})")
            finally:
                con.close()
