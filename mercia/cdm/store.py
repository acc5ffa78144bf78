"""One store for every capability: an OMOP CDM on embedded DuckDB, a PostgreSQL server or Spark.

Capabilities talk SQL to a ``Store`` and never to a driver.  ``Store(url)`` (or ``connect(url)``)
returns the engine's subclass (``mercia.cdm.engines``), which owns everything that differs by
engine: connection, placeholder style (callers always write ``?``), schema placement,
transactions, result types and the bulk paths.  Every driver error surfaces as ``StoreError``
carrying the failing SQL in ``.sql`` (never in the message, which users may see).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import pyarrow as pa

from mercia.cdm.schema import CDM_TABLES, Column, Table

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StoreError(Exception):
    """A problem with the store that the user can act on; the message says what and where.

    ``sql`` holds the statement that failed and ``engine`` the store's dialect, for logs and
    developers; the message never includes the SQL, so it can be shown to a user."""

    def __init__(self, message: str, sql: str | None = None, engine: str | None = None):
        super().__init__(message)
        self.sql, self.engine = sql, engine


class NamedLocks:
    """One lock per name, made at its first use (``Store.exclusive``: one per cohort id claimed)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())


class _Shared:
    """What a store and all its sessions share: the lock that makes id allocation atomic in
    this process, and the lock that serialises governance writes where the engine aborts
    concurrent writers instead of queueing them (DuckDB)."""

    def __init__(self) -> None:
        self.ids = threading.Lock()
        self.id_table_ready = False
        self.writes = threading.RLock()
        self.allocator: Store | None = None  # DuckDB: a connection of its own for allocation
        self.named = NamedLocks()  # ``Store.exclusive``'s

    def close(self) -> None:
        if self.allocator is not None:
            self.allocator.close()
            self.allocator = None


@dataclass
class BadValue:
    """The first value of a load that cannot go into its CDM column: part file name, row (1-based),
    column, and the value as text (None: empty in a required column)."""

    file_name: str
    row: int
    column: str
    value: str | None


@dataclass
class ParquetLoad:
    """What an engine that reads Parquet itself appended: rows, NULLs in required ``*_concept_id``
    columns written as 0 (per column), and the first bad value, if any (the caller then rolls back)."""

    rows: int
    zeroed_concept_ids: dict[str, int]
    bad: BadValue | None = None


class StoreUnavailable(StoreError):
    """The database cannot be reached now (restarting, network, every connection busy): nothing
    was done, and the same request may succeed in a moment (HTTP 503 with Retry-After)."""


def quote(identifier: str) -> str:
    """Quote an identifier for every engine here (names such as ``offset`` are reserved)."""
    if not _IDENTIFIER.match(identifier):
        raise StoreError(f"not a valid SQL identifier: {identifier!r}")
    return f'"{identifier}"'


def duckdb_type(column: Column) -> str:
    """The column's type as DuckDB spells it (DuckDB parses files for every engine)."""
    return "DOUBLE" if column.sql_type == "DOUBLE PRECISION" else column.sql_type


def engine_class(url: str) -> type[Store]:
    """The ``Store`` subclass serving ``url``."""
    if url.startswith(("postgresql://", "postgres://")):
        from mercia.cdm.engines.postgres import PostgresStore

        return PostgresStore
    if url.startswith(("spark://", "sc://")):
        from mercia.cdm.engines.spark import SparkStore

        return SparkStore
    from mercia.cdm.engines.duckdb import DuckDBStore

    return DuckDBStore


def connect(url: str, schema: str | None = None, read_only: bool = False) -> Store:
    """Open the store at ``url``: a DuckDB path (or ``:memory:``, ``duckdb:///path``),
    ``postgresql://...``, ``spark://local[N]?warehouse=DIR`` or ``sc://HOST:PORT``."""
    return engine_class(str(url))(str(url), schema=schema, read_only=read_only)


