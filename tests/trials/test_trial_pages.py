"""Trial web pages: the team sees feasibility, recruitment and CONSORT by role; site staff their
site's pseudonymous worklist; nobody else sees the trial; no page shows an identity."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from mercia.services.state import ServerOptions
from mercia.web.app import create_app

from .conftest import SITE_A, eligibility, make_world, nhs_number

T = "ISRCTN12345678"


@pytest.fixture
def web_world(tmp_path, monkeypatch):
    """A test client over the trial world, a sign-in helper, and the world."""
    from mercia.cdm import Store

    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "web-test-key-web-test-key-0123456789")
    store = Store(str(tmp_path / "cdm.duckdb"))
    store.init_schema()
    world = make_world(store)
    client = TestClient(create_app(store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://testserver")

    world.gov.db.insert("mercia_cohort", {"id": 1, "project_id": world.project, "name": "Type 2 diabetes",
                                          "description": "", "expression": orjson.dumps(eligibility()).decode(),
                                          "created_by": world.people["manager"].id, "created_at": "2026-01-01"})

    def sign_in(name: str) -> str:
        token, csrf = world.gov.start_session(world.people[name])
        client.cookies.set("mercia_session", token)
        return csrf

    with client:
        yield client, sign_in, world
    store.close()


@pytest.fixture
def web(web_world):
    return web_world[:2]


def test_trial_pages_by_role(web):
    client, sign_in = web
    assert client.get("/trials", follow_redirects=False).status_code == 303
    sign_in("stats")
    page = client.get(f"/trials/{T}")
    assert page.status_code == 200
    assert "Newly eligible per year" in page.text and "Prevalent pool" in page.text and "CONSORT" in page.text
    assert "Worklist for" not in page.text
    sign_in("nurse_a")
    page = client.get(f"/trials/{T}")
    assert "Worklist for A81001" in page.text and "Feasibility" not in page.text and "CONSORT" not in page.text
    listing = client.get(f"/trials/{T}/worklist", params={"site": SITE_A})
    assert listing.status_code == 200 and "Pre-screening worklist" in listing.text
    assert nhs_number(7) not in listing.text
    assert client.get(f"/trials/{T}/worklist", params={"site": "A81002"}).status_code == 403
    sign_in("researcher")
    assert "You hold no role" in client.get("/trials").text
    assert client.get(f"/trials/{T}").status_code == 404
    assert client.get(f"/trials/{T}/worklist", params={"site": SITE_A}).status_code == 404


def test_the_worklist_page_says_when_eligibility_was_last_run_and_reruns_it_only_by_a_post(web_world):
    client, sign_in, world = web_world
    csrf = sign_in("nurse_a")
    before = world.register.trial(T).eligibility_run_at
    page = client.get(f"/trials/{T}/worklist", params={"site": SITE_A})
    assert f"Eligibility last run {before[:10]} {before[11:16]} UTC by nurse_a" in page.text
    assert world.register.trial(T).eligibility_run_at == before
    assert client.post(f"/trials/{T}/worklist/run", data={"site": SITE_A, "csrf_token": "wrong"}).status_code == 403
    assert world.register.trial(T).eligibility_run_at == before
    ran = client.post(f"/trials/{T}/worklist/run", data={"site": SITE_A, "csrf_token": csrf}, follow_redirects=False)
    assert ran.status_code == 303 and ran.headers["location"].startswith(f"/trials/{T}/worklist?site={SITE_A}")
    after = world.register.trial(T).eligibility_run_at
    assert after > before and "Eligibility run again" in client.get(ran.headers["location"]).text
    assert world.gov.audit.search(action="trial.eligibility.run")[0]["actor"] == "nurse_a"
    sign_in("gp_b")
    assert client.post(f"/trials/{T}/worklist/run", data={"site": SITE_A, "csrf_token": sign_in("gp_b")}
                       ).status_code == 403


def test_the_trial_page_reads_the_last_eligibility_run_and_reruns_it_only_by_a_post(web_world):
    client, sign_in, world = web_world
    csrf = sign_in("stats")
    before = world.register.trial(T).eligibility_run_at
    page = client.get(f"/trials/{T}").text
    assert f"last run {before[:10]} {before[11:16]} UTC by nurse_a" in page and "Prevalent pool" in page
    assert world.register.trial(T).eligibility_run_at == before
    assert client.post(f"/trials/{T}/eligibility/run", data={"csrf_token": "wrong"}).status_code == 403
    ran = client.post(f"/trials/{T}/eligibility/run", data={"csrf_token": csrf}, follow_redirects=False)
    assert ran.status_code == 303 and ran.headers["location"].startswith(f"/trials/{T}?")
    assert world.register.trial(T).eligibility_run_at > before
    assert "by stats" in client.get(ran.headers["location"]).text
    csrf = sign_in("nurse_a")                        # a worklist role: reruns from the worklist, not here
    assert "Run eligibility again" not in client.get(f"/trials/{T}").text
    assert client.post(f"/trials/{T}/eligibility/run", data={"csrf_token": csrf}).status_code == 403


def test_the_trial_page_says_why_a_pool_a_few_from_the_last_one_is_hidden(web_world):
    """Site A's pool is 39; after a dissent the page would show 38 beside the 39 the statistician saw."""
    from mercia.trials.prescreen import record_dissent

    client, sign_in, world = web_world
    sign_in("stats")
    assert "Hidden beside your earlier answers" not in client.get(f"/trials/{T}").text
    record_dissent(world.register, world.people["gp_a"], 10)
    assert f"Hidden beside your earlier answers: {SITE_A}." in client.get(f"/trials/{T}").text


