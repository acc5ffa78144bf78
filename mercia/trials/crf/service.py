"""eCRF business rules: studies, dictionary migrations, schedule, data entry, queries, lock and e-signature.

Every method takes the acting ``User`` and checks the study role it needs (data_entry, monitor,
investigator, data_manager), so the CLI, HTTP routes and web pages share one set of rules.  Every
change is written with an entry in the platform's hash-chained audit log in the same transaction
(who, when, old value, new value and, after a form's first save, the reason), so ``mercia audit
verify`` covers the eCRF history too (21 CFR Part 11.10(e), MHRA GXP data integrity 6.13).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from mercia.governance import Conflict, Forbidden, Governance, GovernanceError, NotFound, Role, User
from mercia.governance.db import now
from mercia.trials.crf import omop
from mercia.trials.crf.dictionary import Change, Dictionary, diff, read_dictionary, validate_value, write_dictionary
from mercia.trials.crf.logic import Record, calculated, parse, shows
from mercia.trials.crf.tables import ensure_crf_tables


class StudyRole(StrEnum):
    DATA_ENTRY = "data_entry"
    MONITOR = "monitor"
    INVESTIGATOR = "investigator"     # may sign forms
    DATA_MANAGER = "data_manager"     # dictionary, schedule, participants, lock/unlock, exports

    @classmethod
    def named(cls, value: str) -> StudyRole:
        """The role a caller named: an unknown name is the caller's mistake (400), naming the roles there are."""
        try:
            return cls(value)
        except ValueError:
            raise GovernanceError(f"{value!r} is not a study role: {', '.join(r.value for r in cls)}") from None


# Those who oversee a study: they read its audit trail and who holds which role in it.
OVERSEERS = (StudyRole.DATA_MANAGER, StudyRole.MONITOR)


class FormStatus(StrEnum):
    """REDCap's form status, with its export codes."""
    INCOMPLETE = "incomplete"
    UNVERIFIED = "unverified"
    COMPLETE = "complete"

    @property
    def code(self) -> str:
        return {"incomplete": "0", "unverified": "1", "complete": "2"}[self.value]


class EntryError(GovernanceError):
    """Data that fails validation; ``problems`` maps each field to why, and the message names the record."""

    def __init__(self, record_id: str, event: str, form: str, problems: dict[str, str]):
        self.problems = problems
        detail = "; ".join(f"{field}: {why}" for field, why in problems.items())
        super().__init__(f"record {record_id}, {event}/{form}: {detail}")


class MigrationRefused(Conflict):
    """A dictionary change that would orphan collected data, refused unless forced with a reason."""

    def __init__(self, orphans: list[str]):
        self.orphans = orphans
        super().__init__("the new dictionary would orphan collected data: " + "; ".join(orphans)
                         + " (force it with a reason to apply anyway)")


@dataclass(frozen=True)
class Migration:
    version: int
    changes: list[Change]
    orphans: list[str]
    applied: bool


@dataclass(frozen=True)
class Study:
    id: int
    name: str
    title: str
    dictionary_version: int
    dictionary: Dictionary | None


