"""The trial register: what a trial is, who works on it in which role and at which site, and its
randomisation settings (versioned: fixed once the first participant is allocated).

Trial work belongs to an approved governance project: creating a trial needs data access to that
project, and every later step checks that the project is still approved.  Every change is audited.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

import orjson

from mercia.cdm import Store
from mercia.cohorts import CohortDefinitionError, CohortExpression
from mercia.cohorts.registry import new_cohort_id
from mercia.governance import Conflict, Forbidden, Governance, GovernanceError, NotFound, ProjectStatus, User
from mercia.governance.db import now
from mercia.privacy.spreadsheet import inert_rows
from mercia.trials.randomise import RandomisationError, Settings
from mercia.trials.tables import ensure_trial_tables


class TrialRole(StrEnum):
    TRIAL_MANAGER = "trial_manager"
    SITE_INVESTIGATOR = "site_investigator"
    RESEARCH_NURSE = "research_nurse"
    STATISTICIAN = "statistician"
    UNBLINDED_PHARMACIST = "unblinded_pharmacist"
    CARE_TEAM = "care_team"          # the patient's own direct care team: may re-identify at its site


SITE_ROLES = {TrialRole.SITE_INVESTIGATOR, TrialRole.RESEARCH_NURSE, TrialRole.CARE_TEAM,
              TrialRole.UNBLINDED_PHARMACIST}


DELEGATION_LOG_COLUMNS = ["username", "display_name", "role", "site", "granted_at", "granted_by", "ended_at",
                          "ended_by", "end_reason", "signature", "signed_by", "signed_name", "signed_at",
                          "signature_meaning"]
UNKNOWN_GRANT = "unknown (granted before the log was kept)"
# ISRCTN, EudraCT, IRAS and NCT numbers: one path segment of every trial address, and the download file names.
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,59}")
SIGNED, AWAITING_SIGN_OFF, NOT_SIGNED = "signed", "awaiting sign-off", "ended unsigned"


def signature_state(period: dict[str, Any]) -> str:
    """Whether a period of the log is signed off, still awaits it (held), or ended without it."""
    if period["signed_at"]:
        return SIGNED
    return NOT_SIGNED if period["ended_at"] else AWAITING_SIGN_OFF


def signing_role(role: TrialRole, member_investigates_here: bool) -> TrialRole:
    """Who authorises a period (ICH E6(R3): the investigator supervises the duties delegated at the site):
    a site's investigator signs its staff's site roles; a trial manager signs trial-wide roles and every role
    a site investigator holds at their own site (nobody authorises their own duties)."""
    if role in SITE_ROLES and not member_investigates_here:
        return TrialRole.SITE_INVESTIGATOR
    return TrialRole.TRIAL_MANAGER


def delegation_log_csv(rows: list[dict[str, Any]]) -> str:
    """The delegation log (``TrialRegister.team``) as CSV for the trial master file: one row per period,
    ``signature`` saying plainly whether it is signed off."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DELEGATION_LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(inert_rows({**r, "granted_at": r["granted_at"] or UNKNOWN_GRANT, "signature": signature_state(r)}
                                for r in rows))
    return out.getvalue()


class TrialError(GovernanceError):
    """A trial request that the rules refuse; the message names the trial, person or field."""


@dataclass(frozen=True)
class Trial:
    trial_id: str
    title: str
    pillar: str
    sponsor: str
    chief_investigator: str
    project_id: int
    sites: list[str]
    target: int
    opens_on: str
    closes_on: str
    blinded: bool
    eligibility: CohortExpression
    manual_criteria: list[str]
    cohort_id: int
    status: str
    version: int
    settings: Settings
    eligibility_run_at: str | None = None    # the last run of the eligibility cohort (None: never run)
    eligibility_run_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("eligibility", "settings")}
        d["settings"] = self.settings.to_dict()
        d["eligibility"] = self.eligibility.to_dict()
        return d


