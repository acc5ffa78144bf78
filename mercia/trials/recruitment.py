"""Recruitment: each patient's status history on a trial, randomisation at enrolment, emergency unblinding.

An allocation exists only once a consented, eligible participant is randomised: the arm is drawn then,
from the trial's keyed stream (``mercia.trials.randomise``), and written with the audit entry that
records every input used.  Blinded trials show site staff a pack code; the arm is shown to the unblinded
pharmacist, or after an emergency unblinding, which is audited and notified to the trial managers.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson

from mercia.cdm.extensions import TRIAL_DUPLICATE_TABLE
from mercia.governance import Conflict, User
from mercia.governance.db import now
from mercia.privacy.optout import OPTED_OUT_PERSONS
from mercia.trials.crf.service import CrfService
from mercia.trials.notifications import TrialNotifications
from mercia.trials.prescreen import ensure_screening_tables
from mercia.trials.randomise import Allocator, KeyedStream, RandomisationError, load_randomisation_key
from mercia.trials.register import Trial, TrialError, TrialRegister, TrialRole

# The path through recruitment, in order; a patient only moves forward along it.
PATHWAY = ["identified", "prescreened", "approached", "screened", "consented", "randomised"]
# Ends: ineligible or declined before randomisation; withdrawn after consent.
EXITS = ("ineligible", "declined", "withdrawn")
STATUSES = PATHWAY + list(EXITS)
STAFF = (TrialRole.SITE_INVESTIGATOR, TrialRole.RESEARCH_NURSE, TrialRole.TRIAL_MANAGER)


class Recruitment:
    def __init__(self, register: TrialRegister, stream: KeyedStream | None = None):
        self.register = register
        self.db = register.db
        self.audit = register.gov.audit
        self._stream = stream
        self.crf = CrfService(register.gov)

    @property
    def stream(self) -> KeyedStream:
        if self._stream is None:
            self._stream = KeyedStream(load_randomisation_key())
        return self._stream

    # -- status history ----------------------------------------------------------------------
    def history(self, trial_id: str, person_id: int) -> list[dict[str, Any]]:
        return self.db.rows("SELECT status, reason, detail, site, recorded_on, recorded_by, recorded_at "
                            "FROM mercia_trial_status WHERE trial_id = ? AND person_id = ? ORDER BY recorded_at",
                            [trial_id, person_id])

    def current(self, trial_id: str, person_id: int) -> dict[str, Any] | None:
        rows = self.history(trial_id, person_id)
        return rows[-1] if rows else None

    def record(self, actor: User, trial_id: str, person_id: int, status: str, *, site: str, reason: str = "",
               on: str | None = None, confirmed: list[str] | None = None) -> dict[str, Any]:
        """Add a status to the patient's history.  ``confirmed`` lists the manual eligibility criteria
        checked at screening; 'screened' needs every one (otherwise record 'ineligible' with the reason)."""
        trial = self.register.require(actor, trial_id, *STAFF, site=site)
        where = f"trial {trial_id}, person {person_id}"
        if status not in STATUSES or status == "randomised":
            raise TrialError(f"{where}: status {status!r} is not one of "
                             f"{', '.join(s for s in STATUSES if s != 'randomised')} (randomise to randomise)")
        if site not in trial.sites:
            raise TrialError(f"trial {trial_id}: {site!r} is not one of its sites")
        if status in ("ineligible", "declined", "withdrawn") and not reason.strip():
            raise TrialError(f"{where}: say why ({status} needs a reason)")
        missing = sorted(set(trial.manual_criteria) - set(confirmed or []))
        if status == "screened" and missing:
            raise TrialError(f"{where}: manual criteria not confirmed: "
                             f"{'; '.join(missing)} (record 'ineligible' if they are not met)")
        on = on or date.today().isoformat()
        if not self.register.store.tables_exist(("mercia_person_link", "mercia_opt_out")):
            ensure_screening_tables(self.register.store)   # ~20 ms on DuckDB: only for a store without them
        # one person's statuses are recorded one at a time (two servers, or a server and the CLI), so two first
        # statuses cannot both pass the checks against a history that has neither
        with self.db.transaction(), self.db.store.exclusive(f"trial_status_{trial_id}_{person_id}",
                                                            reads=["mercia_trial_status"]):
            last = self.current(trial_id, person_id)
            refusal = self._refusal(trial_id, person_id, site, last, status)
            if refusal is None:
                self._check_move(where, last, status)
                row = {"trial_id": trial_id, "person_id": person_id, "site": site, "status": status,
                       "reason": reason.strip(), "detail": orjson.dumps({"confirmed": confirmed or []}).decode(),
                       "recorded_on": on, "recorded_by": actor.username, "recorded_at": now()}
                self.db.insert("mercia_trial_status", row)
                self.audit.record(actor.username, f"trial.status.{status}", f"trial:{trial_id}/person:{person_id}",
                                  trial.project_id, site=site, reason=reason, on=on)
                return row
        self.audit.record(actor.username, "trial.status.refused", f"trial:{trial_id}/person:{person_id}",
                          trial.project_id, site=site, status=status, refusal=refusal)
        raise TrialError(f"{where}: {refusal}")

    def _refusal(self, trial_id: str, person_id: int, site: str, last: dict[str, Any] | None,
                 status: str) -> str | None:
        """Why no status may be recorded for the person at ``site`` (None: it may).

        A person's recruitment belongs to one site: where their statuses are recorded, else the site whose
        worklist lists them, so no site claims (or, with 'declined', ends) another's candidate.  Someone
        outside the worklist (a referral) may be recorded where they are nobody's candidate.  A consented
        participant's consent is its own legal basis, kept through an opt-out purge; anyone else must be a
        person in the store who is not withheld by the opt-out.  A patient who asked their care team not to
        be contacted about research is not identified, pre-screened or approached from their records; if
        they come forward themselves, their recruitment starts at screening."""
        if last is not None:
            owner = last["site"]
        else:
            candidate = self.db.row("SELECT site FROM mercia_trial_candidate WHERE trial_id = ? AND person_id = ?",
                                    [trial_id, person_id])
            owner = candidate["site"] if candidate else site
        if owner != site:
            return f"is in site {owner}'s recruitment for this trial, not {site}'s"
        if last is not None and last["status"] in ("consented", "randomised"):
            return None
        found = self.db.row(f"""
            SELECT (SELECT COUNT(*) FROM person WHERE person_id = ?) AS stored,
                   (SELECT COUNT(*) FROM ({OPTED_OUT_PERSONS}) o WHERE o.person_id = ?) AS opted_out,
                   (SELECT MIN(recorded_at) FROM mercia_research_contact_dissent WHERE person_id = ?) AS dissent""",
                            [person_id, person_id, person_id])
        if not found["stored"]:
            return "is not a person in the store"
        if found["opted_out"]:
            return "is withheld by the national data opt-out: their data must not be used"
        if found["dissent"] and status in PATHWAY[:PATHWAY.index("screened")]:
            return (f"asked their care team not to be contacted about research (recorded {found['dissent'][:10]}): "
                    f"not {status}; if they come forward themselves, record them from 'screened'")
        return None

    def _check_move(self, where: str, last: dict[str, Any] | None, status: str) -> None:
        if last is None:
            return
        now_status = last["status"]
        if now_status in ("ineligible", "declined", "withdrawn"):
            raise Conflict(f"{where} is {now_status}; no further status can be recorded")
        if status == "withdrawn":
            if PATHWAY.index(now_status) < PATHWAY.index("consented"):
                raise Conflict(f"{where} is {now_status}: only a consented participant withdraws (record 'declined')")
            return
        if status in EXITS:
            if now_status == "randomised":
                raise Conflict(f"{where} is randomised: record 'withdrawn', not {status}")
            return
        if PATHWAY.index(status) <= PATHWAY.index(now_status):
            raise Conflict(f"{where} is already {now_status}; statuses only move forward")

    # -- randomisation -----------------------------------------------------------------------
    def randomise(self, actor: User, trial_id: str, person_id: int, levels: dict[str, str] | None = None
                  ) -> dict[str, Any]:
        """Allocate a consented, eligible participant; refused twice, unconsented, ineligible or closed."""
        last = self.current(trial_id, person_id)
        site = last["site"] if last else ""
        trial = self.register.require(actor, trial_id, TrialRole.SITE_INVESTIGATOR, TrialRole.RESEARCH_NURSE,
                                      site=site or None)
        where = f"trial {trial_id}, person {person_id}"
        today = date.today().isoformat()
        if trial.status != "open" or not trial.opens_on <= today <= trial.closes_on:
            raise Conflict(f"trial {trial_id} is not recruiting (status {trial.status}, window "
                           f"{trial.opens_on} to {trial.closes_on})")
        if last is None or last["status"] != "consented":
            if last is not None and last["status"] == "randomised":
                raise Conflict(f"{where} is already randomised")
            raise Conflict(f"{where} cannot be randomised: status is "
                           f"{last['status'] if last else 'not recorded'}, not consented")
        if not self.db.row("SELECT person_id FROM mercia_trial_candidate WHERE trial_id = ? AND person_id = ?",
                           [trial_id, person_id]):
            raise Conflict(f"{where} does not meet the trial's computable eligibility criteria")
        levels = {k: str(v) for k, v in (levels or {}).items()}
        with self.db.transaction():
            if self.db.row("SELECT person_id FROM mercia_trial_allocation WHERE trial_id = ? AND person_id = ?",
                           [trial_id, person_id]):
                raise Conflict(f"{where} is already randomised")
            allocator = self.allocator(trial)
            try:
                arm, inputs = allocator.allocate(levels)
            except RandomisationError as exc:
                raise TrialError(f"{where}: {exc}") from exc
            sequence = inputs["sequence"]
            pack = self.stream.code(trial_id, trial.version, sequence)
            seq = self.audit.record(actor.username, "trial.randomise", f"trial:{trial_id}/person:{person_id}",
                                    trial.project_id, version=trial.version, site=site, pack_code=pack,
                                    arm=None if trial.blinded else arm, arm_digest=self.stream.digest("arm", trial_id, person_id, arm).hex()[:16],
                                    **inputs)
            self.db.insert("mercia_trial_allocation", {
                "trial_id": trial_id, "version": trial.version, "sequence": sequence, "person_id": person_id,
                "site": site, "levels": orjson.dumps(levels).decode(), "arm": arm, "pack_code": pack,
                "allocated_by": actor.username, "allocated_at": now(), "audit_seq": seq})
            self.db.insert("mercia_trial_status", {
                "trial_id": trial_id, "person_id": person_id, "site": site, "status": "randomised", "reason": "",
                "detail": orjson.dumps({"sequence": sequence}).decode(), "recorded_on": today,
                "recorded_by": actor.username, "recorded_at": now()})
            record_id = self.crf.enrol_randomised(actor, trial_id, person_id, arm, site, today)
        shown = self.allocation(actor, trial_id, person_id)
        return {**shown, "crf_record": record_id} if record_id else shown

    def allocator(self, trial: Trial) -> Allocator:
        """The trial's allocator under its current settings version, where the stored randomisations left it:
        the allocations, and the randomisations set aside as duplicate enrolments (mercia.trials.duplicates)."""
        history = [(orjson.loads(r["levels"]), r["arm"]) for r in self.db.rows(
            "SELECT levels, arm FROM mercia_trial_allocation WHERE trial_id = ? AND version = ? ORDER BY sequence",
            [trial.trial_id, trial.version])]
        set_aside = [orjson.loads(r["levels"]) for r in self.db.rows(
            f"SELECT levels FROM {TRIAL_DUPLICATE_TABLE} WHERE trial_id = ? AND version = ? AND kept = FALSE "
            "ORDER BY sequence", [trial.trial_id, trial.version])]
        return Allocator(trial.settings, self.stream, (trial.trial_id, trial.version)).replay(history, set_aside)

    def link_study(self, actor: User, trial_id: str, study_name: str, arm_map: dict[str, str]) -> None:
        """From now on each randomised participant is enrolled in the eCRF study (trial manager, who is
        also the study's data manager)."""
        trial = self.register.require(actor, trial_id, TrialRole.TRIAL_MANAGER)
        self.crf.link_trial(actor, study_name, trial_id, [a.code for a in trial.settings.arms], trial.blinded,
                            arm_map)

    def allocation(self, actor: User, trial_id: str, person_id: int) -> dict[str, Any]:
        """The participant's allocation as ``actor`` may see it: arm only where the trial is open-label,
        the actor is the unblinded pharmacist, or the participant was unblinded in an emergency."""
        row = self.db.row("SELECT * FROM mercia_trial_allocation WHERE trial_id = ? AND person_id = ?",
                          [trial_id, person_id])
        trial = self.register.require(actor, trial_id, *STAFF, TrialRole.UNBLINDED_PHARMACIST,
                                      TrialRole.STATISTICIAN, site=row["site"] if row else None)
        if row is None:
            raise TrialError(f"trial {trial_id}, person {person_id} has not been randomised")
        shown = {"trial_id": trial_id, "person_id": person_id, "sequence": row["sequence"], "site": row["site"],
                 "pack_code": row["pack_code"], "version": row["version"], "allocated_at": row["allocated_at"]}
        unblinded = self.db.row("SELECT unblinded_at FROM mercia_trial_unblinding WHERE trial_id = ? AND person_id = ?",
                                [trial_id, person_id])
        roles = self.register.roles(actor, trial_id)
        if not trial.blinded or TrialRole.UNBLINDED_PHARMACIST in roles or unblinded:
            shown["arm"] = row["arm"]
        return shown

    def unblind(self, actor: User, trial_id: str, person_id: int, reason: str) -> dict[str, Any]:
        """Emergency unblinding by the participant's site investigator or a trial manager, with a reason."""
        row = self.db.row("SELECT site, arm FROM mercia_trial_allocation WHERE trial_id = ? AND person_id = ?",
                          [trial_id, person_id])
        trial = self.register.require(actor, trial_id, TrialRole.SITE_INVESTIGATOR, TrialRole.TRIAL_MANAGER,
                                      site=row["site"] if row else None)
        if row is None:
            raise TrialError(f"trial {trial_id}, person {person_id} has not been randomised")
        if not reason.strip():
            raise TrialError(f"trial {trial_id}, person {person_id}: emergency unblinding needs a reason")
        with self.db.transaction():
            self.db.insert("mercia_trial_unblinding", {"trial_id": trial_id, "person_id": person_id,
                                                       "unblinded_by": actor.username, "reason": reason.strip(),
                                                       "unblinded_at": now()})
            TrialNotifications(self.register).notify(trial_id, self.register.managers(trial_id), (
                f"{actor.username} unblinded participant {person_id} on trial {trial_id} in an emergency: "
                f"{reason.strip()}"))
            self.audit.record(actor.username, "trial.unblind", f"trial:{trial_id}/person:{person_id}",
                              trial.project_id, reason=reason.strip())
        return {**self.allocation(actor, trial_id, person_id), "arm": row["arm"]}

    # -- logs and dashboard --------------------------------------------------------------------
    def screening_log(self, actor: User, trial_id: str) -> list[dict[str, Any]]:
        """Every status recorded at the sites ``actor`` oversees (no arms: blinding holds in the log too)."""
        trial = self.register.require(actor, trial_id, *STAFF, TrialRole.STATISTICIAN)
        sites = self.overseen_sites(actor, trial)
        if not sites:
            return []
        return self.db.rows("SELECT person_id, site, status, reason, recorded_on, recorded_by FROM mercia_trial_status "
                            f"WHERE trial_id = ? AND site IN ({', '.join('?' for _ in sites)}) ORDER BY recorded_at",
                            [trial.trial_id, *sites])

    def dashboard(self, actor: User, trial_id: str) -> list[dict[str, Any]]:
        """Per site ``actor`` oversees: randomised so far against an even share of the target, and people by
        current status (``now_<status>``)."""
        trial = self.register.require(actor, trial_id, *STAFF, TrialRole.STATISTICIAN)
        rows = self.db.rows("""
            SELECT site, status, COUNT(*) AS n FROM (
                SELECT s.site, s.status, ROW_NUMBER() OVER (PARTITION BY s.person_id ORDER BY s.recorded_at DESC) AS k
                FROM mercia_trial_status s WHERE s.trial_id = ?) latest
            WHERE k = 1 GROUP BY site, status""", [trial_id])
        randomised = {r["site"]: int(r["n"]) for r in self.db.rows(
            "SELECT site, COUNT(*) AS n FROM mercia_trial_allocation WHERE trial_id = ? GROUP BY site", [trial_id])}
        share = trial.target / len(trial.sites)
        out = []
        for site in self.overseen_sites(actor, trial):
            counts = {f"now_{r['status']}": int(r["n"]) for r in rows if r["site"] == site}
            out.append({"site": site, "randomised": randomised.get(site, 0), "target": round(share, 1),
                        "percent_of_target": round(100 * randomised.get(site, 0) / share, 1), **counts})
        return out

    def overseen_sites(self, actor: User, trial: Trial) -> list[str]:
        """The sites whose recruitment ``actor`` sees in the screening log and the dashboard: every site for
        the trial manager and the statistician, otherwise those where they are investigator or nurse."""
        if self.register.roles(actor, trial.trial_id).keys() & {TrialRole.TRIAL_MANAGER, TrialRole.STATISTICIAN}:
            return list(trial.sites)
        own = self.register.sites_for(actor, trial.trial_id, TrialRole.SITE_INVESTIGATOR, TrialRole.RESEARCH_NURSE)
        return [site for site in trial.sites if site in own]

    def allocation_summary(self, actor: User, trial_id: str) -> dict[str, Any]:
        """Unblinded counts for the trial statistician only: allocations by arm, by site and arm, and
        for each stratification factor by level and arm with the imbalance (largest minus smallest arm
        count) of each level.  Every view is audited."""
        trial = self.register.require(actor, trial_id, TrialRole.STATISTICIAN)
        rows = self.db.rows("SELECT site, levels, arm FROM mercia_trial_allocation WHERE trial_id = ? "
                            "ORDER BY version, sequence", [trial_id])
        arms = [a.code for a in trial.settings.arms]
        by_arm = {arm: sum(1 for r in rows if r["arm"] == arm) for arm in arms}
        sites = [{"site": site, **{arm: sum(1 for r in rows if r["site"] == site and r["arm"] == arm) for arm in arms}}
                 for site in trial.sites]
        levels = [orjson.loads(r["levels"]) for r in rows]
        factors = []
        for factor in trial.settings.factors:
            table = []
            for level in factor.levels:
                counts = {arm: sum(1 for r, lv in zip(rows, levels, strict=True)
                                   if r["arm"] == arm and lv.get(factor.name) == level) for arm in arms}
                table.append({"level": level, **counts, "imbalance": max(counts.values()) - min(counts.values())})
            factors.append({"factor": factor.name, "rows": table,
                            "imbalance": sum(r["imbalance"] for r in table)})
        self.audit.record(actor.username, "trial.allocation_summary", f"trial:{trial_id}", trial.project_id,
                          allocations=len(rows), by_arm=by_arm)
        return {"trial": trial, "arms": arms, "total": len(rows), "by_arm": by_arm, "sites": sites,
                "factors": factors}
