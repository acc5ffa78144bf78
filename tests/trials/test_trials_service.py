"""Trials on both engines: register, feasibility, worklists and re-identification, recruitment,
randomisation with concealment and unblinding, CONSORT; the refusal paths of each."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from mercia.governance import Conflict, Forbidden, NotFound
from mercia.privacy.disclosure import get_policy
from mercia.trials.consort import consort, consort_counts
from mercia.trials.feasibility import feasibility
from mercia.trials.notifications import TrialNotifications
from mercia.trials.prescreen import ReidentificationService, record_dissent, worklist
from mercia.trials.recruitment import Recruitment
from mercia.trials.register import TrialError, TrialRole

from .conftest import (PSEUDONYMISER, SITE_A, SITE_B, eligibility, make_world, nhs_number,
                       second_server_waits_then_is_refused)

T = "ISRCTN12345678"
LEVELS = {"sex": "F", "age": "<65"}


def enrol(world, person_id: int, site: str = SITE_A, levels=LEVELS):
    r, nurse = world.recruitment, world.people["nurse_a"]
    for status in ("approached", "screened", "consented"):
        r.record(nurse, T, person_id, status, site=site,
                 confirmed=["HbA1c over 58 mmol/mol", "no insulin"] if status == "screened" else None)
    return r.randomise(nurse, T, person_id, levels)


def add_person(world, person_id: int, care_site_id: int = 1) -> None:
    """A person registered at site A (care site 1) or B (2), with no records: one the cohort never finds."""
    import pyarrow as pa

    world.store.insert_arrow("person", pa.table({
        "person_id": [person_id], "gender_concept_id": [8507], "year_of_birth": [1970], "race_concept_id": [0],
        "ethnicity_concept_id": [0], "care_site_id": [care_site_id]}))


def test_create_needs_an_approved_project_and_valid_input(world):
    p = world.people
    common = {"title": "X", "project_id": world.project, "sponsor": "S", "chief_investigator": "C",
              "sites": [SITE_A], "target": 10, "opens_on": "2026-01-01", "closes_on": "2027-01-01",
              "eligibility": eligibility(), "settings": {"method": "simple", "arms": [{"code": "a"}, {"code": "b"}]}}
    with pytest.raises(NotFound):
        world.register.create(p["stats"], trial_id="ISRCTN2", **common)          # not a project member
    with pytest.raises(Conflict):
        world.register.create(p["manager"], trial_id=T, **common)
    with pytest.raises(TrialError, match="closes before it opens"):
        world.register.create(p["manager"], trial_id="ISRCTN3", **{**common, "closes_on": "2025-01-01"})
    with pytest.raises(TrialError, match="not a valid cohort definition"):
        world.register.create(p["manager"], trial_id="ISRCTN4", **{**common, "eligibility": "{not json"})
    with pytest.raises(TrialError, match="at least two arms"):
        world.register.create(p["manager"], trial_id="ISRCTN5", **{**common, "settings": {"method": "simple",
                                                                                         "arms": [{"code": "a"}]}})
    trial = world.register.trial(T)
    assert trial.sites == [SITE_A, SITE_B] and trial.pillar == "chronic" and trial.settings.method == "minimisation"
    assert world.gov.audit.search(action="trial.create")[0]["target"] == f"trial:{T}"


def test_roles_are_granted_by_the_manager_and_care_team_is_own_organisation(world):
    p = world.people
    with pytest.raises(Forbidden):
        world.register.grant(p["nurse_a"], T, p["researcher"].id, TrialRole.RESEARCH_NURSE, SITE_A)
    with pytest.raises(TrialError, match="works for A81002, not A81001"):
        world.register.grant(p["manager"], T, p["gp_b"].id, TrialRole.CARE_TEAM, SITE_A)
    with pytest.raises(TrialError, match="needs one of the trial's sites"):
        world.register.grant(p["manager"], T, p["pi_a"].id, TrialRole.SITE_INVESTIGATOR, "Z99999")
    with pytest.raises(NotFound):                       # no role: the trial's existence is not revealed
        world.register.require(p["researcher"], T, TrialRole.STATISTICIAN)


def test_feasibility_counts_per_site_and_month_are_controlled(world):
    result = feasibility(world.register, world.people["stats"], T, years=6, as_of="2026-06-30", horizon=6)
    assert result.disclosure is not None and result.disclosure.policy == get_policy().name
    monthly = result.table("new_eligible")
    assert len(monthly.rows) == 2 * 72
    true_a = {r["month"]: r for r in monthly.rows if r["site"] == SITE_A}
    # one diagnosis a month at site A from 2021-01 to 2024-04 (persons 1-40): each count is 1, so redacted
    assert true_a["2021-01"]["count_new"] is None and (0, "count_new") not in monthly.redacted or True
    assert all(r["count_new"] in (None, 0) for r in monthly.rows)
    pool = {r["site"]: r["count_pool"] for r in result.table("pool").rows}
    # 40 at A minus person 3 (dead) -> 39 rounded to 40; 20 at B
    assert pool == {SITE_A: 40, SITE_B: 20}
    projection = [r for r in result.table("projection").rows if r["site"] == SITE_A]
    assert [r["month_ahead"] for r in projection] == [str(m) for m in range(1, 7)]
    first = projection[0]
    assert first["lower"] <= first["expected"] <= first["upper"]
    assert first["expected"] == pytest.approx(40 * 0.7 * 0.5, abs=0.1)   # pool only: no new cases published
    with pytest.raises(NotFound):
        feasibility(world.register, world.people["researcher"], T)


def test_feasibility_hides_a_pool_a_few_from_the_users_earlier_answer_whatever_made_them_differ(world):
    """As of 2023-06-14 site A's pool is 28; a dissent recorded, the same question gives 27: the pair would say
    who dissented.  The rule is per user and window; ``nhse-hes`` leaves it to rounding."""
    def pool_a(name: str, as_of: str = "2023-06-14", policy: str = "threshold10") -> int | None:
        result = feasibility(world.register, world.people[name], T, years=3, as_of=as_of, horizon=1,
                             policy=get_policy(policy))
        return {r["site"]: r["count_pool"] for r in result.table("pool").rows}[SITE_A]

    assert pool_a("stats") == 28
    record_dissent(world.register, world.people["gp_a"], 10)
    assert pool_a("stats") is None                # the same as_of: the records changed, not the question
    assert pool_a("manager") == 27                # another user's answers are compared with their own only
    kept = world.register.db.rows("SELECT user_id, as_of, persons FROM mercia_trial_feasibility_count "
                                  "WHERE site = ? AND cell = 'pool' ORDER BY asked_at", [SITE_A])
    assert [(r["as_of"], r["persons"]) for r in kept] == [("2023-06-14", 28), ("2023-06-14", 27), ("2023-06-14", 27)]
    world.register.db.execute("UPDATE mercia_trial_feasibility_count SET asked_at = '2000-01-01T00:00:00.000000Z'")
    assert pool_a("stats") == 27                  # past the window, an earlier answer is not compared
    assert (pool_a("pi_a", policy="nhse-hes"), pool_a("pi_a", "2023-06-15", "nhse-hes")) == (25, 30)


def test_feasibility_keeps_each_answer_once_for_the_window_only(world):
    """Viewing the same answer again adds no rows but renews when it was given (so it is compared for another
    window); answers older than the window are removed, as they are never compared again."""
    def ask(as_of: str = "2023-06-14") -> None:
        feasibility(world.register, world.people["stats"], T, years=3, as_of=as_of, horizon=1,
                    policy=get_policy("threshold10"))

    def kept() -> list[tuple]:
        return world.register.db.rows("SELECT site, cell, persons, asked_at FROM mercia_trial_feasibility_count "
                                      "ORDER BY site, cell")
    ask()
    first = kept()
    assert first and len({r["asked_at"] for r in first}) == 1
    world.register.db.execute("UPDATE mercia_trial_feasibility_count SET asked_at = '2000-01-02T00:00:00.000000Z' "
                              "WHERE site = ?", [SITE_B])
    ask()
    again = kept()
    assert [(r["site"], r["cell"], r["persons"]) for r in again] == [(r["site"], r["cell"], r["persons"]) for r in first]
    assert min(r["asked_at"] for r in again) > first[0]["asked_at"]   # site B's rows renewed, none added
    world.register.db.execute("UPDATE mercia_trial_feasibility_count SET asked_at = '2000-01-02T00:00:00.000000Z'")
    ask("2023-06-15")
    assert min(r["asked_at"] for r in kept()) > "2000-01-02"       # the old answers are gone


def test_feasibility_raw_monthly_counts(world):
    from mercia.trials.eligibility import run_eligibility
    from mercia.trials.feasibility import eligible_counts

    trial = world.register.trial(T)
    run_eligibility(world.store, trial, "stats")
    monthly, pool = eligible_counts(world.register, trial, date(2026, 6, 30), 6)
    by = {(r["site"], r["month"]): r["count_new"] for r in monthly}
    assert by[(SITE_A, "2021-01")] == 1 and by[(SITE_B, "2024-05")] == 1 and by[(SITE_A, "2024-05")] == 0
    assert sum(r["count_new"] for r in monthly) == 60
    assert {r["site"]: r["count_pool"] for r in pool} == {SITE_A: 39, SITE_B: 20}


def test_worklist_excludes_dead_dissenting_and_opted_out_and_is_audited(world):
    p = world.people
    record_dissent(world.register, p["gp_a"], 4)
    rows = worklist(world.register, p["nurse_a"], T, SITE_A)
    ids = {r["person_id"] for r in rows}
    assert ids == set(range(1, 41)) - {3, 4, 5}
    assert all("nhs_number" not in r for r in rows) and all(len(r["nhs_pseudonym"]) == 64 for r in rows)
    entry = world.gov.audit.search(action="trial.worklist")[0]
    assert entry["actor"] == "nurse_a" and sorted(entry["detail"]["persons"]) == sorted(ids)
    assert worklist(world.register, p["nurse_a"], T, SITE_A, since=(date.today() + timedelta(days=1)).isoformat()) == []
    with pytest.raises(Forbidden):
        worklist(world.register, p["nurse_a"], T, SITE_B)           # not their site
    with pytest.raises(NotFound):
        worklist(world.register, p["researcher"], T, SITE_A)
    with pytest.raises(Forbidden):
        record_dissent(world.register, p["researcher"], 7)


def test_an_opt_out_purge_deletes_pre_screening_candidates_but_not_consented_trial_records(world):
    from mercia.privacy.optout import purge

    nurse = world.people["nurse_a"]
    worklist(world.register, nurse, T, SITE_A)
    enrol(world, 8)
    candidates = "SELECT person_id FROM mercia_trial_candidate WHERE person_id IN (7, 8, 9) ORDER BY 1"
    assert [r[0] for r in world.store.query(candidates)] == [7, 8, 9]
    history = "SELECT status FROM mercia_trial_status WHERE person_id = 8 ORDER BY recorded_at"
    statuses = world.store.query(history)

    purge(world.store, frozenset({nhs_number(7), nhs_number(8)}), PSEUDONYMISER)

    assert [r[0] for r in world.store.query(candidates)] == [9]
    # a participant's consent is its own legal basis: their allocation and status history stay
    assert world.store.query_one("SELECT count(*) FROM mercia_trial_allocation WHERE person_id = 8") == 1
    assert world.store.query(history) == statuses and len(statuses) == 4
    assert {r["person_id"] for r in worklist(world.register, nurse, T, SITE_A)} == set(range(1, 41)) - {3, 5, 7, 8}  # 3 died, 5 opted out earlier
    world.recruitment.record(nurse, T, 8, "withdrawn", site=SITE_A, reason="moved away")   # consent still stands
    with pytest.raises(TrialError, match="person 7: is not a person in the store"):
        world.recruitment.record(nurse, T, 7, "approached", site=SITE_A)


def test_reading_a_worklist_runs_nothing_and_a_rerun_picks_up_new_data(world):
    """A worklist is read as the eligibility cohort's last run found it; data loaded since count once someone
    who may read the site's worklist runs it again (audited, and the trial says when and by whom)."""
    import pyarrow as pa

    nurse = world.people["nurse_a"]
    world.store.execute("UPDATE mercia_trial_candidate SET first_seen = '2020-01-01'")
    add_person(world, 61)
    world.store.insert_arrow("observation_period", pa.table({
        "observation_period_id": [61], "person_id": [61], "observation_period_start_date": [date(2010, 1, 1)],
        "observation_period_end_date": [date(2035, 1, 1)], "period_type_concept_id": [44814724]}))
    world.store.insert_arrow("condition_occurrence", pa.table({
        "condition_occurrence_id": [61], "person_id": [61], "condition_concept_id": [201826],
        "condition_start_date": [date(2026, 1, 5)], "condition_type_concept_id": [32020]}))
    since = (date.today() - timedelta(days=7)).isoformat()
    assert worklist(world.register, nurse, T, SITE_A, since=since) == []
    before = world.register.trial(T).eligibility_run_at
    worklist(world.register, nurse, T, SITE_A)
    assert world.register.trial(T).eligibility_run_at == before

    from mercia.trials.prescreen import rerun_eligibility

    with pytest.raises(NotFound):
        rerun_eligibility(world.register, world.people["researcher"], T, SITE_A)
    with pytest.raises(Forbidden):
        rerun_eligibility(world.register, world.people["gp_b"], T, SITE_A)
    run = rerun_eligibility(world.register, nurse, T, SITE_A)
    trial = world.register.trial(T)
    assert (run["run_at"], run["run_by"]) == (trial.eligibility_run_at, trial.eligibility_run_by) != (before, None)
    assert run["run_by"] == "nurse_a" and run["persons"] >= 60
    assert [r["person_id"] for r in worklist(world.register, nurse, T, SITE_A, since=since)] == [61]
    entry = world.gov.audit.search(action="trial.eligibility.run")[0]
    assert (entry["actor"], entry["target"], entry["detail"]["persons"]) == ("nurse_a", f"trial:{T}/site:{SITE_A}",
                                                                             run["persons"])


