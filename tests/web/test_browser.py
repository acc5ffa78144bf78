"""Browser journeys in Chromium: build a cohort, run it, see its attrition, request an export and
have a second person release it.  Screenshots of each main page go to test-artifacts/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.web.totp_codes import code_for, remember_recovery_codes

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def sign_in(page, base: str, demo, username: str) -> None:
    page.goto(f"{base}/signin")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(demo.passwords[username])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    if "/signin/second-factor" in page.url:
        page.get_by_label("Code").fill(code_for(username, page.content()))
        page.get_by_role("button", name="Continue").click()
        page.wait_for_load_state()
        if "recovery codes" in page.content():
            remember_recovery_codes(username, page.content())
            page.get_by_role("link", name="Continue").click()
    page.wait_for_url(f"{base}/")


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/signin.*"))


def test_cohort_to_released_export(page, live_server, demo, shots):
    base = live_server
    page.goto(f"{base}/signin")
    shots(page, "01-signin")
    sign_in(page, base, demo, "researcher")
    shots(page, "02-home-researcher")

    page.get_by_role("link", name="Metformin uptake after a type 2 diabetes diagnosis").first.click()
    page.get_by_role("link", name="Build a cohort").click()
    page.get_by_label("Cohort name").fill("T2DM on metformin within 6 months")
    page.get_by_label("Find concepts for the entry event").press_sequentially("type 2 diab", delay=30)
    page.get_by_role("option", name=re.compile("Type 2 diabetes mellitus")).first.dispatch_event("mousedown")
    assert page.get_by_label("Concept ids", exact=True).input_value() == "201826"
    page.locator("#rule1_name").fill("Metformin within 6 months")
    page.locator("#rule1_domain").select_option("drug")
    page.locator("#rule1_concepts").fill("1503297")
    page.locator("#rule1_before").fill("0")
    page.locator("#rule1_after").fill("182")
    page.get_by_label("Minimum age at entry (years)").fill("18")
    page.get_by_role("button", name="Preview ATLAS JSON").click()
    assert "DrugExposure" in page.locator("pre.code").first.inner_text()
    shots(page, "03-cohort-builder")
    page.get_by_role("button", name="Save cohort").click()
    page.wait_for_url(re.compile(r".*/cohorts/\d+.*"))
    cohort_url = page.url.split("?")[0]

    page.get_by_role("button", name="Run cohort").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+"))
    page.get_by_role("link", name="See the results").click(timeout=60_000)
    page.wait_for_url(cohort_url)
    chart = page.locator("#attrition-chart svg")
    expect(chart).to_be_visible()
    assert chart.locator("g[id^='attrition-bar-']").count() == 4  # qualifying, two rules, cohort
    people = int(page.locator(".stat__value").first.inner_text().replace(",", ""))
    assert people > 0
    shots(page, "04-cohort-attrition")

    for kind, shot in (("characterise", "04b-characterisation"), ("survival", "04c-survival"),
                       ("incidence", "04d-incidence")):
        page.get_by_label("Analysis", exact=True).select_option(kind)
        if kind == "incidence":
            page.get_by_label("Outcome cohort (incidence, survival)").select_option(index=1)
        page.get_by_role("button", name="Run analysis").click()
        page.get_by_role("link", name="See the results").click(timeout=60_000)
        page.wait_for_url(re.compile(r".*/analyses/\d+"))
        assert page.locator("table.table").count() >= 2
        if kind == "survival":
            expect(page.locator("#kaplan_meier-chart svg.chart g[id^='kaplan_meier-km-'] path").first).to_be_visible()
        if kind == "incidence":
            expect(page.locator("#incidence_by_stratum-chart svg.chart g[id^='incidence_by_stratum-rate-'] use")
                   .first).to_be_visible()
        shots(page, shot)
        page.goto(cohort_url)

    page.get_by_label("Why does this need to leave the platform?").fill("Table 1 of the protocol paper")
    page.get_by_role("button", name="Request export").click()
    page.wait_for_url(re.compile(r".*/exports/\d+.*"))
    export_url = page.url.split("?")[0]
    expect(page.get_by_text("Pending")).to_be_visible()
    shots(page, "05-export-requested")
    sign_out(page)

    sign_in(page, base, demo, "checker")
    shots(page, "06-home-output-checker")
    page.get_by_role("link", name=re.compile("Cohort attrition: T2DM on metformin")).click()
    page.get_by_label("Release: safe to leave the platform").check()
    page.get_by_role("button", name="Record output check").click()
    page.get_by_role("button", name="Release the export").click()  # a second step names what happens
    page.wait_for_url(re.compile(re.escape(export_url) + r".*"))
    expect(page.get_by_text("Approved", exact=True)).to_be_visible()
    shots(page, "07-export-approved")
    sign_out(page)

    sign_in(page, base, demo, "researcher")
    page.goto(export_url)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.endswith(".csv")


def test_governance_pages(page, live_server, demo, shots):
    base = live_server
    sign_in(page, base, demo, "cancerlead")
    page.get_by_role("link", name="Breast cancer pathways across the region").first.click()
    page.get_by_label("Approve", exact=True).check()  # nothing is pre-selected
    page.get_by_role("button", name="Record decision").click()
    page.get_by_role("button", name="Approve the project").click()
    expect(page.get_by_text("Decision recorded: now waiting for a governance officer.")).to_be_visible()
    assert page.get_by_role("button", name="Record decision").count() == 0  # one decision per person
    shots(page, "08-project-approval")
    sign_out(page)

    sign_in(page, base, demo, "governance")
    shots(page, "09-home-governance")
    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_label("What").select_option("signin.success")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("Hash chain verified")).to_be_visible()
    assert page.locator("tbody tr").count() >= 2
    shots(page, "10-audit")
    page.get_by_role("link", name="Data sources").click()
    page.get_by_role("link", name=re.compile("Mercia synthetic")).click()
    shots(page, "11-source-quality")


def test_rare_disease_autocomplete(page, live_server, demo, shots):
    base = live_server
    sign_in(page, base, demo, "clinician")
    page.get_by_role("link", name="Rare disease").click()
    page.get_by_label("Find an HPO term").press_sequentially("seizure", delay=30)
    option = page.get_by_role("option").first
    option.wait_for(timeout=30_000)
    option.dispatch_event("mousedown")
    assert page.get_by_label("Observed HPO terms").input_value().startswith("HP:")
    page.get_by_label("Observed HPO terms").fill("HP:0001250, HP:0001263, HP:0000252")
    page.get_by_role("button", name="Rank diagnoses").click()
    assert page.locator(".ranking__item").count() == 10
    page.locator(".details__summary").first.click()
    shots(page, "12-rare-disease")


def test_keyboard_skip_link_and_focus(page, live_server, demo):
    page.goto(f"{live_server}/signin")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    assert skip.evaluate("el => el === document.activeElement")
    outline = page.evaluate("getComputedStyle(document.activeElement).backgroundColor")
    assert outline == "rgb(255, 235, 59)"  # the yellow focus state
