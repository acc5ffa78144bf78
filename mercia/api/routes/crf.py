"""eCRF data entry over HTTP: the study team, form definitions (with branching ASTs), values, lock, sign,
queries, audit trail and exports.  Thin: the signed-in caller is passed to ``CrfService``, which checks the
study role every action needs and audits it."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mercia.api.auth import current_user
from mercia.api.limits import ParsedOffLoop
from mercia.governance import User
from mercia.services.state import state_of
from mercia.trials.crf.service import CrfService, FormStatus, StudyRole

router = APIRouter(prefix="/crf/studies/{study}", tags=["trials"], route_class=ParsedOffLoop)
FORM = "/records/{record}/events/{event}/forms/{form}"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FormSave(Body):
    values: dict[str, str]
    reason: str = Field("", max_length=2000)
    status: FormStatus = FormStatus.INCOMPLETE


class Reason(Body):
    reason: str = Field(..., min_length=1, max_length=2000)


class Signature(Body):
    username: str
    password: str
    meaning: str = Field(..., min_length=1, max_length=500)


class TeamRole(Body):
    username: str = Field(..., min_length=1, max_length=200)
    role: StudyRole


class TeamRoleEnd(TeamRole):
    reason: str = Field(..., min_length=1, max_length=2000)


class QueryRaise(Body):
    record: str
    event: str
    form: str
    field: str
    text: str = Field(..., min_length=1, max_length=4000)


class QueryStep(Body):
    text: str = Field(..., min_length=1, max_length=4000)


class SurveyInvite(Body):
    record: str
    event: str
    form: str
    days: int = Field(14, ge=1, le=90, description="how long the link stays valid")


def _crf(request: Request) -> CrfService:
    state = state_of(request)
    state.require_one_store("Electronic case report forms")   # they write OMOP rows beside the study's tables
    service = getattr(state, "crf_service", None)
    if service is None:
        service = state.crf_service = CrfService(state.gov)
    return service


@router.get("/team", summary="Who holds which study role now (data managers, monitors); reading it is audited")
def team(study: str, request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return _crf(request).team(user, study)


@router.post("/team", summary="Give someone a study role (data managers); holding it already changes nothing")
def give_role(study: str, body: TeamRole, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    _crf(request).add_member(user, study, body.username, body.role)
    return {"study": study, **body.model_dump()}


@router.post("/team/end", summary="End someone's study role from now, with a reason (data managers; never the "
             "study's last data manager)")
def end_role(study: str, body: TeamRoleEnd, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    _crf(request).remove_member(user, study, body.username, body.role, body.reason)
    return {"study": study, **body.model_dump()}


@router.get("/forms/{form}", summary="A form's fields, with branching and calculation ASTs for the browser")
def form_definition(study: str, form: str, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return _crf(request).form_definition(user, study, form)


@router.get(FORM, summary="A participant's values and the form's state")
def form_data(study: str, record: str, event: str, form: str, request: Request,
              user: User = Depends(current_user)) -> dict[str, Any]:
    return _crf(request).form_data(user, study, record, event, form)


@router.put(FORM, summary="Save values (validated on the server; a reason is needed after the first save)")
def save_form(study: str, record: str, event: str, form: str, body: FormSave, request: Request,
              user: User = Depends(current_user)) -> dict[str, Any]:
    changes = _crf(request).save_form(user, study, record, event, form, body.values, body.reason, body.status)
    return {"changes": changes}


@router.post(FORM + "/lock", summary="Lock a form (data manager)")
def lock(study: str, record: str, event: str, form: str, request: Request,
         user: User = Depends(current_user)) -> dict[str, Any]:
    _crf(request).lock(user, study, record, event, form)
    return {"locked": True}


@router.post(FORM + "/unlock", summary="Unlock a form with a reason; voids its signature")
def unlock(study: str, record: str, event: str, form: str, body: Reason, request: Request,
           user: User = Depends(current_user)) -> dict[str, Any]:
    _crf(request).unlock(user, study, record, event, form, body.reason)
    return {"locked": False}


@router.post(FORM + "/sign", summary="E-sign a complete form, re-entering your credentials (investigator)")
def sign(study: str, record: str, event: str, form: str, body: Signature, request: Request,
         user: User = Depends(current_user)) -> dict[str, Any]:
    _crf(request).sign(user, study, record, event, form, body.username, body.password, body.meaning)
    return {"signed": True}


@router.post("/queries", status_code=201, summary="Raise a data query on a field (monitor)")
def raise_query(study: str, body: QueryRaise, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return {"id": _crf(request).raise_query(user, study, body.record, body.event, body.form, body.field, body.text)}


@router.post("/queries/{query_id}/{action}", summary="Answer (data entry), close or reopen (monitor) a query")
def query_step(study: str, query_id: int, action: Literal["answer", "close", "reopen"], body: QueryStep,
               request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    crf = _crf(request)
    step = {"answer": crf.answer_query, "close": crf.close_query, "reopen": crf.reopen_query}[action]
    step(user, study, query_id, body.text)
    return crf.query_history(query_id)


@router.post("/surveys", status_code=201, summary="Send one scheduled form to its participant as a survey: a "
             "single-use link, returned this once (data entry, data manager)")
def invite(study: str, body: SurveyInvite, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.crf.surveys import SurveyService

    return SurveyService(_crf(request)).invite(user, study, body.record, body.event, body.form,
                                               timedelta(days=body.days))


@router.get("/surveys", summary="The study's survey links and their status (open, used, expired, revoked); no tokens")
def invitations(study: str, request: Request, record: str | None = None,
                user: User = Depends(current_user)) -> list[dict[str, Any]]:
    from mercia.trials.crf.surveys import SurveyService

    return SurveyService(_crf(request)).invitations(user, study, record)


@router.post("/surveys/{survey_id}/revoke", summary="Withdraw an open survey link")
def revoke_survey(study: str, survey_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    from mercia.trials.crf.surveys import SurveyService

    SurveyService(_crf(request)).revoke(user, study, survey_id)
    return {"id": survey_id, "revoked": True}


@router.get("/audit", summary="The study's audit trail (monitor, data manager); reading it is audited")
def audit(study: str, request: Request, record: str | None = None,
          user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return _crf(request).audit_trail(user, study, record)


@router.get("/export", summary="Export the study: CDISC ODM 1.3.2, flat CSV or REDCap CSV (streamed)")
def export(study: str, request: Request, format: Literal["odm", "flat", "redcap"] = "odm",
           history: bool = Query(False, description="ODM only: every change with its audit record (transactional)"),
           set_aside: bool = Query(False, description="the records set aside as duplicate randomisations instead "
                                                      "of the participants"),
           include_identifiers: bool = Query(False, description="the fields the dictionary flags as identifiers "
                                                                "too (left out by default; data managers only)"),
           user: User = Depends(current_user)) -> StreamingResponse:
    from mercia.trials.crf.export import write_csv, write_odm

    crf = _crf(request)
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)   # spills to disk beyond 16 MB
    if format == "odm":
        write_odm(crf, user, study, spool, history=history, set_aside=set_aside,
                  include_identifiers=include_identifiers)
    else:
        import io

        text = io.TextIOWrapper(spool, encoding="utf-8", newline="", write_through=True)
        write_csv(crf, user, study, text, redcap=format == "redcap", set_aside=set_aside,
                  include_identifiers=include_identifiers)
        text.detach()
    spool.seek(0)

    def chunks():
        with spool:
            while block := spool.read(1 << 16):
                yield block

    media = "application/xml" if format == "odm" else "text/csv"
    name = f"{study}.{'xml' if format == 'odm' else 'csv'}"
    return StreamingResponse(chunks(), media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})