def test_reidentification_only_for_the_care_team_at_the_patients_own_organisation(world, store_factory, engine):
    p = world.people
    org_store = store_factory(engine)
    service = ReidentificationService(org_store, SITE_A)
    service.record_identities(PSEUDONYMISER, [nhs_number(i) for i in range(1, 41)], [f"MRN{i:04d}" for i in range(1, 41)])
    rows = service.worklist(world.register, p["gp_a"], T)
    assert {r["person_id"] for r in rows} == set(range(1, 41)) - {3, 5}
    one = next(r for r in rows if r["person_id"] == 7)
    assert one["nhs_number"] == nhs_number(7) and one["local_mrn"] == "MRN0007"
    assert world.gov.audit.search(action="trial.reidentify")[0]["actor"] == "gp_a"
    for who in ("nurse_a", "pi_a", "stats", "manager", "researcher", "gp_b"):
        with pytest.raises((Forbidden, NotFound)):
            service.worklist(world.register, p[who], T)
    assert len(world.gov.audit.search(action="trial.reidentify.refused")) == 6
    # the research store holds no NHS number or MRN anywhere
    assert not world.store.table_exists("mercia_reid_identity")


def test_status_history_moves_forward_with_reasons(world):
    r, nurse = world.recruitment, world.people["nurse_a"]
    r.record(nurse, T, 10, "approached", site=SITE_A)
    with pytest.raises(TrialError, match="manual criteria not confirmed: no insulin"):
        r.record(nurse, T, 10, "screened", site=SITE_A, confirmed=["HbA1c over 58 mmol/mol"])
    with pytest.raises(Conflict, match="only move forward"):
        r.record(nurse, T, 10, "identified", site=SITE_A)
    with pytest.raises(TrialError, match="needs a reason"):
        r.record(nurse, T, 10, "declined", site=SITE_A)
    with pytest.raises(Conflict, match="only a consented participant withdraws"):
        r.record(nurse, T, 10, "withdrawn", site=SITE_A, reason="x")
    r.record(nurse, T, 10, "declined", site=SITE_A, reason="too many visits")
    with pytest.raises(Conflict, match="is declined"):
        r.record(nurse, T, 10, "screened", site=SITE_A, confirmed=["HbA1c over 58 mmol/mol", "no insulin"])
    with pytest.raises(Forbidden):
        r.record(world.people["gp_b"], T, 11, "approached", site=SITE_B)
    assert [h["status"] for h in r.history(T, 10)] == ["approached", "declined"]
    assert r.screening_log(world.people["stats"], T)[0]["recorded_by"] == "nurse_a"


