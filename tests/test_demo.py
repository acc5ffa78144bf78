"""``mercia demo`` on a machine without the public test data (a fresh clone with only Python and make)."""

from __future__ import annotations

from mercia.demo import RANDOMISATION_KEY_FILE, build_demo
from mercia.demo.trial import STUDY, TRIAL_ID
from mercia.proms.valuesets import value_set
from mercia.vocab.metabolites import NIGHTINGALE_VOCABULARY_ID


def test_demo_builds_without_the_nightingale_catalogue(tmp_path, monkeypatch):
    monkeypatch.setenv("MERCIA_NMR_CATALOGUE", str(tmp_path / "absent" / "nmr_info.csv"))
    monkeypatch.setenv("MERCIA_EQ5D_DIR", str(tmp_path / "absent" / "eq5d"))
    value_set.cache_clear()             # value sets read by an earlier test in this process are not at hand
    built = build_demo(tmp_path / "demo", persons=400, seed=3)
    value_set.cache_clear()
    try:
        assert built.nmr_catalogue is None
        assert built.store.query_one("SELECT count(*) FROM person") > 0
        assert built.store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id = ?",
                                     [NIGHTINGALE_VOCABULARY_ID]) == 0
        cohorts = [name for (name,) in built.store.query("SELECT name FROM mercia_cohort ORDER BY name")]
        assert cohorts == ["New type 2 diabetes starting metformin"]
        # without the EQ-5D value sets the study has its EQ-5D form but no answers (nothing to score them with)
        assert built.store.query_one("SELECT count(*) FROM mercia_crf_form WHERE form_name = 'eq5d'") == 0
        assert built.store.query_one("SELECT count(*) FROM mercia_trial_allocation") > 0
    finally:
        built.store.close()


def test_demo_has_a_trial_and_its_ecrf_study_with_content_for_each_role(tmp_path):
    # a fixed randomisation key, so the three allocations are the same on every run (a fresh demo draws its own)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / RANDOMISATION_KEY_FILE).write_text("0" * 64)
    built = build_demo(tmp_path / "demo", persons=400, seed=3)
    store = built.store
    try:
        title, sites, project = store.query(
            "SELECT t.title, t.sites, p.title FROM mercia_trial t JOIN mercia_project p ON p.id = t.project_id "
            "WHERE t.trial_id = ?", [TRIAL_ID])[0]
        assert title.startswith("StartWell") and project == "Metformin uptake after a type 2 diabetes diagnosis"
        assert sites == '["M90001"]'                      # the region's one GP practice at 400 people
        roles = set(store.query("SELECT u.username, r.role, r.signed_by FROM mercia_trial_role r "
                                "JOIN mercia_user u ON u.id = r.user_id WHERE r.trial_id = ?", [TRIAL_ID]))
        assert roles == {("coordinator", "trial_manager", None), ("clinician", "site_investigator", "coordinator"),
                         ("clinician", "care_team", "coordinator"), ("researcher", "statistician", "coordinator"),
                         ("nurse", "research_nurse", "clinician")}
        statuses = dict(store.query("SELECT status, count(DISTINCT person_id) FROM mercia_trial_status "
                                    "WHERE trial_id = ? GROUP BY status", [TRIAL_ID]))
        assert statuses["prescreened"] == 5 and statuses["declined"] == statuses["ineligible"] == 1
        assert statuses["consented"] == statuses["randomised"] == 3
        months = store.query_one("SELECT count(DISTINCT substr(CAST(recorded_on AS VARCHAR), 1, 7)) "
                                 "FROM mercia_trial_status WHERE trial_id = ?", [TRIAL_ID])
        assert months >= 3                                # recruitment spread over the months the trial is open
        allocations = store.query("SELECT person_id, arm FROM mercia_trial_allocation WHERE trial_id = ? "
                                  "ORDER BY sequence", [TRIAL_ID])
        assert len(allocations) == 3 and {arm for _, arm in allocations} == {"review", "usual_care"}
        records = store.query("SELECT p.record_id, p.person_id FROM mercia_crf_participant p JOIN mercia_crf_study s "
                              "ON s.study_id = p.study_id WHERE s.name = ? ORDER BY p.record_id", [STUDY])
        assert [person for _, person in records] == [person for person, _ in allocations]
        team = set(store.query("SELECT m.username, m.role FROM mercia_crf_member m JOIN mercia_crf_study s "
                               "ON s.study_id = m.study_id WHERE s.name = ?", [STUDY]))
        assert team == {("coordinator", "data_manager"), ("datamanager", "data_manager"), ("nurse", "data_entry"),
                        ("monitor", "monitor"), ("clinician", "investigator")}
        forms = store.query("SELECT record_id, event_name, form_name, status, locked, signed_by FROM mercia_crf_form "
                            "ORDER BY record_id, event_name, form_name")
        assert ("M90001-0001", "baseline_arm_1", "baseline", "complete", True, "clinician") in forms
        assert [f[2] for f in forms if f[5]] == ["baseline"]   # one signed (and so locked) form
        assert ("M90001-0001", "adverse_events_arm_1", "adverse_event", "complete", False, None) in forms
        assert store.query("SELECT record_id, field_name, status FROM mercia_crf_query") == [
            ("M90001-0003", "weight_kg", "open")]
        # the forms' mapped fields reached the participants' OMOP records, as entry through the app does
        assert store.query_one("SELECT count(*) FROM measurement WHERE measurement_source_value LIKE ?",
                               [f"{STUDY}.%"]) == 3 * 3
        actions = {a for (a,) in store.query("SELECT DISTINCT action FROM mercia_audit")}
        assert {"trial.create", "trial.sign_delegation", "trial.worklist", "trial.randomise", "crf.form.save",
                "crf.form.sign", "crf.query.raise"} <= actions
    finally:
        store.close()


def test_the_demo_server_randomises_with_the_key_the_demo_trial_was_randomised_with(tmp_path, monkeypatch):
    import uvicorn

    from mercia.demo import RANDOMISATION_KEY_FILE, demo
    from mercia.trials.randomise import KEY_ENV, KEY_FILE_ENV, load_randomisation_key

    monkeypatch.setenv(KEY_ENV, "another key of at least thirty-two bytes")
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "absent.key"))
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(load_randomisation_key()))
    demo(persons=400, seed=3, host="127.0.0.1", port=8000, directory=tmp_path / "demo")
    assert served == [(tmp_path / "demo" / RANDOMISATION_KEY_FILE).read_text().encode()]
