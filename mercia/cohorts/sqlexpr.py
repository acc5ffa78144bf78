"""Small builders for sqlglot expression trees, so the compiler reads like the relational plan.

Date arithmetic comes from ``mercia.cdm.dialect`` (one home for what differs by engine), as nodes each
dialect renders natively.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from sqlglot import exp

from mercia.cdm.dialect import date_plus_days

DATE = exp.DataType.build("DATE")
BIGINT = exp.DataType.build("BIGINT")


def ident(name: str) -> exp.Identifier:
    """An identifier, quoted only where it must be (``exp.to_identifier``'s rule, decided once per name)."""
    return exp.Identifier(this=name, quoted=_needs_quotes(name))


@functools.cache
def _needs_quotes(name: str) -> bool:
    return exp.SAFE_IDENTIFIER_RE.match(name) is None


def col(name: str, table: str | None = None) -> exp.Column:
    """A column reference built directly (``exp.column``'s generic handling was a tenth of building a plan)."""
    node = exp.Column(this=ident(name))
    if table:
        node.set("table", ident(table))
    return node


def coalesce(*args: exp.Expression) -> exp.Expression:
    """``COALESCE(args)`` built directly (``exp.func`` looks the name up and copies every argument)."""
    return exp.Coalesce(this=args[0], expressions=list(args[1:]))


def named(name: str) -> exp.TableAlias:
    """A CTE's name for ``Query.with_`` (a string there is run through the SQL parser)."""
    return exp.TableAlias(this=ident(name))


def num(value: float) -> exp.Expression:
    """A number literal; one not below zero built directly (``Literal.number`` reads its value back to
    find a sign: a few percent of compiling)."""
    return exp.Literal(this=str(value), is_string=False) if value >= 0 else exp.Literal.number(value)


def text(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def date_literal(iso: str) -> exp.Expression:
    return exp.cast(text(iso), DATE, copy=False)


def null_as(data_type: exp.DataType) -> exp.Expression:
    return exp.cast(exp.null(), data_type, copy=False)


def add_days(date: exp.Expression, days: int | exp.Expression) -> exp.Expression:
    return date if isinstance(days, int) and days == 0 else date_plus_days(date, days)


def year_of(date: exp.Expression) -> exp.Expression:
    return exp.Year(this=date)


def in_list(expr: exp.Expression, values: list[int], negate: bool = False) -> exp.Expression:
    cond = exp.In(this=expr, expressions=[num(v) for v in values])
    return exp.not_(cond, copy=False) if negate else cond


def case_when(condition: exp.Expression, then: exp.Expression, otherwise: exp.Expression) -> exp.Expression:
    return exp.Case(ifs=[exp.If(this=condition, true=then)], default=otherwise)


def least_date(a: exp.Expression, b: exp.Expression) -> exp.Expression:
    """``CASE WHEN a > b THEN b ELSE a END`` (as Circe writes it; LEAST differs on NULLs)."""
    return case_when(exp.GT(this=a, expression=b), b.copy(), a.copy())


def over(
    func: exp.Expression, partition: list[exp.Expression], order: list[exp.Expression | tuple[exp.Expression, bool]]
) -> exp.Window:
    """``func OVER (PARTITION BY partition ORDER BY order)``; a tuple in ``order`` is (expr, descending)."""
    return exp.Window(this=func, partition_by=partition, order=_order(order))


def row_number(
    partition: list[exp.Expression], order: list[exp.Expression | tuple[exp.Expression, bool]]
) -> exp.Window:
    return over(exp.RowNumber(), partition, order)


def _order(order: list[exp.Expression | tuple[exp.Expression, bool]]) -> exp.Order:
    items = []
    for item in order:
        expr, desc = item if isinstance(item, tuple) else (item, False)
        items.append(exp.Ordered(this=expr, desc=desc, nulls_first=not desc))
    return exp.Order(expressions=items)


def running(
    func: exp.Expression,
    partition: list[exp.Expression],
    order: list[exp.Expression | tuple[exp.Expression, bool]],
    exclude_current: bool = False,
) -> exp.Window:
    """A running aggregate over the preceding rows (optionally stopping one row before the current)."""
    spec = exp.WindowSpec(
        kind="ROWS",
        start="UNBOUNDED",
        start_side="PRECEDING",
        end=num(1) if exclude_current else "CURRENT ROW",
        end_side="PRECEDING" if exclude_current else None,
    )
    return exp.Window(this=func, partition_by=partition, order=_order(order), spec=spec)


def join_of(relation: exp.Expression, join_type: str) -> exp.Join:
    """``relation`` as a join of ``join_type`` ('left', 'inner', 'semi'), for ``Select.join``, which parses a
    ``join_type`` on every call (a third of building a small plan); each type is read by sqlglot once."""
    return exp.Join(this=relation, **_join_parts(join_type))


@functools.cache
def _join_parts(join_type: str) -> dict[str, str]:
    parsed = exp.maybe_parse(f"FROM _ {join_type} JOIN _").find(exp.Join)
    return {part: getattr(parsed, part) for part in ("method", "side", "kind") if getattr(parsed, part)}


def table(name: str, alias: str | None = None) -> exp.Table:
    """A table reference built directly (``exp.to_table`` would run the SQL parser on the name)."""
    node = exp.Table(this=ident(name))
    if alias:
        node.set("alias", exp.TableAlias(this=ident(alias)))
    return node


def empty_select(columns: dict[str, exp.DataType]) -> exp.Select:
    """A typed relation with no rows (``SELECT CAST(NULL AS t) AS c ... WHERE 1 = 0``)."""
    return exp.select(*[exp.alias_(null_as(t), name, copy=False) for name, t in columns.items()], copy=False).where(
        exp.EQ(this=num(1), expression=num(0)), copy=False
    )


def union_all(selects: list[exp.Query]) -> exp.Query:
    result = selects[0]
    for s in selects[1:]:
        result = exp.union(result, s, distinct=False, copy=False)
    return result


def tables_in(*queries: exp.Expression) -> list[exp.Table]:
    """Every table reference in ``queries``, in no set order (``nodes_in``)."""
    return [node for node in nodes_in(*queries) if isinstance(node, exp.Table)]


def nodes_in(*queries: exp.Expression) -> Iterator[exp.Expression]:
    """Every node of ``queries`` in no set order, down to columns, literals and identifiers (yielded, not
    entered): one plain walk of the trees' children (sqlglot's ``find_all`` is a generic breadth-first walk,
    a third of compiling a batch)."""
    stack: list[exp.Expression] = list(queries)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _LEAVES):  # no table below (most of a plan's nodes)
            continue
        for value in node.args.values():
            if isinstance(value, exp.Expression):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, exp.Expression))


_LEAVES = (exp.Column, exp.Literal, exp.Identifier, exp.DataType, exp.Star)