def test_a_status_is_refused_for_a_person_not_in_the_store(world):
    r, nurse = world.recruitment, world.people["nurse_a"]
    with pytest.raises(TrialError, match="person 999: is not a person in the store"):
        r.record(nurse, T, 999, "approached", site=SITE_A)
    assert r.history(T, 999) == []
    [refused] = world.gov.audit.search(action="trial.status.refused")
    assert (refused["actor"], refused["target"], refused["detail"]["status"]) == \
        ("nurse_a", f"trial:{T}/person:999", "approached")


def test_a_status_is_refused_for_a_person_withheld_by_the_opt_out(world):
    r, nurse = world.recruitment, world.people["nurse_a"]
    with pytest.raises(TrialError, match="person 5: is withheld by the national data opt-out"):
        r.record(nurse, T, 5, "declined", site=SITE_A, reason="no time")
    assert r.history(T, 5) == []
    [refused] = world.gov.audit.search(action="trial.status.refused")
    assert (refused["target"], refused["detail"]["status"]) == (f"trial:{T}/person:5", "declined")


def test_a_patient_who_dissented_from_research_contact_is_not_approached_unless_they_come_forward(world):
    r, nurse = world.recruitment, world.people["nurse_a"]
    worklist(world.register, nurse, T, SITE_A)
    record_dissent(world.register, world.people["gp_a"], 14)
    for status in ("identified", "prescreened", "approached"):
        with pytest.raises(TrialError, match=f"person 14: asked their care team not to be contacted about research "
                                             rf"\(recorded \d{{4}}-\d\d-\d\d\): not {status}"):
            r.record(nurse, T, 14, status, site=SITE_A)
    assert r.history(T, 14) == []
    assert [e["detail"]["status"] for e in world.gov.audit.search(action="trial.status.refused")] == \
        ["approached", "prescreened", "identified"]
    # they came forward themselves: screening, consent and randomisation go ahead
    assert enrol_from_screening(world, 14)["sequence"] == 1
    record_dissent(world.register, world.people["gp_a"], 15)
    r.record(nurse, T, 15, "declined", site=SITE_A, reason="asked not to be contacted")   # an end is recorded
    assert r.current(T, 15)["status"] == "declined"


