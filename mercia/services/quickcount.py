"""The quick feasibility count: how many people match a cohort definition, for any signed-in
researcher, before a project exists (as TriNetX users expect).

No output checker sees it, so it is safe by construction: the count goes through the platform's
disclosure policy (counts of 1..threshold hidden, the rest rounded), every count is audited, each
user has a differencing budget (``privacy.differencing``), and a count one criterion apart from one the
user asked before is hidden when the two differ by 1..threshold, so that cohorts differing by one
criterion cannot be subtracted to describe a few people.  A count is asked for with a button, not refreshed
as criteria change: every edit would otherwise be one criterion added or removed, and the budget
would be spent in minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from mercia.governance import Role, User
from mercia.privacy.differencing import Asked, budget, cohort_parts, fingerprint, near_identical
from mercia.privacy.disclosure import get_policy
from mercia.services.errors import Forbidden, Invalid, Throttled
from mercia.services.state import MerciaState

QUICK_COUNT_ROLES = (Role.RESEARCHER, Role.CLINICIAN, Role.TRIAL_COORDINATOR)
WINDOW_DAYS = 30
DIFFERENCING_LIMIT = 10   # repeated or one-criterion-apart counts per user per window
DAILY_LIMIT = 100         # counts of any kind per user per 24 hours
QUICK_COUNT_ROWS = "mercia_quick_count_rows"   # the temporary table a count's rows go to


def quick_count(state: MerciaState, user: User, cohort: dict[str, Any]) -> dict[str, Any]:
    """The disclosure-controlled number of people in ``cohort`` (Circe JSON) across the whole store."""
    from mercia.cohorts import CohortDefinitionError, CohortExpression

    if not user.has_any(*QUICK_COUNT_ROLES):
        raise Forbidden("quick feasibility counts are for researchers, clinicians and trial coordinators")
    try:
        expression = CohortExpression.from_json(orjson.dumps(cohort))
    except CohortDefinitionError as exc:
        raise Invalid(f"the cohort cannot be counted: {exc}") from None
    parts, mine = cohort_parts(cohort), fingerprint(cohort)
    moment = datetime.now(UTC)
    window = timedelta(days=WINDOW_DAYS)
    db = state.gov.db
    refusal = None
    with db.transaction():   # read the budget and spend it in one step: two tabs cannot both pass
        earlier = db.rows("SELECT criteria, differencing, asked_at, persons FROM mercia_quick_count "
                          "WHERE user_id = ? AND asked_at >= ? ORDER BY asked_at", [user.id, _iso(moment - window)])
        today = [r for r in earlier if r["asked_at"] >= _iso(moment - timedelta(days=1))]
        asked = [Asked(frozenset(orjson.loads(r["criteria"])), bool(r["differencing"]),
                       datetime.fromisoformat(r["asked_at"])) for r in earlier]
        verdict = budget(parts, asked, DIFFERENCING_LIMIT, window)
        if len(today) >= DAILY_LIMIT:
            next_free = datetime.fromisoformat(today[0]["asked_at"]) + timedelta(days=1)
            refusal = (f"at most {DAILY_LIMIT} quick counts a day", max(1.0, (next_free - moment).total_seconds()))
        elif verdict.exceeded:
            refusal = (f"you have asked {verdict.used} repeated or near-identical counts (the same cohort, or one "
                       f"criterion added or removed) in {WINDOW_DAYS} days; the limit is {DIFFERENCING_LIMIT}. "
                       "Start a project to run cohorts with an output check", verdict.seconds_until_free(moment))
        else:
            count_id = db.next_id("mercia_quick_count")
            db.insert("mercia_quick_count", {"id": count_id, "user_id": user.id, "fingerprint": mine,
                                             "criteria": orjson.dumps(sorted(parts)).decode(),
                                             "differencing": verdict.differencing, "asked_at": _iso(moment)})
    if refusal:
        state.gov.audit.record(user.username, "feasibility.quick_count.refused", "quick-count", reason=refusal[0])
        raise Throttled(*refusal)
    persons = _count_persons(state, expression)
    db.execute("UPDATE mercia_quick_count SET persons = ? WHERE id = ?", [persons, count_id])
    policy = get_policy()
    # beside the near-identical counts answered before, this one must not give the few between them
    shown = policy.publish_beside(persons, [r["persons"] for r, question in zip(earlier, asked)
                                            if r["persons"] is not None and near_identical(parts, question.parts)])
    hidden = shown is None
    # why a count is hidden: a few people, or a few from a count the user asked before
    hidden_reason = None if not hidden else "small" if policy.is_small(persons) else "near_earlier"
    state.gov.audit.record(user.username, "feasibility.quick_count", f"quick-count:{count_id}",
                           fingerprint=mine, differencing=verdict.differencing,
                           shown=policy.redacted_marker if hidden else shown)
    used = verdict.used + verdict.differencing
    return {"persons": shown, "hidden": hidden, "hidden_reason": hidden_reason, "policy": policy.name,
            "threshold": policy.threshold, "rounding_base": policy.rounding_base, "differencing": verdict.differencing,
            "budget": {"used": used, "limit": DIFFERENCING_LIMIT, "window_days": WINDOW_DAYS}}


def _count_persons(state: MerciaState, expression) -> int:
    """Count the people of the cohort's rows, put in a temporary table (``cohorts.runner.cohort_rows``: the
    rows ``run_cohort`` would write, without attrition); nothing is written to the research store,
    so the count runs on every engine, Spark included."""
    from mercia.cohorts.runner import cohort_rows

    store = state.store
    with state.lock, store.transaction(), cohort_rows(store, expression, QUICK_COUNT_ROWS) as rows:
        return int(store.query_one(f"SELECT COUNT(DISTINCT subject_id) FROM {rows}"))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
