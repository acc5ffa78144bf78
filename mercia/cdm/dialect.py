"""The few SQL fragments whose spelling differs by engine, built once as sqlglot expressions and rendered
in the store's dialect, so capabilities that write SQL strings never branch on the engine.

Mercia's SQL strings are otherwise written in the subset DuckDB, PostgreSQL and Spark read alike.  What
falls outside it: date arithmetic (``date - date`` is a number of days on DuckDB and PostgreSQL but an
INTERVAL on Spark; Spark adds only INT days to a date) and type names in casts (Spark has no unsized
VARCHAR and no DOUBLE PRECISION).  Transpiling whole statements instead (``sqlglot.transpile`` from
DuckDB) cannot see that ``a - b`` subtracts dates, turns ``PERCENTILE_DISC`` into Spark's approximate
``PERCENTILE_APPROX`` and DuckDB's ``MAKE_DATE`` into a ``DATE_FROM_PARTS`` PostgreSQL lacks, so only
these fragments are rendered, explicitly.

The temporary relation a cohort step or an analysis holds for the rest of a session is made here too
(``TemporaryTable``): the statement is text like every other, but carries its parts, so the Spark store,
which has no temporary tables, builds its own relation from them without reading the text back.

Arguments are plain SQL expressions in that common subset (column references, literals, ``LEAST``,
``GREATEST`` or ``COALESCE`` of them): they are parsed and re-rendered too, so keep functions out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp

from mercia.cdm.store import Store

_DAY = exp.var("DAY")
_INT = exp.DataType.build("INT")
_TEXT = exp.DataType.build("TEXT")
_DOUBLE = exp.DataType.build("DOUBLE")


class TemporaryTable(str):
    """``CREATE TEMPORARY TABLE name AS query`` in the engine's SQL (Spark: ``CACHE TABLE name AS query``,
    an eagerly cached temporary view, Spark SQL's nearest), with ``name`` and ``query`` kept beside the
    text: a store runs the text, or, where it has a better way (Spark: a checkpointed temporary view,
    ``Store.create_temp_table``), builds the relation from the parts."""

    name: str
    query: str

    def __new__(cls, name: str, query: str, dialect: str) -> TemporaryTable:
        relation = exp.to_identifier(name).sql(dialect=dialect)
        text = f"CACHE TABLE {relation} AS {query}" if dialect == "spark" else \
            f"CREATE TEMPORARY TABLE {relation} AS {query}"
        statement = super().__new__(cls, text)
        statement.name, statement.query = name, query
        return statement


@lru_cache(maxsize=512)
def _parse(fragment: str) -> exp.Expression:
    return sqlglot.parse_one(fragment, read="duckdb")


def _render(node: exp.Expression, store: Store) -> str:
    return node.sql(dialect=store.dialect)


@lru_cache(maxsize=4096)
def _rendered(dialect: str, build: Callable[..., exp.Expression], fragments: tuple[str, ...], *extra: Any) -> str:
    """``build`` of the parsed ``fragments`` (then ``extra``) in ``dialect``, kept: an analysis renders the same
    few fragments dozens of times a run, ~0.1-0.3 ms each through sqlglot."""
    return build(*(_parse(fragment).copy() for fragment in fragments), *extra).sql(dialect=dialect)


def _as_is(node: exp.Expression) -> exp.Expression:
    return node


def _as_text(node: exp.Expression) -> exp.Expression:
    return exp.cast(node, _TEXT)


def _as_double(node: exp.Expression) -> exp.Expression:
    return exp.cast(node, _DOUBLE)


def day_difference(start: exp.Expression, end: exp.Expression) -> exp.Expression:
    """Whole days from ``start`` to ``end`` as a sqlglot node (the cohort compiler builds trees with it)."""
    return exp.DateDiff(this=end, expression=start, unit=_DAY)


def date_plus_days(date: exp.Expression, days: int | exp.Expression) -> exp.Expression:
    """``date`` shifted by ``days`` as a DATE node: ``date + n`` is a DATE on DuckDB, PostgreSQL and Spark
    (``date + INTERVAL`` widens to a timestamp and back, 15x the cost on DuckDB); PostgreSQL and Spark add
    only INT days, hence the narrowing of a column."""
    count = exp.Literal.number(days) if isinstance(days, int) else exp.cast(days, _INT, copy=False)
    return exp.Paren(this=exp.Add(this=date, expression=count))


def days_between(store: Store, start: str, end: str) -> str:
    """Whole days from date ``start`` to date ``end`` (negative when ``end`` is earlier), as an integer."""
    return _rendered(store.dialect, day_difference, (start, end))


def add_days(store: Store, date: str, days: int) -> str:
    """The date ``days`` days after ``date`` (before, when negative), as a DATE."""
    if not isinstance(days, int):
        raise TypeError(f"add_days takes a whole number of days, got {days!r}")
    return _rendered(store.dialect, date_plus_days, (date,), days)


def as_text(store: Store, value: str) -> str:
    """``value`` cast to the engine's unbounded text type."""
    return _rendered(store.dialect, _as_text, (value,))