_KEY = re.compile(r"[A-Za-z0-9_.-]{1,100}")   # study names and record ids: part of audit targets split on ':'


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def entered_fields(definition: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The fields of ``definition`` (``CrfService.definition``) a person enters: not calculated or
    descriptive fields, nor the record id."""
    return [f for f in definition["fields"]
            if f["type"] not in ("calc", "descriptive") and f["name"] != definition["record_id_field"]]


def entered_values(definition: Mapping[str, Any], submitted: Mapping[str, str], current: Mapping[str, str]
                   ) -> dict[str, str]:
    """What a form's submission says for each entered column of ``definition`` (``CrfService.definition``):
    a submitted form replaces what the form held, so a field not sent is '' and a box not sent as ticked
    ('1') is '0' once its column holds a value (browsers send nothing for an unticked box).  A name that is
    not an entered column (``entered_fields``) is left out."""
    values: dict[str, str] = {}
    for f in entered_fields(definition):
        for column in f["columns"]:
            if f["type"] == "checkbox":
                if submitted.get(column) == "1":
                    values[column] = "1"
                elif current.get(column, "") != "":
                    values[column] = "0"
            else:
                values[column] = submitted.get(column, "").strip()
    return values


class CrfService:
    def __init__(self, governance: Governance):
        self.gov = governance
        self.db = governance.db
        ensure_crf_tables(self.db.store)

    # -- studies and people ----------------------------------------------------------------
    def create_study(self, actor: User, name: str, title: str, project_id: int | None = None) -> Study:
        if not actor.has_any(Role.TRIAL_COORDINATOR, Role.ADMIN):
            raise Forbidden("creating a study needs the role Trial coordinator or Admin")
        if not _KEY.fullmatch(name):
            raise GovernanceError(f"study name {name!r}: letters, digits, '_', '-' and '.' only")
        with self.db.transaction():
            if self.db.scalar("SELECT COUNT(*) FROM mercia_crf_study WHERE name = ?", [name]):
                raise Conflict(f"study {name!r} already exists")
            study_id = self.db.next_id("mercia_crf_study", "study_id")
            self.db.insert("mercia_crf_study", {"study_id": study_id, "name": name, "title": title,
                                                "project_id": project_id, "dictionary_version": 0,
                                                "created_by": actor.username, "created_at": now()})
            self.db.insert("mercia_crf_member", {"study_id": study_id, "username": actor.username,
                                                 "role": StudyRole.DATA_MANAGER.value})
            self.gov.audit.record(actor.username, "crf.study.create", f"crf:{name}", project_id, title=title)
        return self.study(name)

    def study(self, name: str) -> Study:
        row = self.db.row("SELECT * FROM mercia_crf_study WHERE name = ?", [name])
        if row is None:
            raise NotFound(f"no study {name!r}")
        text = self.db.scalar("SELECT dictionary FROM mercia_crf_dictionary WHERE study_id = ? AND version = ?",
                              [row["study_id"], row["dictionary_version"]])
        return Study(row["study_id"], row["name"], row["title"], row["dictionary_version"],
                     read_dictionary(text) if text else None)

    def studies_for(self, user: User) -> list[dict[str, Any]]:
        """The studies ``user`` has a role in, with the roles."""
        rows = self.db.rows("SELECT s.name, s.title, m.role FROM mercia_crf_member m JOIN mercia_crf_study s "
                            "ON s.study_id = m.study_id WHERE m.username = ? ORDER BY s.name, m.role", [user.username])
        found: dict[str, dict[str, Any]] = {}
        for r in rows:
            found.setdefault(r["name"], {"name": r["name"], "title": r["title"], "roles": []})["roles"].append(r["role"])
        return list(found.values())

    def roles(self, user: User, study: Study) -> set[StudyRole]:
        return {StudyRole(r["role"]) for r in self.db.rows(
            "SELECT role FROM mercia_crf_member WHERE study_id = ? AND username = ?", [study.id, user.username])}

    def require(self, user: User, study: Study, *roles: StudyRole) -> None:
        if not self.roles(user, study) & set(roles):
            self.gov.audit.record(user.username, "crf.refused", f"crf:{study.name}",
                                  needed=[r.value for r in roles])
            raise Forbidden(f"{user.username} needs the study role {' or '.join(r.value for r in roles)} "
                            f"in {study.name}")

    def team(self, actor: User, study_name: str) -> list[dict[str, Any]]:
        """Who holds which role in the study now (username, the user's full name if any, role), by role then
        username: for its data managers and monitors, and the read is audited as a read of its audit trail is."""
        study = self.study(study_name)
        self.require(actor, study, *OVERSEERS)
        rows = self.db.rows("SELECT m.username, NULLIF(u.display_name, '') AS display_name, m.role "
                            "FROM mercia_crf_member m LEFT JOIN mercia_user u ON u.username = m.username "
                            "WHERE m.study_id = ? ORDER BY m.role, m.username", [study.id])
        self.gov.audit.record(actor.username, "crf.team.read", f"crf:{study.name}", holders=len(rows))
        return rows

    def add_member(self, actor: User, study_name: str, username: str, role: StudyRole | str) -> None:
        """Give ``username`` the study role; holding it already changes nothing (one row per role held, so
        that ``remove_member`` ends it once)."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        if self.gov.user_by_name(username) is None:
            raise NotFound(f"no user {username!r}")
        role = StudyRole.named(role)
        with self.db.transaction():
            if not self.db.scalar("SELECT COUNT(*) FROM mercia_crf_member WHERE study_id = ? AND username = ? "
                                  "AND role = ?", [study.id, username, role.value]):
                self.db.insert("mercia_crf_member", {"study_id": study.id, "username": username, "role": role.value})
            self.gov.audit.record(actor.username, "crf.member.add", f"crf:{study.name}", user=username, role=role)

    def remove_member(self, actor: User, study_name: str, username: str, role: StudyRole | str, reason: str) -> None:
        """End someone's role in a study, from now: data managers only, never the study's last data
        manager, always with a reason.  The row is deleted; the audit entry (``crf.member.remove``),
        written in the same transaction, keeps who ended whose role, when and why."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        if not reason.strip():
            raise GovernanceError("say why the role ends")
        if self.gov.user_by_name(username) is None:
            raise NotFound(f"no user {username!r}")
        role = StudyRole.named(role)
        with self.db.transaction():
            # Claim the study so that two data managers leaving at the same moment cannot leave it without one.
            self.db.execute("UPDATE mercia_crf_study SET title = title WHERE study_id = ?", [study.id])
            held = self.db.scalar("SELECT count(*) FROM mercia_crf_member WHERE study_id = ? AND username = ? "
                                  "AND role = ?", [study.id, username, role.value])
            if not held:
                raise NotFound(f"{username} is not {role.value} in {study.name}")
            if role is StudyRole.DATA_MANAGER and not self.db.scalar(
                    "SELECT count(*) FROM mercia_crf_member WHERE study_id = ? AND role = ? AND username <> ?",
                    [study.id, role.value, username]):
                raise Conflict(f"{username} is the last data manager of {study.name}: add another first")
            self.db.execute("DELETE FROM mercia_crf_member WHERE study_id = ? AND username = ? AND role = ?",
                            [study.id, username, role.value])
            self.gov.audit.record(actor.username, "crf.member.remove", f"crf:{study.name}", user=username,
                                  role=role.value, reason=reason.strip())

    # -- dictionary versions -----------------------------------------------------------------
    def plan_migration(self, study: Study, new: Dictionary) -> Migration:
        """The diff from the current dictionary, and the collected data each change would orphan."""
        if study.dictionary is None:
            return Migration(1, [Change(f.name, "added", {}) for f in new.fields], [], False)
        changes = diff(study.dictionary, new)
        orphans: list[str] = []
        for change in changes:
            old_field = study.dictionary.by_name.get(change.field)
            if old_field is None:
                continue
            columns = old_field.export_columns() or [old_field.name]
            stored = self.db.rows(
                f"SELECT field_name, value, COUNT(*) AS n FROM mercia_crf_value WHERE study_id = ? AND value <> '' "
                f"AND field_name IN ({', '.join('?' for _ in columns)}) GROUP BY field_name, value",
                [study.id, *columns])
            if not stored:
                continue
            total = sum(r["n"] for r in stored)
            new_field = new.by_name.get(change.field)
            if new_field is None:
                orphans.append(f"{change.field} is removed but holds {total} values")
            elif new_field.form != old_field.form or new_field.field_type != old_field.field_type:
                orphans.append(f"{change.field} moves form or changes type but holds {total} values")
            else:
                kept = set(new_field.export_columns())
                invalid = sum(r["n"] for r in stored
                              if (r["field_name"] not in kept if old_field.field_type == "checkbox"
                                  else validate_value(new_field, r["value"], check_range=False) is not None))
                if invalid:
                    orphans.append(f"{change.field}: {invalid} stored values are not valid under the new definition")
        return Migration(study.dictionary_version + 1, changes, orphans, False)

    def import_dictionary(self, actor: User, study_name: str, text: str, reason: str = "",
                          force: bool = False) -> Migration:
        """Add a dictionary version: never a silent replacement, and refused if it orphans data unless forced."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        new = read_dictionary(text)
        plan = self.plan_migration(study, new)
        if study.dictionary is not None and not plan.changes:
            return plan
        if study.dictionary is not None and not reason.strip():
            raise GovernanceError("changing the dictionary of a study needs a reason")
        if plan.orphans and not force:
            raise MigrationRefused(plan.orphans)
        with self.db.transaction():
            self.db.insert("mercia_crf_dictionary", {
                "study_id": study.id, "version": plan.version, "dictionary": write_dictionary(new),
                "changes": _json([c.to_dict() for c in plan.changes]), "reason": reason, "forced": bool(plan.orphans),
                "created_by": actor.username, "created_at": now()})
            self.db.execute("UPDATE mercia_crf_study SET dictionary_version = ? WHERE study_id = ?",
                            [plan.version, study.id])
            self.gov.audit.record(actor.username, "crf.dictionary.version", f"crf:{study.name}", version=plan.version,
                                  reason=reason, forced=bool(plan.orphans), orphans=plan.orphans,
                                  changes=[c.to_dict() for c in plan.changes])
        return Migration(plan.version, plan.changes, plan.orphans, True)

    def dictionary_versions(self, study_name: str) -> list[dict[str, Any]]:
        study = self.study(study_name)
        return self.db.rows("SELECT version, reason, forced, created_by, created_at, changes FROM mercia_crf_dictionary "
                            "WHERE study_id = ? ORDER BY version", [study.id])

    # -- schedule and participants -------------------------------------------------------------
    def add_event(self, actor: User, study_name: str, arm: str, event_name: str, label: str, forms: list[str],
                  day_offset: int = 0, window_before: int = 0, window_after: int = 0) -> None:
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        if study.dictionary is None:
            raise Conflict("import a data dictionary before defining events")
        unknown = [f for f in forms if f not in study.dictionary.forms]
        if unknown:
            raise NotFound(f"event {event_name}: no form(s) {', '.join(unknown)} in the dictionary")
        with self.db.transaction():
            if self.db.scalar("SELECT COUNT(*) FROM mercia_crf_event WHERE study_id = ? AND event_name = ?",
                              [study.id, event_name]):
                raise Conflict(f"event {event_name} already exists")
            position = self.db.scalar("SELECT COUNT(*) FROM mercia_crf_event WHERE study_id = ?", [study.id]) + 1
            self.db.insert("mercia_crf_event", {
                "study_id": study.id, "arm": arm, "event_name": event_name, "label": label, "day_offset": day_offset,
                "window_before": window_before, "window_after": window_after, "position": position})
            for form in forms:
                self.db.insert("mercia_crf_event_form", {"study_id": study.id, "event_name": event_name, "form_name": form})
            self.gov.audit.record(actor.username, "crf.event.add", f"crf:{study.name}:{event_name}", arm=arm,
                                  forms=forms, day_offset=day_offset, window=[window_before, window_after])

    def events(self, study: Study, arm: str | None = None) -> list[dict[str, Any]]:
        rows = self.db.rows("SELECT * FROM mercia_crf_event WHERE study_id = ? ORDER BY position", [study.id])
        forms = self.db.rows("SELECT event_name, form_name FROM mercia_crf_event_form WHERE study_id = ?", [study.id])
        order = study.dictionary.forms if study.dictionary else []
        for row in rows:
            row["forms"] = sorted((f["form_name"] for f in forms if f["event_name"] == row["event_name"]),
                                  key=lambda f: order.index(f) if f in order else len(order))
        return [r for r in rows if arm is None or r["arm"] == arm]

    def add_participant(self, actor: User, study_name: str, record_id: str, arm: str, start_date: str,
                        person_id: int | None = None) -> None:
        """Enrol a participant by hand; refused when the study takes its participants from a trial."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER, StudyRole.DATA_ENTRY)
        link = self.trial_link(study)
        if link is not None:
            raise Conflict(f"study {study.name} takes its participants from the randomisation of trial "
                           f"{link['trial_id']}; randomise the participant there")
        self._enrol(actor, study, record_id, arm, start_date, person_id)

    def trial_link(self, study: Study) -> dict[str, Any] | None:
        row = self.db.row("SELECT trial_id, arm_map FROM mercia_crf_trial_link WHERE study_id = ?", [study.id])
        return {"trial_id": row["trial_id"], "arm_map": json.loads(row["arm_map"])} if row else None

    def link_trial(self, actor: User, study_name: str, trial_id: str, trial_arms: list[str], blinded: bool,
                   arm_map: Mapping[str, str]) -> None:
        """Take the study's participants from a trial's randomisation: each trial arm maps to a schedule
        arm.  A blinded trial maps every arm to one schedule, or the schedule would reveal the allocation.
        The caller has checked that ``actor`` manages the trial."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        missing = [a for a in trial_arms if a not in arm_map]
        unknown = [a for a in arm_map if a not in trial_arms]
        if missing or unknown:
            raise GovernanceError(f"study {study.name}: the arm map must name each arm of trial {trial_id} "
                                  f"({', '.join(trial_arms)}); missing {missing or 'none'}, unknown {unknown or 'none'}")
        empty = sorted({a for a in arm_map.values() if not self.events(study, a)})
        if empty:
            raise NotFound(f"study {study.name} has no events in arm(s) {', '.join(empty)}")
        if blinded and len(set(arm_map.values())) > 1:
            raise GovernanceError(f"trial {trial_id} is blinded: every arm must follow one schedule arm, or the "
                                  "eCRF would unblind the allocation")
        with self.db.transaction():
            if self.db.scalar("SELECT COUNT(*) FROM mercia_crf_trial_link WHERE study_id = ? OR trial_id = ?",
                              [study.id, trial_id]):
                raise Conflict(f"study {study.name} or trial {trial_id} is already linked")
            if self.db.scalar("SELECT COUNT(*) FROM mercia_crf_participant WHERE study_id = ?", [study.id]):
                raise Conflict(f"study {study.name} already has participants entered by hand")
            self.db.insert("mercia_crf_trial_link", {"study_id": study.id, "trial_id": trial_id,
                                                     "arm_map": _json(dict(arm_map)), "linked_by": actor.username,
                                                     "linked_at": now()})
            self.gov.audit.record(actor.username, "crf.trial.link", f"crf:{study.name}", trial_id=trial_id,
                                  arm_map=dict(arm_map))

    def enrol_randomised(self, actor: User, trial_id: str, person_id: int, arm: str, site: str,
                         start_date: str) -> str | None:
        """Called by randomisation, in its transaction: enrol the participant in the trial's study (if one
        is linked) on the schedule arm of the allocated arm.  Returns the new record id."""
        row = self.db.row("SELECT s.name FROM mercia_crf_trial_link l JOIN mercia_crf_study s "
                          "ON s.study_id = l.study_id WHERE l.trial_id = ?", [trial_id])
        if row is None:
            return None
        study = self.study(row["name"])
        schedule_arm = self.trial_link(study)["arm_map"][arm]
        with self.db.transaction():
            number = self.db.scalar("SELECT COUNT(*) FROM mercia_crf_participant WHERE study_id = ?", [study.id]) + 1
            record_id = f"{site}-{number:04d}"
            self._enrol(actor, study, record_id, schedule_arm, start_date, person_id)
        return record_id

    def _enrol(self, actor: User, study: Study, record_id: str, arm: str, start_date: str,
               person_id: int | None) -> None:
        if not _KEY.fullmatch(record_id):
            raise GovernanceError(f"record id {record_id!r}: letters, digits, '_', '-' and '.' only")
        try:
            date.fromisoformat(start_date)
        except (TypeError, ValueError):
            raise GovernanceError(f"record {record_id}: start date {start_date!r} is not YYYY-MM-DD") from None
        if not self.events(study, arm):
            raise NotFound(f"study {study.name} has no events in arm {arm!r}")
        with self.db.transaction():
            if self.db.scalar("SELECT COUNT(*) FROM mercia_crf_participant WHERE study_id = ? AND record_id = ?",
                              [study.id, record_id]):
                raise Conflict(f"record {record_id} already exists")
            self.db.insert("mercia_crf_participant", {"study_id": study.id, "record_id": record_id, "arm": arm,
                                                      "person_id": person_id, "start_date": start_date,
                                                      "created_at": now()})
            self.gov.audit.record(actor.username, "crf.participant.add", f"crf:{study.name}:{record_id}",
                                  arm=arm, start_date=start_date, person_id=person_id)

    def set_aside_randomised(self, actor: User, trial_id: str, duplicate_id: int, kept_person: int,
                             set_aside_persons: list[int], reason: str, cause_seq: int) -> list[str]:
        """Called by the resolution of a duplicate enrolment, in its transaction: mark the records that the
        set-aside randomisations enrolled in the trial's study (if one is linked).  Nothing is deleted: the
        data stay readable and in the audit trail, but the record takes no more entry and leaves exports
        (unless asked for), so the human is not counted twice.  A record already set aside is not matched
        again (after a merge it shares the kept person's id).  Returns the records marked.  The caller has
        checked that ``actor`` manages the trial."""
        row = self.db.row("SELECT s.name FROM mercia_crf_trial_link l JOIN mercia_crf_study s "
                          "ON s.study_id = l.study_id WHERE l.trial_id = ?", [trial_id])
        if row is None or not set_aside_persons:
            return []
        study = self.study(row["name"])
        marks = ", ".join("?" for _ in set_aside_persons)
        with self.db.transaction():
            records = self.db.rows(
                "SELECT record_id, person_id FROM mercia_crf_participant p WHERE study_id = ? AND person_id IN "
                f"(?, {marks}) AND NOT EXISTS (SELECT 1 FROM mercia_crf_set_aside a WHERE a.study_id = p.study_id "
                "AND a.record_id = p.record_id) ORDER BY record_id", [study.id, kept_person, *set_aside_persons])
            kept = next((r["record_id"] for r in records if r["person_id"] == kept_person), None)
            marked = [r["record_id"] for r in records if r["person_id"] != kept_person]
            at = now()
            for record_id in marked:
                seq = self.gov.audit.record(actor.username, "crf.participant.set_aside",
                                            f"crf:{study.name}:{record_id}", trial_id=trial_id,
                                            duplicate_id=duplicate_id, kept_record=kept, reason=reason,
                                            cause_seq=cause_seq)
                self.db.insert("mercia_crf_set_aside", {
                    "study_id": study.id, "record_id": record_id, "trial_id": trial_id, "duplicate_id": duplicate_id,
                    "kept_record": kept, "reason": reason, "set_aside_by": actor.username, "set_aside_at": at,
                    "audit_seq": seq})
        return marked

    def set_aside(self, study: Study, record_id: str) -> dict[str, Any] | None:
        """Why and when the record was set aside as a duplicate randomisation, or None."""
        return self.db.row("SELECT * FROM mercia_crf_set_aside WHERE study_id = ? AND record_id = ?",
                           [study.id, record_id])

    def _participant(self, study: Study, record_id: str) -> dict[str, Any]:
        row = self.db.row("SELECT * FROM mercia_crf_participant WHERE study_id = ? AND record_id = ?",
                          [study.id, record_id])
        if row is None:
            raise NotFound(f"study {study.name} has no record {record_id!r}")
        return row

    # -- data entry -------------------------------------------------------------------------
    def form_state(self, study: Study, record_id: str, event: str, form: str) -> dict[str, Any] | None:
        return self.db.row("SELECT * FROM mercia_crf_form WHERE study_id = ? AND record_id = ? AND event_name = ? "
                           "AND form_name = ?", [study.id, record_id, event, form])

    def record_values(self, study: Study, record_id: str) -> dict[str, dict[str, str]]:
        """{event: {column: value}} of one participant, soft-deleted forms left out."""
        rows = self.db.rows(
            "SELECT v.event_name, v.field_name, v.value FROM mercia_crf_value v WHERE v.study_id = ? AND v.record_id = ? "
            "AND NOT EXISTS (SELECT 1 FROM mercia_crf_form f WHERE f.study_id = v.study_id AND f.record_id = v.record_id "
            "AND f.event_name = v.event_name AND f.form_name = v.form_name AND f.deleted)", [study.id, record_id])
        found: dict[str, dict[str, str]] = {}
        for r in rows:
            found.setdefault(r["event_name"], {})[r["field_name"]] = r["value"]
        return found

    def form_definition(self, actor: User, study_name: str, form: str) -> dict[str, Any]:
        """A form's fields for a data-entry page: labels, choices, validation, and the branching and
        calculation ASTs the browser evaluates with ``static/crf-logic.js``."""
        study = self.study(study_name)
        self.require(actor, study, *StudyRole)
        return self.definition(study, form)

    def definition(self, study: Study, form: str) -> dict[str, Any]:
        """``form_definition`` without the role check, for a caller that settled its right another way."""
        if study.dictionary is None or form not in study.dictionary.forms:
            raise NotFound(f"study {study.name} has no form {form!r}")
        return {"study": study.name, "form": form, "dictionary_version": study.dictionary_version,
                "record_id_field": study.dictionary.record_id_field, "fields": [
            {"name": f.name, "type": f.field_type, "label": f.label, "note": f.note, "section": f.section_header,
             "choices": f.choices, "validation": f.validation, "min": f.validation_min, "max": f.validation_max,
             "required": f.is_required, "identifier": f.is_identifier, "columns": f.export_columns(),
             "branching": parse(f.branching_logic) if f.branching_logic.strip() else None,
             "calculation": parse(f.choices_or_calc) if f.field_type == "calc" else None}
            for f in study.dictionary.form_fields(form)]}

    def form_data(self, actor: User, study_name: str, record_id: str, event: str, form: str) -> dict[str, Any]:
        """Current values and state (status, lock, signature, voided signature) of one form."""
        study = self.study(study_name)
        self.require(actor, study, *StudyRole)
        self.check_form(study, record_id, event, form)
        columns = {c for f in study.dictionary.form_fields(form) for c in f.export_columns()}
        values = self.record_values(study, record_id).get(event, {})
        return {"record": record_id, "event": event, "form": form,
                "values": {c: v for c, v in values.items() if c in columns},
                "state": self.form_state(study, record_id, event, form), "set_aside": self.set_aside(study, record_id)}

    def overview(self, actor: User, study_name: str) -> dict[str, Any]:
        """Participants and the state of each scheduled form: the study's home page.  Records set aside as
        duplicate randomisations are listed apart (``set_aside``), with why, so they count as no participant."""
        study = self.study(study_name)
        self.require(actor, study, *StudyRole)
        events = self.events(study)
        states = {(r["record_id"], r["event_name"], r["form_name"]): r for r in self.db.rows(
            "SELECT record_id, event_name, form_name, status, locked, deleted, signed_at, signature_voided_at "
            "FROM mercia_crf_form WHERE study_id = ?", [study.id])}
        open_queries = {(r["record_id"], r["event_name"], r["form_name"]): r["n"] for r in self.db.rows(
            "SELECT record_id, event_name, form_name, COUNT(*) AS n FROM mercia_crf_query WHERE study_id = ? "
            "AND status <> 'closed' GROUP BY record_id, event_name, form_name", [study.id])}
        everyone = self.db.rows(
            "SELECT p.record_id, p.arm, p.start_date, a.duplicate_id, a.kept_record, a.reason, a.set_aside_by, "
            "a.set_aside_at FROM mercia_crf_participant p LEFT JOIN mercia_crf_set_aside a ON a.study_id = p.study_id "
            "AND a.record_id = p.record_id WHERE p.study_id = ? ORDER BY p.record_id", [study.id])
        for p in everyone:
            p["forms"] = [{"event": e["event_name"], "event_label": e["label"], "form": form,
                           "state": states.get((p["record_id"], e["event_name"], form)),
                           "open_queries": open_queries.get((p["record_id"], e["event_name"], form), 0)}
                          for e in events if e["arm"] == p["arm"] for form in e["forms"]]
        return {"study": study, "events": events, "participants": [p for p in everyone if p["duplicate_id"] is None],
                "set_aside": [p for p in everyone if p["duplicate_id"] is not None], "link": self.trial_link(study),
                "roles": sorted(r.value for r in self.roles(actor, study))}

    def form_queries(self, actor: User, study_name: str, record_id: str, event: str, form: str) -> list[dict[str, Any]]:
        """The queries on one form, each with its messages, oldest first."""
        study = self.study(study_name)
        self.require(actor, study, *StudyRole)
        queries = self.db.rows("SELECT * FROM mercia_crf_query WHERE study_id = ? AND record_id = ? AND event_name = ? "
                               "AND form_name = ? ORDER BY query_id", [study.id, record_id, event, form])
        for q in queries:
            q["messages"] = self.query_history(q["query_id"])
        return queries

    def check_form(self, study: Study, record_id: str, event: str, form: str) -> None:
        participant = self._participant(study, record_id)
        allowed = {e["event_name"]: e["forms"] for e in self.events(study, participant["arm"])}
        if event not in allowed:
            raise NotFound(f"record {record_id} (arm {participant['arm']}) has no event {event!r}")
        if form not in allowed[event]:
            raise NotFound(f"event {event} has no form {form!r}")

    def save_form(self, actor: User, study_name: str, record_id: str, event: str, form: str,
                  values: Mapping[str, str], reason: str = "", status: FormStatus | str = FormStatus.INCOMPLETE
                  ) -> list[dict[str, str]]:
        """Validate and save entered values; returns the changes (field, old, new) that were recorded."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_ENTRY)
        return self.save_as(actor.username, study, record_id, event, form, values, reason, status)

    def save_as(self, who: str, study: Study, record_id: str, event: str, form: str, values: Mapping[str, str],
                reason: str = "", status: FormStatus | str = FormStatus.INCOMPLETE) -> list[dict[str, str]]:
        """``save_form`` once the caller's right to enter data is settled: ``who`` is recorded as the author
        (a study member's username, or ``participant:<record>`` for a survey answered through its link)."""
        self.check_form(study, record_id, event, form)
        status = FormStatus(status)
        fields = study.dictionary.form_fields(form)
        record_id_field = study.dictionary.record_id_field
        columns = {c: f for f in fields for c in f.export_columns()
                   if f.field_type != "calc" and f.name != record_id_field}
        problems = {name: ("is the record id, which the record is created with and is not entered"
                           if name == record_id_field else "not a field of this form")
                    for name in values if name not in columns}
        for name, value in values.items():
            if name in columns:
                why = validate_value(columns[name], str(value))
                if why:
                    problems[name] = why
        if problems:
            raise EntryError(record_id, event, form, problems)
        all_values = self.record_values(study, record_id)
        current = dict(all_values.get(event, {}))
        merged = {**current, **{k: str(v) for k, v in values.items()}}
        for f in fields:  # calculations and hidden fields follow from the entered values
            if f.field_type == "calc":
                merged[f.name] = calculated(parse(f.choices_or_calc), Record(merged, all_values))
        for f in fields:
            hidden = f.branching_logic.strip() and not shows(parse(f.branching_logic), Record(merged, all_values))
            if hidden:
                for column in f.export_columns():
                    if merged.get(column, "") not in ("", "0" if f.field_type == "checkbox" else ""):
                        problems[column] = "has a value but is hidden by its branching logic; clear it"
            elif status is FormStatus.COMPLETE and f.is_required and f.field_type not in ("calc", "descriptive"):
                if f.field_type == "checkbox":
                    if not any(merged.get(c) == "1" for c in f.export_columns()):
                        problems[f.name] = "is required"
                elif merged.get(f.name, "") == "":
                    problems[f.name] = "is required"
        if problems:
            raise EntryError(record_id, event, form, problems)
        form_columns = [c for f in fields for c in f.export_columns()]
        changes = [{"field": c, "old": current.get(c, ""), "new": merged.get(c, "")} for c in form_columns
                   if merged.get(c, "") != current.get(c, "") and not (c not in current and merged.get(c, "") == "")]
        with self.db.transaction():
            state = self.form_state(study, record_id, event, form)
            if state and state["locked"]:
                raise Conflict(f"record {record_id}, {event}/{form} is locked; it must be unlocked (with a reason) "
                               "before it can be edited")
            if state and state["deleted"]:
                raise Conflict(f"record {record_id}, {event}/{form} was deleted")
            set_aside = self.set_aside(study, record_id)
            if set_aside:
                elsewhere = f"; enter them in record {set_aside['kept_record']}" if set_aside["kept_record"] else ""
                raise Conflict(f"record {record_id} was set aside as a duplicate randomisation (duplicate enrolment "
                               f"{set_aside['duplicate_id']}); its data are kept but no more are entered{elsewhere}")
            if state and (changes or status.value != state["status"]) and not reason.strip():
                raise EntryError(record_id, event, form, {"reason": "a reason for change is needed after the first save"})
            if not changes and state and status.value == state["status"]:
                return []
            at = now()
            seq = self.gov.audit.record(who, "crf.form.save", f"crf:{study.name}:{record_id}:{event}:{form}",
                                        changes=changes, reason=reason or None, status=status.value,
                                        first_save=state is None, dictionary_version=study.dictionary_version)
            for change in changes:
                self.db.execute("DELETE FROM mercia_crf_value WHERE study_id = ? AND record_id = ? AND event_name = ? "
                                "AND field_name = ?", [study.id, record_id, event, change["field"]])
                self.db.insert("mercia_crf_value", {
                    "study_id": study.id, "record_id": record_id, "event_name": event, "form_name": form,
                    "field_name": change["field"], "value": change["new"], "saved_by": who,
                    "saved_at": at, "reason": reason or None, "audit_seq": seq})
            self._write_through(who, study, record_id, event, form, fields, merged, seq)
            if state is None:
                self.db.insert("mercia_crf_form", {
                    "study_id": study.id, "record_id": record_id, "event_name": event, "form_name": form,
                    "status": status.value, "locked": False, "deleted": False, "updated_at": at})
            else:
                self._update_form(study, record_id, event, form, status=status.value, updated_at=at)
        return changes

    def _write_through(self, who: str, study: Study, record_id: str, event: str, form: str, fields: list,
                       values: Mapping[str, str], cause: int | None) -> None:
        """Bring the participant's OMOP rows (mapped fields, PROM scores) and PROM responses from this form
        up to date, auditing what changed beside the entry of the save or delete that caused it.  A
        participant without a person_id has no OMOP record, but their PROM answers still reach the PROMs store."""
        participant = self._participant(study, record_id)
        if participant["person_id"] is None:
            fields = [f for f in fields if "PROM" in f.tags]
        if not any({"OMOP", "LOINC", "PROM"} & f.tags.keys() for f in fields):
            return
        on = omop.visit_date(self.db, study.id, participant, event)
        facts = omop.form_facts(self.db.store, study.name, record_id, event, form, fields, dict(values), on)
        if participant["person_id"] is None:
            facts = [f for f in facts if f.table not in omop.OMOP_TABLES]
        changes = omop.write_through(self.db, study.id, study.name, record_id, event, form, facts,
                                     participant["person_id"])
        if changes:
            self.gov.audit.record(who, "crf.omop.write", f"crf:{study.name}:{record_id}:{event}:{form}",
                                  person_id=participant["person_id"], cause_seq=cause, changes=changes)

    def _update_form(self, study: Study, record_id: str, event: str, form: str, **columns: Any) -> None:
        sets = ", ".join(f"{c} = ?" for c in columns)
        self.db.execute(f"UPDATE mercia_crf_form SET {sets} WHERE study_id = ? AND record_id = ? AND event_name = ? "
                        "AND form_name = ?", [*columns.values(), study.id, record_id, event, form])

    def _existing_form(self, study: Study, record_id: str, event: str, form: str) -> dict[str, Any]:
        state = self.form_state(study, record_id, event, form)
        if state is None:
            raise NotFound(f"record {record_id} has no saved {event}/{form}")
        return state

    def delete_form(self, actor: User, study_name: str, record_id: str, event: str, form: str, reason: str) -> None:
        """Soft delete: the values stay (and stay in the audit trail) but leave every export."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        if not reason.strip():
            raise GovernanceError("deleting a form needs a reason")
        with self.db.transaction():
            state = self._existing_form(study, record_id, event, form)
            if state["locked"]:
                raise Conflict(f"record {record_id}, {event}/{form} is locked; unlock it first")
            self._update_form(study, record_id, event, form, deleted=True, updated_at=now())
            seq = self.gov.audit.record(actor.username, "crf.form.delete",
                                        f"crf:{study.name}:{record_id}:{event}:{form}", reason=reason)
            self._write_through(actor.username, study, record_id, event, form, study.dictionary.form_fields(form), {},
                                seq)

    def lock(self, actor: User, study_name: str, record_id: str, event: str, form: str) -> None:
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        with self.db.transaction():
            state = self._existing_form(study, record_id, event, form)
            if state["locked"]:
                return
            self._update_form(study, record_id, event, form, locked=True, updated_at=now())
            self.gov.audit.record(actor.username, "crf.form.lock", f"crf:{study.name}:{record_id}:{event}:{form}")

    def unlock(self, actor: User, study_name: str, record_id: str, event: str, form: str, reason: str) -> None:
        """Unlock for correction; a signature on the form is voided, visibly (kept, marked void, audited)."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.DATA_MANAGER)
        if not reason.strip():
            raise GovernanceError("unlocking a form needs a reason")
        with self.db.transaction():
            state = self._existing_form(study, record_id, event, form)
            if not state["locked"]:
                return
            voids = bool(state["signed_at"]) and not state["signature_voided_at"]
            at = now()
            extra = {"signature_voided_at": at, "signature_voided_by": actor.username,
                     "signature_void_reason": reason} if voids else {}
            self._update_form(study, record_id, event, form, locked=False, updated_at=at, **extra)
            self.gov.audit.record(actor.username, "crf.form.unlock", f"crf:{study.name}:{record_id}:{event}:{form}",
                                  reason=reason, signature_voided=voids)

    def sign(self, actor: User, study_name: str, record_id: str, event: str, form: str, username: str, password: str,
             meaning: str) -> None:
        """E-signature: the signer re-enters their credentials; records name, time and meaning, and locks."""
        study = self.study(study_name)
        self.require(actor, study, StudyRole.INVESTIGATOR)
        if not meaning.strip():
            raise GovernanceError("a signature needs its meaning (e.g. 'I approve the data on this form')")
        signer = self.gov.confirm_signer(actor, username, password, "crf.sign.refused",
                                         f"crf:{study.name}:{record_id}:{event}:{form}")
        with self.db.transaction():
            state = self._existing_form(study, record_id, event, form)
            if state["status"] != FormStatus.COMPLETE.value:
                raise Conflict(f"record {record_id}, {event}/{form} is {state['status']}; only a complete form is signed")
            if state["signed_at"] and not state["signature_voided_at"]:
                raise Conflict(f"record {record_id}, {event}/{form} is already signed")
            at = now()
            self._update_form(study, record_id, event, form, locked=True, signed_by=signer.username,
                              signed_name=signer.display_name, signed_at=at, signature_meaning=meaning,
                              signature_voided_at=None, signature_voided_by=None, signature_void_reason=None,
                              updated_at=at)
            self.gov.audit.record(actor.username, "crf.form.sign", f"crf:{study.name}:{record_id}:{event}:{form}",
                                  name=signer.display_name, meaning=meaning)

    # -- queries ---------------------------------------------------------------------------
    def raise_query(self, actor: User, study_name: str, record_id: str, event: str, form: str, field: str,
                    text: str) -> int:
        study = self.study(study_name)
        self.require(actor, study, StudyRole.MONITOR, StudyRole.DATA_MANAGER)
        self.check_form(study, record_id, event, form)
        if field not in {f.name for f in study.dictionary.form_fields(form)}:
            raise NotFound(f"form {form} has no field {field!r}")
        with self.db.transaction():
            query_id = self.db.next_id("mercia_crf_query", "query_id")
            at = now()
            self.db.insert("mercia_crf_query", {
                "query_id": query_id, "study_id": study.id, "record_id": record_id, "event_name": event,
                "form_name": form, "field_name": field, "status": "open", "raised_by": actor.username, "raised_at": at})
            self._query_message(query_id, "raise", actor, text, at)
            self.gov.audit.record(actor.username, "crf.query.raise", f"crf:{study.name}:{record_id}:{event}:{form}",
                                  query_id=query_id, field=field, text=text)
        return query_id

    def _query_message(self, query_id: int, action: str, actor: User, text: str, at: str) -> None:
        seq = self.db.scalar("SELECT COUNT(*) FROM mercia_crf_query_message WHERE query_id = ?", [query_id]) + 1
        self.db.insert("mercia_crf_query_message", {"query_id": query_id, "seq": seq, "action": action,
                                                    "author": actor.username, "written_at": at, "text": text})

    def _query_step(self, actor: User, study_name: str, query_id: int, action: str, text: str,
                    roles: tuple[StudyRole, ...], from_status: tuple[str, ...], to_status: str) -> None:
        study = self.study(study_name)
        self.require(actor, study, *roles)
        with self.db.transaction():
            query = self.db.row("SELECT * FROM mercia_crf_query WHERE query_id = ? AND study_id = ?", [query_id, study.id])
            if query is None:
                raise NotFound(f"no query {query_id} in {study.name}")
            if query["status"] not in from_status:
                raise Conflict(f"query {query_id} is {query['status']}; it cannot be {action}ed")
            self.db.execute("UPDATE mercia_crf_query SET status = ? WHERE query_id = ?", [to_status, query_id])
            self._query_message(query_id, action, actor, text, now())
            self.gov.audit.record(actor.username, f"crf.query.{action}",
                                  f"crf:{study.name}:{query['record_id']}:{query['event_name']}:{query['form_name']}",
                                  query_id=query_id, text=text)

    def answer_query(self, actor: User, study_name: str, query_id: int, text: str) -> None:
        self._query_step(actor, study_name, query_id, "answer", text, (StudyRole.DATA_ENTRY,), ("open",), "answered")

    def close_query(self, actor: User, study_name: str, query_id: int, text: str) -> None:
        self._query_step(actor, study_name, query_id, "close", text, (StudyRole.MONITOR, StudyRole.DATA_MANAGER),
                         ("open", "answered"), "closed")

    def reopen_query(self, actor: User, study_name: str, query_id: int, text: str) -> None:
        self._query_step(actor, study_name, query_id, "reopen", text, (StudyRole.MONITOR, StudyRole.DATA_MANAGER),
                         ("answered",), "open")

    def query_history(self, query_id: int) -> list[dict[str, Any]]:
        return self.db.rows("SELECT * FROM mercia_crf_query_message WHERE query_id = ? ORDER BY seq", [query_id])

    # -- the audit trail -----------------------------------------------------------------------
    def audit_trail(self, actor: User, study_name: str, record_id: str | None = None) -> list[dict[str, Any]]:
        """The eCRF entries of the audit log, oldest first; reading it for export is itself audited."""
        study = self.study(study_name)
        self.require(actor, study, *OVERSEERS)
        target = f"crf:{study.name}:{record_id}" if record_id else f"crf:{study.name}"
        # Taken literally: '_' in a study name or record id is LIKE's any-character (another study's trail).
        below, below_params = self.db.store.prefix_match("target", target + ":")
        rows = self.db.rows("SELECT seq, logged_at, actor, action, target, detail FROM mercia_audit "
                            f"WHERE action LIKE 'crf.%' AND (target = ? OR ({below})) ORDER BY seq",
                            [target, *below_params])
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        self.gov.audit.record(actor.username, "crf.audit.export", f"crf:{study.name}", record=record_id,
                              entries=len(rows))
        return rows