def enrol_from_screening(world, person_id: int):
    r, nurse = world.recruitment, world.people["nurse_a"]
    r.record(nurse, T, person_id, "screened", site=SITE_A, confirmed=["HbA1c over 58 mmol/mol", "no insulin"])
    r.record(nurse, T, person_id, "consented", site=SITE_A)
    return r.randomise(nurse, T, person_id, LEVELS)


@pytest.mark.parametrize("engine", ["postgres"])
def test_two_first_statuses_at_once_are_recorded_one_after_the_other(world):
    """Two connections (two servers): while a first status of person 16 is recorded, not yet committed, a second
    first status waits for it, then is checked against the history it left ('approached' after 'screened' goes
    backwards), so no history gets two first statuses that were each checked against none."""
    nurse = world.people["nurse_a"]
    second_server_waits_then_is_refused(
        world, lambda: world.recruitment.record(nurse, T, 16, "screened", site=SITE_A,
                                                confirmed=["HbA1c over 58 mmol/mol", "no insulin"]),
        lambda register: Recruitment(register).record(nurse, T, 16, "approached", site=SITE_A),
        Conflict, "person 16 is already screened; statuses only move forward")
    assert [h["status"] for h in world.recruitment.history(T, 16)] == ["screened"]


def test_a_site_cannot_claim_or_end_another_sites_candidate(world):
    r, p = world.recruitment, world.people
    world.register.grant(p["manager"], T, p["researcher"].id, TrialRole.RESEARCH_NURSE, SITE_B)
    worklist(world.register, p["nurse_a"], T, SITE_A)          # runs eligibility: 41-60 are site B's candidates
    claimed = f"person 45: is in site {SITE_B}'s recruitment for this trial, not {SITE_A}'s"
    with pytest.raises(TrialError, match=claimed):
        r.record(p["nurse_a"], T, 45, "declined", site=SITE_A, reason="claimed")
    assert r.history(T, 45) == []
    r.record(p["researcher"], T, 45, "approached", site=SITE_B)  # site B still recruits them
    with pytest.raises(TrialError, match=f"person 45: is in site {SITE_B}'s recruitment"):
        r.record(p["nurse_a"], T, 45, "declined", site=SITE_A, reason="claimed")
    # a referral (nobody's candidate) is recorded at the site it was referred to, and is then that site's
    add_person(world, 98, care_site_id=2)
    r.record(p["nurse_a"], T, 98, "approached", site=SITE_A)
    with pytest.raises(TrialError, match=f"person 98: is in site {SITE_A}'s recruitment"):
        r.record(p["researcher"], T, 98, "declined", site=SITE_B, reason="no time")
    assert [e["detail"]["site"] for e in world.gov.audit.search(action="trial.status.refused")] \
        == [SITE_B, SITE_A, SITE_A]


def test_the_dashboard_shows_site_staff_only_their_own_sites_as_the_screening_log_does(world):
    r, p = world.recruitment, world.people
    world.register.grant(p["manager"], T, p["researcher"].id, TrialRole.RESEARCH_NURSE, SITE_B)
    worklist(world.register, p["nurse_a"], T, SITE_A)
    enrol(world, 7)
    r.record(p["researcher"], T, 45, "approached", site=SITE_B)
    for who, sites in (("nurse_a", [SITE_A]), ("pi_a", [SITE_A]), ("researcher", [SITE_B]),
                       ("manager", [SITE_A, SITE_B]), ("stats", [SITE_A, SITE_B])):
        assert [row["site"] for row in r.dashboard(p[who], T)] == sites, who
        assert sorted({row["site"] for row in r.screening_log(p[who], T)}) == sites, who
    assert r.dashboard(p["researcher"], T) == [{"site": SITE_B, "randomised": 0, "target": 20.0,
                                                "percent_of_target": 0.0, "now_approached": 1}]


