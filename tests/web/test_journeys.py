"""Journeys of the second walkthrough (issue 16), each one a bug a user met: the data manager loads an
extract in the demo, decisions are never pre-selected and ask before they release, failures say why
and lead back.  Every page visited is checked with axe-core and at a phone's width."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.web.axe import assert_accessible, assert_fits
from tests.web.test_browser import sign_in, sign_out

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


@pytest.fixture
def page(context):
    page = context.new_page()
    errors: list[str] = []
    # A form returned with its errors comes back as 400, which Chromium logs; anything else fails.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text
            else None)
    yield page
    page.close()
    context.clear_cookies()
    assert not errors, f"browser console errors (a CSP violation shows here): {errors}"


def check(page, shots=None, name: str | None = None) -> None:
    """axe-core finds nothing serious, and the page fits 390 px; then back to a desktop width."""
    assert_accessible(page)
    assert_fits(page)
    if shots and name:
        shots(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_data_manager_loads_an_extract(page, live_server, demo, shared_data, shots, monkeypatch, tmp_path):
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)  # the demo's own key file must do
    base = live_server
    sign_in(page, base, demo, "datamanager")
    page.get_by_role("link", name="Data sources", exact=True).click()
    expect(page.get_by_role("link", name=demo.source)).to_be_visible()
    check(page, shots, "20-sources")
    page.get_by_role("link", name="Synthetic Acute Trust R9A").click()  # a registered organisation
    expect(page.get_by_text("Nothing loaded from this organisation yet.")).to_be_visible()
    check(page)

    page.get_by_role("button", name="Load").click()  # nothing chosen: every problem at once, linked
    assert page.title().startswith("Error:")
    summary = page.locator(".error-summary")
    assert summary.get_by_role("link", name="Choose the format of the file").get_attribute("href") == "#load-kind"
    expect(summary.get_by_role("link", name="Choose a file to load")).to_be_visible()
    check(page, shots, "21-load-errors")

    wrong = tmp_path / "lab-results.csv"
    wrong.write_text("nhs_number,test,value\n9990000018,HbA1c,48\n")
    page.get_by_label("Format").select_option("fhir")
    page.get_by_label("File").set_input_files(str(wrong))
    page.get_by_role("button", name="Load").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+"))
    page.get_by_role("heading", name="Loading an extract failed").wait_for(timeout=60_000)
    assert "could be read as fhir" in page.locator("#job-error").inner_text()
    assert "Error" not in page.locator("#job-error").inner_text()  # no internal class names
    check(page, shots, "22-load-failed")
    page.get_by_role("link", name="Go back and try again").click()
    page.wait_for_url(f"{base}/sources/R9A")

    bundle = sorted((shared_data / "fhir" / "synthea_small" / "bundles").iterdir())[1]
    page.get_by_label("Format").select_option("fhir")
    page.get_by_label("File").set_input_files(str(bundle))
    page.get_by_role("button", name="Load").click()
    page.get_by_role("link", name="See the results").click(timeout=120_000)
    page.wait_for_url(f"{base}/sources/R9A")
    expect(page.get_by_role("cell", name=bundle.name)).to_be_visible()
    assert page.locator("#quality-checks tbody tr").count() > 0
    persons = page.locator("#row-counts tr", has_text="person").first.locator("td.numeric").inner_text()
    assert persons == "1"  # this organisation's own records, not the region's
    check(page, shots, "23-source-after-load")
    page.get_by_role("navigation", name="Primary").get_by_role("link", name="Data sources").click()
    expect(page.get_by_role("link", name=demo.source)).to_be_visible()  # the regional source stays listed
    page.get_by_role("link", name=demo.source).click()
    expect(page.get_by_role("heading", name="Data-quality report")).to_be_visible()
    check(page, shots, "24-region-quality")


@pytest.fixture
def pending_export(app, demo):
    """An export of the demo cohort's attrition, requested by the researcher."""
    from mercia.services import cohorts as cohort_service
    from mercia.services.exportable import request_export

    state = app.state.mercia
    researcher = state.gov.user_by_name("researcher")
    project = next(p for p in state.gov.projects_for(researcher) if p.title.startswith("Metformin uptake"))
    cohort = next(c for c in cohort_service.list_cohorts(state, researcher, project.id) if c["result"])
    return request_export(state, researcher, project.id, "cohort_attrition", str(cohort["id"]),
                          "Attrition for the diabetes paper", "Figure 1 of the paper")


