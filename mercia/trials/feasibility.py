"""Feasibility over time: per site, people newly meeting the computable eligibility each month, the
current prevalent pool, and a projected recruitment curve for given consent and screen-failure rates.

Counts go through the configured disclosure policy like every aggregate.  The projection is computed
from the *published* counts (so it cannot reveal the unrounded ones): with ``P`` the published pool and
``lam`` the published new-eligible count of the last 12 months / 12, expected recruits by month ``m`` are
``mu = (P + lam * m) * (1 - screen_failure) * consent``, with a 95% interval from the Poisson
distribution of mean ``mu`` (uncertainty in ``lam`` itself is not included).

Each answer's true counts are kept with its user and ``as_of``; a count within 1..threshold of one the same
user was given for the same trial, site and month (or pool) in the last ``WINDOW_DAYS`` is hidden, with a note
saying why, so that two answers (as of consecutive days, say) cannot be subtracted to give the few people
who became eligible or left between them.

The counts are those of the eligibility cohort's last run (``Trial.eligibility_run_at``, named in the answer's
parameters): asking runs nothing, as reading a worklist runs nothing; running it again is its own audited
write (``mercia.trials.prescreen.rerun_eligibility``).  Until it has run once there is no answer.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import poisson

from mercia.governance import User
from mercia.governance.identity import iso
from mercia.privacy.disclosure import AnalysisResult, ColumnSpec, DisclosurePolicy, Kind, StatTable, get_policy
from mercia.trials.eligibility import PERSON_SITE, data_as_of, site_list
from mercia.trials.register import Trial, TrialError, TrialRegister, TrialRole

FEASIBILITY_ROLES = (TrialRole.TRIAL_MANAGER, TrialRole.STATISTICIAN, TrialRole.SITE_INVESTIGATOR)
WINDOW_DAYS = 30     # a count is compared with the user's answers for the trial over this many days
POOL = "pool"        # the cell of a site's pool; a month's new eligible are in the cell of their month, YYYY-MM
COUNT_COLUMNS = {"new_eligible": "count_new", "pool": "count_pool"}


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


def _cell(row: dict) -> tuple[str, str]:
    """Where a count sits in every answer, whatever its ``as_of`` or years: its site and month (or the pool)."""
    return row["site"], row.get("month", POOL)


def _near_earlier(register: TrialRegister, actor: User, trial: Trial, as_of: date, monthly: list[dict],
                 pool: list[dict], policy: DisclosurePolicy) -> set[tuple[str, str]]:
    """Keep this answer's true counts and return the cells (``_cell``) that, published beside the user's
    earlier answers for the trial in the window, would give the few people between them (``publish_beside``).
    Two answers of the same cell are compared whatever made them differ (another ``as_of``, new records, a
    dissent recorded): the difference describes the same few people either way.  Zeros are not kept: a count
    within 1..threshold of 0 is small, hidden anyway."""
    counts = {_cell(row): row[column] for rows, column in ((monthly, "count_new"), (pool, "count_pool"))
              for row in rows}
    kept = {cell: persons for cell, persons in counts.items() if persons}
    moment = datetime.now(UTC)
    db = register.db
    with db.transaction():   # read the earlier answers and add this one in one step
        # the table holds the window's answers only, each (user, cell, count) once with when it was last given:
        # answers past the window are never compared again, and a page viewed again adds no rows
        db.execute("DELETE FROM mercia_trial_feasibility_count WHERE trial_id = ? AND asked_at < ?",
                   [trial.trial_id, iso(moment - timedelta(days=WINDOW_DAYS))])
        earlier = db.rows("SELECT site, cell, persons FROM mercia_trial_feasibility_count "
                          "WHERE trial_id = ? AND user_id = ?", [trial.trial_id, actor.id])
        known = {(row["site"], row["cell"], int(row["persons"])) for row in earlier}
        repeated = [cell for cell, persons in kept.items() if (*cell, persons) in known]
        if repeated:
            keys = [f"{site}\x1f{cell}\x1f{kept[(site, cell)]}" for site, cell in repeated]
            db.execute("UPDATE mercia_trial_feasibility_count SET as_of = ?, asked_at = ? WHERE trial_id = ? "
                       "AND user_id = ? AND site || chr(31) || cell || chr(31) || CAST(persons AS VARCHAR) IN "
                       f"({', '.join('?' for _ in keys)})",
                       [as_of.isoformat(), iso(moment), trial.trial_id, actor.id, *keys])
        new = [(cell, persons) for cell, persons in kept.items() if (*cell, persons) not in known]
        if new:
            db.store.insert_arrow("mercia_trial_feasibility_count", pa.table({
                "trial_id": [trial.trial_id] * len(new), "user_id": [actor.id] * len(new),
                "as_of": [as_of.isoformat()] * len(new), "site": [site for (site, _), _ in new],
                "cell": [cell for (_, cell), _ in new], "persons": [persons for _, persons in new],
                "asked_at": [iso(moment)] * len(new)}))
    before: dict[tuple[str, str], list[int]] = {}
    for row in earlier:
        before.setdefault((row["site"], row["cell"]), []).append(int(row["persons"]))
    return {cell for cell, persons in counts.items()
            if not policy.is_small(persons) and policy.publish_beside(persons, before.get(cell, [])) is None}


def _withhold(table: StatTable, cells: set[tuple[str, str]], policy: DisclosurePolicy) -> StatTable:
    """A published count table with ``cells`` (from ``_near_earlier``) hidden, and a note saying why."""
    column = COUNT_COLUMNS[table.name]
    hide = {i for i, row in enumerate(table.rows) if _cell(row) in cells}
    if not hide:
        return table
    where = ", ".join(" ".join(part for part in _cell(table.rows[i]) if part != POOL) for i in sorted(hide))
    return table.model_copy(update={
        "rows": [{**row, column: None} if i in hide else row for i, row in enumerate(table.rows)],
        "redacted": [*table.redacted, *((i, column) for i in sorted(hide))],
        "notes": [*table.notes, f"Hidden beside your earlier answers: {where}. Each is within "
                                f"1-{policy.threshold} of a count you were given for the same trial and cell in the "
                                f"last {WINDOW_DAYS} days, and the two side by side would give the few people "
                                f"between them."]})


def _tables(monthly: list[dict], pool: list[dict]) -> list[StatTable]:
    return [
        StatTable(name="new_eligible", title="People newly meeting the computable eligibility, per site and month",
                  columns=[_label("site"), _label("month"), ColumnSpec(name="count_new", kind=Kind.COUNT)],
                  rows=monthly),
        StatTable(name="pool", title="Prevalent pool: people eligible now, per site",
                  columns=[_label("site"), ColumnSpec(name="count_pool", kind=Kind.COUNT)], rows=pool)]


def _projection_table(projection: list[dict]) -> StatTable:
    stat = lambda name: ColumnSpec(name=name, kind=Kind.STATISTIC, basis=["count_basis"])  # noqa: E731
    return StatTable(
        name="projection", title="Projected cumulative recruitment per site (95% Poisson interval)",
        columns=[_label("site"), _label("month_ahead"), ColumnSpec(name="count_basis", kind=Kind.COUNT),
                 stat("expected"), stat("lower"), stat("upper")], rows=projection)


def _label(name: str) -> ColumnSpec:
    return ColumnSpec(name=name, kind=Kind.LABEL)


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
                policy: DisclosurePolicy | None = None) -> AnalysisResult:
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
    if trial.eligibility_run_at is None:
        raise TrialError(f"trial {trial_id}: its eligibility cohort has not been run yet, so there is nothing to count; "
                         f"run it first (the trial page's 'Run eligibility', POST /api/v1/trials/{trial_id}/eligibility/run "
                         "or mercia trials feasibility --run)")
    policy = policy or get_policy()
    monthly, pool = eligible_counts(register, trial, day, years)
    hidden = _near_earlier(register, actor, trial, day, monthly, pool, policy)
    params: dict[str, Any] = {"trial_id": trial_id, "years": years, "as_of": day.isoformat(), "consent": consent,
                              "screen_failure": screen_failure, "horizon": horizon,
                              "eligibility_run_at": trial.eligibility_run_at,
                              "eligibility_run_by": trial.eligibility_run_by}
    published = policy.apply(AnalysisResult(analysis="trial_feasibility", title=f"Feasibility of {trial.title}",
                                            parameters=params, tables=_tables(monthly, pool)))
    new_eligible, pool_table = (_withhold(t, hidden, policy) for t in published.tables)
    projection = project(new_eligible.rows, pool_table.rows, consent=consent, screen_failure=screen_failure,
                         horizon=horizon)
    controlled = published.model_copy(update={
        "tables": [new_eligible, pool_table, policy.apply(_projection_table(projection))]})
    register.gov.audit.record(actor.username, "trial.feasibility", f"trial:{trial_id}", trial.project_id, **params)
    return controlled
