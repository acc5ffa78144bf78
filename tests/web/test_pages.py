"""Server-rendered pages: sign-in, CSRF, and the same refusals as the API."""

from __future__ import annotations

import re

import lxml.html
import pytest

from mercia.governance import Role
from tests.web.totp_codes import code_for, remember_recovery_codes


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, demo, username: str):
    page = client.get("/signin")
    r = client.post("/signin", data={"username": username, "password": demo.passwords[username],
                                     "csrf_token": csrf_of(page.text), "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    if r.headers["location"].startswith("/signin/second-factor"):
        page = client.get(r.headers["location"])
        r = client.post("/signin/second-factor", data={"code": code_for(username, page.text), "next": "/",
                                                       "csrf_token": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code in (200, 303), r.text
        remember_recovery_codes(username, r.text)
    return csrf_of(client.get("/").text)


def test_pages_need_sign_in(client):
    for path in ["/", "/projects", "/sources", "/audit", "/exports", "/raredisease", "/account"]:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), path


def test_signin_page_is_accessible(client):
    html = client.get("/signin").text
    assert 'class="skip-link" href="#maincontent"' in html and 'id="maincontent"' in html
    assert '<label class="label" for="username">' in html and '<label class="label" for="password">' in html
    assert 'lang="en-GB"' in html and "<script>" not in html and "style=" not in html


def test_wrong_password_and_signin_csrf(client, demo):
    token = csrf_of(client.get("/signin").text)
    r = client.post("/signin", data={"username": "researcher", "password": "not it at all", "csrf_token": token})
    assert r.status_code == 400 and "not right" in r.text
    r = client.post("/signin", data={"username": "researcher", "password": demo.passwords["researcher"]})
    assert r.status_code == 403 and "security token" in r.text


def test_a_notice_shows_only_when_the_server_wrote_it(client, demo):
    """A link could put any words in the page's status box ('?notice=Your account is locked: call ...');
    only a notice the server sealed in its own redirect is shown."""
    forged = "Your account is locked. Call 0800 000 000 with your password"
    assert forged not in client.get("/signin", params={"notice": forged}).text
    csrf = sign_in(client, demo, "researcher")
    assert forged not in client.get("/", params={"notice": forged, "seal": "0" * 32}).text
    assert forged not in client.get("/", params={"notice": forged, "seal": "\u00e9"}).text
    signed_out = client.post("/signout", data={"csrf_token": csrf}, follow_redirects=False)
    assert "You have signed out." in client.get(signed_out.headers["location"]).text


def test_signin_throttled(client):
    for _ in range(5):
        client.post("/signin", data={"username": "ghost", "password": "x" * 12,
                                     "csrf_token": csrf_of(client.get("/signin").text)})
    r = client.post("/signin", data={"username": "ghost", "password": "x" * 12,
                                     "csrf_token": csrf_of(client.get("/signin").text)})
    assert r.status_code == 429 and "try again in" in r.text
    assert 1 <= int(r.headers["Retry-After"]) <= 3600   # when the wait ends, for clients that read it


def test_forms_refuse_without_csrf(client, demo):
    csrf = sign_in(client, demo, "researcher")
    r = client.post("/account/tokens", data={"name": "t", "days": "30"})
    assert r.status_code == 403 and "security token" in r.text
    r = client.post("/account/tokens", data={"name": "t", "days": "30", "csrf_token": "forged"})
    assert r.status_code == 403
    r = client.post("/account/tokens", data={"name": "t", "days": "30", "csrf_token": csrf})
    assert r.status_code == 200 and "mrc_" in r.text
    assert client.post("/signout", follow_redirects=False).status_code == 403


def test_home_per_role(client, demo):
    sign_in(client, demo, "researcher")
    home = client.get("/").text
    assert "Your projects" in home and "Metformin uptake" in home and "Audit log" not in home
    client.cookies.clear()
    sign_in(client, demo, "governance")
    home = client.get("/").text
    assert "Waiting for your decision" in home and "Breast cancer pathways" in home and "hash chain verified" in home
    client.cookies.clear()
    sign_in(client, demo, "datamanager")
    assert "Data sources" in client.get("/").text


def test_role_refusals(client, demo):
    sign_in(client, demo, "checker")
    assert client.get("/audit").status_code == 403
    assert client.get("/raredisease").status_code == 403
    assert client.get("/projects/1").status_code == 404  # not theirs, not governance
    client.cookies.clear()
    sign_in(client, demo, "researcher")
    assert client.get("/sources/anything").status_code == 403
    assert client.get("/projects/2").status_code == 404  # the clinician's project
    assert client.get("/projects/3/cohorts/new").status_code == 403  # their own draft


def test_other_project_and_expired(client, demo):
    sign_in(client, demo, "clinician")
    assert client.get("/cohorts/1").status_code == 404
    assert client.get("/cohorts/1/circe.json").status_code == 404
    client.cookies.clear()
    csrf = sign_in(client, demo, "researcher")
    assert client.get("/cohorts/1").status_code == 200
    gov = client.app.state.mercia.gov
    gov.db.execute("UPDATE mercia_project SET expires_on = '2001-01-01' WHERE id = 1")
    try:
        r = client.get("/cohorts/1")
        assert r.status_code == 403 and "expired" in r.text
        assert client.post("/cohorts/1/run", data={"csrf_token": csrf}).status_code == 403
    finally:
        gov.db.execute("UPDATE mercia_project SET expires_on = '2099-01-01' WHERE id = 1")


def test_quick_feasibility_count_before_any_project(client, demo):
    """The builder without a project counts people: the policy's number, the budget shown, audited;
    a role without counts is refused the page."""
    from mercia.cohorts import CohortExpression, run_cohort
    from mercia.cohorts.compiler import RESULT_TABLES
    from mercia.privacy.disclosure import get_policy
    from mercia.services.builder import build_from_form

    csrf = sign_in(client, demo, "researcher")
    assert "Count people first" in client.get("/projects").text
    page = client.get("/feasibility").text
    assert "Quick feasibility count" in page and "Save cohort" not in page and "Cohort name" not in page
    form = {"csrf_token": csrf, "action": "count", "entry_domain": "condition", "entry_concepts": "201826",
            "entry_first": "on", "entry_descendants": "on", "exit": "end_of_observation"}
    r = client.post("/feasibility", data=form)
    assert r.status_code == 200, r.text
    state = client.app.state.mercia
    circe = client.post("/feasibility", data=form | {"action": "preview"}).text
    assert "&#34;PrimaryCriteria&#34;" in circe
    with state.lock:
        true_count = run_cohort(state.store, CohortExpression.from_json(build_from_form(state, form)), 987_654).persons
        for table in ("cohort", *RESULT_TABLES):
            state.store.execute(f"DELETE FROM {table} WHERE cohort_definition_id = 987654")
    assert true_count > 7 and f"About {get_policy().publish_count(true_count):,} people" in r.text
    assert "You have used 0 of 10" in r.text
    again = client.post("/feasibility", data=form)
    assert "You have used 1 of 10" in again.text and "This count was one of them" in again.text
    assert state.gov.audit.search(action="feasibility.quick_count", actor="researcher")
    client.cookies.clear()
    sign_in(client, demo, "checker")
    assert client.get("/feasibility").status_code == 403


def test_builder_preview_and_import(client, demo):
    csrf = sign_in(client, demo, "researcher")
    form = {"csrf_token": csrf, "action": "preview", "name": "T2DM", "entry_domain": "condition",
            "entry_concepts": "201826", "entry_first": "on", "rule1_concepts": "1503297", "rule1_domain": "drug",
            "rule1_before": "0", "rule1_after": "365", "exit": "offset", "exit_days": "180"}
    r = client.post("/projects/1/cohorts/new", data=form)
    assert r.status_code == 200 and "&#34;DrugExposure&#34;" in r.text and "&#34;Offset&#34;: 180" in r.text
    r = client.post("/projects/1/cohorts/new", data=form | {"entry_concepts": "abc"})
    assert r.status_code == 400 and "not a concept id" in r.text
    # A failed import returns the JSON and every other setting of the builder (one form), unchecked boxes too.
    settings = {k: v for k, v in form.items() if k != "entry_first"} | {"min_age": "40", "rule1_presence": "absent"}
    r = client.post("/projects/1/cohorts/new", data=settings | {"action": "import", "atlas_json": "{not json"})
    assert r.status_code == 400 and "not valid JSON" in r.text
    assert ">{not json</textarea>" in r.text and "<details class=\"details\" open>" in r.text
    assert 'id="name" name="name" value="T2DM"' in r.text and 'name="entry_concepts" aria-describedby="entry-hint" ' \
        'value="201826"' in r.text
    assert 'name="rule1_concepts" value="1503297"' in r.text and '<option value="drug" selected>' in r.text
    assert 'name="rule1_after" value="365"' in r.text and 'name="min_age" value="40"' in r.text
    assert '<option value="absent" selected>' in r.text and 'value="offset" checked' in r.text
    assert 'name="exit_days" value="180"' in r.text and 'id="entry_first" name="entry_first">' in r.text
    r = client.post("/projects/1/cohorts/new", data=form | {"rule1_before": "-30"})
    assert r.status_code == 400 and "cannot be negative" in r.text
    exported = client.get("/cohorts/1/circe.json").text
    r = client.post("/projects/1/cohorts/new", data={"csrf_token": csrf, "action": "import",
                                                     "name": "Imported", "atlas_json": exported},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/cohorts/")


def test_a_stale_cohort_page_says_why_and_that_analyses_wait_for_a_run(client, demo):
    from mercia.cdm.extensions import STALE_COHORT_TABLE

    sign_in(client, demo, "researcher")
    assert "Out of date" not in client.get("/cohorts/1").text
    demo.store.execute(f"INSERT INTO {STALE_COHORT_TABLE} VALUES (1, CURRENT_TIMESTAMP, 'linkage merged persons "
                       "of it into others on 2026-12-06 21:00 UTC, after it was generated')")
    try:
        html = client.get("/cohorts/1").text
        assert "<strong>Out of date:</strong> linkage merged persons of it into others" in html
        assert "Analyses of this cohort are refused until you run it again" in html
    finally:
        demo.store.execute(f"DELETE FROM {STALE_COHORT_TABLE} WHERE cohort_definition_id = 1")


def test_concept_search_page(client, demo):
    sign_in(client, demo, "researcher")
    html = client.get("/concepts?q=metformin").text
    assert "1503297" in html and "Metformin" in html
    assert "No concepts match" in client.get("/concepts?q=zzzzqqq").text


@pytest.mark.parametrize("path", ["/", "/projects", "/projects/1", "/sources", "/exports", "/account", "/cohorts/1",
                                  "/projects/1/cohorts/new", "/raredisease", "/concepts?q=diabetes"])
def test_pages_render_with_landmarks(client, demo, path):
    sign_in(client, demo, "researcher")
    r = client.get(path)
    assert r.status_code == 200, path
    html = r.text
    assert '<main class="main" id="maincontent"' in html and 'role="banner"' in html and "<h1>" in html
    assert 'aria-current="page"' in html or path.startswith("/cohorts") or path == "/account"
    unlabelled = [m for m in re.findall(r'<input class="input[^"]*" id="([^"]+)"', html) if f'for="{m}"' not in html]
    assert not unlabelled, unlabelled


def test_admin_registers_and_deactivates_people(client, demo):
    sign_in(client, demo, "researcher")
    assert client.get("/admin/users").status_code == 403
    client.cookies.clear()
    csrf = sign_in(client, demo, "admin")
    assert "People" in client.get("/").text
    r = client.post("/admin/users", data={"csrf_token": csrf, "username": "newlead", "display_name": "New Lead",
                                          "roles": "pillar_lead", "scope": "wellbeing"})
    assert r.status_code == 200 and "newlead is registered" in r.text and "Pillar lead (wellbeing)" in r.text
    password = re.search(r'<pre class="code">([^<]+)</pre>', r.text).group(1)
    r = client.post("/admin/users", data={"csrf_token": csrf, "username": "bad", "roles": "pillar_lead",
                                          "scope": "nowhere"})
    assert r.status_code == 400 and "unknown pillar" in r.text
    gov = client.app.state.mercia.gov
    assert gov.authenticate("newlead", password).has(Role.PILLAR_LEAD, "wellbeing")
    uid = gov.user_by_name("newlead").id
    check = client.post(f"/admin/users/{uid}/deactivate", data={"csrf_token": csrf}, follow_redirects=False)
    assert check.status_code == 200 and "will not be able to sign in again" in check.text  # asks first
    assert gov.authenticate("newlead", password).username == "newlead"  # still active
    assert client.post(f"/admin/users/{uid}/deactivate", data={"csrf_token": csrf, "confirm": "yes"},
                       follow_redirects=False).status_code == 303
    with pytest.raises(Exception, match="not right"):
        gov.authenticate("newlead", password)


def test_data_manager_uploads_through_the_source_page(client, demo, shared_data, monkeypatch):
    """The demo's own key file is used (no key in the environment); the organisation is listed before
    its first load, its page counts only its records, and the regional source stays listed."""
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY_FILE", raising=False)
    bundle = sorted((shared_data / "fhir" / "synthea_small" / "bundles").iterdir())[0]
    csrf = sign_in(client, demo, "datamanager")
    assert "Load an extract" not in client.get(f"/sources/{demo.source}").text  # the region is not an organisation
    page = client.get("/sources/RRK")
    assert page.status_code == 200 and "Load an extract" in page.text and "Nothing loaded from this organisation" in page.text
    files = {"file": (bundle.name, bundle.read_bytes())}
    assert client.post("/sources/RRK/loads", data={"kind": "fhir"}, files=files).status_code == 403
    r = client.post("/sources/RRK/loads", data={"kind": "fhir", "csrf_token": csrf}, files=files,
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
    job_id = int(r.headers["location"].split("/")[-1])
    job = client.app.state.mercia.jobs.wait(job_id, 120)
    assert job["status"] == "succeeded", job["error"]
    assert 'href="/sources/RRK"' in client.get(f"/jobs/{job_id}").text
    rrk = client.get("/sources/RRK").text
    assert bundle.name in rrk and "Data-quality report" in rrk and 'id="quality-checks"' in rrk
    persons = int(re.search(r"<td>person</td><td class=\"numeric\">([\d,]+)</td>", rrk).group(1).replace(",", ""))
    assert persons == 1  # one Synthea patient's bundle, not the region's 1,500
    listed = client.get("/sources").text
    assert demo.source in listed and "Demo acute trust (uploads)" in listed and "R9P" in listed
    client.cookies.clear()
    csrf = sign_in(client, demo, "researcher")
    assert client.post("/sources/RRK/loads", data={"kind": "fhir", "csrf_token": csrf},
                       files=files).status_code == 403


def test_rare_disease_page_gives_the_ensembles_calibrated_ranking(client, demo):
    """The user guide's Marfan example: the page ranks Marfan syndrome first, with a probability and
    the terms for it (the likelihood-ratio ranker alone put OMIM:609008 first)."""
    sign_in(client, demo, "clinician")
    page = client.get("/raredisease?observed=HP:0001166, HP:0001083, HP:0002616, HP:0000098")
    assert page.status_code == 200
    first = page.text[page.text.index('<li class="card ranking__item">'):]
    first = first[:first.index("</li>")]
    assert "OMIM:154700" in first and "Probability" in first and "For it:" in first
    assert "Too few specific features" not in page.text
    actions = client.app.state.mercia.gov.audit.search(action="raredisease.rank", limit=1)
    assert actions and actions[0]["actor"] == "clinician"


def test_a_failed_load_names_the_upload_not_the_servers_folder(client, demo):
    csrf = sign_in(client, demo, "datamanager")
    r = client.post("/sources/R9P/loads", data={"kind": "vcf", "csrf_token": csrf},
                    files={"file": ("family.vcf", b"this is not a VCF file\n")}, follow_redirects=False)
    job = client.app.state.mercia.jobs.wait(int(r.headers["location"].split("/")[-1]), 60)
    assert job["status"] == "failed" and "family.vcf" in job["error"]
    assert "mercia-load-" not in job["error"] and "/tmp" not in job["error"], job["error"]


def test_a_running_job_can_be_cancelled_from_its_page(client, demo):
    import threading

    state = client.app.state.mercia
    researcher = state.gov.user_by_name("researcher")
    release = threading.Event()

    def work(progress):
        release.wait(30)
        progress(0.5, "half way")
        return {}

    job_id = state.jobs.submit("cohort.run", researcher.id, None, work)
    try:
        csrf = sign_in(client, demo, "researcher")
        assert "Cancel this job" in client.get(f"/jobs/{job_id}").text
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 403          # no CSRF token
        r = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
    finally:
        release.set()
    assert state.jobs.wait(job_id, 30)["status"] == "cancelled"
    page = client.get(f"/jobs/{job_id}").text
    assert "You cancelled this job" in page and "Cancel this job" not in page


def test_wrong_format_load_fails_and_says_why(client, demo):
    csrf = sign_in(client, demo, "datamanager")
    r = client.post("/sources/R9P/loads", data={"kind": "fhir", "csrf_token": csrf},
                    files={"file": ("results.csv", b"nhs_number,test,value\n9990000018,HbA1c,48\n")},
                    follow_redirects=False)
    job_id = int(r.headers["location"].split("/")[-1])
    assert client.app.state.mercia.jobs.wait(job_id, 60)["status"] == "failed"
    page = client.get(f"/jobs/{job_id}").text
    assert "Loading an extract failed" in page and "could be read as fhir" in page
    assert 'href="/sources/R9P"' in page and "Error" not in re.sub(r"<[^>]+>", "", page).replace("Error:", "")
    assert client.app.state.mercia.store.query_one(  # the rejected record is kept with its reason
        "SELECT COUNT(*) FROM mercia_reject WHERE org = 'R9P' AND reason LIKE 'not valid JSON%'") >= 1
    r = client.post("/sources/R9P/loads", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 400 and "Choose the format of the file" in r.text and "Choose a file to load" in r.text
    assert 'href="#load-kind"' in r.text and "<title>Error:" in r.text


def test_an_extract_that_only_withdraws_records_is_a_successful_load(client, demo):
    """A daily feed may carry nothing but entered-in-error records: the job succeeds and says how many
    earlier records it removed, rather than calling the file the wrong format."""
    import orjson

    condition = {"resourceType": "Condition", "id": "withdrawn-c1", "subject": {"reference": "Patient/withdrawn-p1"},
                 "onsetDateTime": "2015-02-03", "code": {"coding": [{"system": "http://snomed.info/sct",
                                                                      "code": "44054006"}]}}
    patient = {"resourceType": "Patient", "id": "withdrawn-p1", "gender": "female", "birthDate": "1970-05-01"}
    withdrawn = {**condition, "verificationStatus": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}]}}
    csrf = sign_in(client, demo, "datamanager")
    jobs = client.app.state.mercia.jobs
    results = []
    for name, resources in (("day1.ndjson", [patient, condition]), ("day2.ndjson", [withdrawn])):
        r = client.post("/sources/R9P/loads", data={"kind": "fhir", "csrf_token": csrf},
                        files={"file": (name, b"\n".join(orjson.dumps(x) for x in resources))}, follow_redirects=False)
        job = jobs.wait(int(r.headers["location"].split("/")[-1]), 120)
        assert job["status"] == "succeeded", job["error"]
        results.append(job["result"])
    assert results[0]["loaded"] == 2 and (results[1]["loaded"], results[1]["removed"]) == (0, 1)


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "https://evil.example"])
def test_signin_never_redirects_off_site(client, demo, target):
    page = client.get(f"/signin?next={target}")
    r = client.post("/signin", data={"username": "researcher", "password": demo.passwords["researcher"],
                                     "csrf_token": csrf_of(page.text), "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_start_a_project_through_the_form(client, demo):
    csrf = sign_in(client, demo, "coordinator")
    form = {"csrf_token": csrf, "title": "Trial feasibility: metformin and CKD", "pillar": "chronic",
            "purpose": "Count eligible patients", "themes": ["health_inequalities", "workforce"],
            "scope_domains": ["person", "condition_occurrence"], "scope_sources": "RRK, RQ3",
            "expires_on": "2099-01-01", "ppi_notes": "Panel review booked"}
    r = client.post("/projects/new", data=form, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(r.headers["location"]).text
    assert "Trial feasibility" in page and "Health inequalities" in page and "RRK, RQ3" in page
    assert "Submit for approval" in page
    r = client.post("/projects/new", data=form | {"title": ""})
    assert r.status_code == 400 and "Enter a title" in r.text and 'value="health_inequalities" checked' in r.text
    r = client.post("/projects/new", data={"csrf_token": csrf, "title": "Nothing chosen"})
    assert r.status_code == 400 and "<title>Error: Start a project" in r.text
    for field in ("#pillar", "#purpose", "#scope_domains-person"):  # every problem at once, linked
        assert f'href="{field}"' in r.text
    assert '<option value="">Choose a pillar</option>' in client.get("/projects/new").text
    assert " selected" not in client.get("/projects/new").text  # no pillar chosen for the applicant


def test_members_are_removed_from_the_project_page(client, demo):
    """The lead takes a member off a draft, with a reason; a member leaves; the pillar lead, who sees the
    project, may not; no form passes without its security token; the only lead is never offered."""
    gov = client.app.state.mercia.gov
    lead, coordinator, clinician = (gov.user_by_name(n) for n in ("researcher", "coordinator", "clinician"))
    project = gov.create_project(lead, title="Leavers welcome", pillar="cancer", purpose="Test leaving",
                                 scope_domains=["person"], expires_on="2099-01-01")
    gov.add_member(lead, project.id, coordinator.id)
    gov.add_member(lead, project.id, clinician.id)
    remove = f"/projects/{project.id}/members/{{}}/remove"
    csrf = sign_in(client, demo, "cancerlead")
    assert client.post(remove.format(coordinator.id), data={"csrf_token": csrf, "reason": "x"}).status_code == 403
    client.cookies.clear()
    csrf = sign_in(client, demo, "researcher")
    page = client.get(f"/projects/{project.id}").text
    assert "Remove from project" in page and remove.format(coordinator.id) in page and remove.format(lead.id) not in page
    assert client.post(remove.format(coordinator.id), data={"reason": "no token"}).status_code == 403
    r = client.post(remove.format(coordinator.id), data={"csrf_token": csrf, "reason": " "})
    assert r.status_code == 400 and "say why" in r.text
    r = client.post(remove.format(coordinator.id), data={"csrf_token": csrf, "reason": "Not needed"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/projects/{project.id}?notice=")
    client.cookies.clear()
    csrf = sign_in(client, demo, "clinician")
    r = client.post(remove.format(clinician.id), data={"csrf_token": csrf, "reason": "Moving on"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/projects?notice=")
    assert client.get(f"/projects/{project.id}").status_code == 404
    assert gov.project(project.id).members == {lead.id: "lead"}
    assert [e["detail"]["member"] for e in gov.audit.search(action="project.remove_member", project_id=project.id)] \
        == ["clinician", "coordinator"]

def test_incidence_analysis_page_has_a_chart(client, demo):
    csrf = sign_in(client, demo, "researcher")
    state = client.app.state.mercia
    researcher = state.gov.user_by_name("researcher")
    from mercia.services.cohorts import create_cohort, start_run

    outcome = create_cohort(state, researcher, 1, "Outcome: any metformin", "", {
        "ConceptSets": [{"id": 0, "name": "Metformin", "expression": {"items": [
            {"concept": {"CONCEPT_ID": 1503297}, "includeDescendants": True}]}}],
        "PrimaryCriteria": {"CriteriaList": [{"DrugExposure": {"CodesetId": 0, "First": True}}],
                            "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                            "PrimaryCriteriaLimit": {"Type": "First"}}})
    state.jobs.wait(start_run(state, researcher, outcome["id"]), 120)
    r = client.post("/cohorts/1/analyses", data={"csrf_token": csrf, "kind": "incidence"})  # no outcome chosen
    assert r.status_code == 400 and 'href="#outcome"' in r.text and "Choose an outcome cohort" in r.text
    assert "<title>Error:" in r.text and not state.jobs.for_user(researcher.id, 1)[0]["kind"] == "analysis.incidence"
    r = client.post("/cohorts/1/analyses", data={"csrf_token": csrf, "kind": "incidence",
                                                 "outcome_cohort_id": str(outcome["id"])}, follow_redirects=False)
    job_id = int(r.headers["location"].split("/")[-1])
    job = state.jobs.wait(job_id, 120)
    assert job["status"] == "succeeded", job
    page = client.get(f"/analyses/{job['result']['analysis_id']}").text
    assert 'aria-labelledby="incidence_by_stratum-title incidence_by_stratum-desc"' in page
    points = lxml.html.fromstring(page).xpath("//g[starts-with(@id, 'incidence_by_stratum-rate-')]//use")
    assert points  # each published rate drawn as a point
    assert "Incidence per 1,000 person-years" in page
    assert "<h1>Incidence of Outcome: any metformin in New type 2 diabetes starting metformin</h1>" in page
    cohort_page = client.get("/cohorts/1").text
    assert ">Incidence of Outcome: any metformin in New type 2 diabetes starting metformin</a>" in cohort_page
    assert "drug exposure of Metformin from index to 365 days after" in cohort_page  # windows in words


def test_second_factor_needed_for_privileged_roles(client, demo):
    page = client.get("/signin")
    r = client.post("/signin", data={"username": "chroniclead", "password": demo.passwords["chroniclead"],
                                     "csrf_token": csrf_of(page.text), "next": "/"}, follow_redirects=False)
    assert r.headers["location"].startswith("/signin/second-factor")
    assert client.get("/", follow_redirects=False).status_code == 303  # no session from the password alone
    setup = client.get(r.headers["location"])
    assert 'id="totp-secret"' in setup.text
    wrong = client.post("/signin/second-factor", data={"code": "12345x", "csrf_token": csrf_of(setup.text)})
    assert wrong.status_code == 400 and "not right" in wrong.text
    assert client.get("/", follow_redirects=False).status_code == 303
    client.cookies.clear()
    assert client.get("/signin/second-factor", follow_redirects=False).status_code == 303  # no pending sign-in
    sign_in(client, demo, "chroniclead")  # enrols, gets recovery codes
    assert "Your projects" in client.get("/").text or client.get("/").status_code == 200
    client.cookies.clear()
    sign_in(client, demo, "chroniclead")  # now with a recovery code
    assert client.get("/account").status_code == 200


def test_password_change_page(client, demo):
    csrf = sign_in(client, demo, "coordinator")
    r = client.post("/account/password", data={"csrf_token": csrf, "current_password": "not my password",
                                                "new_password": "tea kettle orbit lamp"})
    assert r.status_code == 403 and "current password" in r.text
    r = client.post("/account/password", data={"csrf_token": csrf, "current_password": demo.passwords["coordinator"],
                                                "new_password": " " * 14})
    assert r.status_code == 400 and "at least 12" in r.text
    r = client.post("/account/password", data={"csrf_token": csrf, "current_password": demo.passwords["coordinator"],
                                                "new_password": "tea kettle orbit lamp"}, follow_redirects=False)
    assert r.status_code == 303
    demo.passwords["coordinator"] = "tea kettle orbit lamp"
    client.cookies.clear()
    sign_in(client, demo, "coordinator")


def test_revoking_a_token_asks_first(client, demo):
    csrf = sign_in(client, demo, "researcher")
    gov = client.app.state.mercia.gov
    researcher = gov.user_by_name("researcher")
    gov.create_token(researcher, "nightly export script", 30)
    token = next(t for t in gov.tokens(researcher) if t["name"] == "nightly export script")
    r = client.post(f"/account/tokens/{token['id']}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 200 and "will stop working at once" in r.text
    assert not next(t for t in gov.tokens(researcher) if t["id"] == token["id"])["revoked"]
    r = client.post(f"/account/tokens/{token['id']}/revoke", data={"csrf_token": csrf, "confirm": "yes"},
                    follow_redirects=False)
    assert r.status_code == 303 and next(t for t in gov.tokens(researcher) if t["id"] == token["id"])["revoked"]
