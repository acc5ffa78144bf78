"""Duplicate enrolment: one human randomised twice in one trial (at two sites, or twice at one), found by linkage.

Linkage (``mercia.linkage.probabilistic.merge_persons``) leaves such a cluster of person records unmerged and
records each of its randomisations in ``mercia_trial_duplicate`` (status open).  The trial team lists the open
ones and a trial manager resolves each: the kept person's randomisation stands (the suggestion is the first
randomisation, "include the first randomisation only"), every other one is set aside as a duplicate
enrolment.  A set-aside allocation is never deleted: its row moves from ``mercia_trial_allocation`` to the
duplicate record (arm, site, date, who randomised; who resolved, when, why), so it is no second allocation
when the next link run merges the persons, counts neither as randomised in CONSORT nor in the minimisation
margins of later allocations, and keeps its draw position spent (``Allocator.replay``).  The eCRF record that
randomisation enrolled (in a study linked to the trial) is set aside with it (``CrfService.set_aside_randomised``):
kept, but out of the study's participants and exports.  Every resolution is audited and told to the trial's
other managers (``mercia.trials.notifications``, which also tells them of the finding).
"""

from __future__ import annotations

from typing import Any

from mercia.cdm.extensions import TRIAL_DUPLICATE_TABLE
from mercia.governance import Conflict, User
from mercia.governance.db import now
from mercia.trials.crf.service import CrfService
from mercia.trials.notifications import DUPLICATES_PAGE, TrialNotifications, randomisation
from mercia.trials.register import Trial, TrialError, TrialRegister, TrialRole

# Who sees the suspected duplicates (person ids of randomised participants, trial-wide) and who resolves them.
VIEWERS = (TrialRole.TRIAL_MANAGER, TrialRole.STATISTICIAN)
RESOLVERS = (TrialRole.TRIAL_MANAGER,)


