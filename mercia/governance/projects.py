"""Pillars, themes, research projects and their approval, and who may reach a project's data.

Access to a project's data is decided in one place, ``require_data_access`` (and its yes/no form
``can_read_project_data``), which every service calls.  Decisions are race-free: each one claims
the project with a conditional UPDATE inside its transaction, so of two people deciding at the same
moment exactly one wins and the other gets a Conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from mercia.governance.audit import AuditLog
from mercia.governance.db import GovernanceDB, now, today
from mercia.governance.identity import Identity, User, require_role
from mercia.governance.model import (
    DOMAINS, LAY_RECOMMENDATIONS, PILLARS, PROJECT_ROLES, PURPOSE_CATEGORIES, Conflict, Forbidden, GovernanceError,
    NotFound, ProjectStatus, Role,
)
from mercia.governance.readability import readability

# What a project says about itself for the public register (beside title, pillar and scope).
PUBLIC_TEXT_FIELDS = ("lay_summary", "purpose_category", "legal_basis", "approval_refs", "lead_organisation")
EDITABLE_FIELDS = ("title", "pillar", "purpose", "themes", "ppi_notes", "scope_sources", "scope_domains",
                   "scope_start", "scope_end", "expires_on", *PUBLIC_TEXT_FIELDS)


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    pillar: str
    themes: list[str]
    purpose: str
    ppi_notes: str
    status: ProjectStatus
    scope_sources: list[str]
    scope_domains: list[str]
    scope_start: str | None
    scope_end: str | None
    expires_on: str | None
    created_by: int
    created_at: str
    submitted_at: str | None
    decided_at: str | None
    members: dict[int, str]
    approvals: list[dict[str, Any]]
    lay_summary: str = ""
    purpose_category: str = ""
    legal_basis: str = ""
    approval_refs: str = ""
    lead_organisation: str = ""
    first_approved_at: str | None = None
    lay_reviews: tuple[dict[str, Any], ...] = ()

    @property
    def pillar_name(self) -> str:
        return PILLARS.get(self.pillar, self.pillar)

    @property
    def lead_ids(self) -> list[int]:
        return [u for u, r in self.members.items() if r == "lead"]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "members"}
        d["status"] = self.status.value
        d["pillar_name"] = self.pillar_name
        d["members"] = [{"user_id": u, "project_role": r} for u, r in self.members.items()]
        # public contributors review anonymously: the team sees what was said, not who said it
        d["lay_reviews"] = [{k: v for k, v in r.items() if k != "reviewer_id"} for r in self.lay_reviews]
        d["lay_summary_readability"] = readability(self.lay_summary)
        return d


@dataclass(frozen=True)
class ProjectAccess:
    """What the data-access rules look at of a project: its pillar, status and ``members`` — of whom only
    the caller need be known."""
    id: int
    pillar: str
    status: ProjectStatus
    members: dict[int, str]


def _effective_status(row: dict[str, Any]) -> ProjectStatus:
    """A project's status, expired from the day after ``expires_on`` whether or not ``expire_due`` has run."""
    status = ProjectStatus(row["status"])
    if status is ProjectStatus.APPROVED and row["expires_on"] and row["expires_on"] < today():
        return ProjectStatus.EXPIRED
    return status


