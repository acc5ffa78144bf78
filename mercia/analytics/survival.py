"""Time to an outcome (a cohort, or death) from the index date, censored at the end of the
observation period containing the index date (and at death when death is not the outcome).

The engine returns a life table (events and censorings per day of follow-up); the Kaplan-Meier curve
(log-log Greenwood 95% bounds) comes from ``mercia.privacy.disclosure.kaplan_meier``, the same estimator
disclosure control re-runs on rounded counts; for two cohorts lifelines fits a Cox model with the cohort
as the only covariate on the same aggregated rows (frequency weights).  People whose outcome started
before the index date are excluded and counted; an outcome on the index day is an event at day 0.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from mercia.analytics.base import (
    AnalyticsError, as_id, cohort_check, count, finish, index_table_sql, label, refuse_stale, statistic,
    temp_table,
)
from mercia.cdm import Store
from mercia.cdm.dialect import add_days, days_between
from mercia.privacy.disclosure import AnalysisResult, DisclosurePolicy, StatTable, kaplan_meier

DEATH = "death"


def _life_table_sql(store: Store, idx: str, outcome: int | str, max_days: int | None) -> str:
    if outcome == DEATH:
        events = "SELECT person_id, MIN(death_date) AS event_date FROM death GROUP BY person_id"
        competing = "NULL"
    else:
        events = (f"SELECT subject_id AS person_id, cohort_start_date AS event_date FROM cohort "
                  f"WHERE cohort_definition_id = {outcome}")
        competing = "d.death_date"
    cap = "" if max_days is None else f", {add_days(store, 'i.index_date', int(max_days))}"
    return f"""
        WITH ev AS ({events}),
        prevalent_cases AS (SELECT DISTINCT i.person_id FROM {idx} i JOIN ev ON ev.person_id = i.person_id
                  WHERE ev.event_date < i.index_date),
        first_event AS (SELECT i.person_id, MIN(ev.event_date) AS event_date
                        FROM {idx} i JOIN ev ON ev.person_id = i.person_id
                        WHERE ev.event_date >= i.index_date GROUP BY i.person_id),
        dth AS (SELECT person_id, MIN(death_date) AS death_date FROM death GROUP BY person_id),
        followed AS (
            SELECT i.person_id, i.index_date, f.event_date,
                   LEAST(i.op_end, COALESCE({competing}, i.op_end){cap}) AS censor_date
            FROM {idx} i LEFT JOIN first_event f ON f.person_id = i.person_id
            LEFT JOIN dth d ON d.person_id = i.person_id
            WHERE i.op_end IS NOT NULL AND i.person_id NOT IN (SELECT person_id FROM prevalent_cases)),
        timed AS (
            SELECT CASE WHEN event_date IS NOT NULL AND event_date <= censor_date
                        THEN {days_between(store, 'index_date', 'event_date')}
                        ELSE {days_between(store, 'index_date', 'censor_date')} END AS time,
                   CASE WHEN event_date IS NOT NULL AND event_date <= censor_date THEN 1 ELSE 0 END AS event
            FROM followed)
        SELECT time, SUM(event), SUM(1 - event) FROM timed GROUP BY time ORDER BY time"""


def _counts(store: Store, idx: str, outcome: int | str) -> tuple[int, int]:
    """(persons, excluded because the outcome came first)."""
    if outcome == DEATH:
        prior = f"SELECT DISTINCT i.person_id FROM {idx} i JOIN death d ON d.person_id = i.person_id " \
                f"WHERE d.death_date < i.index_date"
    else:
        prior = (f"SELECT DISTINCT i.person_id FROM {idx} i JOIN cohort o ON o.subject_id = i.person_id "
                 f"WHERE o.cohort_definition_id = {outcome} AND o.cohort_start_date < i.index_date")
    persons = int(store.query_one(f"SELECT COUNT(*) FROM {idx}"))
    excluded = int(store.query_one(f"SELECT COUNT(*) FROM ({prior}) p"))
    return persons, excluded


def life_table(store: Store, cohort_id: int, outcome: int | str,
               max_days: int | None = None) -> tuple[list[tuple[int, int, int]], int, int]:
    """((day, events, censored) rows, persons, excluded) for one cohort, from the engine."""
    with temp_table(store, index_table_sql(store, cohort_id), "mercia_idx") as idx:
        rows = [(int(t), int(e), int(c)) for t, e, c in store.query(_life_table_sql(store, idx, outcome, max_days))]
        persons, excluded = _counts(store, idx, outcome)
    return rows, persons, excluded


def _km_rows(rows: list[tuple[int, int, int]]) -> tuple[list[dict[str, Any]], float | None]:
    """Kaplan-Meier on aggregated (day, events, censored) rows: the life table and the median survival
    (the first day the curve reaches 0.5 or below; None if it never does)."""
    at_risk, steps = sum(e + c for _, e, c in rows), []
    for _, e, c in rows:
        steps.append((at_risk, e))
        at_risk -= e + c
    out, median = [], None
    for (t, e, c), (n, _), (surv, lower, upper) in zip(rows, steps, kaplan_meier(steps)):
        out.append({"time": t, "count_at_risk": n, "count_events": e, "count_censored": c,
                    "survival": surv, "survival_lower": lower, "survival_upper": upper})
        if median is None and surv <= 0.5:
            median = float(t)
    return out, median


def _life_table_stat(name: str, title: str, rows: list[dict[str, Any]], population: int) -> StatTable:
    return StatTable(
        name=name, title=title, kind="life_table", population=population,
        columns=[label("time", "Day"), count("count_at_risk", "At risk"), count("count_events", "Events"),
                 count("count_censored", "Censored"),
                 statistic("survival", ["count_at_risk"], "Survival"),
                 statistic("survival_lower", ["count_at_risk"], "95% CI lower"),
                 statistic("survival_upper", ["count_at_risk"], "95% CI upper")],
        rows=rows)


def survival(store: Store, target_id: int, outcome: int | str, comparator_id: int | None = None,
             max_days: int | None = None, policy: DisclosurePolicy | None = None,
             raw: bool = False) -> AnalysisResult:
    """KM curves for the target (and comparator) cohort; a Cox hazard ratio when both are given."""
    target_id = as_id(target_id, "target cohort id")
    outcome = DEATH if str(outcome).lower() == DEATH else as_id(outcome, "outcome cohort id")
    cohorts = {"target": target_id}
    if comparator_id is not None:
        cohorts["comparator"] = as_id(comparator_id, "comparator cohort id")
    if outcome != DEATH:
        refuse_stale(store, outcome, "outcome cohort")
    summary, tables, aggregated = [], [], {}
    for role, cid in cohorts.items():
        cohort_check(store, cid, f"{role} cohort")
        rows, persons, excluded = life_table(store, cid, outcome, max_days)
        if not rows:
            raise AnalyticsError(f"{role} cohort {cid}: nobody is in observation at index without a prior outcome")
        km_rows, median = _km_rows(rows)
        aggregated[role] = rows
        followed = sum(e + c for _, e, c in rows)
        summary.append({"cohort": f"{role} ({cid})", "count_persons": persons,
                        "count_excluded_prior_outcome": excluded, "count_followed": followed,
                        "count_events": sum(e for _, e, _ in rows), "median_survival_days": median})
        tables.append(_life_table_stat(f"km_{role}", f"Kaplan-Meier: {role} cohort {cid}", km_rows, followed))
    tables.insert(0, StatTable(
        name="survival_summary", title="Follow-up and outcomes",
        columns=[label("cohort", "Cohort"), count("count_persons", "Persons"),
                 # part of the persons: nearly all of them excluded would give the few followed (hidden)
                 count("count_excluded_prior_outcome", "Excluded: outcome before index", denominator="count_persons"),
                 count("count_followed", "Followed"),
                 count("count_events", "Outcomes", denominator="count_followed"),
                 statistic("median_survival_days", ["count_followed", "count_events"], "Median survival (days)")],
        rows=summary))
    if comparator_id is not None:
        tables.append(_cox(aggregated, target_id, cohorts["comparator"]))
    result = AnalysisResult(
        analysis="survival", title=f"Time to {'death' if outcome == DEATH else f'cohort {outcome}'}",
        parameters={"target_cohort_id": target_id, "comparator_cohort_id": comparator_id,
                    "outcome": outcome, "max_days": max_days,
                    "censoring": "end of observation period, death (competing), max_days"}, tables=tables)
    return finish(result, policy, raw)


def _cox(aggregated: dict[str, list[tuple[int, int, int]]], target_id: int, comparator_id: int) -> StatTable:
    """Hazard ratio target vs comparator from a Cox model (Efron ties).  The life-table rows are
    repeated by their counts rather than passed as weights: lifelines' weighted Efron treats tied
    weighted rows differently from the same number of tied people."""
    import numpy as np
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    parts = [(t, flag, 1 if role == "target" else 0, w)
             for role, rows in aggregated.items() for t, e, c in rows for flag, w in ((1, e), (0, c)) if w > 0]
    times, flags, groups, weights = (np.array(column) for column in zip(*parts))
    frame = pd.DataFrame({"duration": np.repeat(times, weights), "event": np.repeat(flags, weights),
                          "target": np.repeat(groups, weights)})
    cph = CoxPHFitter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            cph.fit(frame, duration_col="duration", event_col="event")
            problem = next((str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)), None)
        except ConvergenceError as exc:
            problem = str(exc)
    reason = problem.split(". ")[0] if problem else ""
    estimate = {"hazard_ratio": None, "hr_lower": None, "hr_upper": None, "p_value": None}
    if problem is None:
        summary = cph.summary.loc["target"]
        estimate = {"hazard_ratio": float(summary["exp(coef)"]), "hr_lower": float(summary["exp(coef) lower 95%"]),
                    "hr_upper": float(summary["exp(coef) upper 95%"]), "p_value": float(summary["p"])}
    counts = {role: (sum(e + c for _, e, c in rows), sum(e for _, e, _ in rows)) for role, rows in aggregated.items()}
    basis = ["count_persons_target", "count_events_target", "count_persons_comparator", "count_events_comparator"]
    return StatTable(
        name="cox", title="Cox proportional hazards: target vs comparator",
        columns=[label("comparison", "Comparison"),
                 count("count_persons_target", "Target persons"),
                 count("count_events_target", "Target outcomes", denominator="count_persons_target"),
                 count("count_persons_comparator", "Comparator persons"),
                 count("count_events_comparator", "Comparator outcomes", denominator="count_persons_comparator"),
                 statistic("hazard_ratio", basis, "Hazard ratio", None),
                 statistic("hr_lower", basis, "95% CI lower", None),
                 statistic("hr_upper", basis, "95% CI upper", None), statistic("p_value", basis, "p", None)],
        rows=[{"comparison": f"cohort {target_id} vs cohort {comparator_id}",
               "count_persons_target": counts["target"][0], "count_events_target": counts["target"][1],
               "count_persons_comparator": counts["comparator"][0],
               "count_events_comparator": counts["comparator"][1], **estimate}],
        notes=[] if problem is None else [
            f"The Cox model did not converge, so no hazard ratio is published: {reason}."])