def test_release_needs_a_choice_and_a_confirmation(page, live_server, demo, pending_export, app, shots):
    base = live_server
    sign_in(page, base, demo, "checker")
    page.goto(f"{base}/exports/{pending_export['id']}")
    radios = page.locator("input[name=decision]")
    assert radios.count() == 2 and not any(radios.nth(i).is_checked() for i in range(2))
    page.get_by_role("button", name="Record output check").click()
    assert page.title().startswith("Error:")
    page.get_by_role("link", name="Choose whether to release or refuse this export").click()
    assert page.evaluate("document.activeElement.id") == "e-approve"
    check(page, shots, "25-export-choose")

    page.get_by_label("Refuse", exact=True).check()
    page.get_by_role("button", name="Record output check").click()  # refusing needs a reason
    expect(page.get_by_role("link", name=re.compile("Give a reason to refuse it"))).to_be_visible()
    assert page.get_by_label("Refuse", exact=True).is_checked()  # the choice is kept

    page.get_by_label("Release: safe to leave the platform").check()
    page.get_by_role("button", name="Record output check").click()
    expect(page.get_by_role("heading", name="Release this export?")).to_be_visible()
    assert "leave the platform" in page.locator("#consequence").inner_text()
    assert app.state.mercia.airlock.list_for(app.state.mercia.gov.user_by_name("checker"), "pending")  # not yet
    check(page, shots, "26-export-confirm")
    page.get_by_role("link", name="No, go back").click()
    expect(page.get_by_text("Pending")).to_be_visible()
    sign_out(page)


def test_project_decision_is_explicit(page, live_server, demo, app, shots):
    state = app.state.mercia
    clinician = state.gov.user_by_name("clinician")
    project = state.gov.create_project(clinician, title="Ovarian cancer referral times", pillar="cancer",
                                       purpose="Time from referral to diagnosis.", scope_domains=["person"],
                                       expires_on="2099-01-01", ppi_notes="Panel review",
                                       lay_summary="How long people wait between a referral and a diagnosis.",
                                       purpose_category="service_evaluation", lead_organisation="Demo acute trust")
    state.gov.submit(clinician, project.id)
    base = live_server
    sign_in(page, base, demo, "cancerlead")
    page.goto(f"{base}/projects/{project.id}")
    page.get_by_label("Reject", exact=True).check()
    page.get_by_role("button", name="Record decision").click()
    assert page.title().startswith("Error:")
    expect(page.get_by_role("link", name="Give a reason to reject it: the requester will read it")).to_be_visible()
    check(page, shots, "27-project-decision-error")
    page.get_by_label("Reason (needed to reject)").fill("The scope leaves out the referral data it needs.")
    page.get_by_role("button", name="Record decision").click()
    expect(page.get_by_role("heading", name="Reject this project?")).to_be_visible()
    assert "The scope leaves out the referral data" in page.locator("#consequence").inner_text()
    check(page)
    page.get_by_role("button", name="Reject the project").click()
    expect(page.get_by_text("the project is rejected")).to_be_visible()
    assert state.gov.project(project.id).status.value == "rejected"


def test_a_failed_atlas_import_keeps_the_builders_settings(page, live_server, demo, shots):
    """The import box belongs to the builder's form: what the user typed in the builder survives a bad paste."""
    base = live_server
    sign_in(page, base, demo, "researcher")
    page.goto(f"{base}/projects/1/cohorts/new")
    page.get_by_label("Cohort name").fill("New metformin users")
    page.get_by_label("Concept ids", exact=True).fill("201826")
    page.get_by_label("First event per person only").uncheck()
    page.get_by_label("Rule name 1").fill("Metformin in the year after")
    page.get_by_label("Domain for rule 1").select_option("drug")
    page.get_by_label("Concept ids for rule 1").fill("1503297")
    page.get_by_label("Minimum age at entry (years)").fill("40")
    page.get_by_label("A fixed number of days after entry").check()
    page.get_by_text("Import a cohort definition from ATLAS").click()
    page.get_by_label("ATLAS JSON").fill('{"ConceptSets": [')
    page.get_by_role("button", name="Import").click()
    assert page.title().startswith("Error:") and "not valid JSON" in page.locator(".error-summary").inner_text()
    assert page.get_by_label("ATLAS JSON").input_value() == '{"ConceptSets": ['
    assert page.get_by_label("Cohort name").input_value() == "New metformin users"
    assert page.get_by_label("Concept ids", exact=True).input_value() == "201826"
    assert not page.get_by_label("First event per person only").is_checked()
    assert page.get_by_label("Rule name 1").input_value() == "Metformin in the year after"
    assert page.get_by_label("Domain for rule 1").input_value() == "drug"
    assert page.get_by_label("Concept ids for rule 1").input_value() == "1503297"
    assert page.get_by_label("Minimum age at entry (years)").input_value() == "40"
    assert page.get_by_label("A fixed number of days after entry").is_checked()
    check(page, shots, "30-builder-failed-import")