def test_create_recruit_randomise_and_consort_through_forms(web):
    client, sign_in = web
    csrf = sign_in("manager")
    form = {"csrf_token": csrf, "trial_id": "IRAS4242", "title": "Web trial", "cohort": "1:1", "sponsor": "S",
            "chief_investigator": "C", "sites": SITE_A, "target": "20", "opens_on": "2026-01-01",
            "closes_on": "2030-12-31", "method": "minimisation", "arms": "drug, placebo",
            "factors": "sex: F, M", "manual": "no insulin", "blinded": "yes"}
    assert client.post("/trials", data={**form, "csrf_token": "wrong"}).status_code == 403
    made = client.post("/trials", data=form, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"].startswith("/trials/IRAS4242")
    bad = client.post("/trials", data={**form, "trial_id": "IRAS4243", "arms": "drug"})
    assert bad.status_code == 400 and "at least two arms" in bad.text
    granted = client.post("/trials/IRAS4242/roles", data={"csrf_token": csrf, "username": "nurse_a",
                                                          "role": "research_nurse", "site": SITE_A})
    assert granted.status_code == 200 and "added to the team" in granted.text
    csrf = sign_in("nurse_a")
    page = client.get("/trials/IRAS4242/worklist", params={"site": SITE_A})
    assert "Record for person 7" in page.text
    for status in ("approached", "screened", "consented"):
        done = client.post("/trials/IRAS4242/participants/7/status", data={
            "csrf_token": csrf, "site": SITE_A, "status": status, "reason": "", "confirm:no insulin": "yes"})
        assert done.status_code == 200 and f"Person 7: {status}" in done.text, done.text[:500]
    assert "Randomise person 7" in done.text
    allocated = client.post("/trials/IRAS4242/participants/7/randomise",
                            data={"csrf_token": csrf, "site": SITE_A, "level:sex": "F"})
    assert allocated.status_code == 200 and "Person 7 randomised: pack" in allocated.text
    again = client.post("/trials/IRAS4242/participants/7/randomise",
                        data={"csrf_token": csrf, "site": SITE_A, "level:sex": "F"})
    assert again.status_code == 409 and "already randomised" in again.text
    assert client.get("/trials/IRAS4242/consort.svg").status_code == 403
    sign_in("manager")
    svg = client.get("/trials/IRAS4242/consort.svg")
    assert svg.status_code == 200 and b"Randomised (n=1)" in svg.content


def test_the_cohort_picker_tells_a_non_member_nothing_about_which_cohort_ids_exist(web_world):
    """stats is no member of the project holding cohort 1: choosing it reads as choosing one that does not
    exist (before, the register's project refusal said it did)."""
    client, sign_in, world = web_world
    form = {"trial_id": "IRAS4242", "title": "Web trial", "sponsor": "S", "chief_investigator": "C", "sites": SITE_A,
            "target": "20", "opens_on": "2026-01-01", "closes_on": "2030-12-31", "method": "simple",
            "arms": "drug, placebo"}
    csrf = sign_in("stats")
    pages = set()
    for project, cohort in ((world.project, 1), (world.project, 99), (99, 1), (world.project, 2**64)):
        message = f"project {project} has no saved cohort {cohort}"
        refused = client.post("/trials", data={**form, "csrf_token": csrf, "cohort": f"{project}:{cohort}"})
        assert refused.status_code == 400 and message in refused.text
        pages.add(refused.text.replace(message, ""))
    assert len(pages) == 1
    assert client.post("/trials", data={**form, "csrf_token": sign_in("manager"), "cohort": f"{world.project}:1"},
                       follow_redirects=False).status_code == 303


def _open_duplicate(web_world) -> int:
    """Persons 13 and 14 randomised in the trial, found by linkage to be one human; the study linked first,
    so each has an eCRF record.  Returns the duplicate's id."""
    from mercia.linkage.probabilistic import link_store

    from .test_trial_crf_enrolment import study_for
    from .test_trials_service import _link_as_one_human, enrol

    study_for(web_world)
    web_world.recruitment.link_study(web_world.people["manager"], T, "dm2", {"drug": "arm_1", "placebo": "arm_1"})
    enrol(web_world, 13)
    enrol(web_world, 14, levels={"sex": "M", "age": "65+"})
    _link_as_one_human(web_world, 13, 14)
    link_store(web_world.store)
    return web_world.store.query_one("SELECT DISTINCT duplicate_id FROM mercia_trial_duplicate")


def test_duplicate_enrolments_page_and_resolution_form(web_world):
    client, sign_in, world = web_world
    duplicate = _open_duplicate(world)
    page_path, action = f"/trials/{T}/duplicates", f"/trials/{T}/duplicates/{duplicate}/resolve"

    def still_open() -> bool:
        return world.store.query("SELECT DISTINCT status FROM mercia_trial_duplicate") == [("open",)]

    csrf = sign_in("stats")
    assert "1 suspected duplicate enrolment to resolve" in client.get(f"/trials/{T}").text
    listing = client.get(page_path)
    assert listing.status_code == 200 and f"Duplicate enrolment {duplicate}" in listing.text
    assert "Keep: first randomisation" in listing.text and "Which randomisation stands?" not in listing.text
    assert "<td>drug</td>" not in listing.text and "<td>placebo</td>" not in listing.text     # blinded: no arms
    for refused in ({"keep": "13", "reason": "x"}, {}):
        assert client.post(action, data={"csrf_token": csrf, **refused}).status_code == 403
    for name, code in (("nurse_a", 403), ("researcher", 404)):
        csrf = sign_in(name)
        assert client.get(page_path).status_code == code
        assert client.post(action, data={"csrf_token": csrf, "keep": "13", "reason": "x"}).status_code == code
        assert "duplicate enrolment" not in client.get(f"/trials/{T}").text
    assert still_open()

    csrf = sign_in("manager")
    assert "Which randomisation stands?" in client.get(page_path).text
    assert client.post(action, data={"keep": "13", "reason": "first"}).status_code == 403          # no CSRF token
    unchosen = client.post(action, data={"csrf_token": csrf, "reason": "first randomisation"})
    assert unchosen.status_code == 400 and "Choose the randomisation that stands" in unchosen.text
    assert f'href="#keep-{duplicate}"' in unchosen.text and "first randomisation</textarea>" in unchosen.text
    no_reason = client.post(action, data={"csrf_token": csrf, "keep": "14", "reason": " "})
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.text
    assert f'href="#reason-{duplicate}"' in no_reason.text and 'value="14" checked' in no_reason.text
    not_in_it = client.post(action, data={"csrf_token": csrf, "keep": "20", "reason": "x"})
    assert not_in_it.status_code == 400 and f"not in duplicate enrolment {duplicate}" in not_in_it.text
    assert still_open()

    done = client.post(action, data={"csrf_token": csrf, "keep": "14", "reason": "the record at 14 holds the data"})
    assert done.status_code == 200
    assert f"Duplicate enrolment {duplicate} resolved: the randomisation of person 14 stands; set aside 13" in done.text
    assert "eCRF record A81001-0001 kept apart" in done.text
    assert "No suspected duplicate enrolments are open" in done.text
    assert "the record at 14 holds the data" in done.text and "Set aside" in done.text and "Stands" in done.text
    assert "<td>drug</td>" not in done.text and "<td>placebo</td>" not in done.text        # still blind to arm
    assert world.store.query("SELECT person_id FROM mercia_trial_allocation") == [(14,)]       # as through the API
    again = client.post(action, data={"csrf_token": csrf, "keep": "14", "reason": "again"})
    assert again.status_code == 409 and "already resolved" in again.text
    assert "Duplicate enrolments (none open)" in client.get(f"/trials/{T}").text

    study = client.get("/crf/dm2").text
    assert "Set aside: duplicate randomisations" in study and "the record at 14 holds the data" in study
    form = client.get("/crf/dm2/A81001-0001/enrolment_arm_1/enrolment").text
    assert "Set aside: duplicate randomisation" in form and "The person's record is" in form


def test_notifications_page_unread_count_and_mark_read_form(web_world):
    """The duplicate found and an unblinding reach the manager: counted on the trial page, listed newest first
    with their times, marked read by a CSRF-protected form (audited), then shown apart as read."""
    client, sign_in, world = web_world
    duplicate = _open_duplicate(world)
    world.recruitment.unblind(world.people["pi_a"], T, 13, "anaphylaxis")
    path = f"/trials/{T}/notifications"

    csrf = sign_in("manager")
    assert f'<a href="{path}"><strong>2 unread notifications</strong></a>' in client.get(f"/trials/{T}").text
    page = client.get(path)
    assert page.status_code == 200 and "Unread (2)" in page.text and ">Read</h2>" not in page.text
    unblinding, finding = page.text.index("unblinded participant 13"), page.text.index(
        f"Suspected duplicate enrolment {duplicate} on trial {T}")
    assert finding < unblinding               # newest first: linked outside a command, the finding is told when read
    assert page.text.count('<time datetime="') == 2
    listed = page.text.split("</h1>", 1)[1]                                          # after the trial's title
    assert "drug" not in listed and "placebo" not in listed                          # blinded: no arm named
    assert client.post(f"{path}/read", data={}).status_code == 403                   # no CSRF token
    assert client.post(f"{path}/read", data={"csrf_token": "wrong"}).status_code == 403
    assert world.store.query("SELECT COUNT(*) FROM mercia_trial_notification WHERE read_at IS NOT NULL") == [(0,)]
    done = client.post(f"{path}/read", data={"csrf_token": csrf, "up_to": world.store.query_one(
        "SELECT MAX(created_at) FROM mercia_trial_notification")})
    assert done.status_code == 200 and "2 notifications marked read" in done.text
    assert "Nothing unread" in done.text and ">Read</h2>" in done.text and "anaphylaxis" in done.text
    assert "Notifications (none unread)" in client.get(f"/trials/{T}").text
    assert world.gov.audit.search(action="trial.notifications.read")[0]["detail"]["marked"] == 2

    sign_in("nurse_a")                                                               # a role, none of these
    assert "Notifications (none unread)" in client.get(f"/trials/{T}").text
    assert "anaphylaxis" not in client.get(path).text
    csrf = sign_in("researcher")                                                     # no role on the trial
    assert client.get(path).status_code == 404
    assert client.post(f"{path}/read", data={"csrf_token": csrf}).status_code == 404