def test_randomisation_concealment_blinding_and_refusals(world):
    r, p = world.recruitment, world.people
    worklist(world.register, p["nurse_a"], T, SITE_A)
    assert world.store.query_one("SELECT COUNT(*) FROM mercia_trial_allocation") == 0   # nothing drawn ahead
    shown = enrol(world, 7)
    assert "arm" not in shown and len(shown["pack_code"]) == 8                         # blinded for the nurse
    assert r.allocation(p["pharm"], T, 7)["arm"] in ("drug", "placebo")
    assert "arm" not in r.allocation(p["stats"], T, 7)
    entry = world.gov.audit.search(action="trial.randomise")[0]
    assert entry["detail"]["levels"] == LEVELS and entry["detail"]["method"] == "minimisation"
    assert entry["detail"]["arm"] is None                                               # the log keeps blinding
    with pytest.raises(Conflict, match="already randomised"):
        r.randomise(p["nurse_a"], T, 7, LEVELS)
    row = world.store.query_dicts("SELECT * FROM mercia_trial_allocation WHERE person_id = 7")[0]
    cols = ", ".join(row)
    with pytest.raises(Exception, match="(?i)unique|duplicate|constraint"):   # a racing second server is refused too
        world.store.execute(f"INSERT INTO mercia_trial_allocation ({cols}) VALUES ({', '.join('?' for _ in row)})",
                            list(row.values()))
    r.record(p["nurse_a"], T, 8, "approached", site=SITE_A)
    with pytest.raises(Conflict, match="not consented"):
        r.randomise(p["nurse_a"], T, 8, LEVELS)
    with pytest.raises(Conflict, match="not consented"):
        r.randomise(p["nurse_a"], T, 9, LEVELS)
    # consented but not meeting the computable criteria (no diagnosis: a person the cohort never found, referred
    # to the site from outside its worklist)
    add_person(world, 99)
    for status in ("approached", "screened", "consented"):
        r.record(p["nurse_a"], T, 99, status, site=SITE_A, confirmed=["HbA1c over 58 mmol/mol", "no insulin"])
    with pytest.raises(Conflict, match="does not meet the trial's computable eligibility"):
        r.randomise(p["nurse_a"], T, 99, LEVELS)
    with pytest.raises(TrialError, match="level None"):
        enrol(world, 12, levels={"sex": "F"})
    with pytest.raises(Forbidden):
        r.randomise(p["stats"], T, 12, LEVELS)


def test_emergency_unblinding_is_audited_and_notified(world):
    r, p = world.recruitment, world.people
    worklist(world.register, p["nurse_a"], T, SITE_A)
    enrol(world, 7)
    with pytest.raises(TrialError, match="needs a reason"):
        r.unblind(p["pi_a"], T, 7, " ")
    with pytest.raises(Forbidden):
        r.unblind(p["nurse_a"], T, 7, "anaphylaxis")
    out = r.unblind(p["pi_a"], T, 7, "anaphylaxis")
    assert out["arm"] in ("drug", "placebo")
    assert r.allocation(p["nurse_a"], T, 7)["arm"] == out["arm"]
    assert "anaphylaxis" in TrialNotifications(world.register).for_user(p["manager"], T)[0]["message"]
    assert world.gov.audit.search(action="trial.unblind")[0]["detail"]["reason"] == "anaphylaxis"


def test_settings_fixed_after_first_allocation_and_closed_trial_refuses(world):
    r, p, reg = world.recruitment, world.people, world.register
    new = {"method": "block", "arms": [{"code": "drug"}, {"code": "placebo"}]}
    reg.change_settings(p["manager"], T, new)                    # nobody allocated yet: allowed in place
    assert reg.trial(T).settings.method == "block"
    worklist(world.register, p["nurse_a"], T, SITE_A)
    enrol(world, 7)
    with pytest.raises(Conflict, match="create a new version"):
        reg.change_settings(p["manager"], T, {**new, "method": "simple"})
    with pytest.raises(TrialError, match="say why"):
        reg.change_settings(p["manager"], T, {**new, "method": "simple"}, new_version=True)
    assert reg.change_settings(p["manager"], T, {**new, "method": "simple"}, new_version=True,
                               reason="DMC advice").version == 2
    reg.close(p["manager"], T)
    for status in ("approached", "screened", "consented"):
        r.record(p["nurse_a"], T, 8, status, site=SITE_A, confirmed=["HbA1c over 58 mmol/mol", "no insulin"])
    with pytest.raises(Conflict, match="not recruiting"):
        r.randomise(p["nurse_a"], T, 8, LEVELS)


def test_randomisation_is_reproducible_from_the_key(store_factory, engine):
    arms = []
    for _ in range(2):
        w = make_world(store_factory(engine), method="minimisation", blinded=False)
        worklist(w.register, w.people["nurse_a"], T, SITE_A)
        arms.append([enrol(w, i, levels={"sex": "FM"[i % 2], "age": ["<65", "65+"][i % 3 == 0]})["arm"]
                     for i in (1, 2, 6, 7, 8, 9, 10, 11)])
    assert arms[0] == arms[1] and set(arms[0]) == {"drug", "placebo"}


