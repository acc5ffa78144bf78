"""What the trial team is told: an emergency unblinding, a duplicate enrolment linkage found, its resolution.

Each notification is one user's (``mercia_trial_notification``: trial, user, message, when, ``read_at``), and
is read only while that user holds a role on the trial, through the one service the CLI, API and web call.

Duplicate enrolments are recorded by linkage (``mercia.linkage.probabilistic``), which must not import the
trials code; so the trials side raises their notifications from the records (right after the link commands,
whenever anyone reads the trial's notifications, and before a resolution): the records not yet notified are
claimed by one ``UPDATE ... RETURNING`` setting their ``notified_at``, and the managers' notifications are
written in the same transaction.  A record is claimed once, whoever reads first and however many link runs
found it again, and the notification then stays, resolved or not.  Messages never name an arm (managers of a
blinded trial may not see arms; the duplicates page shows them to those who may).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from mercia.cdm import Store
from mercia.cdm.extensions import TRIAL_DUPLICATE_TABLE
from mercia.governance import Governance, User
from mercia.governance.db import now
from mercia.governance.identity import iso
from mercia.trials.register import TrialError, TrialRegister, TrialRole

DUPLICATES_PAGE = "the trial's duplicate enrolments page (web) or `mercia trials duplicates`"


def randomisation(row: dict[str, Any]) -> str:
    """A randomisation as the team names it: person, randomisation number (its settings version after the
    first), site."""
    number = f"{row['sequence']}" if row["version"] == 1 else f"{row['sequence']} of settings version {row['version']}"
    return f"person {row['person_id']} (randomisation number {number}, site {row['site']})"


def _stored_time(text: str) -> str:
    """``text`` (ISO-8601, UTC if no offset given) as the stored times are written, so that they compare as text."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TrialError(f"{text!r} is not a time (ISO-8601, e.g. 2026-01-31T09:00:00Z)") from exc
    return iso(moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment)


class TrialNotifications:
    def __init__(self, register: TrialRegister):
        self.register = register
        self.db = register.db

    def notify(self, trial_id: str, user_ids: Iterable[int], message: str) -> None:
        """Write ``message`` for each of ``user_ids`` (inside the caller's transaction)."""
        at = now()
        for user_id in user_ids:
            self.db.insert("mercia_trial_notification", {"trial_id": trial_id, "user_id": user_id, "message": message,
                                                         "created_at": at})

    def raise_found_duplicates(self, trial_id: str) -> None:
        """Notify the managers of each duplicate enrolment record linkage wrote since the last call, once: one
        message per duplicate naming its newly found randomisations.  Records already resolved when claimed
        (resolved before notifications were raised from them) are claimed without a message.  Looks first, so
        that a read with nothing to raise takes no write."""
        if not self.db.scalar(f"SELECT COUNT(*) FROM {TRIAL_DUPLICATE_TABLE} WHERE trial_id = ? "
                              "AND notified_at IS NULL", [trial_id]):
            return
        with self.db.transaction():
            claimed = self.db.rows(f"""UPDATE {TRIAL_DUPLICATE_TABLE} SET notified_at = ?
                                       WHERE trial_id = ? AND notified_at IS NULL
                                       RETURNING duplicate_id, person_id, version, sequence, site, allocated_at,
                                                 found_at, status""", [now(), trial_id])
            found = sorted((r for r in claimed if r["status"] == "open"),
                           key=lambda r: (r["duplicate_id"], r["allocated_at"], r["version"], r["sequence"]))
            managers = self.register.managers(trial_id)
            for duplicate_id, group in groupby(found, key=lambda r: r["duplicate_id"]):
                rows = list(group)
                self.notify(trial_id, managers, (
                    f"Suspected duplicate enrolment {duplicate_id} on trial {trial_id}: on "
                    f"{rows[0]['found_at'][:16].replace('T', ' ')} UTC linkage found "
                    f"{' and '.join(randomisation(r) for r in rows)} to be one person, randomised more than once. "
                    f"Choose the randomisation that stands on {DUPLICATES_PAGE}."))

    def for_user(self, actor: User, trial_id: str) -> list[dict[str, Any]]:
        """The actor's own notifications of the trial, newest first, each with ``read_at`` (None: unread);
        refused without a role on the trial (no role at all: not found)."""
        self.register.require(actor, trial_id, *TrialRole)
        self.raise_found_duplicates(trial_id)
        return self.db.rows("SELECT message, created_at, read_at FROM mercia_trial_notification "
                            "WHERE trial_id = ? AND user_id = ? ORDER BY created_at DESC", [trial_id, actor.id])

    def mark_read(self, actor: User, trial_id: str, up_to: str | None = None) -> int:
        """Mark the actor's unread notifications of the trial created up to ``up_to`` (ISO-8601 UTC, default
        now) read, audited; returns how many."""
        trial = self.register.require(actor, trial_id, *TrialRole)
        at = now()
        up_to = _stored_time(up_to) if up_to else at
        with self.db.transaction():
            marked = len(self.db.rows("UPDATE mercia_trial_notification SET read_at = ? WHERE trial_id = ? "
                                      "AND user_id = ? AND read_at IS NULL AND created_at <= ? RETURNING created_at",
                                      [at, trial_id, actor.id, up_to]))
            self.register.gov.audit.record(actor.username, "trial.notifications.read", f"trial:{trial_id}",
                                           trial.project_id, up_to=up_to, marked=marked)
        return marked


def notify_found_duplicates(store: Store) -> None:
    """Raise the notifications of every trial's duplicate enrolments not yet notified: run by the link commands
    right after linkage (they compose linkage and trials, which linkage itself may not), so the managers are
    told when the duplicate is found, not only when the team next reads."""
    if not store.table_exists(TRIAL_DUPLICATE_TABLE):
        return
    register = TrialRegister(store, Governance(store))       # adds ``notified_at`` to a store made before it
    notifications = TrialNotifications(register)
    for (trial_id,) in store.query(f"SELECT DISTINCT trial_id FROM {TRIAL_DUPLICATE_TABLE} WHERE notified_at IS NULL "
                                   "ORDER BY trial_id"):
        notifications.raise_found_duplicates(trial_id)