def as_double(store: Store, value: str) -> str:
    """``value`` cast to a double-precision float."""
    return _rendered(store.dialect, _as_double, (value,))



def in_list_parameter(store: Store, value: str) -> str:
    """A condition: ``value`` is one of the items of a list bound to the one ``?`` it holds (``= ANY(?)`` on
    DuckDB and PostgreSQL; Spark binds a list as an array and has no ``ANY`` over it: ``array_contains``)."""
    rendered = _rendered(store.dialect, _as_is, (value,))
    return f"array_contains(?, {rendered})" if store.dialect == "spark" else f"{rendered} = ANY(?)"


def split_words(store: Store, text: str) -> str:
    """A select item making one row per space-separated word of ``text`` (a set-returning function:
    ``UNNEST`` of the split on DuckDB and PostgreSQL, ``EXPLODE`` on Spark)."""
    rendered = _rendered(store.dialect, _as_is, (text,))
    return {"duckdb": "UNNEST(STRING_SPLIT({}, ' '))", "postgres": "UNNEST(STRING_TO_ARRAY({}, ' '))",
            "spark": "EXPLODE(SPLIT({}, ' '))"}[store.dialect].format(rendered)


def rows_checksum(store: Store, columns: Sequence[str]) -> str:
    """An aggregate: the sum, over the rows, of the first 60 bits of the MD5 of ``columns``' values as
    comma-separated text, as a decimal string (NULL when no row), computed by the engine, so equal
    multisets of rows give equal checksums on every engine without the rows leaving it.  No order and
    no row kept: memory stays flat however many rows (an ordered digest of one string of every row ran
    Spark's heap out at 4.5 million cohort rows).  Dates read as ``YYYY-MM-DD`` everywhere.

    Made for integer ids, dates and plain codes; not safe for:

    - a NULL in any column: that row's text is NULL and left out of the sum (silently, on every engine);
    - floats: their text differs by engine (1.0 reads ``1`` on PostgreSQL, ``1.0`` elsewhere);
    - text holding ``,``: different rows can then read alike (equal across engines all the same)."""
    values = [exp.cast(_parse(column).copy(), _TEXT) for column in columns]
    line = values[0]
    for value in values[1:]:
        line = exp.DPipe(this=exp.DPipe(this=line, expression=exp.Literal.string(",")), expression=value)
    hex60 = _render(exp.Substring(this=exp.MD5(this=line), start=exp.Literal.number(1),
                                  length=exp.Literal.number(15)), store)
    number, text = {"duckdb": ("CAST('0x' || {} AS BIGINT)", "VARCHAR"),
                    "postgres": ("CAST(CAST('x' || {} AS BIT(60)) AS BIGINT)", "TEXT"),
                    "spark": ("CAST(conv({}, 16, 10) AS BIGINT)", "STRING")}[store.dialect]
    return f"CAST(SUM(CAST({number.format(hex60)} AS DECIMAL(38, 0))) AS {text})"