class Store(ABC):
    """A connection to one OMOP CDM schema.

    ``Store(url, schema=None, read_only=False)`` returns the engine's subclass (see ``connect``).
    ``schema`` places the CDM in a named schema (created if missing), which is how tests isolate
    themselves on a shared server.
    """

    dialect: ClassVar[str]  # sqlglot's name for the engine's SQL
    wants_indexes: ClassVar[bool] = False  # B-tree indexes pay off (row stores), not on column stores
    savepoints: ClassVar[bool] = False  # a refused statement can be undone alone inside a transaction
    scripts: ClassVar[bool] = False  # ``execute_script`` sends the statements as one call, unsplit
    # Why the engine cannot keep Mercia's own tables (None: it can).  Those tables (governance, ingestion,
    # federation) need row updates, keys and rollback; the CDM, cohort and analysis tables do not.
    no_row_transactions: ClassVar[str | None] = None

    def __new__(cls, url: str | None = None, *args: Any, **kwargs: Any) -> Self:
        return super().__new__(engine_class(str(url)) if cls is Store else cls)

    def __init__(self, url: str, schema: str | None = None, read_only: bool = False):
        self.url, self.schema, self.read_only = url, schema, read_only
        self._depth = 0  # nesting of transaction()
        self._doomed = False  # an inner transaction failed: the outer one must roll back
        self._shared = _Shared()  # replaced by the parent's in a session (see ``_adopt``)

    def require_row_transactions(self, purpose: str) -> None:
        """Refuse, naming what the engine cannot do, before ``purpose`` writes Mercia's own tables."""
        if self.no_row_transactions:
            raise StoreError(f"{purpose} needs row-level transactions, which a {self.dialect} store lacks: "
                             f"{self.no_row_transactions}. Use DuckDB or PostgreSQL for it; on {self.dialect}, "
                             "run cohorts, analyses and the DQ report from the command line "
                             "(mercia cohort run, mercia analyse, mercia dq report)", engine=self.dialect)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | None = None, schema: str | None = None, read_only: bool = False) -> Store:
        """Open the store at ``url``, or the configured default (see ``mercia.config``)."""
        if url is None:
            from mercia.config import load_settings

            url = load_settings().db
        return connect(str(url), schema=schema, read_only=read_only)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r}, schema={self.schema!r})"

    @contextmanager
    def session(self) -> Iterator[Store]:
        """A store of its own on the same database, for one request or job: its own connection
        (DuckDB cursor, pooled PostgreSQL connection, reused Spark session), its own transactions, no
        shared lock.  Safe to use from another thread than the parent store's."""
        child = self._open_session()
        try:
            yield child
        finally:
            child.close()

    @abstractmethod
    def _open_session(self) -> Store: ...

    @contextmanager
    def bulk_writes(self, memory_limit: str | None = None) -> Iterator[Store]:
        """Engine settings for a long series of bulk inserts, restored afterwards (none by default;
        DuckDB bounds its cache to ``memory_limit`` and stops keeping insertion order)."""
        yield self
    def _adopt(self, parent: Store) -> None:
        """Make this new session share ``parent``'s locks and allocator."""
        self._shared = parent._shared

    @contextmanager
    def exclusive(self, name: str, reads: Sequence[str] = ()) -> Iterator[None]:
        """Run the block while no other block ``exclusive(name)`` on this database runs: a
        check-then-write (claiming a cohort id) where no UNIQUE constraint refuses the second writer;
        the block sees the latest rows of the tables it ``reads``.  Here across the sessions of this
        store in this process; Spark also across its clients."""
        with self._shared.named(name):
            yield

    @property
    def serialised_writes(self) -> threading.RLock | None:
        """Held by governance write transactions on engines that abort a concurrent writer of
        the same row rather than make it wait (DuckDB); None where the engine queues them."""
        return None

    # -- ids -------------------------------------------------------------------------------
    def allocate_ids(self, table: str, column: str, count: int = 1, start: int = 1) -> int:
        """Reserve ``count`` consecutive new ids for ``table.column`` and return the first.

        Atomic across sessions (and, on PostgreSQL, processes): one ``UPDATE ... RETURNING`` moves
        a counter row of ``mercia_id_block``, never below the column's current maximum, so rows
        written with ids of their own are stepped over.  On PostgreSQL the counter moves inside the
        caller's transaction (others wait for it); on DuckDB on a connection of its own (gaps, no waits)."""
        bump = (f"UPDATE mercia_id_block SET last_id = GREATEST(last_id, ?, (SELECT COALESCE(MAX({quote(column)}), 0) "
                f"FROM {quote(table)})) + ? WHERE name = ? RETURNING last_id")
        key = f"{table}.{column}"
        return int(self._move_counter(bump, [start - 1, count, key], key)) - count + 1

    def _move_counter(self, bump: str, params: list[Any], key: str) -> int:
        """Run the counter ``bump`` on this connection (creating the table and row on first use);
        where the engine makes a concurrent mover of the row wait (PostgreSQL row locks)."""
        if not self._shared.id_table_ready:
            self._create_id_table()
            self._shared.id_table_ready = True
        last = self.query_one(bump, params)
        if last is None:
            self.execute("INSERT INTO mercia_id_block (name, last_id) VALUES (?, 0) ON CONFLICT DO NOTHING", [key])
            last = self.query_one(bump, params)
        return last

    def _create_id_table(self) -> None:
        """Create ``mercia_id_block`` if missing, committed at once (other sessions need it now)."""
        from mercia.cdm.extensions import ID_BLOCK_DDL

        self.execute(ID_BLOCK_DDL)

    # -- SQL -------------------------------------------------------------------------------
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement (or, without params, a script of several) for its effect.
        Parameters are ``?`` on every engine."""

    def execute_script(self, statements: Sequence[str]) -> None:
        """Run ``statements`` in order for their effect.  Engines that take a script run them as one
        (``scripts``): a call per statement is a fixed cost, as large as a small query's own work.  The
        price: a failure's ``StoreError.sql`` is then the whole script (the drivers do not say which
        statement failed), and the transaction is rolled back either way."""
        if self.scripts:
            if statements:
                self.execute(";\n".join(statements))
            return
        for statement in statements:
            self.execute(statement)

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]: ...

    @abstractmethod
    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """The result as Arrow with the engine's column types, also when it has no rows."""

    def query_one(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def query_dicts(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        return self.query_arrow(sql, params).to_pylist()

    def try_execute(self, sql: str) -> bool:
        """Run an optional statement (say, creating an extension); False if the engine refused.

        With ``savepoints`` a refusal does not spoil an open transaction; without, the engine
        has aborted it, so the transaction is doomed (rolled back at its end, see ``transaction``)."""
        try:
            self.execute(sql)
        except StoreError:
            self._doomed = self._doomed or self.in_transaction
            return False
        return True

    def _error(self, exc: Exception, sql: str, action: str = "could not run a statement") -> StoreError:
        """A driver error as StoreError: the driver's first line for people, the SQL attached."""
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return StoreError(f"{self.dialect} {action}: {first}", sql=sql, engine=self.dialect)

    # -- transactions ----------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """All or nothing: everything inside commits together or not at all.

        Nested use joins the outer transaction, so a capability can be transactional on its own
        and inside a larger load.  An error escaping a nested block dooms the whole transaction:
        even if an outer block catches it, the outer block rolls back and raises ``StoreError``,
        so nothing is ever half-written.
        """
        self._depth += 1
        if self._depth > 1:
            try:
                yield self
            except BaseException:
                self._doomed = True
                raise
            finally:
                self._depth -= 1
            return
        self._doomed = False
        try:
            self._begin()
            try:
                yield self
            except BaseException:
                self._rollback()
                raise
            if self._doomed:
                self._rollback()
                raise StoreError("an inner step of this transaction failed; nothing was written",
                                 engine=self.dialect)
            self._commit()
        finally:
            self._depth = 0
            self._doomed = False

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    def snapshot_reads(self) -> None:
        """Make the open transaction read one consistent moment however long it runs (a long
        export).  Call it first thing in the transaction.  DuckDB's transactions already are
        snapshots; PostgreSQL's default (read committed) is not."""

    # -- engine behaviour, asked for by intent -----------------------------------------------
    @property
    def location(self) -> str:
        """Where this database lives, the same text for every connection to it (a resolved file
        path, a server URL): a key for files kept about the store, such as audit anchors."""
        return self.url

    def forbid_changes(self, table: str) -> bool:
        """Make the engine itself refuse UPDATE, DELETE and TRUNCATE on ``table`` (defence in depth
        for append-only logs).  False where the engine cannot (DuckDB, Spark): the caller's own
        checks are then all there is."""
        return False

    def lookup_index(self, table: str, column: str, prefix: bool = False) -> None:
        """An index for equality lookups on ``column`` (with ``prefix``, also ``LIKE 'x%'``) where
        the engine needs one.  None by default: DuckDB's zone maps over sorted data do the work."""

    def compact(self) -> None:
        """Outside a transaction, move recent writes into the engine's compressed, zone-mapped
        storage (DuckDB ``CHECKPOINT``); nothing elsewhere.  Failure is harmless."""

    def cluster(self, table: str, order: Sequence[str]) -> bool:
        """Rewrite ``table`` with its rows in ``order`` where the engine skips storage blocks by their
        min/max (DuckDB's zone maps), so a filter or join on the leading column reads only its slice.
        False elsewhere (nothing done): PostgreSQL and Spark read the same rows either way."""
        return False

    def create_temp_table(self, name: str, select_sql: str, params: Sequence[Any] | None = None) -> None:
        """A table of this session holding ``select_sql``'s rows, computed now; gone with the session."""
        from mercia.cdm.dialect import TemporaryTable

        self.execute(TemporaryTable(name, select_sql, self.dialect), params)

    def drop_temp_table(self, name: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {quote(name)}")

    def temp_table_from_arrow(self, name: str, columns: str, data: pa.Table) -> None:
        """A table of this session (``columns``: its column definitions) holding ``data``, replacing one of
        that name, with the statistics the planner needs (``analyse_new_table``)."""
        self.drop_temp_table(name)
        self.execute(f"CREATE TEMP TABLE {quote(name)} ({columns})")
        self.insert_arrow(name, data)
        self.analyse_new_table(name)

    def analyse_new_table(self, name: str) -> None:
        """Statistics for a table just made and filled (a temporary table, or one built inside a transaction),
        where the engine's planner needs them before its next statement reads it (nothing by default: DuckDB
        keeps its own as it writes)."""

    def prefix_match(self, column: str, prefix: str) -> tuple[str, list[str]]:
        """A condition (and its parameters) for ``column`` starting with ``prefix`` taken literally."""
        return f"{column} LIKE ? {LIKE_ESCAPE}", [like_escape(prefix) + "%"]

    # -- schema ----------------------------------------------------------------------------
    def _current_schema_filter(self) -> str:
        """The WHERE clause on information_schema placing a table in this store's schema."""
        return "table_schema = current_schema()"

    def table_exists(self, name: str) -> bool:
        sql = f"SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND {self._current_schema_filter()}"
        return bool(self.query_one(sql, [name]))

    def tables_exist(self, names: Sequence[str]) -> bool:
        """Whether every table of ``names`` exists: one statement naming them all, which the engine
        refuses if one is missing (~0.3 ms on DuckDB, against ~2 ms per catalog query).  A refusal
        inside a transaction without ``savepoints`` spoils it (``try_execute``): ask outside one."""
        return self.try_execute(f"SELECT 1 FROM {', '.join(quote(n) for n in names)} WHERE 1 = 0")

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, data type) of a table's columns as the engine reports them, in order."""
        sql = ("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
               f"AND {self._current_schema_filter()} ORDER BY ordinal_position")
        return [(r[0], r[1]) for r in self.query(sql, [table])]

    def column_type(self, column: Column) -> str:
        """The engine's SQL type for a CDM column."""
        return column.sql_type

    def create_table_sql(self, table: Table, enforce_primary_key: bool = False) -> list[str]:
        cols = [f"{quote(c.name)} {self.column_type(c)}{' NOT NULL' if c.required else ''}" for c in table.columns]
        if enforce_primary_key and table.primary_key:
            cols.append(f"PRIMARY KEY ({quote(table.primary_key)})")
        statements = [f"CREATE TABLE IF NOT EXISTS {quote(table.name)} (\n  " + ",\n  ".join(cols) + "\n)"]
        if self.wants_indexes:
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
            self._allow_spec_nulls()

    def _allow_spec_nulls(self) -> None:
        """Drop NOT NULL where a store made before the spec allowed NULL still has it (person.year_of_birth,
        docs/cdm.md), so an existing store takes the same rows as a new one."""
        nullable = {(t.name, c.name) for t in CDM_TABLES.values() for c in t.columns if not c.required}
        for table, column in self.query("SELECT table_name, column_name FROM information_schema.columns "
                                        f"WHERE is_nullable = 'NO' AND {self._current_schema_filter()}"):
            if (table, column) in nullable:
                self.execute(f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)} DROP NOT NULL")

    def table_counts(self, tables: Sequence[str] | None = None) -> dict[str, int]:
        """Row counts of the CDM tables that exist, in one round trip."""
        names = [t for t in (tables or CDM_TABLES) if self.table_exists(t)]
        if not names:
            return {}
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {quote(t)}" for t in names)
        return {name: int(n) for name, n in self.query(sql)}

    def truncate(self, table: str) -> None:
        """Remove every row of ``table`` (inside the current transaction, if any)."""
        self.execute(f"DELETE FROM {quote(table)}")

    @contextmanager
    def indexes_deferred(self, table: str) -> Iterator[None]:
        """For a block that fills an emptied ``table``: its indexes built once after it, where an engine
        keeps any (``wants_indexes``)."""
        yield

    # -- bulk ------------------------------------------------------------------------------
    def insert_arrow(self, table: str, data: pa.Table | pa.RecordBatchReader) -> int:
        """Append an Arrow table by column name through the engine's bulk path; returns rows."""
        if isinstance(data, pa.RecordBatchReader):
            data = data.read_all()
        if data.num_rows:
            self._insert(table, data, ", ".join(quote(c) for c in data.column_names))
        return data.num_rows

    @abstractmethod
    def _insert(self, table: str, data: pa.Table, columns: str) -> None:
        """Append ``data`` (at least one row) to ``table``; ``columns`` lists its quoted names."""

    def load_parquet(self, table: Table, groups: Sequence[Sequence[Path]], sources: dict[str, str]) -> ParquetLoad | None:
        """Append Parquet files to a CDM table with the engine reading them itself (no rows through
        Python), converting each column to its CDM type by the loader's rules (``mercia.cdm.loader``).
        ``groups`` are files sharing one schema; ``sources`` maps each CDM column present to its name
        in the files.  None where the engine has no such path: the loader then streams Arrow batches."""
        return None

    def export_table(self, table: Table, target: Path, copy_options: str) -> None:
        """Write a CDM table to ``target`` with DuckDB's ``COPY ... (copy_options)`` (the one
        file writer for every engine): here through an Arrow read of the table."""
        import duckdb

        columns = ", ".join(quote(c) for c in table.column_names)
        data = self.query_arrow(f"SELECT {columns} FROM {quote(table.name)}")
        con = duckdb.connect()
        try:
            con.register("_mercia_export", data)
            con.execute(f"COPY (SELECT * FROM _mercia_export) TO {sql_string(target)} ({copy_options})")
        finally:
            con.close()


LIKE_ESCAPE = "ESCAPE '!'"


def like_escape(text: str) -> str:
    """``text`` taken literally inside a LIKE pattern written with ``LIKE_ESCAPE`` (``!``: a
    backslash would itself need escaping in Spark's string literals)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def sql_string(value: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def redact(url: str) -> str:
    """Hide a password in a connection URL before it reaches a message or a log."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