def test_concept_sets_as_atlas_users_expect(page, live_server, demo, shots):
    """Search finds what a clinician types; a set with descendants and an exclusion lists the concepts
    it stands for, with counts; it exports as ATLAS JSON and the builder can use it."""
    base = live_server
    sign_in(page, base, demo, "researcher")
    page.goto(f"{base}/concepts?q=cancer")
    results = page.get_by_role("table").inner_text()
    assert "Malignant neoplastic disease" in results and "Malignant tumor of breast" in results
    page.goto(f"{base}/projects/1")
    page.get_by_role("link", name="Make or view concept sets").click()
    page.get_by_role("button", name="Save concept set").click()  # nothing filled in
    assert page.title().startswith("Error:")
    expect(page.get_by_role("link", name="Give the concept set a name")).to_be_visible()
    page.get_by_label("Name").fill("Cancer except lung")
    page.get_by_label("Concept ids to include").fill("443392")
    page.get_by_label("Concept ids to exclude (optional)").fill("443388")
    page.get_by_label("Include descendant concepts").check()
    page.get_by_role("button", name="Save concept set").click()
    expect(page.get_by_role("heading", name="Cancer except lung")).to_be_visible()
    expanded = page.get_by_role("table", name="Concepts the set stands for").inner_text()
    assert "Malignant tumor of breast" in expanded and "Malignant tumor of lung" not in expanded
    assert "descendant" in expanded
    check(page, shots, "31-concept-set")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export as ATLAS JSON").click()
    exported = download.value.path().read_text()
    assert '"isExcluded": true' in exported and '"CONCEPT_NAME": "Malignant tumor of lung"' in exported
    page.goto(f"{base}/projects/1/cohorts/new")
    page.get_by_label("Or use a saved concept set for the entry event").select_option(label="Cancer except lung")
    page.get_by_role("button", name="Preview ATLAS JSON").click()
    assert "Cancer except lung" in page.locator("pre.code").inner_text()


def test_api_docs_work_offline(page, live_server):
    """Swagger UI from bundled assets: every request stays on this server, and the page renders."""
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
    page.goto(f"{live_server}/api/v1/docs")
    page.locator(".opblock").first.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() > 50
    assert hosts == {live_server.split("/")[2]}


def test_every_request_body_is_described_in_openapi():
    """Each operation that takes a body has a schema naming its fields and which are required (a binary
    body: its format and a description of what it holds)."""
    from mercia.api.app import create_api

    schema = create_api().openapi()
    components = schema["components"]["schemas"]
    bodies = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
                ref = media["schema"].get("$ref", "")
                body = components[ref.rsplit("/", 1)[-1]] if ref else media["schema"]
                if media_type.startswith("application/vnd."):   # a binary format (a node's Arrow result)
                    assert body.get("format") == "binary" and body.get("description"), f"{method.upper()} {path}"
                else:
                    assert body.get("properties"), f"{method.upper()} {path}: a body without named fields"
                bodies += 1
    assert bodies > 20
    projects = components[schema["paths"]["/projects"]["post"]["requestBody"]["content"]["application/json"]
                          ["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert {"title", "pillar"} <= set(projects["required"])


def test_rare_disease_terms_as_chips_and_every_bad_term_at_once(page, live_server, demo, shots):
    base = live_server
    sign_in(page, base, demo, "clinician")
    page.goto(f"{base}/raredisease?observed=HP:0001166, HP:123, HP:9999999&excluded=marfan")
    assert page.title().startswith("Error:")
    summary = page.locator(".error-summary").inner_text()
    assert "HP:123" in summary and "HP:9999999" in summary and "marfan" in summary  # all at once
    chips = page.get_by_role("list", name="Observed terms chosen")
    expect(chips.get_by_text("Arachnodactyly")).to_be_visible()  # the name, not only the id
    check(page, shots, "28-rare-disease-errors")
    for bad in ("HP:123", "HP:9999999"):
        page.get_by_role("link", name=f"Remove {bad}").click()
    page.get_by_role("list", name="Absent terms chosen").get_by_role("link", name="Remove marfan").click()
    assert page.locator(".error-summary").count() == 0
    assert page.get_by_label("Observed HPO terms").input_value() == "HP:0001166"
    assert page.locator(".ranking__item").count() == 10
    assert "Probability" in page.locator(".ranking__item").first.inner_text()
    assert "Too few specific features to decide" in page.content()   # one term cannot tell diseases apart
    check(page, shots, "29-rare-disease-chips")


@pytest.mark.parametrize("username, paths", [
    ("researcher", ["/", "/projects", "/projects/new", "/projects/1", "/projects/1/cohorts/new", "/cohorts/1",
                    "/concepts?q=diabetes", "/projects/1/concept-sets", "/concept-sets/1", "/exports", "/account",
                    "/sources", "/raredisease", "/trials"]),
    ("governance", ["/", "/audit", "/sources"]),
    ("admin", ["/admin/users"]),
    ("coordinator", ["/trials/ISRCTN90000001", "/trials/ISRCTN90000001/team", "/crf/startwell"]),
    ("nurse", ["/trials/ISRCTN90000001/worklist?site=M90001", "/crf", "/crf/startwell"]),
])
def test_every_page_passes_axe_and_fits_a_phone(page, live_server, demo, username, paths):
    sign_in(page, live_server, demo, username)
    titles = set()
    for path in paths:
        page.goto(f"{live_server}{path}")
        assert page.title() not in titles, f"{path} repeats the title {page.title()!r}"
        titles.add(page.title())
        check(page)
