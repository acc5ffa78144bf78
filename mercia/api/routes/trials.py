"""Clinical trials over HTTP: thin calls into ``mercia.trials``, which holds every rule and the audit.

Worklists here are pseudonymous.  Re-identification is deliberately not an endpoint of the research
server: it runs at the patient's own organisation, over that organisation's key map
(``mercia trials worklist --org-db``), which this server never holds.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from mercia.api.auth import current_user
from mercia.api.limits import ParsedOffLoop
from mercia.governance import User
from mercia.services.state import state_of
from mercia.trials.randomise import RandomisationError

router = APIRouter(prefix="/trials", tags=["trials"], route_class=ParsedOffLoop)
DATE = r"^\d{4}-\d{2}-\d{2}$"
PersonId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the participant's person_id")]


class TrialCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trial_id: str = Field(..., min_length=1, max_length=60, description="ISRCTN, EudraCT or IRAS number")
    title: str = Field(..., min_length=1, max_length=300)
    project_id: int = Field(..., ge=1, le=2**63 - 1)
    sponsor: str = Field(..., max_length=200)
    chief_investigator: str = Field(..., max_length=200)
    sites: list[str] = Field(..., min_length=1, max_length=200, description="ODS codes")
    target: int = Field(..., ge=1, le=10_000_000)
    opens_on: str = Field(..., pattern=DATE)
    closes_on: str = Field(..., pattern=DATE)
    eligibility: dict[str, Any] = Field(..., description="ATLAS/Circe cohort definition")
    manual_criteria: list[str] = Field(default_factory=list, max_length=100)
    settings: dict[str, Any] = Field(..., description="randomisation settings (see docs/trials.md)")
    blinded: bool = False


class RoleGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(..., ge=1, le=2**63 - 1)
    role: str = Field(..., pattern="^(trial_manager|site_investigator|research_nurse|statistician|"
                                   "unblinded_pharmacist|care_team)$")
    site: str = Field("", max_length=20)


class RoleEnd(RoleGrant):
    reason: str = Field(..., min_length=1, max_length=500, description="why the role ends (in the delegation log)")


class RoleSignature(RoleGrant):
    username: str = Field(..., min_length=1, max_length=200, description="your own username, re-entered")
    password: str = Field(..., min_length=1, max_length=1000, description="your own password, re-entered")
    meaning: str = Field(..., min_length=1, max_length=500, description="what the signature means (in the log)")


class StatusUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str = Field(..., max_length=30)
    site: str = Field(..., max_length=20)
    reason: str = Field("", max_length=500)
    on: str | None = Field(None, pattern=DATE)
    confirmed: list[str] = Field(default_factory=list, max_length=100)


class RandomiseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    levels: dict[str, str] = Field(default_factory=dict, description="factor -> level")


class UnblindRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(..., min_length=1, max_length=500)


class DuplicateResolution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: int = Field(..., ge=1, le=2**63 - 1, description="the person whose randomisation stands")
    reason: str = Field(..., min_length=1, max_length=500)
    duplicate_id: int | None = Field(None, ge=1, le=2**63 - 1, description="where given, the person must be in it")


class NotificationsRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    up_to: str | None = Field(None, max_length=40, description="mark those created up to this time (ISO-8601, UTC "
                              "unless an offset is given; the newest `created_at` you read), so one arriving "
                              "meanwhile stays unread; default: now")


def _services(request: Request):
    from mercia.trials.recruitment import Recruitment
    from mercia.trials.register import TrialRegister

    state = state_of(request)
    state.require_one_store("Trials")
    register = TrialRegister(state.store, state.gov)
    return state, register, Recruitment(register)


def _allocating(action):
    try:
        return action()
    except RandomisationError as exc:          # the server has no randomisation key configured
        raise HTTPException(503, f"randomisation is not available: {exc}") from None


@router.get("", summary="Trials you hold a role on")
def list_trials(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    state, register, _ = _services(request)
    with state.lock:
        return [{"trial_id": t.trial_id, "title": t.title, "status": t.status, "sites": t.sites, "target": t.target}
                for t in register.trials_for(user)]


@router.post("", status_code=201, summary="Register a trial (you become its trial manager)")
def create_trial(body: TrialCreate, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    state, register, _ = _services(request)
    with state.lock:
        return register.create(user, **body.model_dump()).to_dict()


@router.get("/{trial_id}", summary="One trial")
def get_trial(trial_id: str, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.register import TrialRole

    state, register, _ = _services(request)
    with state.lock:
        return register.require(user, trial_id, *TrialRole).to_dict()


@router.post("/{trial_id}/roles", summary="Give someone a role on the trial (trial managers)")
def grant_role(trial_id: str, body: RoleGrant, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    state, register, _ = _services(request)
    with state.lock:
        register.grant(user, trial_id, body.user_id, body.role, body.site)
    return {"trial_id": trial_id, **body.model_dump()}


@router.post("/{trial_id}/roles/end", summary="End someone's role on the trial from now, with a reason (trial "
             "managers; never the last manager)")
def end_role(trial_id: str, body: RoleEnd, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    state, register, _ = _services(request)
    with state.lock:
        register.revoke(user, trial_id, body.user_id, body.role, body.site, body.reason)
    return {"trial_id": trial_id, **body.model_dump()}


@router.post("/{trial_id}/roles/sign", summary="Sign off someone's held role in the delegation log, re-entering your "
             "credentials (the site's investigator for its staff; a trial manager for trial-wide roles and for site "
             "investigators' own)")
def sign_role(trial_id: str, body: RoleSignature, request: Request,
              user: User = Depends(current_user)) -> dict[str, Any]:
    state, register, _ = _services(request)
    with state.lock:
        register.sign_delegation(user, trial_id, body.user_id, body.role, body.site, body.username, body.password,
                                 body.meaning)
    return {"trial_id": trial_id, **body.model_dump(exclude={"password"})}


@router.get("/{trial_id}/team", summary="The delegation log: who holds which role, from when, granted by whom (any "
            "team member); all=true adds the ended periods (trial managers)")
def team(trial_id: str, request: Request, ended: bool = Query(False, alias="all"),
         user: User = Depends(current_user)) -> list[dict[str, Any]]:
    state, register, _ = _services(request)
    with state.lock:
        return register.team(user, trial_id, ended=ended)


@router.get("/{trial_id}/team.csv", summary="The whole delegation log as CSV, for the trial master file (trial "
            "managers)")
def team_csv(trial_id: str, request: Request, user: User = Depends(current_user)) -> Response:
    from mercia.trials.register import delegation_log_csv

    state, register, _ = _services(request)
    with state.lock:
        rows = register.team(user, trial_id, ended=True)
    return Response(delegation_log_csv(rows), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{trial_id}-delegation-log.csv"'})


@router.get("/{trial_id}/feasibility", summary="Newly eligible per site and month, pool, projection (controlled), "
                                            "as the eligibility cohort's last run found them")
def get_feasibility(trial_id: str, request: Request, years: int = Query(10, ge=1, le=30),
                    consent: float = Query(0.5, ge=0, le=1), screen_failure: float = Query(0.3, ge=0, le=1),
                    horizon: int = Query(24, ge=1, le=120), as_of: str | None = Query(None, pattern=DATE),
                    user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.feasibility import feasibility

    state, register, _ = _services(request)
    with state.lock:
        return feasibility(register, user, trial_id, years=years, consent=consent, screen_failure=screen_failure,
                           horizon=horizon, as_of=as_of).to_json_dict()


@router.post("/{trial_id}/eligibility/run", summary="Run the eligibility cohort again so newly loaded data count in "
                                                   "the feasibility and every worklist (whoever may ask the "
                                                   "feasibility; audited)")
def run_eligibility_cohort(trial_id: str, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.prescreen import rerun_eligibility

    state, register, _ = _services(request)
    with state.lock:
        return rerun_eligibility(register, user, trial_id)


@router.get("/{trial_id}/worklist", summary="A site's pseudonymous pre-screening worklist, as the eligibility "
                                         "cohort's last run found it (the trial's eligibility_run_at)")
def get_worklist(trial_id: str, request: Request, site: str = Query(..., max_length=20),
                 since: str | None = Query(None, pattern=DATE), user: User = Depends(current_user)
                 ) -> list[dict[str, Any]]:
    from mercia.trials.prescreen import worklist

    state, register, _ = _services(request)
    with state.lock:
        return worklist(register, user, trial_id, site, since=since)


@router.post("/{trial_id}/worklist/run", summary="Run the eligibility cohort again so newly loaded data count "
                                                 "(whoever may read the site's worklist; audited)")
def run_worklist(trial_id: str, request: Request, site: str = Query(..., max_length=20),
                 user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.prescreen import rerun_eligibility

    state, register, _ = _services(request)
    with state.lock:
        return rerun_eligibility(register, user, trial_id, site)


@router.post("/{trial_id}/participants/{person_id}/status", summary="Record a recruitment status")
def record_status(trial_id: str, person_id: PersonId, body: StatusUpdate, request: Request,
                  user: User = Depends(current_user)) -> dict[str, Any]:
    state, _, recruitment = _services(request)
    with state.lock:
        return recruitment.record(user, trial_id, person_id, body.status, site=body.site, reason=body.reason,
                                  on=body.on, confirmed=body.confirmed)


@router.post("/{trial_id}/participants/{person_id}/randomise", summary="Randomise a consented, eligible participant")
def randomise(trial_id: str, person_id: PersonId, body: RandomiseRequest, request: Request,
              user: User = Depends(current_user)) -> dict[str, Any]:
    state, _, recruitment = _services(request)
    with state.lock:
        return _allocating(lambda: recruitment.randomise(user, trial_id, person_id, body.levels))


@router.get("/{trial_id}/participants/{person_id}/allocation", summary="An allocation as your role may see it")
def allocation(trial_id: str, person_id: PersonId, request: Request,
               user: User = Depends(current_user)) -> dict[str, Any]:
    state, _, recruitment = _services(request)
    with state.lock:
        return recruitment.allocation(user, trial_id, person_id)


@router.post("/{trial_id}/participants/{person_id}/unblind", summary="Emergency unblinding (audited, notified)")
def unblind(trial_id: str, person_id: PersonId, body: UnblindRequest, request: Request,
            user: User = Depends(current_user)) -> dict[str, Any]:
    state, _, recruitment = _services(request)
    with state.lock:
        return recruitment.unblind(user, trial_id, person_id, body.reason)


@router.get("/{trial_id}/dashboard", summary="Recruitment per site against target")
def dashboard(trial_id: str, request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    state, _, recruitment = _services(request)
    with state.lock:
        return recruitment.dashboard(user, trial_id)


@router.get("/{trial_id}/screening-log", summary="Every status recorded (the trial team; person ids, no arms)")
def screening_log(trial_id: str, request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    state, _, recruitment = _services(request)
    with state.lock:
        return recruitment.screening_log(user, trial_id)


@router.get("/{trial_id}/consort", summary="CONSORT flow counts (controlled with external=true)")
def consort(trial_id: str, request: Request, external: bool = False,
            user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.consort import consort_counts

    state, register, _ = _services(request)
    with state.lock:
        table = consort_counts(register, user, trial_id, external=external)
    return {"boxes": table.display_rows() if external else table.rows, "controlled": external}


@router.get("/{trial_id}/duplicates", summary="Open suspected duplicate enrolments (trial managers, statisticians)")
def duplicates(trial_id: str, request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    from mercia.trials.duplicates import DuplicateEnrolments

    state, register, _ = _services(request)
    with state.lock:
        return DuplicateEnrolments(register).open(user, trial_id)


@router.post("/{trial_id}/duplicates/resolve", summary="Keep one randomisation of a duplicate enrolment (managers)")
def resolve_duplicate(trial_id: str, body: DuplicateResolution, request: Request,
                      user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.duplicates import DuplicateEnrolments

    state, register, _ = _services(request)
    with state.lock:
        return DuplicateEnrolments(register).resolve(user, trial_id, body.keep, body.reason, body.duplicate_id)


@router.get("/{trial_id}/notifications", summary="Your notifications on the trial, newest first (any role on it)")
def notifications(trial_id: str, request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    from mercia.trials.notifications import TrialNotifications

    state, register, _ = _services(request)
    with state.lock:
        return TrialNotifications(register).for_user(user, trial_id)


@router.post("/{trial_id}/notifications/read", summary="Mark your notifications on the trial read, up to a time")
def mark_notifications_read(trial_id: str, body: NotificationsRead, request: Request,
                            user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.notifications import TrialNotifications

    state, register, _ = _services(request)
    with state.lock:
        return {"trial_id": trial_id, "marked": TrialNotifications(register).mark_read(user, trial_id, body.up_to)}
