"""People, tokens, pillars, projects and approvals, audit, and jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from mercia.api import models as m
from mercia.api.auth import Caller, current_caller, current_user, require_roles
from mercia.api.limits import ParsedOffLoop
from mercia.governance import DOMAINS, Role, User
from mercia.services.jobs import cancel_job, job_for
from mercia.services.state import state_of

router = APIRouter(route_class=ParsedOffLoop)
admin_only = require_roles(Role.ADMIN)
governance_roles = require_roles(Role.GOVERNANCE_OFFICER, Role.ADMIN)


@router.get("/me", tags=["account"], summary="The signed-in user and their roles")
def me(user: User = Depends(current_user)) -> dict[str, Any]:
    return user.to_dict()


@router.get("/tokens", tags=["account"], summary="Your personal API tokens (never their secrets)")
def list_tokens(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return state_of(request).gov.tokens(user)


@router.post("/tokens", tags=["account"], status_code=201,
             summary="Create a personal API token; the secret is shown only in this response")
def create_token(body: m.TokenRequest, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    token_id, secret = state_of(request).gov.create_token(user, body.name, body.days)
    return {"id": token_id, "name": body.name, "token": secret}


@router.delete("/tokens/{token_id}", tags=["account"], summary="Revoke a token")
def revoke_token(token_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    state_of(request).gov.revoke_token(user, token_id)
    return {"id": token_id, "revoked": True}


@router.post("/account/password", tags=["account"], summary="Change your password (needs the current one)")
def change_password(body: m.PasswordChange, request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    state_of(request).gov.change_password(caller.user, body.current_password, body.new_password,
                                          keep_session=caller.session_token)
    return {"changed": True}


@router.post("/account/second-factor", tags=["account"],
             summary="Start setting up an authenticator app: a new TOTP secret and its otpauth:// address")
def begin_second_factor(request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    secret, uri = state_of(request).gov.begin_enrolment(user)
    return {"secret": secret, "otpauth_uri": uri}


@router.post("/account/second-factor/confirm", tags=["account"],
             summary="Confirm the authenticator with a code; returns one-time recovery codes, shown only here")
def confirm_second_factor(body: m.SecondFactorCode, request: Request,
                          user: User = Depends(current_user)) -> dict[str, Any]:
    return {"recovery_codes": state_of(request).gov.confirm_enrolment(user, body.code)}


@router.delete("/users/{user_id}/second-factor", tags=["admin"], summary="Reset someone's lost authenticator")
def reset_second_factor(user_id: int, request: Request, user: User = Depends(admin_only)) -> dict[str, Any]:
    state_of(request).gov.reset_second_factor(user, user_id)
    return {"id": user_id, "second_factor": False}


@router.get("/users", tags=["admin"], summary="Everyone registered (administrators and governance)")
def list_users(request: Request, user: User = Depends(governance_roles)) -> list[dict[str, Any]]:
    return state_of(request).gov.users()


@router.post("/users", tags=["admin"], status_code=201, summary="Register a person")
def create_user(body: m.UserCreate, request: Request, user: User = Depends(admin_only)) -> dict[str, Any]:
    created = state_of(request).gov.create_user(body.username, body.display_name, body.password, body.roles,
                                                email=body.email, organisation=body.organisation,
                                                actor=user.username)
    return created.to_dict()


@router.post("/users/{user_id}/roles", tags=["admin"], summary="Grant a role")
def grant_role(user_id: int, body: m.RoleGrant, request: Request, user: User = Depends(admin_only)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.grant_role(user, user_id, body.role, body.scope)
    return gov.user(user_id).to_dict()


@router.delete("/users/{user_id}/roles/{role}", tags=["admin"], summary="Take a role away")
def revoke_role(user_id: int, role: Role, request: Request, user: User = Depends(admin_only)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.revoke_role(user, user_id, role)
    return gov.user(user_id).to_dict()


@router.post("/users/{user_id}/deactivate", tags=["admin"], summary="Stop someone signing in; ends sessions, tokens")
def deactivate(user_id: int, request: Request, user: User = Depends(admin_only)) -> dict[str, Any]:
    state_of(request).gov.set_active(user, user_id, False)
    return {"id": user_id, "active": False}


@router.get("/pillars", tags=["governance"], summary="The research pillars and their leads")
def pillars(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return state_of(request).gov.pillars()


@router.put("/pillars/{code}/leads", tags=["governance"], summary="Name a pillar's clinical, academic, executive leads")
def set_pillar_leads(code: str, body: m.PillarLeads, request: Request,
                     user: User = Depends(governance_roles)) -> list[dict[str, Any]]:
    gov = state_of(request).gov
    gov.set_pillar_leads(user, code, clinical=body.clinical_lead, academic=body.academic_lead,
                         executive=body.executive_lead)
    return gov.pillars()


@router.get("/themes", tags=["governance"], summary="Cross-cutting themes")
def themes(request: Request, user: User = Depends(current_user)) -> dict[str, str]:
    return state_of(request).gov.themes()


@router.post("/themes", tags=["governance"], status_code=201, summary="Add a cross-cutting theme")
def add_theme(body: m.ThemeCreate, request: Request, user: User = Depends(governance_roles)) -> dict[str, str]:
    gov = state_of(request).gov
    gov.add_theme(user, body.code, body.name)
    return gov.themes()


@router.get("/domains", tags=["governance"], summary="Data domains a project can be approved for")
def domains(user: User = Depends(current_user)) -> dict[str, str]:
    return DOMAINS


@router.get("/projects", tags=["projects"], summary="Projects you can see")
def list_projects(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return [p.to_dict() for p in state_of(request).gov.projects_for(user)]


@router.post("/projects", tags=["projects"], status_code=201, summary="Start a project (a draft request)")
def create_project(body: m.ProjectFields, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return state_of(request).gov.create_project(user, **body.model_dump()).to_dict()


@router.get("/projects/{project_id}", tags=["projects"], summary="One project")
def get_project(project_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    project = gov.visible_project(user, project_id)
    return project.to_dict() | {"member_names": gov.member_names(project),
                                "your_capacities": gov.open_capacities(user, project)}


@router.patch("/projects/{project_id}", tags=["projects"], summary="Edit a draft or rejected project")
def update_project(project_id: int, body: m.ProjectUpdate, request: Request,
                   user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    return gov.update_project(user, project_id, **body.model_dump(exclude_unset=True)).to_dict()


@router.post("/projects/{project_id}/members", tags=["projects"], summary="Add a member")
def add_member(project_id: int, body: m.MemberRequest, request: Request,
               user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    gov.add_member(user, project_id, body.user_id, body.project_role)
    return gov.project(project_id).to_dict()


@router.post("/projects/{project_id}/members/{user_id}/remove", tags=["projects"],
             summary="Take someone off a project from now, with a reason (its lead in draft, governance, or "
                     "the member themselves; never the last lead)")
def remove_member(project_id: int, user_id: int, body: m.MemberRemoval, request: Request,
                  user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    gov.remove_member(user, project_id, user_id, body.reason)
    return {"project_id": project_id, "user_id": user_id, "removed": True}


@router.post("/projects/{project_id}/submit", tags=["projects"], summary="Submit for approval")
def submit_project(project_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    return gov.submit(user, project_id).to_dict()


@router.post("/projects/{project_id}/decision", tags=["projects"],
             summary="Approve or reject (the pillar's lead and a governance officer both decide)")
def decide_project(project_id: int, body: m.Decision, request: Request,
                   user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    return gov.decide(user, project_id, body.decision, body.reason).to_dict()


@router.post("/projects/{project_id}/lay-review", tags=["projects"],
             summary="A lay reviewer's recommendation and comments on a submitted request")
def lay_review(project_id: int, body: m.LayReview, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    return gov.lay_review(user, project_id, body.recommendation, body.comments, body.public).to_dict()


@router.post("/projects/{project_id}/withdraw", tags=["projects"],
             summary="Withdraw a project for good (its lead or governance); it leaves the public register")
def withdraw_project(project_id: int, body: m.Withdrawal, request: Request,
                     user: User = Depends(current_user)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.visible_project(user, project_id)
    return gov.withdraw(user, project_id, body.reason).to_dict()


@router.put("/pillars/{code}/lay-review", tags=["governance"],
            summary="Whether the pillar's requests need a lay review before the final approval")
def set_lay_review(code: str, body: m.LayReviewSetting, request: Request,
                   user: User = Depends(governance_roles)) -> dict[str, Any]:
    gov = state_of(request).gov
    gov.set_lay_review_required(user, code, body.required)
    return {"pillar": code, "lay_review_required": gov.lay_review_required(code)}


@router.get("/approvals", tags=["projects"], summary="Requests waiting for your decision")
def approvals(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return [p.to_dict() for p in state_of(request).gov.awaiting_decision(user)]


@router.get("/audit", tags=["audit"], summary="Browse the audit log (governance officers)")
def audit(request: Request, user: User = Depends(governance_roles), actor: str | None = None,
          action: str | None = None, project_id: int | None = None, since: str | None = None,
          until: str | None = None, q: str | None = Query(None, max_length=200),
          limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
    gov = state_of(request).gov
    rows = gov.audit.search(actor=actor, action=action, project_id=project_id, since=since, until=until,
                            text=q, limit=limit, offset=offset)
    gov.audit.record(user.username, "audit.view", "audit", filters={"actor": actor, "action": action,
                                                                      "project_id": project_id, "q": q})
    return rows


@router.get("/audit/verify", tags=["audit"], summary="Recompute the audit hash chain")
def audit_verify(request: Request, user: User = Depends(governance_roles)) -> dict[str, Any]:
    result = state_of(request).gov.audit.verify()
    return result.__dict__


@router.get("/jobs", tags=["jobs"], summary="Your background jobs")
def list_jobs(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return state_of(request).jobs.for_user(user.id)


@router.get("/jobs/{job_id}", tags=["jobs"], summary="A job's status, progress and result")
def get_job(job_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return job_for(state_of(request), user, job_id)


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], status_code=202,
             summary="Cancel your queued or running job (a running one stops at its next step; 409 if it has ended)")
def cancel_job_route(job_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return {"job_id": job_id, "status": cancel_job(state_of(request), user, job_id)}