class DuplicateEnrolments:
    def __init__(self, register: TrialRegister):
        self.register = register
        self.db = register.db

    def open(self, actor: User, trial_id: str) -> list[dict[str, Any]]:
        """The open duplicates' randomisations, one row each, first randomisation of each duplicate first and
        marked ``suggested_keep``; the arm only where the actor may see arms (open-label trial, unblinded
        pharmacist), as for any allocation."""
        trial = self.register.require(actor, trial_id, *VIEWERS)
        rows = self.db.rows(f"""SELECT duplicate_id, person_id, randomised_as, site, arm, allocated_at, allocated_by,
                                       version, sequence, found_at
                                FROM {TRIAL_DUPLICATE_TABLE} WHERE trial_id = ? AND status = 'open'
                                ORDER BY duplicate_id, allocated_at, version, sequence""", [trial_id])
        first = None
        for row in rows:
            row["suggested_keep"] = row["duplicate_id"] != first
            first = row["duplicate_id"]
        return self._arms_as_allowed(actor, trial, rows)

    def _arms_as_allowed(self, actor: User, trial: Trial, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows without their arm unless ``actor`` may see arms (open-label trial, unblinded pharmacist)."""
        if trial.blinded and TrialRole.UNBLINDED_PHARMACIST not in self.register.roles(actor, trial.trial_id):
            for row in rows:
                del row["arm"]
        return rows

    def resolved(self, actor: User, trial_id: str) -> list[dict[str, Any]]:
        """The resolved duplicates' randomisations, one row each, latest resolution first, each with who
        resolved it, when, why and whether it was kept; the arm as in ``open``."""
        trial = self.register.require(actor, trial_id, *VIEWERS)
        rows = self.db.rows(f"""SELECT duplicate_id, person_id, randomised_as, site, arm, allocated_at, kept, reason,
                                       resolved_by, resolved_at
                                FROM {TRIAL_DUPLICATE_TABLE} WHERE trial_id = ? AND status = 'resolved'
                                ORDER BY resolved_at DESC, duplicate_id, allocated_at, version, sequence""", [trial_id])
        return self._arms_as_allowed(actor, trial, rows)

    def resolve(self, actor: User, trial_id: str, keep: int, reason: str, duplicate_id: int | None = None
                ) -> dict[str, Any]:
        """Keep ``keep``'s randomisation of its open duplicate (``duplicate_id``, where given, must be that one);
        set aside the others' (their allocation rows leave ``mercia_trial_allocation``, their copies here are
        marked).  Refused, with nothing changed, for a person in no open duplicate of the trial (or not in
        ``duplicate_id``), a resolved one, no reason, or a caller who is not a trial manager."""
        trial = self.register.require(actor, trial_id, *RESOLVERS)
        crf = CrfService(self.register.gov)
        where = f"trial {trial_id}, person {keep}"
        if not reason.strip():
            raise TrialError(f"{where}: say why this randomisation is the one kept (resolving needs a reason)")
        with self.db.transaction():
            found = self.db.rows(f"SELECT duplicate_id, status FROM {TRIAL_DUPLICATE_TABLE} WHERE trial_id = ? "
                                 "AND person_id = ?", [trial_id, keep])
            if duplicate_id is not None:
                found = [r for r in found if r["duplicate_id"] == duplicate_id]
            open_id = next((r["duplicate_id"] for r in found if r["status"] == "open"), None)
            if open_id is None:
                if found:
                    raise Conflict(f"{where}: the duplicate enrolment is already resolved")
                named = f"duplicate enrolment {duplicate_id}" if duplicate_id is not None else \
                    "any suspected duplicate enrolment of the trial"
                raise TrialError(f"{where} is not in {named}")
            duplicate_id = open_id
            notifications = TrialNotifications(self.register)
            notifications.raise_found_duplicates(trial_id)     # the finding is told before its resolution
            members = self.db.rows(f"SELECT person_id, version, sequence, site FROM {TRIAL_DUPLICATE_TABLE} "
                                   "WHERE duplicate_id = ? AND status = 'open' ORDER BY allocated_at, version, "
                                   "sequence", [duplicate_id])
            set_aside = [m for m in members if m["person_id"] != keep]
            resolved_at = now()
            seq = self.register.gov.audit.record(
                actor.username, "trial.duplicate.resolve", f"trial:{trial_id}/person:{keep}", trial.project_id,
                duplicate_id=duplicate_id, reason=reason.strip(), kept=keep,
                kept_was_first=members[0]["person_id"] == keep,
                set_aside=[{k: m[k] for k in ("person_id", "version", "sequence", "site")} for m in set_aside])
            self.db.execute(f"""UPDATE {TRIAL_DUPLICATE_TABLE} SET status = 'resolved', kept = (person_id = ?),
                                reason = ?, resolved_by = ?, resolved_at = ?, resolution_audit_seq = ?
                                WHERE duplicate_id = ? AND status = 'open'""",
                            [keep, reason.strip(), actor.username, resolved_at, seq, duplicate_id])
            self.db.execute(f"""DELETE FROM mercia_trial_allocation WHERE trial_id = ? AND EXISTS (
                                SELECT 1 FROM {TRIAL_DUPLICATE_TABLE} d WHERE d.duplicate_id = ?
                                AND d.resolution_audit_seq = ? AND d.kept = FALSE
                                AND d.version = mercia_trial_allocation.version
                                AND d.sequence = mercia_trial_allocation.sequence)""", [trial_id, duplicate_id, seq])
            self._reassert_status(actor, trial_id, keep, duplicate_id, resolved_at)
            records = crf.set_aside_randomised(
                actor, trial_id, duplicate_id, keep, [m["person_id"] for m in set_aside], reason.strip(), seq)
            kept = next(m for m in members if m["person_id"] == keep)
            notifications.notify(trial_id, (m for m in self.register.managers(trial_id) if m != actor.id), (
                f"{actor.username} resolved duplicate enrolment {duplicate_id} on trial {trial_id}: kept the "
                f"randomisation of {randomisation(kept)}, set aside {' and '.join(map(randomisation, set_aside))}: "
                f"{reason.strip()}. The resolution is on {DUPLICATES_PAGE}."))
        return {"trial_id": trial_id, "duplicate_id": duplicate_id, "kept": keep,
                "set_aside": [m["person_id"] for m in set_aside], "resolved_by": actor.username,
                "resolved_at": resolved_at, "reason": reason.strip(), "crf_records_set_aside": records}

    def _reassert_status(self, actor: User, trial_id: str, keep: int, duplicate_id: int, at: str) -> None:
        """Record the kept person's current status again, as of the resolution: once linkage merges the
        duplicate, the person holds both records' status histories, and the set-aside one's may be the later
        (randomised at another site, or withdrawn), which the worklist and dashboard would take as current."""
        latest = self.db.row("SELECT * FROM mercia_trial_status WHERE trial_id = ? AND person_id = ? "
                             "ORDER BY recorded_at DESC LIMIT 1", [trial_id, keep])
        if latest is not None:
            self.db.insert("mercia_trial_status", {
                **latest, "reason": f"duplicate enrolment {duplicate_id} resolved: this randomisation stands",
                "recorded_on": at[:10], "recorded_by": actor.username, "recorded_at": at})
