"""What every analysis shares: the cohort at index as a temporary table, SQL fragments that mean the
same on DuckDB, PostgreSQL and Spark (the parts spelt differently per engine come from
``mercia.cdm.dialect``), and builders for the typed tables of ``mercia.privacy.disclosure``.

Heavy lifting stays in the engine: each analysis materialises one small temporary table (one row per
person of the cohort) and runs grouped queries against the CDM; only aggregates come back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mercia.cdm import Store
from mercia.cdm.dialect import as_double, days_between
from mercia.cdm.extensions import stale_cohort_reason
from mercia.privacy.disclosure import (
    AnalysisResult, ColumnSpec, DisclosurePolicy, Kind, PartitionSpec, StatTable, get_policy,
)

# Where Mercia keeps deprivation: ingestion derives the IMD decile (1 = most deprived ... 10 = least)
# from the postcode (mercia.privacy.geography) and keeps it on its link table, one row per organisation's
# record of a person; analytics takes the decile of the person's most recent load.
LINK_TABLE = "mercia_person_link"

# Names for the few OMOP concepts every report shows, for vocabularies loaded without them.
KNOWN_CONCEPTS = {0: "Not recorded", 8507: "Male", 8532: "Female", 8551: "Unknown", 8570: "Ambiguous",
                  8521: "Other", 8527: "White", 8516: "Black or African American", 8515: "Asian",
                  38003563: "Hispanic or Latino", 38003564: "Not Hispanic or Latino"}

DISTRIBUTION_STATS = ["mean", "sd", "p10", "p25", "median", "p75", "p90"]
QUANTILES = {"p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9}


class AnalyticsError(Exception):
    """A request that cannot be answered as asked; the message says which cohort or parameter."""


def as_id(value: Any, what: str) -> int:
    """An integer that is safe to inline in SQL (ids, offsets); anything else is refused."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise AnalyticsError(f"{what} must be an integer, got {value!r}") from None
    if number != value and str(number) != str(value).strip():
        raise AnalyticsError(f"{what} must be an integer, got {value!r}")
    return number


def age_sql(date_expr: str, person: str = "p") -> str:
    """Whole years of age at ``date_expr`` (month of birth used when present)."""
    return (f"(CAST(EXTRACT(YEAR FROM {date_expr}) AS INTEGER) - {person}.year_of_birth"
            f" - CASE WHEN {person}.month_of_birth IS NOT NULL AND "
            f"CAST(EXTRACT(MONTH FROM {date_expr}) AS INTEGER) < {person}.month_of_birth THEN 1 ELSE 0 END)")


def age_band_sql(age: str, width: int = 10, top: int = 90) -> str:
    """Age band label such as '40-49' or '90+', the same text on every engine (``CONCAT`` turns the
    bounds into text everywhere, so no engine's cast spelling is needed)."""
    low = f"CAST(FLOOR({age} / {float(width)}) AS INTEGER) * {width}"
    return (f"CASE WHEN {age} IS NULL THEN 'Unknown' WHEN {age} >= {top} THEN '{top}+' "
            f"ELSE CONCAT({low}, '-', {low} + {width - 1}) END")


def quantiles_sql(store: Store, expr: str) -> str:
    """count, mean, sd and the quantiles of DISTRIBUTION_STATS, in that order."""
    # The mean of exact decimals: a float sum depends on the order an engine adds in (53.49999999999999
    # on one, 53.5 on another), and published means are rounded, so the last bit can change the output.
    parts = [f"COUNT({expr})", f"AVG(CAST({expr} AS DECIMAL(38, 9)))", f"STDDEV_SAMP({as_double(store, expr)})"]
    # Observed values, never interpolated: an interpolated quantile's fraction gives away N modulo 10.
    parts += [f"PERCENTILE_DISC({q}) WITHIN GROUP (ORDER BY {expr})" for q in QUANTILES.values()]
    return ", ".join(parts)


def cohort_check(store: Store, cohort_id: int, role: str = "cohort") -> int:
    """Number of rows of the cohort; a cohort with none is an error naming it, as is a stale one."""
    n = store.query_one(f"SELECT COUNT(*) FROM cohort WHERE cohort_definition_id = {cohort_id}")
    if not n:
        raise AnalyticsError(f"{role} {cohort_id} has no rows in the cohort table "
                             f"(write it first, e.g. with `mercia cohort run`)")
    refuse_stale(store, cohort_id, role)
    return int(n)


def refuse_stale(store: Store, cohort_id: int, role: str = "cohort") -> None:
    """An error naming the cohort when linkage merged its persons after it was generated: one person may
    then hold entries a run would have made one (an outcome cohort, which may rightly be empty, is
    checked by this alone)."""
    reason = stale_cohort_reason(store, cohort_id)
    if reason:
        raise AnalyticsError(f"{role} {cohort_id} is out of date: {reason}; generate it again "
                             f"(`mercia cohort run`) before analysing it")


def first_entry_sql(cohort_id: int, table: str = "cohort") -> str:
    """One row per person: the first cohort entry (index date) and its end, from ``table`` (``cohort``'s columns)."""
    return f"""
        SELECT subject_id AS person_id, cohort_start_date AS index_date, cohort_end_date AS end_date
        FROM (SELECT subject_id, cohort_start_date, cohort_end_date,
                     ROW_NUMBER() OVER (PARTITION BY subject_id
                                        ORDER BY cohort_start_date, cohort_end_date) AS rn
              FROM {table} WHERE cohort_definition_id = {cohort_id}) c
        WHERE rn = 1"""