def test_consort_from_the_log_internal_and_controlled(world, tmp_path):
    r, p = world.recruitment, world.people
    worklist(world.register, p["nurse_a"], T, SITE_A)
    for i in (6, 7, 8, 9, 10, 11, 12, 13, 14, 15):
        enrol(world, i)
    r.record(p["nurse_a"], T, 16, "approached", site=SITE_A)
    r.record(p["nurse_a"], T, 16, "declined", site=SITE_A, reason="no time")
    r.record(p["nurse_a"], T, 17, "approached", site=SITE_A)
    r.record(p["nurse_a"], T, 17, "ineligible", site=SITE_A, reason="on insulin")
    r.record(p["nurse_a"], T, 6, "withdrawn", site=SITE_A, reason="moved away")
    counts = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T).rows}
    assert counts["identified"] == 12 and counts["assessed"] == 12 and counts["randomised"] == 10
    assert counts["excluded_declined"] == 1 and counts["excluded_ineligible"] == 1 and counts["excluded"] == 2
    assert counts["allocated_drug"] + counts["allocated_placebo"] == 10
    assert counts["withdrawn_drug"] + counts["withdrawn_placebo"] == 1
    external = consort_counts(world.register, p["stats"], T, external=True)
    assert external.redacted_marker is not None
    shown = {row["box"]: row["count"] for row in external.rows}
    assert shown["assessed"] == 10 and shown["excluded_declined"] is None
    # 2 of the 12 assessed were excluded: randomised (10) beside them would give them away
    assert shown["excluded"] is None and shown["randomised"] is None
    out = consort(world.register, p["manager"], T, tmp_path / "consort", external=True)
    svg, png = (tmp_path / "consort.svg"), (tmp_path / "consort.png")
    assert [svg.exists(), png.exists()] == [True, True]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "Assessed for eligibility (n=10)" in svg.read_text()
    assert out["counts"]["excluded_declined"] == get_policy().redacted_marker
    with pytest.raises(Forbidden):
        consort_counts(world.register, p["nurse_a"], T)
    board = {row["site"]: row for row in r.dashboard(p["manager"], T)}
    assert board[SITE_A]["randomised"] == 10 and board[SITE_A]["percent_of_target"] == 50.0


def test_linkage_merging_two_persons_carries_their_trial_records_and_dissent_to_the_merged_person(world):
    import pyarrow as pa

    from mercia.linkage.probabilistic import merge_persons

    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    enrol(world, 12)
    record_dissent(world.register, world.people["gp_a"], 12)       # after consent: their consent still stands
    statuses = world.store.query("SELECT status FROM mercia_trial_status WHERE person_id = 12 ORDER BY recorded_at")

    assert merge_persons(world.store, pa.table({"old": [12], "new": [11]})) == []

    def rows(table):
        return world.store.query(f"SELECT person_id, count(*) FROM {table} WHERE person_id IN (11, 12) GROUP BY 1")
    assert rows("mercia_research_contact_dissent") == [(11, 1)]
    assert rows("mercia_trial_allocation") == [(11, 1)]
    assert rows("mercia_trial_candidate") == [(11, 1)]   # one candidate row per person and trial
    assert world.store.query("SELECT status FROM mercia_trial_status WHERE person_id = 11 ORDER BY recorded_at") \
        == statuses
    with pytest.raises(Conflict, match="already randomised"):
        world.recruitment.randomise(world.people["nurse_a"], T, 11, LEVELS)


def test_persons_each_randomised_in_one_trial_are_left_unmerged(world):
    import pyarrow as pa

    from mercia.linkage.probabilistic import merge_persons

    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    enrol(world, 13)
    enrol(world, 14)
    held = merge_persons(world.store, pa.table({"old": [14, 16], "new": [13, 15]}))

    assert held == [f"persons 13, 14 look like one person but were each randomised in trial {T}: "
                    "left unmerged for the trial team (mercia trials duplicates)"]
    links = dict(world.store.query("SELECT source_pseudonym, person_id FROM mercia_person_link "
                                   "WHERE source_pseudonym IN ('s13', 's14', 's15', 's16')"))
    assert links == {"s13": 13, "s14": 14, "s15": 15, "s16": 15}   # the other cluster merged
    assert world.store.query("SELECT person_id FROM mercia_trial_allocation WHERE person_id IN (13, 14) "
                             "ORDER BY 1") == [(13,), (14,)]


def _link_as_one_human(world, *persons: int) -> None:
    """Give the persons' link records one NHS pseudonym, so the next link run finds them to be one human."""
    first = world.store.query_one("SELECT nhs_pseudonym FROM mercia_person_link WHERE person_id = ?", [persons[0]])
    for person in persons[1:]:
        world.store.execute("UPDATE mercia_person_link SET nhs_pseudonym = ? WHERE person_id = ?", [first, person])


def test_a_double_randomisation_found_by_linkage_is_recorded_once_and_listed_for_the_trial_team(world):
    from mercia.linkage.probabilistic import link_store
    from mercia.trials.duplicates import DuplicateEnrolments

    p, duplicates = world.people, DuplicateEnrolments(world.register)
    worklist(world.register, p["nurse_a"], T, SITE_A)
    arms = [enrol(world, 13), enrol(world, 14, levels={"sex": "M", "age": "65+"})]
    _link_as_one_human(world, 13, 14)

    runs = [link_store(world.store), link_store(world.store)]

    assert all(any("persons 13, 14" in held for held in run.left_unmerged) for run in runs)
    recorded = world.store.query_dicts("SELECT * FROM mercia_trial_duplicate ORDER BY sequence")
    assert [(r["randomised_as"], r["person_id"], r["status"], r["site"]) for r in recorded] == \
        [(13, 13, "open", SITE_A), (14, 14, "open", SITE_A)]                          # once, not per run
    assert len({r["duplicate_id"] for r in recorded}) == 1
    assert [r["arm"] for r in recorded] == [r["arm"] for r in world.store.query_dicts(
        "SELECT arm FROM mercia_trial_allocation WHERE person_id IN (13, 14) ORDER BY sequence")]
    assert [r["pack_code"] for r in recorded] == [a["pack_code"] for a in arms]
    listed = duplicates.open(p["manager"], T)
    assert [(r["person_id"], r["suggested_keep"]) for r in listed] == [(13, True), (14, False)]
    assert not any("arm" in r for r in listed)                                       # blinded trial: no arms
    assert [r["person_id"] for r in duplicates.open(p["stats"], T)] == [13, 14]
    with pytest.raises(Forbidden):
        duplicates.open(p["nurse_a"], T)
    with pytest.raises(NotFound):
        duplicates.open(p["researcher"], T)
    counts = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T).rows}
    assert (counts["randomised"], counts["suspected_duplicate_randomisations"], counts["duplicate_randomisations"]) \
        == (2, 1, 0)


