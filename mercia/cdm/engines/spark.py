"""The Spark store: an embedded local session (``spark://local[N]?warehouse=DIR``) or a cluster reached
through Spark Connect (``sc://HOST:PORT``).  Tables are Parquet in the warehouse; SQL is Spark SQL with ANSI double-quoted identifiers, so ``quote()`` works unchanged.

Spark has no rollback.  Instead every write of ``insert_arrow``, ``load_parquet`` and
``truncate`` inside ``transaction()`` goes to a staging table per target; an error drops the staging
tables, so a failed load leaves the previous tables intact.  The commit first writes a swap journal
(which tables replace which: the commit point), then renames each old table aside and its staging
table in, then drops the old ones and the journal (metadata only); a swap cut short between tables is
finished by the next store opened on the database, so the tables change all together or not at all.  Other SQL writes (``INSERT ... SELECT``) apply at once, and
reads inside the transaction see the tables as they were before it.  ``DELETE`` on a Parquet table (which Spark refuses) is rewritten
to keep the other rows through a staging table.

Sessions (one per HTTP request or job) are Spark sessions set up once and reused: a closed session
goes back to an idle list of its catalog (``_Catalog``).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pyarrow as pa
import sqlglot
from sqlglot import exp

from mercia.cdm.dialect import TemporaryTable
from mercia.cdm.schema import Column, Table
from mercia.cdm.store import BadValue, NamedLocks, ParquetLoad, Store, StoreError, quote

_SPARK_TYPES = {"BIGINT": "BIGINT", "DATE": "DATE", "TIMESTAMP": "TIMESTAMP_NTZ",
                "DOUBLE PRECISION": "DOUBLE", "VARCHAR": "STRING"}
# Session settings every Spark store relies on (also sent to a Spark Connect server).
_SESSION_CONF = {
    "spark.sql.ansi.enabled": "true",
    "spark.sql.ansi.doubleQuotedIdentifiers": "true",  # "name" is an identifier, as on every other engine
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.timestampType": "TIMESTAMP_NTZ",  # CDM datetimes carry no time zone
}
_STATEMENT_END = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|;", re.DOTALL)
_local_lock = threading.Lock()
_SWAP_JOURNAL = "_mercia_swap_"  # tables recording a commit's swap until it is complete
# Held from a commit's journal to its end and while an opening store (or session, after a commit failed
# midway) finishes cut-short swaps: it must not take a live swap for a crashed one.
_swap_lock = threading.Lock()
_INTERNAL = "_mercia_"  # prefix of the store's own tables (staging tables, swap journals, locks)
_LOCK_WAIT_SECONDS = 120
_IDLE_SESSIONS = 8  # kept per database for reuse; more at once are made for the moment and let go


class _Catalog:
    """What the stores and sessions of this process on one Spark catalog (the local warehouse, or one
    Spark Connect server) share: idle sessions to reuse, swaps cut short in this process, and the
    in-process half of ``exclusive``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: dict[tuple[str, str | None], list[SparkStore]] = {}  # (url, schema) -> sessions
        self.cut_short: list[str] = []  # swap journals of commits that failed midway in this process
        self.named = NamedLocks()  # ``exclusive``'s, across this process's stores on the catalog


_catalogs: dict[str, _Catalog] = {}
_catalogs_lock = threading.Lock()


def _catalog(url: str) -> _Catalog:
    """The process's ``_Catalog`` for ``url``: one for the local session (one warehouse per process),
    one per Spark Connect server."""
    key = url if url.startswith("sc://") else "local"
    with _catalogs_lock:
        return _catalogs.setdefault(key, _Catalog())


def split_statements(script: str) -> list[str]:
    """A script's statements (Spark runs one per call); a ``;`` in a literal or comment is text."""
    out, start = [], 0
    for m in _STATEMENT_END.finditer(script):
        if m.group(0) == ";":
            out.append(script[start:m.start()])
            start = m.end()
    out.append(script[start:])
    return [s.strip() for s in out if s.strip()]