def index_table_sql(store: Store, cohort_id: int, table: str = "cohort") -> str:
    """The cohort at index with everything the reports stratify by, one row per person (its entries in
    ``table``: ``cohort``, or a temporary table of the same columns)."""
    imd = ""
    if store.table_exists(LINK_TABLE):  # the most recent load's decile for each person
        imd = f"""
        imd AS (
            SELECT person_id, imd_decile FROM (
                SELECT l.person_id, CAST(l.imd_decile AS INTEGER) AS imd_decile,
                       ROW_NUMBER() OVER (PARTITION BY l.person_id ORDER BY l.load_id DESC) AS rn
                FROM {LINK_TABLE} l JOIN entry e ON e.person_id = l.person_id
                WHERE l.imd_decile BETWEEN 1 AND 10) ranked
            WHERE rn = 1),"""
    return f"""
        WITH entry AS ({first_entry_sql(cohort_id, table)}),{imd}
        period AS (
            SELECT e.person_id, MIN(op.observation_period_start_date) AS op_start,
                   MAX(op.observation_period_end_date) AS op_end
            FROM entry e JOIN observation_period op ON op.person_id = e.person_id
             AND e.index_date BETWEEN op.observation_period_start_date AND op.observation_period_end_date
            GROUP BY e.person_id)
        SELECT e.person_id, e.index_date, e.end_date, p.gender_concept_id, p.race_concept_id,
               p.ethnicity_concept_id, p.care_site_id, {age_sql('e.index_date')} AS age,
               {"i.imd_decile" if imd else "CAST(NULL AS INTEGER)"} AS imd_decile, pr.op_start, pr.op_end,
               {days_between(store, 'pr.op_start', 'e.index_date')} AS prior_obs_days,
               {days_between(store, 'e.index_date', 'pr.op_end')} AS post_obs_days
        FROM entry e
        JOIN person p ON p.person_id = e.person_id
        {"LEFT JOIN imd i ON i.person_id = e.person_id" if imd else ""}
        LEFT JOIN period pr ON pr.person_id = e.person_id"""


@contextmanager
def temp_table(store: Store, select_sql: str, prefix: str = "mercia_tmp") -> Iterator[str]:
    """A temporary table holding ``select_sql`` for the duration of the block."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    store.create_temp_table(name, select_sql)
    try:
        yield name
    finally:
        store.drop_temp_table(name)


def concept_names(store: Store, ids: Sequence[int]) -> dict[int, str]:
    """Names of concepts (vocabulary first, then KNOWN_CONCEPTS, then 'concept N')."""
    ids = sorted({int(i) for i in ids if i is not None})
    names = dict(KNOWN_CONCEPTS)
    if ids:
        for start in range(0, len(ids), 5000):
            chunk = ", ".join(str(i) for i in ids[start:start + 5000])
            names.update({int(cid): name for cid, name in store.query(
                f"SELECT concept_id, concept_name FROM concept WHERE concept_id IN ({chunk})") if name})
    names.update({i: KNOWN_CONCEPTS[i] for i in (0,)})  # concept 0 reads "No matching concept"
    return {i: names.get(i, f"concept {i}") for i in ids}


# -- typed table builders ------------------------------------------------------------------
def label(name: str, title: str | None = None) -> ColumnSpec:
    return ColumnSpec(name=name, kind=Kind.LABEL, label=title)


def count(name: str, title: str | None = None, denominator: str | None = None) -> ColumnSpec:
    return ColumnSpec(name=name, kind=Kind.COUNT, label=title, denominator=denominator)


def statistic(name: str, basis: Sequence[str], title: str | None = None,
              resolution: float | None = 1.0, quantile: float | None = None) -> ColumnSpec:
    """A summary of per-person values (``resolution``: their step; ``quantile``: its fraction, for an
    observed quantile), or with ``resolution=None`` a model estimate; the policy rounds both so that they
    cannot identify the group size."""
    return ColumnSpec(name=name, kind=Kind.STATISTIC, basis=list(basis), label=title, resolution=resolution,
                      quantile=quantile)


def derived(name: str, formula: str, args: Sequence[str], title: str | None = None,
            scale: float | None = None, basis: Sequence[str] = ()) -> ColumnSpec:
    return ColumnSpec(name=name, kind=Kind.DERIVED, formula=formula, args=list(args), label=title,
                      scale=scale, basis=list(basis))


def categorical_table(name: str, title: str, rows: list[dict[str, Any]], population: int) -> StatTable:
    """Rows (variable, category, count_persons): each variable's categories partition the cohort."""
    return StatTable(
        name=name, title=title, population=population,
        columns=[label("variable", "Variable"), label("category", "Category"),
                 count("count_persons", "Persons", denominator="population"),
                 derived("percent", "percent", ["count_persons", "population"], "%")],
        rows=rows, partitions=[PartitionSpec(column="count_persons", within=["variable"])])


def distribution_columns(basis: str = "count_persons") -> list[ColumnSpec]:
    titles = {"mean": "Mean", "sd": "SD", "p10": "P10", "p25": "P25", "median": "Median", "p75": "P75",
              "p90": "P90"}
    return [statistic(s, [basis], titles[s], quantile=QUANTILES.get(s)) for s in DISTRIBUTION_STATS]


def distribution_row(values: Sequence[Any]) -> dict[str, Any]:
    """(count, mean, sd, p10, p25, median, p75, p90) from quantiles_sql into a row."""
    n, *stats = values
    return {"count_persons": int(n or 0),
            **{s: (None if v is None else float(v)) for s, v in zip(DISTRIBUTION_STATS, stats)}}


def finish(result: AnalysisResult, policy: DisclosurePolicy | None, raw: bool) -> AnalysisResult:
    """Every analysis ends here: through the given (or configured) policy, unless ``raw``."""
    return result if raw else (policy or get_policy()).apply(result)
