"""Surveys: a participant completes one scheduled eCRF form (a PROM, say) through a single-use link.

The study team invites (``invite``): Mercia returns a fresh random token once, for the team to send as
``/survey/<token>`` by text or e-mail, and keeps only its SHA-256, with the record, event and form it opens,
who sent it, when it expires, and when it was used or revoked.  Whoever holds the link may open that one
form (``open``: a blank form, each showing audited as ``participant:<record>``) and submit it once
(``submit``): the answers replace what the form held (``entered_values``, the staff form's rule: a question
left unanswered is blank, an unticked box '0'), and go through ``CrfService.save_as``, the path staff saves
take, so they are validated, audited (as ``participant:<record>``), scored and written to OMOP exactly as
staff entry is, and the form is marked complete in the transaction that uses up the link.  An unknown,
used, revoked or expired link, or one whose form has been locked or left the schedule since, is refused in
one and the same way (``NotFound``), so a refusal tells nothing about the study; it is audited with the
first characters of the token's hash only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from mercia.governance import Conflict, GovernanceError, NotFound, User
from mercia.governance.db import now
from mercia.governance.identity import iso
from mercia.trials.crf.service import (
    CrfService,
    EntryError,
    FormStatus,
    Study,
    StudyRole,
    entered_fields,
    entered_values,
)

DEFAULT_VALIDITY = timedelta(days=14)
LONGEST_VALIDITY = timedelta(days=90)
SENDERS = (StudyRole.DATA_ENTRY, StudyRole.DATA_MANAGER)
REFUSAL = "this survey link is no longer valid"
SUBMIT_REASON = "answered by the participant through a survey link"
_STATUS = ("CASE WHEN used_at IS NOT NULL THEN 'used' WHEN revoked_at IS NOT NULL THEN 'revoked' "
           "WHEN expires_at <= ? THEN 'expired' ELSE 'open' END")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _target(survey: Mapping[str, Any]) -> str:
    """The audit target of the form an invitation opens."""
    return f"crf:{survey['study'].name}:{survey['record_id']}:{survey['event_name']}:{survey['form_name']}"


def participant(record_id: str) -> str:
    """Who a survey's answers are recorded as having been entered by."""
    return f"participant:{record_id}"


