"""Incidence rates of an outcome cohort in a target cohort, and prevalence.

For each time-at-risk (TAR) window a person of the target cohort (first entry) is at risk from
``index + start_offset`` to ``anchor + end_offset`` (anchor = cohort start or cohort end), cut at the
end of the observation period that contains the index date.  People whose outcome started before
their TAR are prevalent cases: they are excluded and counted.  Time at risk ends at the first
outcome inside the window; days are counted inclusively (``exit - start + 1``), as OHDSI
CohortIncidence does, and person-years are days / 365.25.  Rates are per 1,000 person-years with
exact Poisson (Garwood) 95% confidence limits, recomputed by the disclosure policy from the
published event count.  Strata: age band at index, sex, IMD decile; calendar year splits each
person's time at risk across the years it spans.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mercia.analytics.base import (
    AnalyticsError, age_band_sql, as_id, cohort_check, concept_names, count, derived, finish,
    index_table_sql, label, refuse_stale, statistic, temp_table,
)
from mercia.cdm import Store
from mercia.cdm.dialect import add_days, as_text, days_between
from mercia.privacy.disclosure import FORMULAS, AnalysisResult, DisclosurePolicy, PartitionSpec, StatTable

DAYS_PER_YEAR = 365.25
PER = 1000.0


@dataclass(frozen=True)
class TimeAtRisk:
    start_offset: int = 0
    end_offset: int = 365
    end_anchor: str = "start"  # "start" or "end" of the cohort entry

    @property
    def name(self) -> str:
        return f"start{self.start_offset:+d} to {self.end_anchor}{self.end_offset:+d} days"

    @classmethod
    def parse(cls, text: str | TimeAtRisk) -> TimeAtRisk:
        """``0:365`` (both from cohort start), ``0:end`` or ``30:end+30`` (end from cohort end)."""
        if isinstance(text, TimeAtRisk):
            return text
        match = re.fullmatch(r"\s*(-?\d+)\s*:\s*(?:(start|end)\s*([+-]\s*\d+)?|(-?\d+))\s*", str(text))
        if not match:
            raise AnalyticsError(f"time at risk {text!r}: expected START:END such as 0:365, 0:end or 1:end+30")
        start = int(match.group(1))
        if match.group(4) is not None:
            return cls(start, int(match.group(4)), "start")
        return cls(start, int((match.group(3) or "0").replace(" ", "")), match.group(2))


DEFAULT_TARS = ("0:365", "0:end")


def _persons_sql(store: Store, idx: str, outcome_id: int, tar: TimeAtRisk) -> str:
    """One row per target person with a TAR: start, exit, outcome inside, or prevalent flag."""
    anchor = "i.index_date" if tar.end_anchor == "start" else "i.end_date"
    return f"""
        WITH tar AS (
            SELECT i.*, {add_days(store, 'i.index_date', tar.start_offset)} AS tar_start,
                   LEAST({add_days(store, anchor, tar.end_offset)}, i.op_end) AS tar_end
            FROM {idx} i WHERE i.op_end IS NOT NULL),
        prevalent_cases AS (
            SELECT DISTINCT t.person_id FROM tar t JOIN cohort o ON o.subject_id = t.person_id
            WHERE o.cohort_definition_id = {outcome_id} AND o.cohort_start_date < t.tar_start),
        first_outcome AS (
            SELECT t.person_id, MIN(o.cohort_start_date) AS outcome_date
            FROM tar t JOIN cohort o ON o.subject_id = t.person_id
            WHERE o.cohort_definition_id = {outcome_id}
              AND o.cohort_start_date BETWEEN t.tar_start AND t.tar_end
            GROUP BY t.person_id)
        SELECT t.person_id, t.age, t.gender_concept_id, t.imd_decile, t.tar_start, t.tar_end,
               f.outcome_date, COALESCE(f.outcome_date, t.tar_end) AS exit_date,
               CASE WHEN p.person_id IS NOT NULL THEN 1 ELSE 0 END AS prevalent
        FROM tar t LEFT JOIN prevalent_cases p ON p.person_id = t.person_id
        LEFT JOIN first_outcome f ON f.person_id = t.person_id
        WHERE t.tar_end >= t.tar_start"""


def incidence(store: Store, target_id: int, outcome_id: int, tars: Sequence[str | TimeAtRisk] = DEFAULT_TARS,
              policy: DisclosurePolicy | None = None, raw: bool = False) -> AnalysisResult:
    target_id, outcome_id = as_id(target_id, "target cohort id"), as_id(outcome_id, "outcome cohort id")
    parsed = [TimeAtRisk.parse(t) for t in tars]
    if not parsed:
        raise AnalyticsError("give at least one time-at-risk window")
    cohort_check(store, target_id, "target cohort")
    refuse_stale(store, outcome_id, "outcome cohort")
    rate_rows: list[dict[str, Any]] = []
    year_rows: list[dict[str, Any]] = []
    attrition: list[dict[str, Any]] = []
    with temp_table(store, index_table_sql(store, target_id), "mercia_idx") as idx:
        persons = int(store.query_one(f"SELECT COUNT(*) FROM {idx}"))
        for tar in parsed:
            with temp_table(store, _persons_sql(store, idx, outcome_id, tar), "mercia_tar") as at_risk:
                n_tar, n_prevalent = store.query(
                    f"SELECT COUNT(*), COALESCE(SUM(prevalent), 0) FROM {at_risk}")[0]
                attrition.append({"time_at_risk": tar.name, "count_target": persons,
                                  "count_with_time_at_risk": int(n_tar),
                                  "count_prevalent_excluded": int(n_prevalent)})
                rate_rows += _strata(store, at_risk, tar)
                year_rows += _years(store, at_risk, tar)
        prevalence_table = _prevalence(store, idx, outcome_id, persons)
    names = concept_names(store, [int(r["stratum"]) for r in rate_rows if r["stratum_type"] == "Sex"])
    for row in rate_rows:
        if row["stratum_type"] == "Sex":
            row["stratum"] = names[int(row["stratum"])]
    tables = [
        StatTable(name="attrition", title="People and time at risk", population=persons,
                  columns=[label("time_at_risk", "Time at risk"), count("count_target", "Target persons"),
                           count("count_with_time_at_risk", "With time at risk"),
                           # part of those with time at risk: nearly all of them excluded would give the few
                           # at risk, whom the rates' Overall row hides
                           count("count_prevalent_excluded", "Excluded: outcome before time at risk",
                                 denominator="count_with_time_at_risk")],
                  rows=attrition),
        _rate_table("incidence", "Incidence per 1,000 person-years", rate_rows,
                    [PartitionSpec(column="count_persons", within=["time_at_risk", "stratum_type"]),
                     PartitionSpec(column="count_events", within=["time_at_risk", "stratum_type"])],
                    "stratum_type", "Stratum type", "stratum", "Stratum"),
        _rate_table("incidence_by_year", "Incidence per 1,000 person-years by calendar year", year_rows,
                    [PartitionSpec(column="count_events", within=["time_at_risk"])],
                    "calendar_year", "Calendar year"),
        prevalence_table,
    ]
    result = AnalysisResult(
        analysis="incidence", title=f"Incidence of cohort {outcome_id} in cohort {target_id}",
        parameters={"target_cohort_id": target_id, "outcome_cohort_id": outcome_id,
                    "time_at_risk": [t.name for t in parsed], "per_person_years": PER,
                    "confidence_interval": "exact Poisson 95%"}, tables=tables)
    return finish(result, policy, raw)


def _rate_table(name: str, title: str, rows: list[dict[str, Any]], partitions: list[PartitionSpec],
                *label_columns: str) -> StatTable:
    labels = [label(n, t) for n, t in zip(label_columns[::2], label_columns[1::2])]
    return StatTable(
        name=name, title=title,
        columns=[label("time_at_risk", "Time at risk"), *labels,
                 count("count_persons", "Persons"),
                 count("count_events", "Outcomes", denominator="count_persons"),
                 statistic("person_years", ["count_persons"], "Person-years"),
                 derived("rate_per_1000py", "rate", ["count_events", "person_years"], "Rate", PER),
                 derived("rate_lower", "rate_lower", ["count_events", "person_years"], "95% CI lower", PER),
                 derived("rate_upper", "rate_upper", ["count_events", "person_years"], "95% CI upper", PER)],
        rows=rows, partitions=partitions)


def _strata(store: Store, at_risk: str, tar: TimeAtRisk) -> list[dict[str, Any]]:
    strata = {"Overall": "'All'", "Age band": age_band_sql("age"), "Sex": as_text(store, "gender_concept_id"),
              "IMD decile": f"COALESCE({as_text(store, 'imd_decile')}, 'Not recorded')"}
    days_at_risk = days_between(store, "tar_start", "exit_date")
    sql = " UNION ALL ".join(
        f"SELECT '{kind}', {expr}, COUNT(*), COUNT(outcome_date), SUM({days_at_risk} + 1) "
        f"FROM {at_risk} WHERE prevalent = 0 GROUP BY 2" for kind, expr in strata.items())
    rows = [_rate_row(tar, n, events, days, stratum_type=kind, stratum=stratum)
            for kind, stratum, n, events, days in store.query(sql)]
    order = list(strata)
    return sorted(rows, key=lambda r: (order.index(r["stratum_type"]), _natural(r["stratum"])))


def _natural(text: str) -> tuple:
    digits = "".join(ch for ch in text.split("-")[0] if ch.isdigit())
    return (0, int(digits), text) if digits else (1, 0, text)


def _years(store: Store, at_risk: str, tar: TimeAtRisk) -> list[dict[str, Any]]:
    span = store.query(f"SELECT MIN(EXTRACT(YEAR FROM tar_start)), MAX(EXTRACT(YEAR FROM exit_date)) "
                       f"FROM {at_risk} WHERE prevalent = 0")[0]
    if span[0] is None:
        return []
    years = ", ".join(f"({y}, DATE '{y:04d}-01-01', DATE '{y:04d}-12-31')"
                      for y in range(int(span[0]), int(span[1]) + 1))
    found = store.query(f"""
        SELECT y.calendar_year, COUNT(*),
               SUM(CASE WHEN CAST(EXTRACT(YEAR FROM r.outcome_date) AS INTEGER) = y.calendar_year THEN 1 ELSE 0 END),
               SUM({days_between(store, 'GREATEST(r.tar_start, y.first_day)', 'LEAST(r.exit_date, y.last_day)')} + 1)
        FROM {at_risk} r JOIN (VALUES {years}) AS y(calendar_year, first_day, last_day)
          ON y.calendar_year BETWEEN CAST(EXTRACT(YEAR FROM r.tar_start) AS INTEGER)
                                 AND CAST(EXTRACT(YEAR FROM r.exit_date) AS INTEGER)
        WHERE r.prevalent = 0
        GROUP BY y.calendar_year ORDER BY y.calendar_year""")
    return [_rate_row(tar, n, events, days, calendar_year=str(year)) for year, n, events, days in found]


def _rate_row(tar: TimeAtRisk, n: Any, events: Any, days: Any, **labels: Any) -> dict[str, Any]:
    """Counts and person-years as the engine summed them; rates follow from them (recomputed by the
    disclosure policy from the published counts)."""
    person_years = float(days or 0) / DAYS_PER_YEAR
    row = {"time_at_risk": tar.name, **labels, "count_persons": int(n), "count_events": int(events or 0),
           "person_years": person_years}
    for column in ("rate", "rate_lower", "rate_upper"):
        key = "rate_per_1000py" if column == "rate" else column
        row[key] = FORMULAS[column](row["count_events"], person_years, PER)
    return row


def _prevalence(store: Store, idx: str, outcome_id: int, persons: int) -> StatTable:
    """Outcome history at index, and period prevalence by calendar year among target persons in
    observation during that year (outcome cohort entry overlapping the year)."""
    at_index = store.query_one(f"""
        SELECT COUNT(DISTINCT i.person_id) FROM {idx} i JOIN cohort o ON o.subject_id = i.person_id
        WHERE o.cohort_definition_id = {outcome_id} AND o.cohort_start_date <= i.index_date""")
    span = store.query(f"""
        SELECT MIN(EXTRACT(YEAR FROM op.observation_period_start_date)),
               MAX(EXTRACT(YEAR FROM op.observation_period_end_date))
        FROM {idx} i JOIN observation_period op ON op.person_id = i.person_id""")[0]
    rows = [{"period": "History of outcome at index", "count_persons": persons,
             "count_cases": int(at_index or 0)}]
    if span[0] is not None:
        years = ", ".join(f"({y})" for y in range(int(span[0]), int(span[1]) + 1))
        found = store.query(f"""
            WITH years AS (SELECT * FROM (VALUES {years}) AS y(calendar_year)),
            observed AS (
                SELECT DISTINCT y.calendar_year, i.person_id
                FROM {idx} i JOIN observation_period op ON op.person_id = i.person_id
                JOIN years y ON y.calendar_year BETWEEN CAST(EXTRACT(YEAR FROM op.observation_period_start_date) AS INTEGER)
                                                    AND CAST(EXTRACT(YEAR FROM op.observation_period_end_date) AS INTEGER)),
            cases AS (
                SELECT DISTINCT y.calendar_year, o.subject_id AS person_id
                FROM cohort o JOIN years y
                  ON y.calendar_year BETWEEN CAST(EXTRACT(YEAR FROM o.cohort_start_date) AS INTEGER)
                                         AND CAST(EXTRACT(YEAR FROM o.cohort_end_date) AS INTEGER)
                WHERE o.cohort_definition_id = {outcome_id})
            SELECT ob.calendar_year, COUNT(*), COUNT(c.person_id)
            FROM observed ob LEFT JOIN cases c
              ON c.calendar_year = ob.calendar_year AND c.person_id = ob.person_id
            GROUP BY ob.calendar_year ORDER BY ob.calendar_year""")
        rows += [{"period": str(year), "count_persons": int(n), "count_cases": int(k)} for year, n, k in found]
    return StatTable(
        name="prevalence", title="Prevalence of the outcome", population=persons,
        columns=[label("period", "Period"), count("count_persons", "Persons"),
                 count("count_cases", "With outcome", denominator="count_persons"),
                 derived("percent", "percent", ["count_cases", "count_persons"], "%")],
        rows=[{**r, "percent": 100.0 * r["count_cases"] / r["count_persons"] if r["count_persons"] else None}
              for r in rows])