def test_resolving_a_duplicate_keeps_one_allocation_and_the_next_link_run_merges(world):
    from mercia.linkage.probabilistic import link_store
    from mercia.trials.duplicates import DuplicateEnrolments

    p, duplicates = world.people, DuplicateEnrolments(world.register)
    worklist(world.register, p["nurse_a"], T, SITE_A)
    enrol(world, 13)
    enrol(world, 14, levels={"sex": "M", "age": "65+"})
    _link_as_one_human(world, 13, 14)
    link_store(world.store)
    before = world.store.query_dicts("SELECT * FROM mercia_trial_allocation ORDER BY sequence")

    with pytest.raises(Forbidden):
        duplicates.resolve(p["stats"], T, 14, "second enrolment at the same practice")
    with pytest.raises(NotFound):
        duplicates.resolve(p["researcher"], T, 14, "x")
    with pytest.raises(TrialError, match="not in any suspected duplicate"):
        duplicates.resolve(p["manager"], T, 20, "x")
    with pytest.raises(TrialError, match="not in duplicate enrolment 999"):
        duplicates.resolve(p["manager"], T, 14, "x", duplicate_id=999)
    with pytest.raises(TrialError, match="needs a reason"):
        duplicates.resolve(p["manager"], T, 14, " ")
    with pytest.raises(NotFound):
        duplicates.resolve(p["manager"], "ISRCTN00000000", 14, "x")
    assert world.store.query_dicts("SELECT * FROM mercia_trial_allocation ORDER BY sequence") == before
    assert world.store.query("SELECT DISTINCT status FROM mercia_trial_duplicate") == [("open",)]

    # the second randomisation kept (its data were collected; the first person record was the stale one)
    done = duplicates.resolve(p["manager"], T, 14, "the record at 14 holds the trial data")
    assert (done["kept"], done["set_aside"]) == (14, [13])
    with pytest.raises(Conflict, match="already resolved"):
        duplicates.resolve(p["manager"], T, 14, "again")
    assert world.store.query("SELECT person_id FROM mercia_trial_allocation") == [(14,)]
    set_aside = world.store.query_dicts("SELECT * FROM mercia_trial_duplicate WHERE kept = FALSE")[0]
    assert {k: set_aside[k] for k in ("person_id", "arm", "sequence", "status", "resolved_by", "reason")} == {
        "person_id": 13, "arm": before[0]["arm"], "sequence": 1, "status": "resolved", "resolved_by": "manager",
        "reason": "the record at 14 holds the trial data"}
    entry = world.gov.audit.search(action="trial.duplicate.resolve")[0]
    assert entry["detail"]["kept"] == 14 and not entry["detail"]["kept_was_first"]
    assert entry["seq"] == set_aside["resolution_audit_seq"]
    assert duplicates.open(p["manager"], T) == []
    counts = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T).rows}
    assert (counts["randomised"], counts["duplicate_randomisations"], counts["suspected_duplicate_randomisations"],
            counts["excluded"], counts["assessed"]) == (1, 1, 0, 0, 1)
    external = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T, external=True).rows}
    assert external["duplicate_randomisations"] is None                 # a count of 1 is suppressed outside the team
    allocator = world.recruitment.allocator(world.register.trial(T))
    assert allocator.allocated == 2                                   # the set-aside draw stays spent
    assert [sum(level) for level in allocator.margins[0]] == [0, 1]   # sex F: the set-aside 13 is in no margin

    assert link_store(world.store).left_unmerged == []
    assert world.store.query("SELECT source_pseudonym, person_id FROM mercia_person_link "
                             "WHERE source_pseudonym IN ('s13', 's14') ORDER BY 1") == [("s13", 13), ("s14", 13)]
    kept = world.store.query_dicts("SELECT * FROM mercia_trial_allocation")
    assert [(a["person_id"], a["sequence"], a["arm"]) for a in kept] == [(13, 2, before[1]["arm"])]
    assert world.store.query("SELECT randomised_as, person_id, kept FROM mercia_trial_duplicate ORDER BY 1") == \
        [(13, 13, False), (14, 13, True)]
    assert link_store(world.store).left_unmerged == [] and \
        world.store.query_one("SELECT COUNT(*) FROM mercia_trial_duplicate") == 2
    assert enrol(world, 15)["sequence"] == 3                           # no sequence reused
    counts = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T).rows}
    assert (counts["randomised"], counts["duplicate_randomisations"]) == (2, 1)


def test_after_the_merge_the_kept_randomisation_is_the_persons_current_status(world):
    """The set-aside record's later status (here: withdrawn after its randomisation) arrives with the merge;
    the dashboard must still count the human as randomised, by the randomisation kept."""
    from mercia.linkage.probabilistic import link_store
    from mercia.trials.duplicates import DuplicateEnrolments

    p = world.people
    worklist(world.register, p["nurse_a"], T, SITE_A)
    enrol(world, 13)
    enrol(world, 14, levels={"sex": "M", "age": "65+"})
    world.recruitment.record(p["nurse_a"], T, 14, "withdrawn", site=SITE_A, reason="moved away")
    _link_as_one_human(world, 13, 14)
    link_store(world.store)
    DuplicateEnrolments(world.register).resolve(p["manager"], T, 13, "the first randomisation stands")
    assert link_store(world.store).left_unmerged == []
    board = {row["site"]: row for row in world.recruitment.dashboard(p["manager"], T)}
    assert board[SITE_A]["randomised"] == 1
    assert board[SITE_A].get("now_randomised") == 1 and "now_withdrawn" not in board[SITE_A]