class SurveyService:
    def __init__(self, crf: CrfService):
        self.crf = crf
        self.db = crf.db
        self.audit = crf.gov.audit

    def invite(self, actor: User, study_name: str, record_id: str, event: str, form: str,
               valid_for: timedelta = DEFAULT_VALIDITY) -> dict[str, Any]:
        """A new link for one scheduled form that is open for entry; it replaces the form's earlier open link.
        Returns the invitation with its ``token``, the only time the token is seen."""
        study = self.crf.study(study_name)
        self.crf.require(actor, study, *SENDERS)
        if not timedelta(0) < valid_for <= LONGEST_VALIDITY:
            raise GovernanceError(f"a survey link is valid for 1 to {LONGEST_VALIDITY.days} days")
        self.crf.check_form(study, record_id, event, form)
        token = secrets.token_urlsafe(32)
        with self.db.transaction():
            why_not = self._closed_for_entry(study, record_id, event, form)
            if why_not:
                raise Conflict(f"record {record_id}, {event}/{form} {why_not}; it cannot be sent as a survey")
            at = datetime.now(UTC)
            replaced = [r["survey_id"] for r in self.db.rows(
                "SELECT survey_id FROM mercia_crf_survey WHERE study_id = ? AND record_id = ? AND event_name = ? "
                f"AND form_name = ? AND {_STATUS} = 'open'", [study.id, record_id, event, form, iso(at)])]
            if replaced:
                self.db.execute(f"UPDATE mercia_crf_survey SET revoked_at = ?, revoked_by = ? WHERE survey_id IN "
                                f"({', '.join('?' for _ in replaced)})", [iso(at), actor.username, *replaced])
            survey_id = self.db.next_id("mercia_crf_survey", "survey_id")
            row = {"survey_id": survey_id, "token_sha256": token_hash(token), "study_id": study.id,
                   "record_id": record_id, "event_name": event, "form_name": form, "created_by": actor.username,
                   "created_at": iso(at), "expires_at": iso(at + valid_for)}
            self.db.insert("mercia_crf_survey", row)
            self.audit.record(actor.username, "crf.survey.invite", f"crf:{study.name}:{record_id}:{event}:{form}",
                              survey_id=survey_id, expires_at=row["expires_at"], replaced=replaced)
        return {"id": survey_id, "token": token, "path": f"/survey/{token}", "study": study.name,
                "record": record_id, "event": event, "form": form, "expires_at": row["expires_at"]}

    def _closed_for_entry(self, study: Study, record_id: str, event: str, form: str) -> str | None:
        """Why the form takes no entry now (locked, signed, deleted, record set aside), or None."""
        state = self.crf.form_state(study, record_id, event, form) or {}
        if state.get("locked"):
            return "is locked"
        if state.get("deleted"):
            return "was deleted"
        if self.crf.set_aside(study, record_id):
            return "belongs to a record set aside as a duplicate randomisation"
        return None

    def _usable(self, token: str) -> dict[str, Any] | None:
        """The invitation a link stands for, with its study, if it is open and its form takes entry; else None.
        Whether the form is still on the record's schedule is the caller's to check (``save_as`` does)."""
        survey = self.db.row(f"SELECT s.*, {_STATUS} AS status FROM mercia_crf_survey s WHERE token_sha256 = ?",
                             [now(), token_hash(token)])
        if survey is None or survey["status"] != "open":
            return None
        study = self.crf.study(self.db.scalar("SELECT name FROM mercia_crf_study WHERE study_id = ?",
                                              [survey["study_id"]]))
        if self._closed_for_entry(study, survey["record_id"], survey["event_name"], survey["form_name"]):
            return None
        return {**survey, "study": study}

    def _refuse(self, token: str, step: str) -> NotFound:
        self.audit.record("anonymous", "crf.survey.refused", "crf:survey", token_sha256_prefix=token_hash(token)[:12],
                          step=step)
        return NotFound(REFUSAL)

    def open(self, token: str, refused: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the participant's page needs: the study's title, the event's label and that one form's
        definition (the study's own labels).  The form is shown blank.  Each showing is audited
        (``crf.survey.open``); ``refused`` are the problems of answers just refused, when the form is shown
        again with them, and the entry names their fields (``answers_refused``)."""
        survey = self._usable(token)
        if survey is not None:
            try:
                self.crf.check_form(survey["study"], survey["record_id"], survey["event_name"], survey["form_name"])
            except NotFound:     # the schedule changed since the link was sent
                survey = None
        if survey is None:
            raise self._refuse(token, "open")
        study = survey["study"]
        label = next(e["label"] for e in self.crf.events(study) if e["event_name"] == survey["event_name"])
        self.audit.record(participant(survey["record_id"]), "crf.survey.open", _target(survey),
                          survey_id=survey["survey_id"], **({"answers_refused": sorted(refused)} if refused else {}))
        return {"study_title": study.title, "event_label": label, "expires_at": survey["expires_at"],
                "definition": self.crf.definition(study, survey["form_name"])}

    def submit(self, token: str, answers: Mapping[str, str]) -> list[dict[str, str]]:
        """Save the answers as complete and use up the link, in one transaction.  The answers replace what
        the form held (``entered_values``): a question not answered is blank, a box not ticked ('1') is '0'.
        Answers that fail validation, or name no question of the form, raise ``EntryError`` and leave the
        link usable.  Of two submits at once, the second waits for the first and is then refused."""
        try:
            with self.db.transaction():
                # Claim the invitation's row first, so a concurrent submit of the same link waits here.
                self.db.execute("UPDATE mercia_crf_survey SET used_at = used_at WHERE token_sha256 = ?",
                                [token_hash(token)])
                survey = self._usable(token)
                if survey is not None:
                    return self._save(survey, answers)
        except NotFound:     # the form left the record's schedule since the link was sent
            pass
        raise self._refuse(token, "submit")

    def _save(self, survey: dict[str, Any], answers: Mapping[str, str]) -> list[dict[str, str]]:
        """``submit`` once the link is claimed and usable: the answers, each entered column of the form not
        answered made blank, saved complete as the participant; the link used up."""
        study, record_id, event, form = survey["study"], survey["record_id"], survey["event_name"], survey["form_name"]
        definition = self.crf.definition(study, form)
        questions = {column for f in entered_fields(definition) for column in f["columns"]}
        strangers = {name: "not a field of this form" for name in answers if name not in questions}
        if strangers:
            raise EntryError(record_id, event, form, strangers)
        values = entered_values(definition, answers, self.crf.record_values(study, record_id).get(event, {}))
        changes = self.crf.save_as(participant(record_id), study, record_id, event, form, values, SUBMIT_REASON,
                                   FormStatus.COMPLETE)     # which checks that the form is still on the schedule
        self.db.execute("UPDATE mercia_crf_survey SET used_at = ? WHERE survey_id = ?", [now(), survey["survey_id"]])
        self.audit.record(participant(record_id), "crf.survey.submit", _target(survey),
                          survey_id=survey["survey_id"], changes=len(changes))
        return changes

    def invitations(self, actor: User, study_name: str, record_id: str | None = None) -> list[dict[str, Any]]:
        """The study's survey links, newest first, each with its status (open, used, expired, revoked); never a
        token (none is kept)."""
        study = self.crf.study(study_name)
        self.crf.require(actor, study, *SENDERS)
        of_record, params = ("", [now(), study.id]) if record_id is None else (" AND record_id = ?",
                                                                               [now(), study.id, record_id])
        return self.db.rows(
            f"SELECT survey_id AS id, record_id AS record, event_name AS event, form_name AS form, {_STATUS} AS status, "
            "created_by, created_at, expires_at, used_at, revoked_at, revoked_by FROM mercia_crf_survey "
            f"WHERE study_id = ?{of_record} ORDER BY survey_id DESC", params)

    def revoke(self, actor: User, study_name: str, survey_id: int) -> None:
        """Withdraw an open link (sent to the wrong number, say): from now it is refused like any other."""
        study = self.crf.study(study_name)
        self.crf.require(actor, study, *SENDERS)
        with self.db.transaction():
            survey = self.db.row(f"SELECT *, {_STATUS} AS status FROM mercia_crf_survey WHERE survey_id = ? "
                                 "AND study_id = ?", [now(), survey_id, study.id])
            if survey is None:
                raise NotFound(f"no survey link {survey_id} in {study.name}")
            if survey["status"] != "open":
                raise Conflict(f"survey link {survey_id} is {survey['status']}; only an open link is revoked")
            self.db.execute("UPDATE mercia_crf_survey SET revoked_at = ?, revoked_by = ? WHERE survey_id = ?",
                            [now(), actor.username, survey_id])
            self.audit.record(actor.username, "crf.survey.revoke", f"crf:{study.name}:{survey['record_id']}:"
                              f"{survey['event_name']}:{survey['form_name']}", survey_id=survey_id)
