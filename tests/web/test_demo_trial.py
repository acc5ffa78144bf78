"""The demo's trial and eCRF study as its people find them in the browser: the coordinator's trial pages
and the research nurse's eCRF study have content from the first sign-in."""

from __future__ import annotations

import lxml.html

from mercia.demo.trial import STUDY, TRIAL_ID, TRIAL_TITLE
from tests.web.test_pages import sign_in


def cells(html: str, xpath: str) -> list[str]:
    return [" ".join(e.text_content().split()) for e in lxml.html.fromstring(html).xpath(xpath)]


def test_the_coordinator_finds_the_trial_with_recruitment_consort_and_a_signed_team(client, demo):
    sign_in(client, demo, "coordinator")
    listing = client.get("/trials")
    assert listing.status_code == 200 and TRIAL_ID in listing.text and TRIAL_TITLE in listing.text
    page = client.get(f"/trials/{TRIAL_ID}")
    assert page.status_code == 200 and "Recruitment by site" in page.text and "Prevalent pool per site" in page.text
    randomised = cells(page.text, "//section[@aria-labelledby='dash-h']//tbody/tr/td[2]")
    assert randomised and int(randomised[0]) > 0
    team = client.get(f"/trials/{TRIAL_ID}/team")
    assert team.status_code == 200 and "Grace Mensah (research nurse)" in team.text
    assert "Tom Hughes (trial coordinator)" in team.text and "I delegate these duties" in team.text
    consort = client.get(f"/trials/{TRIAL_ID}/consort.svg")
    assert consort.status_code == 200 and consort.text.startswith("<?xml")


def test_the_statistician_finds_the_allocation_summary(client, demo):
    sign_in(client, demo, "researcher")
    page = client.get(f"/trials/{TRIAL_ID}/allocations")
    assert page.status_code == 200 and "review" in page.text and "usual_care" in page.text


def test_the_research_nurse_finds_the_study_records_and_the_open_query(client, demo):
    sign_in(client, demo, "nurse")
    studies = client.get("/crf")
    assert studies.status_code == 200 and f'href="/crf/{STUDY}"' in studies.text
    page = client.get(f"/crf/{STUDY}")
    assert page.status_code == 200 and "M90001-0001" in page.text and TRIAL_ID in page.text
    assert "1 open query" in page.text and ", locked, signed" in page.text
    worklist = client.get(f"/trials/{TRIAL_ID}/worklist?site=M90001")
    assert worklist.status_code == 200 and "randomised" in worklist.text
