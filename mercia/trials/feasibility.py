"""Feasibility over time: per site, people newly meeting the computable eligibility each month, the
current prevalent pool, and a projected recruitment curve for given consent and screen-failure rates.

Counts go through the configured disclosure policy like every aggregate.  The projection is computed
from the *published* counts (so it cannot reveal the unrounded ones): with ``P`` the published pool and
``lam`` the published new-eligible count of the last 12 months / 12, expected recruits by month ``m`` are
``mu = (P + lam * m) * (1 - screen_failure) * consent``, with a 95% interval from the Poisson
distribution of mean ``mu`` (uncertainty in ``lam`` itself is not included).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
from scipy.stats import poisson

from mercia.governance import User
from mercia.privacy.disclosure import AnalysisResult, ColumnSpec, DisclosurePolicy, Kind, StatTable, get_policy
from mercia.trials.eligibility import PERSON_SITE, data_as_of, run_eligibility, site_list
from mercia.trials.register import Trial, TrialError, TrialRegister, TrialRole

FEASIBILITY_ROLES = (TrialRole.TRIAL_MANAGER, TrialRole.STATISTICIAN, TrialRole.SITE_INVESTIGATOR)


def _months(as_of: date, years: int) -> list[str]:
    y, m = as_of.year - years, as_of.month
    out = []
    for _ in range(12 * years):
        m += 1
        if m > 12:
            y, m = y + 1, 1
        out.append(f"{y:04d}-{m:02d}")
    return out


def eligible_counts(register: TrialRegister, trial: Trial, as_of: date, years: int) -> tuple[list[dict], list[dict]]:
    """Raw (uncontrolled) monthly new-eligible counts and current pool per site; one query each."""
    store = register.store
    months = _months(as_of, years)
    first = f"{months[0]}-01"
    new = store.query_dicts(f"""
        SELECT ps.site, EXTRACT(YEAR FROM f.start) AS y, EXTRACT(MONTH FROM f.start) AS m, COUNT(*) AS n
        FROM (SELECT subject_id, MIN(cohort_start_date) AS start FROM cohort WHERE cohort_definition_id = ?
              GROUP BY subject_id) f
        JOIN ({PERSON_SITE}) ps ON ps.person_id = f.subject_id
        WHERE f.start >= CAST(? AS DATE) AND f.start <= CAST(? AS DATE) AND ps.site IN ({site_list(trial)})
        GROUP BY ps.site, EXTRACT(YEAR FROM f.start), EXTRACT(MONTH FROM f.start)""",
        [trial.cohort_id, first, as_of.isoformat()])
    by_key = {(r["site"], f"{int(r['y']):04d}-{int(r['m']):02d}"): int(r["n"]) for r in new}
    monthly = [{"site": s, "month": mo, "count_new": by_key.get((s, mo), 0)} for s in trial.sites for mo in months]
    pool = {r["site"]: int(r["n"]) for r in store.query_dicts(f"""
        SELECT ps.site, COUNT(DISTINCT c.subject_id) AS n FROM cohort c
        JOIN ({PERSON_SITE}) ps ON ps.person_id = c.subject_id
        WHERE c.cohort_definition_id = ? AND c.cohort_start_date <= CAST(? AS DATE)
          AND c.cohort_end_date >= CAST(? AS DATE) AND ps.site IN ({site_list(trial)})
          AND c.subject_id NOT IN (SELECT person_id FROM death)
          AND c.subject_id NOT IN (SELECT person_id FROM mercia_research_contact_dissent)
        GROUP BY ps.site""", [trial.cohort_id, as_of.isoformat(), as_of.isoformat()])}
    return monthly, [{"site": s, "count_pool": pool.get(s, 0)} for s in trial.sites]


def _tables(monthly: list[dict], pool: list[dict], projection: list[dict]) -> list[StatTable]:
    label = lambda name: ColumnSpec(name=name, kind=Kind.LABEL)  # noqa: E731
    tables = [
        StatTable(name="new_eligible", title="People newly meeting the computable eligibility, per site and month",
                  columns=[label("site"), label("month"), ColumnSpec(name="count_new", kind=Kind.COUNT)],
                  rows=monthly),
        StatTable(name="pool", title="Prevalent pool: people eligible now, per site",
                  columns=[label("site"), ColumnSpec(name="count_pool", kind=Kind.COUNT)], rows=pool)]
    if projection:
        stat = lambda name: ColumnSpec(name=name, kind=Kind.STATISTIC, basis=["count_basis"])  # noqa: E731
        tables.append(StatTable(
            name="projection", title="Projected cumulative recruitment per site (95% Poisson interval)",
            columns=[label("site"), label("month_ahead"), ColumnSpec(name="count_basis", kind=Kind.COUNT),
                     stat("expected"), stat("lower"), stat("upper")], rows=projection))
    return tables


def project(monthly: list[dict], pool: list[dict], *, consent: float, screen_failure: float, horizon: int
            ) -> list[dict]:
    """Expected cumulative recruits and a 95% interval per site for months 1..horizon (published counts in)."""
    rows = []
    months = np.arange(1, horizon + 1)
    for p in pool:
        site = p["site"]
        recent = [r["count_new"] or 0 for r in monthly if r["site"] == site][-12:]
        start = p["count_pool"] or 0
        mu = (start + sum(recent) / 12 * months) * (1 - screen_failure) * consent
        lower, upper = poisson.ppf(0.025, mu), poisson.ppf(0.975, mu)
        for m, expected, lo, hi in zip(months, mu, lower, upper, strict=True):
            rows.append({"site": site, "month_ahead": str(m), "count_basis": start + sum(recent),
                         "expected": round(float(expected), 1), "lower": float(lo) if expected > 0 else 0.0,
                         "upper": float(hi) if expected > 0 else 0.0})
    return rows


def feasibility(register: TrialRegister, actor: User, trial_id: str, *, years: int = 10, as_of: str | None = None,
                consent: float = 0.5, screen_failure: float = 0.3, horizon: int = 24,
                policy: DisclosurePolicy | None = None, refresh: bool = True) -> AnalysisResult:
    """The trial's feasibility, disclosure-controlled (see the module docstring for the projection).
    ``as_of`` defaults to today, or to the last day the records cover if they stop earlier."""
    trial = register.require(actor, trial_id, *FEASIBILITY_ROLES)
    if not (0 <= consent <= 1 and 0 <= screen_failure <= 1):
        raise TrialError("consent and screen-failure rates are proportions between 0 and 1")
    if not 1 <= years <= 30 or not 1 <= horizon <= 120:
        raise TrialError("years is 1-30 and horizon 1-120 months")
    try:
        day = date.fromisoformat(as_of) if as_of else data_as_of(register.store)
    except ValueError as exc:
        raise TrialError(f"as_of must be a date YYYY-MM-DD, not {as_of!r}") from exc
    policy = policy or get_policy()
    if refresh:
        run_eligibility(register.store, trial)
    monthly, pool = eligible_counts(register, trial, day, years)
    params: dict[str, Any] = {"trial_id": trial_id, "years": years, "as_of": day.isoformat(), "consent": consent,
                              "screen_failure": screen_failure, "horizon": horizon}
    published = policy.apply(AnalysisResult(analysis="trial_feasibility", title="", tables=_tables(monthly, pool, [])))
    projection = project(published.table("new_eligible").rows, published.table("pool").rows, consent=consent,
                         screen_failure=screen_failure, horizon=horizon)
    result = AnalysisResult(analysis="trial_feasibility", title=f"Feasibility of {trial.title}", parameters=params,
                            tables=_tables(monthly, pool, projection))
    controlled = policy.apply(result)
    register.gov.audit.record(actor.username, "trial.feasibility", f"trial:{trial_id}", trial.project_id, **params)
    return controlled