# Settings a ``spark://`` URL may not override: the warehouse and catalog are the ``warehouse`` option's,
# and the session settings are what makes Spark read Mercia's SQL as every other engine does.
_FIXED_CONF = {"spark.sql.warehouse.dir", "spark.hadoop.javax.jdo.option.ConnectionURL", *_SESSION_CONF}


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``spark://local[2]?warehouse=/x`` -> (``local[2]``, {warehouse: /x}).  Options named ``spark.*``
    are Spark settings for the local session (say ``spark.sql.adaptive.enabled=false``)."""
    rest = url.removeprefix("spark://")
    master, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = {k for k in options if not k.startswith("spark.")} - {"warehouse", "format", "memory", "partitions"}
    if not re.fullmatch(r"local(\[(\d+|\*)\])?", master) or unknown or _FIXED_CONF & set(options):
        raise StoreError(f"not a Spark store URL: {url!r}; use spark://local[N]?warehouse=DIR"
                         "[&memory=2g][&partitions=N][&spark.SETTING=VALUE] or sc://HOST:PORT "
                         f"(Mercia sets {', '.join(sorted(_FIXED_CONF))} itself)", engine="spark")
    return master, options


def _local_session(master: str, options: dict[str, str]):
    """The process's one local Spark session (a JVM holds one SparkContext).  Its catalog is an
    embedded Derby metastore in the warehouse, which one process at a time may open."""
    from pyspark.sql import SparkSession

    warehouse = Path(options.get("warehouse", "spark-warehouse")).resolve()
    with _local_lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            current = active.conf.get("spark.sql.warehouse.dir", "")
            if Path(current.removeprefix("file:")).resolve() != warehouse:
                raise StoreError(f"this process already runs Spark with warehouse {current}; "
                                 f"one process serves one local warehouse", engine="spark")
            return active
        warehouse.mkdir(parents=True, exist_ok=True)
        builder = (SparkSession.builder.master(master).appName("mercia")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.warehouse.dir", str(warehouse))
                   .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={warehouse} "
                           + options.get("spark.driver.extraJavaOptions", ""))
                   # the table catalog lives beside the tables, so the next process finds them
                   .config("spark.hadoop.javax.jdo.option.ConnectionURL",
                           f"jdbc:derby:;databaseName={warehouse / 'metastore_db'};create=true")
                   .enableHiveSupport()
                   # Each session caches a table's file listing; a table another session rewrote (a DELETE
                   # is an overwrite here) then names deleted files.  Sessions of one server must see each
                   # other's writes, so every statement lists the files afresh: ~40 ms of planning per table
                   # read (measured, 2 cores; a cohort reading ~10 tables pays ~0.5 s).  Refreshing only the
                   # tables another session rewrote would keep the cache (not done).
                   .config("spark.sql.filesourceTableRelationCacheSize", "0")
                   .config("spark.sql.shuffle.partitions", options.get("partitions", "4"))
                   .config("spark.driver.memory", options.get("memory", "2g")))
        for key, value in options.items():
            if key.startswith("spark.") and key != "spark.driver.extraJavaOptions":
                builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session


def _driver_errors() -> tuple[type[BaseException], ...]:
    from pyspark.errors import PySparkException

    errors: list[type[BaseException]] = [PySparkException]
    try:
        from py4j.protocol import Py4JError

        errors.append(Py4JError)
    except ImportError:  # Spark Connect clients need no py4j
        pass
    return tuple(errors)


_CONNECT_MODE = "SPARK_CONNECT_MODE_ENABLED"


class SparkStore(Store):
    dialect = "spark"
    no_row_transactions = ("its Parquet tables take no UPDATE (so no UPDATE … RETURNING to allocate ids), no "
                           "PRIMARY KEY or UNIQUE constraint, and SQL writes cannot be rolled back")

    def __init__(self, url: str, schema: str | None = None, read_only: bool = False):
        super().__init__(url, schema, read_only)
        try:
            import pyspark
        except ImportError as exc:
            raise StoreError("the Spark engine needs pyspark: pip install 'mercia[spark]' (and a Java runtime)",
                             engine=self.dialect) from exc
        self._errors = _driver_errors()
        self._catalog = _catalog(url)
        self._start_session_state()
        if url.startswith("sc://"):
            self.table_format = "parquet"
            self._root = None
            # pyspark marks the whole process as a Connect client (an environment variable) on the first
            # remote session; close() undoes that so local sessions in the same process keep working.
            self._set_connect_mode = _CONNECT_MODE not in os.environ
        else:
            master, options = parse_url(url)
            self.table_format = options.get("format", "parquet")
            if self.table_format != "parquet":
                raise StoreError(f"Spark table format {self.table_format!r} is not supported; tables are Parquet. "
                                 f"Delta Lake (delta-spark) does not support the pyspark {pyspark.__version__} this "
                                 "engine runs on yet (docs/cdm.md, Engines)", engine=self.dialect)
            self._root = _local_session(master, options)
        self._spark = self._new_spark_session()
        if schema:
            self.execute(f"CREATE DATABASE IF NOT EXISTS {quote(schema)}")
            self.execute(f"USE {quote(schema)}")
        self._finish_interrupted_swaps()

    def _start_session_state(self) -> None:
        self._temp_views: set[str] = set()
        self._staged: dict[str, str] = {}  # table -> staging table, inside a transaction
        self._pooled = False  # a session: close() puts it back among the idle ones

    def _new_spark_session(self):
        """A Spark session of its own (current database, temporary views, settings)."""
        if self._root is None:
            from pyspark.sql import SparkSession

            try:
                spark = SparkSession.builder.remote(self.url).create()
            except self._errors as exc:
                raise StoreError(f"cannot reach Spark Connect at {self.url}: {exc}", engine=self.dialect) from exc
        else:
            spark = self._root.newSession()
        for key, value in _SESSION_CONF.items():
            spark.conf.set(key, value)
        return spark

    def close(self) -> None:
        """A session goes back to the idle ones (its temporary views dropped).  A root store lets its
        database's idle sessions go; on Spark Connect it ends them and its own session (a local Spark
        session lives as long as the process)."""
        if self._pooled:
            self._put_back()
            return
        with self._catalog.lock:
            idle = self._catalog.idle.pop((self.url, self.schema), [])
        if self._root is None:
            for spark in [self._spark, *(session._spark for session in idle)]:
                spark.stop()
            if self._set_connect_mode:
                os.environ.pop(_CONNECT_MODE, None)

    def _open_session(self) -> SparkStore:
        """An idle session of this database, or a new one: a new Spark session, its settings and the
        database (which this store created), nothing else."""
        self._finish_swaps_cut_short()
        with self._catalog.lock:
            idle = self._catalog.idle.get((self.url, self.schema))
            session = idle.pop() if idle else None
        if session is None:
            session = SparkStore.__new__(SparkStore)
            Store.__init__(session, self.url, self.schema, self.read_only)
            session.__dict__.update({key: value for key, value in self.__dict__.items() if key in (
                "_errors", "_catalog", "table_format", "_root", "_set_connect_mode")})
            session._start_session_state()
            session._spark = session._new_spark_session()
            if self.schema:
                session.execute(f"USE {quote(self.schema)}")
        session._pooled = True
        return session

    def _put_back(self) -> None:
        if self.in_transaction or self._staged:
            return  # left mid-transaction (cannot happen through ``transaction()``): not reused
        for view in list(self._temp_views):
            self.drop_temp_table(view)
        with self._catalog.lock:
            idle = self._catalog.idle.setdefault((self.url, self.schema), [])
            kept = len(idle) < _IDLE_SESSIONS
            if kept:
                idle.append(self)
        if not kept and self._root is None:
            self._spark.stop()

    @property
    def spark(self):
        """The ``pyspark.sql.SparkSession`` (classic or Connect), for Spark-only paths."""
        return self._spark

    # -- SQL -------------------------------------------------------------------------------
    def _sql(self, sql: str, params: Sequence[Any] | None = None):
        try:
            return self._spark.sql(sql, args=list(params)) if params is not None else self._spark.sql(sql)
        except self._errors as exc:
            raise self._error(exc, sql) from exc

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        if isinstance(sql, TemporaryTable):  # built from its parts, not from the text
            self.create_temp_table(sql.name, sql.query, params)
            return
        self._run([sql] if params is not None else split_statements(sql), params)

    def execute_script(self, statements: Sequence[str]) -> None:
        """One job per statement (Spark takes no scripts), but consecutive DELETEs share the job that
        finds which of them match a row (``_delete``): a cohort's run clears five tables."""
        batch: list[str] = []
        for statement in statements:
            if isinstance(statement, TemporaryTable):
                self._run(batch, None)
                batch = []
                self.execute(statement)
            else:
                batch += split_statements(statement)
        self._run(batch, None)

    def _run(self, statements: list[str], params: Sequence[Any] | None) -> None:
        deletes: list[str] = []
        for statement in statements:
            if statement[:6].upper() == "DELETE":
                deletes.append(statement)
                continue
            self._delete(deletes, params)
            deletes = []
            self._collect(statement, params)
        self._delete(deletes, params)

    def _collect(self, sql: str, params: Sequence[Any] | None) -> list:
        df = self._sql(sql, params)
        try:
            return df.collect()
        except self._errors as exc:
            raise self._error(exc, sql) from exc

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        return [tuple(r) for r in self._collect(sql, params)]

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        df = self._sql(sql, params)
        try:
            return df.toArrow()
        except self._errors as exc:
            raise self._error(exc, sql) from exc

    def create_temp_table(self, name: str, select_sql: str, params: Sequence[Any] | None = None) -> None:
        """Spark has no temporary tables: a temporary view over the rows computed now (a local
        checkpoint, in the session's memory or local disk, no files in the warehouse and no catalog
        entry; a cached view would be recomputed once its source tables change)."""
        rows = self._sql(select_sql, params)
        try:
            rows.localCheckpoint(eager=True).createOrReplaceTempView(name)
        except self._errors as exc:
            raise self._error(exc, select_sql) from exc
        self._temp_views.add(name.lower())

    def drop_temp_table(self, name: str) -> None:
        self.execute(f"DROP VIEW IF EXISTS {quote(name)}")
        self._temp_views.discard(name.lower())

    def _delete(self, statements: list[str], params: Sequence[Any] | None) -> None:
        """``DELETE FROM t WHERE c`` on Parquet: one query asks which of the statements match a row (the
        distinct statement numbers of the matching rows: two jobs, where a ``LIMIT 1`` per table took
        one per table and one more); for each that does, the rows where c is not true, checkpointed,
        overwrite the table (Spark reads no file of the table it overwrites then).  Deletes commute, so
        their order does not matter."""
        targets: list[tuple[exp.Table, exp.Expression]] = []
        for sql in statements:
            try:
                tree = sqlglot.parse_one(sql, read="spark")
            except sqlglot.errors.ParseError as exc:
                raise self._error(exc, sql) from exc
            table = tree.this  # with its schema, if named: DELETE FROM other.t is not this schema's t
            where = tree.args.get("where")
            if where is None and not table.db:
                self.truncate(table.name)
            else:
                targets.append((table, where.this if where is not None else exp.true()))
        if not targets:
            return
        matching = " UNION ALL ".join(
            exp.select(exp.alias_(str(i), "k")).from_(table.copy()).where(condition.copy()).sql(dialect="spark")
            for i, (table, condition) in enumerate(targets))
        probe = f"SELECT DISTINCT k FROM ({matching}) AS matching"
        for i in sorted(row[0] for row in self._collect(probe, params)):
            table, condition = targets[i]
            keep = exp.select("*").from_(table.copy()).where(
                exp.not_(exp.func("coalesce", condition.copy(), exp.false()))).sql(dialect="spark")
            view = f"_mercia_keep_{uuid.uuid4().hex[:12]}"
            self.create_temp_table(view, keep, params)
            try:
                self._collect(f"INSERT OVERWRITE TABLE {table.sql(dialect='spark')} SELECT * FROM {quote(view)}", None)
            finally:
                self.drop_temp_table(view)

    # -- transactions: staging tables swapped in at commit ---------------------------------
    def _begin(self) -> None:
        self._staged = {}

    def _stage(self, table: str, keep_rows: bool) -> str:
        if table not in self._staged:
            stage = f"_mercia_stage_{uuid.uuid4().hex[:12]}"
            self._collect(f"CREATE TABLE {quote(stage)} USING {self.table_format} AS SELECT * FROM {quote(table)}"
                          + ("" if keep_rows else " WHERE false"), None)
            self._staged[table] = stage
        return self._staged[table]

    def _commit(self) -> None:
        staged, self._staged = self._staged, {}
        if not staged:
            return
        journal = f"{_SWAP_JOURNAL}{uuid.uuid4().hex[:12]}"
        pairs = ", ".join(f"('{table}', '{stage}')" for table, stage in staged.items())
        with _swap_lock:
            try:
                self._collect(f"CREATE TABLE {quote(journal)} USING parquet AS SELECT * FROM VALUES {pairs} AS "
                              "swap(target, stage)", None)
            except StoreError:
                self._staged = staged
                self._rollback()  # before the commit point: nothing changes
                raise
            try:
                self._finish_swap(journal)
            except StoreError as exc:
                self._catalog.cut_short.append(journal)
                raise StoreError(f"the commit of {', '.join(staged)} was cut short ({exc}); it is recorded in "
                                 f"{journal} and finished when a session or the store is next opened", exc.sql,
                                 self.dialect) from exc

    def _finish_swap(self, journal: str) -> None:
        """Carry out the swap ``journal`` records: each old table renamed aside, its staging table
        renamed in, then the old tables and the journal dropped.  Every step is skipped once done,
        so a swap cut short anywhere is finished by running this again."""
        pairs = self.query(f"SELECT target, stage FROM {quote(journal)}")
        for target, stage in pairs:
            if self.table_exists(stage):
                if self.table_exists(target):
                    self._collect(f"ALTER TABLE {quote(target)} RENAME TO {quote(stage + '_old')}", None)
                self._collect(f"ALTER TABLE {quote(stage)} RENAME TO {quote(target)}", None)
        for _, stage in pairs:
            self._collect(f"DROP TABLE IF EXISTS {quote(stage + '_old')}", None)
        self._collect(f"DROP TABLE {quote(journal)}", None)

    def _finish_interrupted_swaps(self) -> None:
        """On open: finish the commits a crash cut short (their journals are still there).  Not one
        this process is carrying out now (``_swap_lock``); another process's commit on a shared
        (Spark Connect) catalog is not told apart."""
        with _swap_lock:
            for row in self._collect(f"SHOW TABLES LIKE '{_SWAP_JOURNAL}*'", None):
                if not row["isTemporary"]:
                    self._finish_swap(row["tableName"])

    def _finish_swaps_cut_short(self) -> None:
        """Finish the commits that failed midway in this process (normally none: nothing to ask Spark)."""
        if not self._catalog.cut_short:
            return
        with _swap_lock:
            while self._catalog.cut_short:
                journal = self._catalog.cut_short[0]
                if self.table_exists(journal):
                    self._finish_swap(journal)
                self._catalog.cut_short.pop(0)

    def _rollback(self) -> None:
        staged, self._staged = self._staged, {}
        for stage in staged.values():
            self._collect(f"DROP TABLE IF EXISTS {quote(stage)}", None)

    @contextmanager
    def exclusive(self, name: str, reads: Sequence[str] = ()) -> Iterator[None]:
        """Across this process's sessions a lock; across the clients of one catalog (a Spark Connect
        server) a lock table ``_mercia_lock_<name>``, which the catalog creates for one of them only,
        and ``reads`` refreshed (another client may have written them).  A client that died holding
        the lock leaves the table: after two minutes the error names it."""
        lock_table = quote(f"{_INTERNAL}lock_{name}")
        with self._catalog.named(name):
            waited_until = time.monotonic() + _LOCK_WAIT_SECONDS
            while True:
                try:
                    self._spark.sql(f"CREATE TABLE {lock_table} (held BOOLEAN) USING parquet").collect()
                    break
                except self._errors as exc:
                    if _condition(exc) not in ("TABLE_OR_VIEW_ALREADY_EXISTS", "LOCATION_ALREADY_EXISTS"):
                        raise self._error(exc, f"CREATE TABLE {lock_table}") from exc
                if time.monotonic() > waited_until:
                    raise StoreError(f"{name} has been held by another client of this Spark catalog for "
                                     f"{_LOCK_WAIT_SECONDS} s (lock table {lock_table}); if no other Mercia "
                                     f"process is running, DROP TABLE {lock_table}", engine=self.dialect)
                time.sleep(0.2)
            try:
                for table in reads:
                    try:
                        self._spark.catalog.refreshTable(table)
                    except self._errors as exc:
                        raise self._error(exc, f"REFRESH TABLE {table}") from exc
                yield
            finally:
                self._collect(f"DROP TABLE {lock_table}", None)

    # -- schema ----------------------------------------------------------------------------
    def table_exists(self, name: str) -> bool:
        try:
            return bool(self._spark.catalog.tableExists(name))
        except self._errors as exc:
            raise self._error(exc, f"-- catalog.tableExists({name!r})") from exc

    def tables_exist(self, names: Sequence[str]) -> bool:
        """From the catalog: a refused statement would be logged by Spark as an error."""
        return all(self.table_exists(name) for name in names)

    def columns(self, table: str) -> list[tuple[str, str]]:
        return [(f.name, f.dataType.simpleString()) for f in self._sql(f"SELECT * FROM {quote(table)}").schema]

    def column_type(self, column: Column) -> str:
        return _SPARK_TYPES[column.sql_type]

    def create_table_sql(self, table: Table, enforce_primary_key: bool = False) -> list[str]:
        """Parquet tables in the warehouse; NOT NULL and keys are checked by the loader."""
        cols = ", ".join(f"{quote(c.name)} {self.column_type(c)}" for c in table.columns)
        return [f"CREATE TABLE IF NOT EXISTS {quote(table.name)} ({cols}) USING {self.table_format}"]

    def _allow_spec_nulls(self) -> None:
        """Nothing to relax: Spark's tables have no NOT NULL (``create_table_sql``)."""

    def truncate(self, table: str) -> None:
        if self.in_transaction:
            self._stage(table, keep_rows=False)
        else:
            self._collect(f"TRUNCATE TABLE {quote(table)}", None)

    # -- bulk ------------------------------------------------------------------------------
    def _insert(self, table: str, data: pa.Table, cols: str) -> None:
        target = self._stage(table, keep_rows=True) if self.in_transaction else table
        view = f"_mercia_arrow_{uuid.uuid4().hex[:12]}"
        sql = f"INSERT INTO {quote(target)} ({cols}) SELECT {cols} FROM {quote(view)}"
        try:
            self._spark.createDataFrame(data).createOrReplaceTempView(view)
        except self._errors as exc:
            raise self._error(exc, sql) from exc
        try:
            self._collect(sql, None)
        finally:
            self._spark.catalog.dropTempView(view)

    def load_parquet(self, table: Table, groups: Sequence[Sequence[Path]], sources: dict[str, str]) -> ParquetLoad:
        """Spark reads the files itself (``spark.read.parquet``, one read per schema group) and casts in
        the job that writes the warehouse table, so no row passes through Python.  The loader's rules, in
        Spark's casts: a value that does not convert, or an empty required column other than a
        ``*_concept_id`` (written as 0), is a bad value; the checks are counted in the same job
        (``observe``), and only when one fails is the first bad row looked up by file and row index.
        Text converts by Spark's casts (dates also as ``yyyyMMdd``); a fraction cast to BIGINT truncates
        (DuckDB rounds)."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        target = self._stage(table.name, keep_rows=True) if self.in_transaction else table.name
        files = [[str(path) for path in group] for group in groups]
        try:
            frames = [self._spark.read.parquet(*group) for group in files]
            rows = _union([_checked(frame, table, sources) for frame in frames])
            concept_nulls = [c.name for c in table.columns if c.required and c.is_concept_id and c.name in sources]
            observation = Observation(f"load_{uuid.uuid4().hex[:12]}")
            observed = rows.observe(observation, F.count(F.lit(1)).alias("rows"),
                                    F.count(F.col("_mercia_bad_column")).alias("bad"),
                                    *[F.count_if(F.col(f"_mercia_raw_{c}").isNull()).alias(c) for c in concept_nulls])
            observed.select(*[F.col(name) for name, _ in self.columns(target)]).write.insertInto(target)
            counts = observation.get
            bad = None
            if counts["bad"]:
                located = _union([_checked(frame.select("*", F.col("_metadata.file_name").alias("_mercia_file"),
                                                        F.col("_metadata.row_index").alias("_mercia_row")),
                                           table, sources) for frame in frames])
                row = (located.where(F.col("_mercia_bad_column").isNotNull())
                       .orderBy("_mercia_file", "_mercia_row").limit(1).collect()[0])
                bad = BadValue(row["_mercia_file"], row["_mercia_row"] + 1, row["_mercia_bad_column"],
                               row["_mercia_bad_value"])
        except self._errors as exc:
            raise self._error(exc, f"-- read Parquet {files[0][:1]} into {table.name}") from exc
        return ParquetLoad(int(counts["rows"]), {c: int(counts[c]) for c in concept_nulls}, bad)


def _condition(exc: BaseException) -> str | None:
    """Spark's error condition (``TABLE_OR_VIEW_NOT_FOUND`` …), None for other driver errors."""
    condition = getattr(exc, "getCondition", None)
    return condition() if callable(condition) else None