class Projects:
    """Pillars, themes, projects, approvals and data access over the ``mercia_project*`` tables."""

    def __init__(self, db: GovernanceDB, audit: AuditLog, identity: Identity):
        self.db = db
        self.audit = audit
        self.identity = identity

    def seed(self, themes: dict[str, str]) -> None:
        """The four pillars always; the themes only into an empty table (they are configurable)."""
        with self.db.transaction():
            for code, name in PILLARS.items():
                if not self.db.scalar("SELECT COUNT(*) FROM mercia_pillar WHERE code = ?", [code]):
                    self.db.insert("mercia_pillar", {"code": code, "name": name})
            if not self.db.scalar("SELECT COUNT(*) FROM mercia_theme"):
                for code, name in themes.items():
                    self.db.insert("mercia_theme", {"code": code, "name": name})

    # -- pillars and themes ---------------------------------------------------------------
    def pillars(self) -> list[dict[str, Any]]:
        rows = self.db.rows("SELECT * FROM mercia_pillar ORDER BY name")
        names = {u["id"]: u["display_name"] for u in self.db.rows("SELECT id, display_name FROM mercia_user")}
        for r in rows:
            for lead in ("clinical_lead", "academic_lead", "executive_lead"):
                r[f"{lead}_name"] = names.get(r[lead])
        return rows

    def set_pillar_leads(self, actor: User, code: str, *, clinical: int | None, academic: int | None,
                         executive: int | None) -> None:
        """Name a pillar's leads; they hold the pillar-lead role for it, and leads replaced here
        lose it.  Nobody names themselves (they would then approve in that capacity)."""
        require_role(actor, Role.ADMIN, Role.GOVERNANCE_OFFICER)
        if code not in PILLARS:
            raise NotFound(f"no pillar {code!r}")
        named = {clinical, academic, executive} - {None}
        if actor.id in named:
            raise Forbidden("nobody can name themselves a pillar lead; ask another governance officer")
        with self.db.transaction():
            for uid in named:
                self.identity.user(uid)
            before = self.db.row("SELECT clinical_lead, academic_lead, executive_lead FROM mercia_pillar WHERE code = ?",
                                 [code])
            self.db.execute("UPDATE mercia_pillar SET clinical_lead = ?, academic_lead = ?, executive_lead = ? "
                            "WHERE code = ?", [clinical, academic, executive, code])
            for uid in named:
                if not self.identity.user(uid).has(Role.PILLAR_LEAD, code):
                    self.identity.add_role(uid, Role.PILLAR_LEAD, code)
            replaced = sorted({v for v in before.values() if v is not None} - named)
            for uid in replaced:
                self.db.execute("DELETE FROM mercia_user_role WHERE user_id = ? AND role = ? AND scope = ?",
                                [uid, Role.PILLAR_LEAD.value, code])
            self.audit.record(actor.username, "pillar.set_leads", f"pillar:{code}", clinical=clinical,
                              academic=academic, executive=executive, replaced=replaced)

    def themes(self) -> dict[str, str]:
        return {r["code"]: r["name"] for r in self.db.rows("SELECT code, name FROM mercia_theme ORDER BY name")}

    def add_theme(self, actor: User, code: str, name: str) -> None:
        require_role(actor, Role.ADMIN, Role.GOVERNANCE_OFFICER)
        code = code.strip().lower().replace(" ", "_")
        if not code or not name.strip():
            raise GovernanceError("a theme needs a code and a name")
        with self.db.transaction():
            if code in self.themes():
                raise Conflict(f"theme {code!r} already exists")
            self.db.insert("mercia_theme", {"code": code, "name": name.strip()})
            self.audit.record(actor.username, "theme.create", f"theme:{code}", name=name)

    # -- projects ---------------------------------------------------------------------------
    def create_project(self, actor: User, *, title: str, pillar: str, purpose: str, themes: list[str] = (),
                       ppi_notes: str = "", scope_sources: list[str] = (), scope_domains: list[str] = (),
                       scope_start: str | None = None, scope_end: str | None = None,
                       expires_on: str | None = None, **public_text: str) -> Project:
        """A draft request.  ``public_text`` holds the fields the public register shows
        (``PUBLIC_TEXT_FIELDS``: lay summary, purpose category, legal basis, approval references,
        lead organisation)."""
        if not actor.has_any(*PROJECT_ROLES):
            raise Forbidden("only researchers, trial coordinators and clinicians can start a project")
        values = self._project_fields(title, pillar, purpose, themes, ppi_notes, scope_sources, scope_domains,
                                      scope_start, scope_end, expires_on, **public_text)
        with self.db.transaction():
            pid = self.db.next_id("mercia_project")
            self.db.insert("mercia_project", {"id": pid, **values, "status": ProjectStatus.DRAFT.value,
                                              "created_by": actor.id, "created_at": now()})
            self.db.insert("mercia_project_member", {"project_id": pid, "user_id": actor.id, "project_role": "lead"})
            self.audit.record(actor.username, "project.create", f"project:{pid}", pid, title=title)
        return self.project(pid)

    def _project_fields(self, title, pillar, purpose, themes, ppi_notes, scope_sources, scope_domains, scope_start,
                        scope_end, expires_on, **public_text: str) -> dict[str, Any]:
        sources, domains, start, end = scope_sources, scope_domains, scope_start, scope_end
        unknown_fields = set(public_text) - set(PUBLIC_TEXT_FIELDS)
        if unknown_fields:
            raise GovernanceError(f"a project has no field {', '.join(sorted(unknown_fields))}")
        category = public_text.get("purpose_category") or ""
        if category and category not in PURPOSE_CATEGORIES:
            raise GovernanceError(f"unknown purpose_category {category!r}; one of {', '.join(PURPOSE_CATEGORIES)}")
        if not title.strip():
            raise GovernanceError("a project needs a title")
        if pillar not in PILLARS:
            raise GovernanceError(f"unknown pillar {pillar!r}; pillars are {', '.join(PILLARS)}")
        unknown = set(themes) - set(self.themes())
        if unknown:
            raise GovernanceError(f"unknown themes: {', '.join(sorted(unknown))}")
        bad_domains = set(domains) - set(DOMAINS)
        if bad_domains:
            raise GovernanceError(f"unknown data domains: {', '.join(sorted(bad_domains))}")
        for name, value in (("scope_start", start), ("scope_end", end), ("expires_on", expires_on)):
            if value:
                try:
                    date.fromisoformat(value)
                except ValueError as exc:
                    raise GovernanceError(f"{name} must be a date YYYY-MM-DD, not {value!r}") from exc
        if start and end and start > end:
            raise GovernanceError("the data date range ends before it starts")
        return {"title": title.strip(), "pillar": pillar, "themes": orjson.dumps(list(themes)).decode(),
                "purpose": purpose.strip(), "ppi_notes": ppi_notes.strip(),
                "scope_sources": orjson.dumps(list(sources)).decode(),
                "scope_domains": orjson.dumps(list(domains)).decode(), "scope_start": start or None,
                "scope_end": end or None, "expires_on": expires_on or None,
                **{name: (public_text.get(name) or "").strip() for name in PUBLIC_TEXT_FIELDS}}

    def update_project(self, actor: User, project_id: int, **fields: Any) -> Project:
        """Edit a draft (or a rejected request, which returns to draft); only its lead may."""
        project = self.project(project_id)
        if actor.id not in project.lead_ids:
            raise Forbidden("only the project's lead can edit it")
        if project.status not in (ProjectStatus.DRAFT, ProjectStatus.REJECTED):
            raise Conflict(f"a {project.status.value} project cannot be edited; approved scope is fixed")
        current = project.to_dict()
        merged = {k: fields.get(k, current[k]) for k in EDITABLE_FIELDS}
        values = self._project_fields(**merged)
        with self.db.transaction():
            sets = ", ".join(f"{k} = ?" for k in values)
            self.db.execute(f"UPDATE mercia_project SET {sets}, status = ? WHERE id = ?",
                            [*values.values(), ProjectStatus.DRAFT.value, project_id])
            self.audit.record(actor.username, "project.update", f"project:{project_id}", project_id,
                              fields=sorted(fields))
        return self.project(project_id)

    def add_member(self, actor: User, project_id: int, user_id: int, project_role: str = "member") -> None:
        """Add someone to a project.  After approval only governance may, and the project goes back
        for a fresh decision: the approval covered the people on it, not whoever joins later."""
        project = self.project(project_id)
        lead_editing_draft = actor.id in project.lead_ids and project.status is ProjectStatus.DRAFT
        if not (lead_editing_draft or actor.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN)):
            raise Forbidden("members are added by the project lead while in draft, later by governance")
        if actor.id == user_id and not lead_editing_draft:
            raise Forbidden("nobody can add themselves to a project; ask its lead or another governance officer")
        if project_role not in ("lead", "member"):
            raise GovernanceError("project_role is 'lead' or 'member'")
        member = self.identity.user(user_id)
        if not member.has_any(*PROJECT_ROLES):
            raise GovernanceError(f"{member.username} is not a researcher, trial coordinator or clinician")
        with self.db.transaction():
            self._claim(project_id)
            if project_role == "member":
                self._keep_a_lead(project_id, user_id, member.username, "made a member")
            self.db.execute("DELETE FROM mercia_project_member WHERE project_id = ? AND user_id = ?",
                            [project_id, user_id])
            self.db.insert("mercia_project_member", {"project_id": project_id, "user_id": user_id,
                                                     "project_role": project_role})
            self.audit.record(actor.username, "project.add_member", f"project:{project_id}", project_id,
                              member=member.username, project_role=project_role)
            self._back_for_decision(actor, project_id, "membership changed")

    def remove_member(self, actor: User, project_id: int, user_id: int, reason: str) -> None:
        """Take someone off a project, from now: whoever may add members (the lead while in draft,
        governance at any time), or the member themselves.  Never the last lead, who answers for the
        project.  The row is deleted; the audit log (``project.remove_member``) keeps who, when and why."""
        if not self.may_remove_member(actor, self.project(project_id), user_id):
            raise Forbidden("members are removed by the project lead while in draft, later by governance, "
                            "or by themselves")
        if not reason.strip():
            raise GovernanceError("say why the member leaves the project")
        member = self.identity.user(user_id)
        with self.db.transaction():
            self._claim(project_id)
            project_role = self.db.scalar("SELECT project_role FROM mercia_project_member "
                                          "WHERE project_id = ? AND user_id = ?", [project_id, user_id])
            if project_role is None:
                raise NotFound(f"{member.username} is not a member of project {project_id}")
            self._keep_a_lead(project_id, user_id, member.username, "taken off")
            self.db.execute("DELETE FROM mercia_project_member WHERE project_id = ? AND user_id = ?",
                            [project_id, user_id])
            self.audit.record(actor.username, "project.remove_member", f"project:{project_id}", project_id,
                              member=member.username, project_role=project_role, reason=reason.strip())

    def _claim(self, project_id: int) -> None:
        """Lock the project's row for this transaction, so that membership changes take turns: two leads
        leaving, or one made a member while the other leaves, cannot both see another lead."""
        self.db.execute("UPDATE mercia_project SET status = status WHERE id = ?", [project_id])

    def _keep_a_lead(self, project_id: int, user_id: int, username: str, change: str) -> None:
        """Refuse a change that would leave the project without a lead, who answers for it."""
        leads = [row["user_id"] for row in self.db.rows(
            "SELECT user_id FROM mercia_project_member WHERE project_id = ? AND project_role = 'lead'", [project_id])]
        if leads == [user_id]:
            raise Conflict(f"{username} is project {project_id}'s only lead and cannot be {change}: "
                           "add another lead first")

    @staticmethod
    def may_remove_member(actor: User, project: Project, user_id: int) -> bool:
        lead_editing_draft = actor.id in project.lead_ids and project.status is ProjectStatus.DRAFT
        return lead_editing_draft or actor.id == user_id or actor.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN)

    def removable_members(self, actor: User, project: Project) -> list[int]:
        """The members ``actor`` may take off ``project`` (the project page offers these): never its only lead."""
        only_lead = project.lead_ids if len(project.lead_ids) == 1 else []
        return [uid for uid in project.members if uid not in only_lead and self.may_remove_member(actor, project, uid)]

    def _back_for_decision(self, actor: User, project_id: int, why: str) -> None:
        """An approved (or expired) project returns to 'submitted' with its approvals cleared."""
        reopened = self.db.scalar(
            "UPDATE mercia_project SET status = ?, submitted_at = ?, decided_at = NULL "
            "WHERE id = ? AND status IN (?, ?) RETURNING id",
            [ProjectStatus.SUBMITTED.value, now(), project_id, ProjectStatus.APPROVED.value,
             ProjectStatus.EXPIRED.value])
        if reopened is not None:
            self.db.execute("DELETE FROM mercia_approval WHERE project_id = ?", [project_id])
            self.audit.record(actor.username, "project.reapproval_needed", f"project:{project_id}", project_id,
                              reason=why)

    def submit(self, actor: User, project_id: int) -> Project:
        project = self.project(project_id)
        if actor.id not in project.lead_ids:
            raise Forbidden("only the project's lead can submit it")
        if project.status not in (ProjectStatus.DRAFT, ProjectStatus.REJECTED):
            raise Conflict(f"a {project.status.value} project cannot be submitted")
        missing = [name for name, value in (("purpose", project.purpose), ("data domains", project.scope_domains),
                                            ("expiry date", project.expires_on),
                                            ("a lay summary for the public register", project.lay_summary),
                                            ("a purpose category", project.purpose_category),
                                            ("the lead organisation", project.lead_organisation))
                   if not value]
        if missing:
            raise GovernanceError(f"before submitting, add: {', '.join(missing)}")
        if project.expires_on <= today():
            raise GovernanceError("the expiry date must be in the future")
        with self.db.transaction():
            self.db.execute("DELETE FROM mercia_approval WHERE project_id = ?", [project_id])
            self.db.execute("DELETE FROM mercia_lay_review WHERE project_id = ?", [project_id])
            self.db.execute("UPDATE mercia_project SET status = ?, submitted_at = ?, decided_at = NULL WHERE id = ?",
                            [ProjectStatus.SUBMITTED.value, now(), project_id])
            self.audit.record(actor.username, "project.submit", f"project:{project_id}", project_id)
        return self.project(project_id)

    def approval_capacities(self, user: User, project: Project) -> list[str]:
        """In which capacities ``user`` may decide on ``project`` (never on one they work on)."""
        if user.id in project.members:
            return []
        capacities = []
        if user.has(Role.PILLAR_LEAD, project.pillar):
            capacities.append("pillar_lead")
        if user.has(Role.GOVERNANCE_OFFICER):
            capacities.append("governance_officer")
        return capacities

    def open_capacities(self, user: User, project: Project) -> list[str]:
        """The capacities in which ``user`` can still decide on ``project`` now (none once they have)."""
        if project.status is not ProjectStatus.SUBMITTED:
            return []
        done = {a["capacity"]: a["approver_id"] for a in project.approvals}
        if user.id in done.values():
            return []
        return [c for c in self.approval_capacities(user, project) if c not in done]

    def check_may_decide(self, actor: User, project: Project) -> list[str]:
        """The capacities in which ``actor`` may decide on ``project`` (asked before a decision is
        even confirmed), or Forbidden."""
        capacities = self.approval_capacities(actor, project)
        if not capacities:
            raise Forbidden("only this pillar's lead or a governance officer, not on the project, can decide")
        return capacities

    def decide(self, actor: User, project_id: int, decision: str, reason: str = "",
               capacity: str | None = None) -> Project:
        """Record an approval or rejection.  Approval needs both the pillar's lead and a governance
        officer, as two different people; one rejection rejects."""
        if decision not in ("approve", "reject"):
            raise GovernanceError("decision is 'approve' or 'reject'")
        project = self.project(project_id)
        capacities = self.check_may_decide(actor, project)
        if decision == "reject" and not reason.strip():
            raise GovernanceError("say why the request is rejected")
        with self.db.transaction():
            # Claim the project first: a row lock (PostgreSQL) or write conflict (DuckDB) orders
            # parallel deciders, and the status test sees what the winner committed.
            claimed = self.db.scalar("UPDATE mercia_project SET status = status WHERE id = ? AND status = ? "
                                     "RETURNING id", [project_id, ProjectStatus.SUBMITTED.value])
            if claimed is None:
                current = self.db.scalar("SELECT status FROM mercia_project WHERE id = ?", [project_id])
                raise Conflict(f"the project is {current}, not awaiting a decision")
            done = {r["capacity"]: r["approver_id"] for r in self.db.rows(
                "SELECT capacity, approver_id FROM mercia_approval WHERE project_id = ?", [project_id])}
            open_capacities = [] if actor.id in done.values() else [c for c in capacities if c not in done]
            if capacity is not None:
                open_capacities = [c for c in open_capacities if c == capacity]
            if not open_capacities:
                raise Conflict("you have already decided on this request, or your part is done")
            chosen = open_capacities[0]
            completes = decision == "approve" and {"pillar_lead", "governance_officer"} <= set(done) | {chosen}
            if completes and self._lay_review_missing(project):
                raise Conflict(f"the {project.pillar_name} pillar needs a lay review before the final decision; "
                               "ask one of its lay reviewers")
            self.db.insert("mercia_approval", {"project_id": project_id, "approver_id": actor.id, "capacity": chosen,
                                               "decision": decision, "reason": reason.strip(), "decided_at": now()})
            status = ProjectStatus.SUBMITTED
            if decision == "reject":
                status = ProjectStatus.REJECTED
            elif completes:
                status = ProjectStatus.APPROVED
            if status is not ProjectStatus.SUBMITTED:
                decided = now()
                self.db.execute("UPDATE mercia_project SET status = ?, decided_at = ?, first_approved_at = "
                                "CASE WHEN ? THEN COALESCE(first_approved_at, ?) ELSE first_approved_at END "
                                "WHERE id = ?", [status.value, decided, status is ProjectStatus.APPROVED, decided,
                                                 project_id])
            self.audit.record(actor.username, f"project.{decision}", f"project:{project_id}", project_id,
                              capacity=chosen, reason=reason, status=status.value)
        return self.project(project_id)

    def expire_due(self, actor: str = "system") -> list[int]:
        """Mark approved projects past their expiry date as expired."""
        with self.db.transaction():
            due = [r["id"] for r in self.db.rows("SELECT id FROM mercia_project WHERE status = ? AND expires_on < ?",
                                                 [ProjectStatus.APPROVED.value, today()])]
            for pid in due:
                self.db.execute("UPDATE mercia_project SET status = ? WHERE id = ?",
                                [ProjectStatus.EXPIRED.value, pid])
                self.audit.record(actor, "project.expire", f"project:{pid}", pid)
        return due

    def project(self, project_id: int) -> Project:
        found = self._projects("WHERE id = ?", [project_id])
        if not found:
            raise NotFound(f"no project {project_id}")
        return found[0]

    def project_status(self, project_id: int) -> ProjectStatus:
        """``project(id).status`` in one statement instead of four, for checks that need nothing else (a trial
        checks it at every step)."""
        row = self.db.row("SELECT status, expires_on FROM mercia_project WHERE id = ?", [project_id])
        if row is None:
            raise NotFound(f"no project {project_id}")
        return _effective_status(row)

    def _projects(self, where: str, params: list[Any]) -> list[Project]:
        """Projects with their members, approvals and lay reviews in four queries, whatever their number."""
        rows = self.db.rows(f"SELECT * FROM mercia_project {where} ORDER BY id DESC", params)
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ", ".join("?" for _ in ids)
        members: dict[int, dict[int, str]] = {i: {} for i in ids}
        for r in self.db.rows("SELECT project_id, user_id, project_role FROM mercia_project_member "
                              f"WHERE project_id IN ({marks}) ORDER BY user_id", ids):
            members[r["project_id"]][r["user_id"]] = r["project_role"]
        approvals: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for r in self.db.rows("SELECT a.project_id, a.approver_id, u.display_name AS approver, a.capacity, a.decision, "
                              "a.reason, a.decided_at FROM mercia_approval a JOIN mercia_user u ON u.id = a.approver_id "
                              f"WHERE a.project_id IN ({marks}) ORDER BY a.decided_at", ids):
            approvals[r.pop("project_id")].append(r)
        lay_reviews: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for r in self.db.rows("SELECT project_id, reviewer_id, recommendation, comments, public, reviewed_at "
                              f"FROM mercia_lay_review WHERE project_id IN ({marks}) ORDER BY reviewed_at", ids):
            lay_reviews[r.pop("project_id")].append(r)
        return [self._project(row, members[row["id"]], approvals[row["id"]], tuple(lay_reviews[row["id"]]))
                for row in rows]

    @staticmethod
    def _project(row: dict[str, Any], members: dict[int, str], approvals: list[dict[str, Any]],
                 lay_reviews: tuple[dict[str, Any], ...]) -> Project:
        return Project(
            id=row["id"], title=row["title"], pillar=row["pillar"], themes=orjson.loads(row["themes"]),
            purpose=row["purpose"], ppi_notes=row["ppi_notes"], status=_effective_status(row),
            scope_sources=orjson.loads(row["scope_sources"]), scope_domains=orjson.loads(row["scope_domains"]),
            scope_start=row["scope_start"], scope_end=row["scope_end"], expires_on=row["expires_on"],
            created_by=row["created_by"], created_at=row["created_at"], submitted_at=row["submitted_at"],
            decided_at=row["decided_at"], members=members, approvals=approvals,
            first_approved_at=row["first_approved_at"], lay_reviews=lay_reviews,
            **{name: row[name] or "" for name in PUBLIC_TEXT_FIELDS})

    def can_view_project(self, user: User, project: Project | ProjectAccess) -> bool:
        """Seeing a project's record (not its data): members, its pillar's leads, governance, admins."""
        return (user.id in project.members or user.has(Role.PILLAR_LEAD, project.pillar)
                or user.has(Role.LAY_REVIEWER, project.pillar) or user.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN))

    def visible_project(self, user: User, project_id: int) -> Project:
        project = self.project(project_id)
        self._require_visible(user, project)
        return project

    def _require_visible(self, user: User, project: Project | ProjectAccess) -> None:
        if not self.can_view_project(user, project):
            raise NotFound(f"no project {project.id}")  # do not reveal other teams' projects exist

    def projects_for(self, user: User) -> list[Project]:
        return [p for p in self._projects("", []) if self.can_view_project(user, p)]

    def awaiting_decision(self, user: User, visible: list[Project] | None = None) -> list[Project]:
        """Requests waiting for ``user`` (from ``visible``, their ``projects_for``, if already read): to
        decide on, or (lay reviewers) to review."""
        return [p for p in (self.projects_for(user) if visible is None else visible)
                if self.open_capacities(user, p) or self.can_lay_review(user, p)]

    def data_access_refusal(self, user: User, project: Project | ProjectAccess) -> str | None:
        """Why ``user`` may not work with ``project``'s data today, or None if they may.

        Only members who still hold a research role reach an approved, unexpired project's data;
        administrators and governance roles see the record but never the data."""
        if user.id not in project.members:
            return f"you are not a member of project {project.id}"
        if user.has(Role.ADMIN):
            return "administrators manage the platform; they do not work with project data"
        if not user.has_any(*PROJECT_ROLES):
            return "working with project data needs the researcher, trial coordinator or clinician role"
        if project.status is not ProjectStatus.APPROVED:
            return (f"project {project.id} is {project.status.value}: its data can be reached only "
                    "while it is approved and unexpired")
        return None

    def can_read_project_data(self, user: User, project: Project) -> bool:
        return self.data_access_refusal(user, project) is None

    def require_data_access(self, user: User, project_id: int) -> Project:
        """The project if ``user`` may work with its data today; otherwise Forbidden/NotFound."""
        project = self.project(project_id)
        self._refuse_data_access(user, project)
        return project

    def check_data_access(self, user: User, project_id: int) -> None:
        """``require_data_access`` for callers that need only the verdict: one statement reads what the
        rules look at (the project's pillar and status, whether ``user`` is a member) instead of the whole
        project (four), as the federation hub asks at every request of a researcher."""
        row = self.db.row("SELECT p.id, p.pillar, p.status, p.expires_on, m.project_role FROM mercia_project p "
                          "LEFT JOIN mercia_project_member m ON m.project_id = p.id AND m.user_id = ? "
                          "WHERE p.id = ?", [user.id, project_id])
        if row is None:
            raise NotFound(f"no project {project_id}")
        members = {} if row["project_role"] is None else {user.id: row["project_role"]}
        self._refuse_data_access(user, ProjectAccess(row["id"], row["pillar"], _effective_status(row), members))

    def _refuse_data_access(self, user: User, project: Project | ProjectAccess) -> None:
        self._require_visible(user, project)
        refusal = self.data_access_refusal(user, project)
        if refusal:
            raise Forbidden(refusal)

    def member_names(self, project: Project) -> list[dict[str, Any]]:
        return [{"user_id": uid, "name": self.identity.user(uid).display_name, "project_role": role}
                for uid, role in project.members.items()]

    # -- withdrawal ---------------------------------------------------------------------------
    def withdraw(self, actor: User, project_id: int, reason: str) -> Project:
        """End a project for good, at any stage: its lead or governance may.  Data access stops at
        once and the project leaves the public register."""
        project = self.project(project_id)
        if not (actor.id in project.lead_ids or actor.has_any(Role.GOVERNANCE_OFFICER, Role.ADMIN)):
            raise Forbidden("only the project's lead or governance can withdraw it")
        if not reason.strip():
            raise GovernanceError("say why the project is withdrawn")
        with self.db.transaction():
            moved = self.db.scalar("UPDATE mercia_project SET status = ?, decided_at = ? WHERE id = ? AND status <> ? "
                                   "RETURNING id", [ProjectStatus.WITHDRAWN.value, now(), project_id,
                                                    ProjectStatus.WITHDRAWN.value])
            if moved is None:
                raise Conflict(f"project {project_id} is already withdrawn")
            self.audit.record(actor.username, "project.withdraw", f"project:{project_id}", project_id,
                              reason=reason.strip())
        return self.project(project_id)

    # -- lay review -----------------------------------------------------------------------------
    def set_lay_review_required(self, actor: User, pillar: str, required: bool) -> None:
        """Whether a pillar's requests need a lay review before the final approval."""
        require_role(actor, Role.ADMIN, Role.GOVERNANCE_OFFICER)
        if pillar not in PILLARS:
            raise NotFound(f"no pillar {pillar!r}")
        with self.db.transaction():
            self.db.execute("UPDATE mercia_pillar SET lay_review_required = ? WHERE code = ?", [required, pillar])
            self.audit.record(actor.username, "pillar.lay_review_required", f"pillar:{pillar}", required=required)

    def lay_review_required(self, pillar: str) -> bool:
        return bool(self.db.scalar("SELECT lay_review_required FROM mercia_pillar WHERE code = ?", [pillar]))

    def _lay_review_missing(self, project: Project) -> bool:
        return self.lay_review_required(project.pillar) and not self.db.scalar(
            "SELECT COUNT(*) FROM mercia_lay_review WHERE project_id = ?", [project.id])

    def can_lay_review(self, user: User, project: Project) -> bool:
        return (project.status is ProjectStatus.SUBMITTED and user.has(Role.LAY_REVIEWER, project.pillar)
                and user.id not in project.members
                and all(r["reviewer_id"] != user.id for r in project.lay_reviews))

    def lay_review(self, actor: User, project_id: int, recommendation: str, comments: str,
                   public: bool = False) -> Project:
        """A public contributor's review of a submitted request.  ``public`` is their consent to
        show the recommendation and comments (never their name) on the public register."""
        project = self.project(project_id)
        if not actor.has(Role.LAY_REVIEWER):
            raise Forbidden("only lay reviewers give lay reviews")
        if not actor.has(Role.LAY_REVIEWER, project.pillar):
            raise Forbidden(f"you are a lay reviewer for another pillar, not {project.pillar_name}")
        if actor.id in project.members:
            raise Forbidden("nobody reviews a project they work on")
        if recommendation not in LAY_RECOMMENDATIONS:
            raise GovernanceError(f"recommendation is one of {', '.join(LAY_RECOMMENDATIONS)}")
        if not comments.strip():
            raise GovernanceError("add comments: what the researchers should hear from the public")
        with self.db.transaction():
            status = self.db.scalar("SELECT status FROM mercia_project WHERE id = ?", [project_id])
            if status != ProjectStatus.SUBMITTED.value:
                raise Conflict(f"the project is {status}, not awaiting review")
            if self.db.scalar("SELECT COUNT(*) FROM mercia_lay_review WHERE project_id = ? AND reviewer_id = ?",
                              [project_id, actor.id]):
                raise Conflict("you have already reviewed this request")
            self.db.insert("mercia_lay_review", {"project_id": project_id, "reviewer_id": actor.id,
                                                 "recommendation": recommendation, "comments": comments.strip(),
                                                 "public": bool(public), "reviewed_at": now()})
            self.audit.record(actor.username, "project.lay_review", f"project:{project_id}", project_id,
                              recommendation=recommendation, public=bool(public))
        return self.project(project_id)