def test_a_third_enrolment_of_a_resolved_human_opens_a_new_duplicate_and_leaves_the_resolution(world):
    import pyarrow as pa

    from mercia.linkage.probabilistic import merge_persons
    from mercia.trials.duplicates import DuplicateEnrolments

    p, duplicates = world.people, DuplicateEnrolments(world.register)
    worklist(world.register, p["nurse_a"], T, SITE_A)
    enrol(world, 13)
    enrol(world, 14)
    merge_persons(world.store, pa.table({"old": [14], "new": [13]}))
    first = duplicates.resolve(p["manager"], T, 13, "first randomisation")["duplicate_id"]
    assert merge_persons(world.store, pa.table({"old": [14], "new": [13]})) == []
    resolved = world.store.query_dicts("SELECT * FROM mercia_trial_duplicate ORDER BY sequence")
    enrol(world, 16)

    assert len(merge_persons(world.store, pa.table({"old": [16], "new": [13]}))) == 1
    listed = duplicates.open(p["manager"], T)
    assert [(r["person_id"], r["sequence"], r["suggested_keep"]) for r in listed] == [(13, 1, True), (16, 3, False)]
    assert {r["duplicate_id"] for r in listed} != {first}
    assert world.store.query_dicts(f"SELECT * FROM mercia_trial_duplicate WHERE duplicate_id = {first} "
                                   "ORDER BY sequence") == resolved
    counts = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T).rows}
    assert (counts["randomised"], counts["duplicate_randomisations"], counts["suspected_duplicate_randomisations"]) \
        == (2, 1, 1)


def screening_log(world, randomised, ineligible, declined=()):
    """People randomised, found ineligible and who declined, by person id, at site A."""
    r, nurse = world.recruitment, world.people["nurse_a"]
    worklist(world.register, nurse, T, SITE_A)
    for i in randomised:
        enrol(world, i)
    for status, people, reason in (("ineligible", ineligible, "on insulin"), ("declined", declined, "no time")):
        for i in people:
            r.record(nurse, T, i, "approached", site=SITE_A)
            r.record(nurse, T, i, status, site=SITE_A, reason=reason)


def test_external_consort_hides_an_exclusion_reason_that_the_other_boxes_give_away(world):
    """Attack by complement: 'excluded' is published, so with one reason hidden and the others shown the
    hidden one is 'excluded' less the others.  Without rounding (threshold10) that is exact; the
    exclusion reasons partition 'excluded', so secondary suppression hides a second reason with it."""
    p = world.people
    screening_log(world, randomised=range(6, 16), ineligible=range(16, 28), declined=(28, 29))
    policy = get_policy("threshold10")
    shown = {row["box"]: row["count"] for row in consort_counts(world.register, p["stats"], T, external=True,
                                                               policy=policy).rows}
    assert shown["excluded"] == 14 and shown["excluded_declined"] is None      # 2 declined: hidden
    reasons = [shown[f"excluded_{reason}"] for reason in ("ineligible", "declined", "other")]
    assert reasons.count(None) != 1, shown                                       # the 2 is not 14 - 12 - 0
    arms = [shown[f"allocated_{arm}"] for arm in ("drug", "placebo")]
    assert arms.count(None) != 1, shown


def rebuilt_boxes(shown: dict[str, int | None], part_of: dict[str, str]) -> dict[str, int]:
    """What adding and subtracting the published boxes gives: a box is the sum of the boxes it divides
    into, so a hidden box whose parts are all shown, or a hidden part beside its box and shown siblings,
    is worked out, and so on until nothing more follows."""
    known = {box: n for box, n in shown.items() if n is not None}
    parts: dict[str, list[str]] = {}
    for box, group in part_of.items():
        if box != group:                      # a box is never a part of itself
            parts.setdefault(group, []).append(box)
    changed = True
    while changed:
        changed = False
        for box, members in parts.items():
            unknown = [m for m in members if m not in known]
            if box not in known and not unknown:
                known[box], changed = sum(known[m] for m in members), True
            elif box in known and len(unknown) == 1:
                known[unknown[0]], changed = known[box] - sum(known[m] for m in members if m in known), True
    return {box: n for box, n in known.items() if shown[box] is None}


def test_external_consort_never_lets_a_hidden_box_be_rebuilt_from_its_parts(world):
    """Attack by chains: 3 ineligible are hidden and 'randomised' (24) is hidden as their cover beside
    'assessed' (27); but the arms (12 and 12) add up to 'randomised', and 'assessed' less that gave the 3
    excluded exactly under threshold10.  No hidden box may follow from the boxes shown."""
    p = world.people
    screening_log(world, randomised=range(6, 30), ineligible=range(30, 33))
    raw = consort_counts(world.register, p["stats"], T)
    assert {row["box"]: row["count"] for row in raw.rows}["excluded"] == 3
    table = consort_counts(world.register, p["stats"], T, external=True, policy=get_policy("threshold10"))
    shown = {row["box"]: row["count"] for row in table.rows}
    assert shown["excluded"] is None
    assert rebuilt_boxes(shown, {row["box"]: row["part_of"] for row in table.rows}) == {}, shown


def test_every_trial_step_is_refused_once_the_project_is_past_its_expiry_date(world):
    """Expired by date (``expires_on`` passed) though no job has marked it so: the status read is the
    project's effective one, as ``Governance.project`` gives it."""
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    world.gov.db.execute("UPDATE mercia_project SET expires_on = ? WHERE id = ?", [yesterday, world.project])
    assert world.gov.project_status(world.project) is world.gov.project(world.project).status
    with pytest.raises(Forbidden, match="no longer approved"):
        world.register.require(world.people["manager"], T, TrialRole.TRIAL_MANAGER)
    with pytest.raises(NotFound):
        world.gov.project_status(world.project + 1000)