def _union(frames: list):
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return union


def _checked(frame, table: Table, sources: dict[str, str]):
    """``frame``'s rows in the CDM table's columns and types, with ``_mercia_bad_column`` and
    ``_mercia_bad_value`` naming each row's first value that failed (the loader's rules) and
    ``_mercia_raw_<column>`` for each required concept column (NULLs written as 0)."""
    from pyspark.sql import functions as F

    source_types = {field.name.lower(): field.dataType.simpleString() for field in frame.schema}
    converted, raws, checks = [], [], []  # checks: (failed, column, value as text)
    for column in table.columns:
        spark_type = _SPARK_TYPES[column.sql_type].lower()
        if column.name not in sources:
            converted.append(F.lit(None).cast(spark_type).alias(column.name))
            continue
        raw = F.col(sources[column.name])
        value = _converted(raw, source_types[sources[column.name].lower()], spark_type)
        checks.append((raw.isNotNull() & value.isNull(), column.name, raw.cast("string")))
        if column.required and column.is_concept_id:
            raws.append(raw.alias(f"_mercia_raw_{column.name}"))
            value = F.coalesce(value, F.lit(0).cast(spark_type))
        elif column.required:
            checks.append((raw.isNull(), column.name, F.lit(None).cast("string")))
        converted.append(value.alias(column.name))
    bad_column, bad_value = F.lit(None).cast("string"), F.lit(None).cast("string")
    for failed, name, text in reversed(checks):  # CASE WHEN: the first failing check wins
        bad_column = F.when(failed, F.lit(name)).otherwise(bad_column)
        bad_value = F.when(failed, text).otherwise(bad_value)
    located = [F.col(name) for name in ("_mercia_file", "_mercia_row") if name in frame.columns]
    return frame.select(*converted, *raws, *located, bad_column.alias("_mercia_bad_column"),
                        bad_value.alias("_mercia_bad_value"))


def _converted(raw, source_type: str, spark_type: str):
    """``raw`` in the column's Spark type, NULL where it does not convert (the loader's ``_conversion``)."""
    from pyspark.sql import functions as F

    if source_type == spark_type:
        return raw
    if source_type != "string" or spark_type == "string":
        return raw.try_cast(spark_type)
    if spark_type == "date":
        return F.coalesce(raw.try_cast("date"), F.try_to_date(raw, "yyyyMMdd"))
    return F.trim(raw).try_cast(spark_type)