def _date(name: str, value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except (TypeError, ValueError) as exc:
        raise TrialError(f"{name} must be a date YYYY-MM-DD, not {value!r}") from exc


class TrialRegister:
    """Trials and trial roles over one Store (the research store, where governance lives too)."""

    def __init__(self, store: Store, gov: Governance | None = None):
        self.store = store
        self.gov = gov or Governance(store)
        self.db = self.gov.db
        ensure_trial_tables(store)

    # -- trials ------------------------------------------------------------------------------
    def create(self, actor: User, *, trial_id: str, title: str, project_id: int, sponsor: str,
               chief_investigator: str, sites: list[str], target: int, opens_on: str, closes_on: str,
               eligibility: CohortExpression | str | dict, settings: Settings | dict,
               manual_criteria: list[str] = (), blinded: bool = False) -> Trial:
        project = self.gov.require_data_access(actor, project_id)
        trial_id = trial_id.strip()
        if not trial_id or not title.strip():
            raise TrialError("a trial needs an id (ISRCTN, EudraCT or IRAS number) and a title")
        if not TRIAL_ID.fullmatch(trial_id):
            raise TrialError(f"trial id {trial_id[:60]!r}: up to 60 letters, digits, '-', '_' and '.', "
                             "starting with a letter or digit")
        sites = [s.strip().upper() for s in sites if s.strip()]
        if not sites:
            raise TrialError(f"trial {trial_id}: list at least one site (ODS code)")
        if target < 1:
            raise TrialError(f"trial {trial_id}: target sample size must be at least 1")
        opens_on, closes_on = _date("opens_on", opens_on), _date("closes_on", closes_on)
        if closes_on < opens_on:
            raise TrialError(f"trial {trial_id}: the recruitment window closes before it opens")
        expression = self._expression(trial_id, eligibility)
        settings = self._settings(trial_id, settings)
        with self.db.transaction():
            if self.db.row("SELECT trial_id FROM mercia_trial WHERE trial_id = ?", [trial_id]):
                raise Conflict(f"trial {trial_id} already exists")
            cohort_id = new_cohort_id(self.db.store, f"{trial_id} eligibility", f"trial {trial_id}",
                                      expression.to_json(indent=False))
            self.db.insert("mercia_trial", {
                "trial_id": trial_id, "title": title.strip(), "pillar": project.pillar, "sponsor": sponsor,
                "chief_investigator": chief_investigator, "project_id": project_id,
                "sites": orjson.dumps(sites).decode(), "target": target, "opens_on": opens_on,
                "closes_on": closes_on, "blinded": blinded, "eligibility": expression.to_json(indent=False),
                "manual_criteria": orjson.dumps(list(manual_criteria)).decode(), "cohort_id": cohort_id,
                "status": "open", "version": 1, "created_by": actor.username, "created_at": now()})
            self._insert_settings(trial_id, 1, settings, "initial settings", actor)
            self._insert_role(trial_id, actor.id, TrialRole.TRIAL_MANAGER, "", actor)
            self.gov.audit.record(actor.username, "trial.create", f"trial:{trial_id}", project_id, title=title,
                                  sites=sites, sample_size=target, settings=settings.to_dict())
        # its feasibility and worklists count the eligibility cohort from the start (asking them runs nothing)
        from mercia.trials.prescreen import rerun_eligibility  # (prescreen builds on this module)

        rerun_eligibility(self, actor, trial_id)
        return self.trial(trial_id)

    @staticmethod
    def _expression(trial_id: str, eligibility: CohortExpression | str | dict) -> CohortExpression:
        if isinstance(eligibility, CohortExpression):
            return eligibility
        try:
            return CohortExpression.from_json(eligibility)
        except CohortDefinitionError as exc:
            raise TrialError(f"trial {trial_id}: eligibility is not a valid cohort definition: {exc}") from exc

    @staticmethod
    def _settings(trial_id: str, settings: Settings | dict) -> Settings:
        try:
            return settings if isinstance(settings, Settings) else Settings.from_dict(settings)
        except RandomisationError as exc:
            raise TrialError(f"trial {trial_id}: {exc}") from exc

    def _insert_settings(self, trial_id: str, version: int, settings: Settings, reason: str, actor: User) -> None:
        self.db.insert("mercia_trial_settings", {"trial_id": trial_id, "version": version,
                                                 "settings": orjson.dumps(settings.to_dict()).decode(),
                                                 "reason": reason, "created_by": actor.username,
                                                 "created_at": now()})

    def trial(self, trial_id: str) -> Trial:
        row = self.db.row("SELECT * FROM mercia_trial WHERE trial_id = ?", [trial_id])
        if row is None:
            raise NotFound(f"no trial {trial_id!r}")
        settings = self.db.scalar("SELECT settings FROM mercia_trial_settings WHERE trial_id = ? AND version = ?",
                                  [trial_id, row["version"]])
        return Trial(trial_id=row["trial_id"], title=row["title"], pillar=row["pillar"], sponsor=row["sponsor"],
                     chief_investigator=row["chief_investigator"], project_id=int(row["project_id"]),
                     sites=orjson.loads(row["sites"]), target=int(row["target"]), opens_on=row["opens_on"],
                     closes_on=row["closes_on"], blinded=bool(row["blinded"]),
                     eligibility=CohortExpression.from_json(row["eligibility"]),
                     manual_criteria=orjson.loads(row["manual_criteria"]), cohort_id=int(row["cohort_id"]),
                     status=row["status"], version=int(row["version"]),
                     settings=Settings.from_dict(orjson.loads(settings)),
                     eligibility_run_at=row["eligibility_run_at"], eligibility_run_by=row["eligibility_run_by"])

    def trials_for(self, user: User) -> list[Trial]:
        ids = [r["trial_id"] for r in self.db.rows(
            "SELECT DISTINCT trial_id FROM mercia_trial_role WHERE user_id = ? AND ended_at IS NULL "
            "ORDER BY trial_id", [user.id])]
        return [self.trial(t) for t in ids]

    def change_settings(self, actor: User, trial_id: str, settings: Settings | dict, *,
                        new_version: bool = False, reason: str = "") -> Trial:
        """Edit the randomisation settings.  Once anyone is allocated they are fixed: a change needs
        ``new_version=True`` and a reason, and later allocations use the new version."""
        trial = self.require(actor, trial_id, TrialRole.TRIAL_MANAGER)
        settings = self._settings(trial_id, settings)
        with self.db.transaction():
            allocated = int(self.db.scalar("SELECT COUNT(*) FROM mercia_trial_allocation WHERE trial_id = ? "
                                           "AND version = ?", [trial_id, trial.version]))
            if allocated and not new_version:
                raise Conflict(f"trial {trial_id}: {allocated} participants are already allocated under settings "
                               f"version {trial.version}; create a new version (with a reason) to change them")
            if new_version:
                if not reason.strip():
                    raise TrialError(f"trial {trial_id}: say why the randomisation settings need a new version")
                version = trial.version + 1
                self._insert_settings(trial_id, version, settings, reason.strip(), actor)
                self.db.execute("UPDATE mercia_trial SET version = ? WHERE trial_id = ?", [version, trial_id])
            else:
                version = trial.version
                self.db.execute("UPDATE mercia_trial_settings SET settings = ? WHERE trial_id = ? AND version = ?",
                                [orjson.dumps(settings.to_dict()).decode(), trial_id, version])
            self.gov.audit.record(actor.username, "trial.settings", f"trial:{trial_id}", trial.project_id,
                                  version=version, new_version=new_version, reason=reason,
                                  settings=settings.to_dict())
        return self.trial(trial_id)

    def close(self, actor: User, trial_id: str) -> Trial:
        trial = self.require(actor, trial_id, TrialRole.TRIAL_MANAGER)
        with self.db.transaction():
            self.db.execute("UPDATE mercia_trial SET status = 'closed' WHERE trial_id = ?", [trial_id])
            self.gov.audit.record(actor.username, "trial.close", f"trial:{trial_id}", trial.project_id)
        return self.trial(trial_id)

    # -- roles: the delegation log ----------------------------------------------------------------
    def grant(self, actor: User, trial_id: str, user_id: int, role: TrialRole | str, site: str = "") -> None:
        """Give ``user_id`` the role (at ``site`` for site roles) from now; holding it already changes nothing."""
        with self._team_change(actor, trial_id, user_id, role, site) as (trial, member, role, site, active):
            if role is TrialRole.CARE_TEAM and member.organisation != site:
                raise TrialError(f"{member.username} works for {member.organisation or 'no organisation'}, "
                                 f"not {site}: only the patient's own organisation's staff join its care team")
            if not active:
                self._insert_role(trial_id, user_id, role, site, actor)
            self.gov.audit.record(actor.username, "trial.grant_role", f"trial:{trial_id}", trial.project_id,
                                  member=member.username, role=role.value, site=site)

    def revoke(self, actor: User, trial_id: str, user_id: int, role: TrialRole | str, site: str, reason: str) -> None:
        """End the role held from now, with a reason: the period stays in the delegation log.  The last trial
        manager's role is never ended (a trial always has one)."""
        with self._team_change(actor, trial_id, user_id, role, site) as (trial, member, role, site, active):
            at = f" at {site}" if site else ""
            if not reason.strip():
                raise TrialError(f"trial {trial_id}: say why {member.username}'s role {role.value}{at} ends")
            if not active:
                raise TrialError(f"trial {trial_id}: {member.username} does not hold the role {role.value}{at}")
            if role is TrialRole.TRIAL_MANAGER and self.managers(trial_id) == [user_id]:
                raise Conflict(f"trial {trial_id}: {member.username} is its last trial manager, and a trial always "
                               "has one; grant the role to someone else first")
            self.db.execute("UPDATE mercia_trial_role SET ended_at = ?, ended_by = ?, end_reason = ? WHERE trial_id = ? "
                            "AND user_id = ? AND role = ? AND site = ? AND ended_at IS NULL",
                            [now(), actor.username, reason.strip(), trial_id, user_id, role.value, site])
            self.gov.audit.record(actor.username, "trial.revoke_role", f"trial:{trial_id}", trial.project_id,
                                  member=member.username, role=role.value, site=site, reason=reason.strip())

    def sign_delegation(self, actor: User, trial_id: str, user_id: int, role: TrialRole | str, site: str,
                        username: str, password: str, meaning: str) -> None:
        """The responsible investigator signs off a held role's period (``signing_role`` says who that is), as
        an e-signature on an eCRF form: the signer re-enters their own credentials; their name, the time and
        the meaning are recorded on the period, once, and audited."""
        self.require(actor, trial_id, *TrialRole)
        meaning = meaning.strip()
        if not meaning:
            raise TrialError("a signature needs its meaning (e.g. 'I delegate these duties and will supervise them')")
        signer = self.gov.confirm_signer(actor, username, password, "trial.sign_delegation.refused",
                                         f"trial:{trial_id}")
        with self._team_change(actor, trial_id, user_id, role, site, *TrialRole) as (trial, member, role, site, _):
            at = f" at {site}" if site else ""
            investigates_here = site in self.roles(member, trial_id).get(TrialRole.SITE_INVESTIGATOR, set())
            needed = signing_role(role, investigates_here)
            if member.id == actor.id:
                raise Forbidden(f"trial {trial_id}: nobody signs off their own delegation; a {needed.value} other "
                                f"than {member.username} signs off their role {role.value}{at}")
            self.require(actor, trial_id, needed, site=site)
            held = self.db.row("SELECT granted_at, signed_by, signed_at FROM mercia_trial_role WHERE trial_id = ? "
                               "AND user_id = ? AND role = ? AND site = ? AND ended_at IS NULL",
                               [trial_id, user_id, role.value, site])
            if held is None:
                raise TrialError(f"trial {trial_id}: {member.username} does not hold the role {role.value}{at}; only "
                                 "a role held now is signed off")
            if held["signed_at"]:
                raise Conflict(f"trial {trial_id}: {member.username}'s role {role.value}{at} held from "
                               f"{held['granted_at'] or UNKNOWN_GRANT} is already signed off by {held['signed_by']} "
                               f"at {held['signed_at']}")
            self.db.execute("UPDATE mercia_trial_role SET signed_by = ?, signed_name = ?, signed_at = ?, "
                            "signature_meaning = ? WHERE trial_id = ? AND user_id = ? AND role = ? AND site = ? "
                            "AND ended_at IS NULL", [signer.username, signer.display_name, now(), meaning, trial_id,
                                                     user_id, role.value, site])
            self.gov.audit.record(actor.username, "trial.sign_delegation", f"trial:{trial_id}", trial.project_id,
                                  member=member.username, role=role.value, site=site, name=signer.display_name,
                                  meaning=meaning)

    def may_sign(self, actor: User, trial_id: str, periods: list[dict[str, Any]]) -> list[bool]:
        """For each period of ``team``, whether ``actor`` may sign it off now (held, unsigned, someone else's,
        and ``actor`` holds its ``signing_role``), so a page offers the form only where it would be taken."""
        held = self.roles(actor, trial_id)
        investigators = {(p["username"], p["site"]) for p in periods
                         if p["role"] == TrialRole.SITE_INVESTIGATOR and p["ended_at"] is None}

        def allowed(p: dict[str, Any]) -> bool:
            needed = signing_role(TrialRole(p["role"]), (p["username"], p["site"]) in investigators)
            return needed in held and (needed not in SITE_ROLES or p["site"] in held[needed])

        return [p["ended_at"] is None and not p["signed_at"] and p["username"] != actor.username and allowed(p)
                for p in periods]

    @contextmanager
    def _team_change(self, actor: User, trial_id: str, user_id: int, role: TrialRole | str, site: str,
                     *actor_roles: TrialRole) -> Iterator[tuple[Trial, User, TrialRole, str, bool]]:
        """What ``grant``, ``revoke`` and ``sign_delegation`` check, held alone per trial (two servers, or a
        server and the CLI: two managers ending each other's role at once leave one; a signature racing an
        end): the actor holds one of ``actor_roles`` (a trial manager when none is given), the role and site are
        the trial's; yields the trial, the member, the role, the site ('' for trial-wide roles) and whether the
        member holds that role there now."""
        with self.db.transaction(), self.db.store.exclusive(f"trial_team_{trial_id}", reads=["mercia_trial_role"]):
            trial = self.require(actor, trial_id, *(actor_roles or (TrialRole.TRIAL_MANAGER,)))
            try:
                role = TrialRole(role)
            except ValueError:
                raise TrialError(f"no trial role {role!r}: one of {', '.join(r.value for r in TrialRole)}") from None
            site = site.strip().upper()
            if role in SITE_ROLES and site not in trial.sites:
                raise TrialError(f"trial {trial_id}: role {role.value} needs one of the trial's sites "
                                 f"({', '.join(trial.sites)}), not {site!r}")
            member = self.gov.user(user_id)
            site = site if role in SITE_ROLES else ""
            active = self.db.row("SELECT user_id FROM mercia_trial_role WHERE trial_id = ? AND user_id = ? AND role = ? "
                                 "AND site = ? AND ended_at IS NULL", [trial_id, user_id, role.value, site])
            yield trial, member, role, site, active is not None

    def _insert_role(self, trial_id: str, user_id: int, role: TrialRole, site: str, actor: User) -> None:
        self.db.insert("mercia_trial_role", {"trial_id": trial_id, "user_id": user_id, "role": role.value,
                                             "site": site, "granted_at": now(), "granted_by": actor.username})

    def team(self, actor: User, trial_id: str, *, ended: bool = False) -> list[dict[str, Any]]:
        """The delegation log: who holds (held, with ``ended``) which role at which site, from when until when,
        granted and ended by whom, why it ended, and who signed it off when, meaning what (None: not signed);
        ``granted_at`` None for a role granted before the log was kept.  Any member of the team sees who holds
        a role now; the ended periods (with their reasons) are for trial managers."""
        self.require(actor, trial_id, *((TrialRole.TRIAL_MANAGER,) if ended else TrialRole))
        return self.db.rows(f"""SELECT u.username, u.display_name, r.role, r.site, r.granted_at, r.granted_by,
                                       r.ended_at, r.ended_by, r.end_reason, r.signed_by, r.signed_name,
                                       r.signed_at, r.signature_meaning
                                FROM mercia_trial_role r JOIN mercia_user u ON u.id = r.user_id
                                WHERE r.trial_id = ? {'' if ended else 'AND r.ended_at IS NULL'}
                                ORDER BY u.username, r.role, r.site, r.granted_at NULLS FIRST""", [trial_id])

    def roles(self, user: User, trial_id: str) -> dict[TrialRole, set[str]]:
        """The roles the user holds on the trial now (not ended), each with its sites ('' for trial-wide roles)."""
        found: dict[TrialRole, set[str]] = {}
        for r in self.db.rows("SELECT role, site FROM mercia_trial_role WHERE trial_id = ? AND user_id = ? "
                              "AND ended_at IS NULL", [trial_id, user.id]):
            found.setdefault(TrialRole(r["role"]), set()).add(r["site"])
        return found

    def require(self, user: User, trial_id: str, *roles: TrialRole, site: str | None = None) -> Trial:
        """The trial if ``user`` holds one of ``roles`` on it (at ``site`` for site roles) and its project is
        still approved; otherwise NotFound (no role at all: the trial's existence is not revealed) or Forbidden."""
        held = self.roles(user, trial_id)
        if not held:
            raise NotFound(f"no trial {trial_id!r}")
        trial = self.trial(trial_id)
        ok = any(r in held and (site is None or r not in SITE_ROLES or site in held[r]) for r in roles)
        if not ok:
            where = f" at site {site}" if site else ""
            raise Forbidden(f"trial {trial_id}: this needs the role {' or '.join(r.value for r in roles)}{where}")
        if self.gov.project_status(trial.project_id) is not ProjectStatus.APPROVED:
            raise Forbidden(f"trial {trial_id}: its project {trial.project_id} is no longer approved")
        return trial

    def sites_for(self, user: User, trial_id: str, *roles: TrialRole) -> set[str]:
        return set().union(*(s for r, s in self.roles(user, trial_id).items() if r in roles)) - {""}

    def managers(self, trial_id: str) -> list[int]:
        return [int(r["user_id"]) for r in self.db.rows(
            "SELECT user_id FROM mercia_trial_role WHERE trial_id = ? AND role = ? AND ended_at IS NULL "
            "ORDER BY user_id",
            [trial_id, TrialRole.TRIAL_MANAGER.value])]
