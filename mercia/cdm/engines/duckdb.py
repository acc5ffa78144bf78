"""The embedded DuckDB store: a file (or ``:memory:``) in this process, Arrow scans for bulk paths."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mercia.cdm.schema import Table
from mercia.cdm.store import Store, StoreError, quote, sql_string


# A container's memory cap (cgroup v2, v1): "max" or a huge number when there is none.
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _memory_bytes() -> int:
    """This machine's memory, or its container's cap where lower (sysconf sees the host's memory)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _limits() -> dict[str, str]:
    """The store's memory cap, spill directory and threads (settings ``duckdb_memory_limit``,
    ``duckdb_temp_directory``, ``duckdb_threads``).  DuckDB's own default cap is 80% of the machine, which leaves too
    little beside it for the rest of a shared server; half is the default here (of the container's
    cap, in a container)."""
    from mercia.config import load_settings

    settings = load_settings()
    total_mb = _memory_bytes() // 2**20
    limits = {"memory_limit": settings.duckdb_memory_limit or f"{total_mb // 2}MiB"}
    if settings.duckdb_temp_directory is not None:
        limits["temp_directory"] = str(settings.duckdb_temp_directory)
    if settings.duckdb_threads is not None:
        limits["threads"] = str(settings.duckdb_threads)
    return limits


class DuckDBStore(Store):
    dialect = "duckdb"
    scripts = True

    def __init__(self, url: str, schema: str | None = None, read_only: bool = False):
        super().__init__(url, schema, read_only)
        path = url.removeprefix("duckdb://").removeprefix("/") if url.startswith("duckdb:///") else url
        if path != ":memory:" and not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._duck = duckdb.connect(path, read_only=read_only, config=_limits())
        except duckdb.Error as exc:
            raise StoreError(f"cannot open DuckDB database {path}: {exc}", engine=self.dialect) from exc
        self._root = self._duck  # sessions are cursors of this connection, whoever opens them
        self._release: Callable[[], None] = self._close_all
        if schema:
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
            self._use_schema()

    def _use_schema(self) -> None:
        if self.schema:
            self.execute(f"SET schema = '{self.schema}'")

    def _close_all(self) -> None:
        self._shared.close()
        self._duck.close()

    def close(self) -> None:
        self._release()

    def _open_session(self) -> DuckDBStore:
        """A cursor is DuckDB's own connection to the same database: separate transactions."""
        child = object.__new__(DuckDBStore)
        Store.__init__(child, self.url, self.schema, self.read_only)
        child._adopt(self)
        child._root = self._root
        child._duck = self._root.cursor()  # not a cursor of a cursor: that dies with its parent
        child._release = child._duck.close
        child._use_schema()
        return child

    @property
    def serialised_writes(self):
        return self._shared.writes

    def _move_counter(self, bump: str, params: list[Any], key: str) -> int:
        """On a cursor of its own in autocommit, one mover at a time: DuckDB aborts a second
        transaction that moves the same row, so movers queue on a lock instead, and the counter
        never joins (and never conflicts through) the caller's transaction."""
        with self._shared.ids:
            if self._shared.allocator is None:
                self._shared.allocator = self._open_session()
            return Store._move_counter(self._shared.allocator, bump, params, key)

    @property
    def duckdb_connection(self) -> duckdb.DuckDBPyConnection:
        return self._duck

    @contextmanager
    def bulk_writes(self, memory_limit: str | None = None) -> Iterator[Store]:
        """A bounded cache keeps a big load within a few GB; appending without keeping insertion
        order (ids carry the order) costs ~15% less CPU.  Both go back to the store's settings after
        (the configured limit, not the displayed value, which is rounded down a little each time)."""
        try:
            if memory_limit:
                self.execute(f"SET memory_limit = {sql_string(memory_limit)}")
            self.execute("SET preserve_insertion_order = false")
            yield self
        finally:
            self.execute(f"SET memory_limit = {sql_string(_limits()['memory_limit'])}")
            self.execute("RESET preserve_insertion_order")

    # -- SQL -------------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        try:
            self._duck.execute(sql, params) if params is not None else self._duck.execute(sql)
        except duckdb.Error as exc:
            raise self._error(exc, sql) from exc

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        try:
            return self._duck.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise self._error(exc, sql) from exc

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        try:
            return self._duck.sql(sql, params=params).to_arrow_table()
        except duckdb.Error as exc:
            raise self._error(exc, sql) from exc

    def _begin(self) -> None:
        self.execute("BEGIN TRANSACTION")

    def _commit(self) -> None:
        self.execute("COMMIT")

    def _rollback(self) -> None:
        self.execute("ROLLBACK")

    def _current_schema_filter(self) -> str:
        return "table_schema = current_schema() AND table_catalog = current_database()"

    @property
    def location(self) -> str:
        return self.url if self.url == ":memory:" else str(Path(self.url.removeprefix("duckdb://")).resolve())

    def compact(self) -> None:
        if not self.in_transaction:
            self.try_execute("CHECKPOINT")

    def cluster(self, table: str, order: Sequence[str]) -> bool:
        """Copied to a temporary table and written back sorted, in one transaction (the ORDER BY on the
        INSERT itself keeps the order even with ``preserve_insertion_order`` off, as in ``bulk_writes``;
        row groups emptied by the DELETE are dropped at the next checkpoint)."""
        staged = f"mercia_cluster_{table}"
        keys = ", ".join(quote(c) for c in order)
        with self.transaction():
            self.create_temp_table(staged, f"SELECT * FROM {quote(table)}")
            self.execute(f"DELETE FROM {quote(table)}")
            self.execute(f"INSERT INTO {quote(table)} SELECT * FROM {quote(staged)} ORDER BY {keys}")
            self.drop_temp_table(staged)
        return True

    def prefix_match(self, column: str, prefix: str) -> tuple[str, list[str]]:
        """Also as a range: on sorted data it lets DuckDB skip row groups (it compares bytes, so
        every continuation of the prefix sorts below the prefix + the last code point)."""
        like, params = super().prefix_match(column, prefix)
        return f"{like} AND {column} >= ? AND {column} < ?", [*params, prefix, prefix + "\U0010ffff"]

    # -- bulk ------------------------------------------------------------------------------
    def _insert(self, table: str, data: pa.Table, cols: str) -> None:
        """Through a relation over the Arrow table, not ``register``: a registered view is a catalog
        entry, and one dropped inside a transaction (with the Arrow table it holds) lives until
        COMMIT, so a chunked load in one transaction kept every chunk's Arrow data (docs/metabolomics.md)."""
        sql = f"INSERT INTO {quote(table)} ({cols}) SELECT {cols} FROM arrow_in"
        try:
            self._duck.from_arrow(data).query("arrow_in", sql)
        except duckdb.Error as exc:
            raise self._error(exc, sql) from exc

    def export_table(self, table: Table, target: Path, copy_options: str) -> None:
        columns = ", ".join(quote(c) for c in table.column_names)
        self.execute(f"COPY (SELECT {columns} FROM {quote(table.name)}) TO {sql_string(target)} ({copy_options})")
