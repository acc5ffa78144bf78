"""The data-entry journey in Chromium: the nurse fills the enrolment and demographics forms, sees the
calculation and branching follow what she types and an inline validation message, and saves; the
monitor raises a query, the nurse answers it; the investigator signs with his password; the form locks."""

from __future__ import annotations

import re

import pytest

from mercia.cdm import Store
from mercia.governance import Governance
from tests.web.conftest import browser, live_server  # noqa: F401 - shared fixtures

from .conftest import PASSWORD, Team

pytestmark = [pytest.mark.browser, pytest.mark.slow]
FORM = "/crf/heart/H001/baseline_arm_1/demographics"


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("crf-browser") / "cdm.duckdb"))
    store.init_schema()
    yield Team(Governance(store))
    store.close()


@pytest.fixture(scope="module")
def app(team):
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    return create_app(team.gov.db.store, ServerOptions(secure_cookies=False, job_workers=1))


def as_user(browser, team, base, user, height=900):  # noqa: F811 - the fixture, passed in
    context = browser.new_context(viewport={"width": 1280, "height": height})
    token, _ = team.gov.start_session(user)
    context.add_cookies([{"name": "mercia_session", "value": token, "url": base}])
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return context, page, errors


def saved(page):
    page.wait_for_url(re.compile(r".*notice=.*"))
    return page.locator(".notice").inner_text()


def test_data_entry_journey(browser, live_server, team):  # noqa: F811
    base = live_server
    context, page, errors = as_user(browser, team, base, team.entry)
    page.goto(f"{base}/crf")
    page.get_by_role("link", name="heart").click()
    page.get_by_role("link", name="Enrolment: enrolment (record H001)").click()
    pregnant = page.locator("#group-pregnant")
    assert pregnant.is_hidden()
    page.get_by_label("Female", exact=True).check()
    assert pregnant.is_visible()                                   # branching: [sex] = '1'
    page.get_by_label("Male", exact=True).check()
    assert pregnant.is_hidden()
    page.get_by_label("Date of consent").fill("2024-03-01")
    page.get_by_role("button", name="Save form").click()
    assert "Saved: 2 changes" in saved(page)

    page.goto(f"{base}{FORM}")
    cigarettes = page.locator("#group-cig_per_day")
    page.get_by_label("Date of birth").fill("1990-06-15")
    page.get_by_label("Cigarettes", exact=True).check()
    assert page.locator("#field-age").inner_text() == "33"          # calc across events, live
    assert cigarettes.is_visible()                                 # [smoking(1)] = '1' and [age] >= 16
    page.get_by_label("Date of birth").fill("2015-06-15")
    page.get_by_label("Date of birth").blur()
    assert page.locator("#field-age").inner_text() == "8" and cigarettes.is_hidden()
    page.get_by_label("Date of birth").fill("1990-06-15")
    page.get_by_label("Cigarettes per day").fill("10")
    page.get_by_label("Height (cm)").fill("tall")
    page.get_by_label("Height (cm)").blur()
    assert page.locator("#error-height_cm").inner_text() == "'tall' is not a number"
    page.get_by_role("button", name="Save form").click()               # the browser stops it
    assert page.url.endswith(FORM) and page.get_by_label("Height (cm)").evaluate("e => e === document.activeElement")
    page.get_by_label("Height (cm)").fill("180")
    page.get_by_label("Height (cm)").blur()
    assert page.locator("#error-height_cm").inner_text() == ""
    page.get_by_label("Weight (kg)").fill("81")
    page.get_by_label("Weight (kg)").blur()
    assert page.locator("#field-bmi").inner_text() == "25"
    page.get_by_label("Form status").select_option("complete")
    page.get_by_role("button", name="Save form").click()
    assert "Saved" in saved(page)
    assert page.locator("#field-bmi").inner_text() == "25"          # the server's calculation agrees
    assert not errors, errors
    context.close()

    context, page, errors = as_user(browser, team, base, team.monitor)
    page.goto(f"{base}{FORM}")
    page.get_by_label("Field to query").select_option(label="Cigarettes per day")
    page.get_by_label("Query", exact=True).fill("Ten a day since when?")
    page.get_by_role("button", name="Raise query").click()
    assert "Query raised" in saved(page)
    assert not errors, errors
    context.close()

    context, page, errors = as_user(browser, team, base, team.entry)
    page.goto(f"{base}{FORM}")
    page.get_by_label("Answer to query 1").fill("Since 2010")
    page.get_by_role("button", name="Answer query 1").click()
    assert "answered" in saved(page)
    assert not errors, errors
    context.close()

    context, page, errors = as_user(browser, team, base, team.signer)
    page.goto(f"{base}{FORM}")
    page.get_by_label("Your username").fill("dr_pi")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Sign form").click()
    assert "Signed and locked" in saved(page)
    assert "Signed by Dr Pi" in page.locator("#signature").inner_text()
    assert page.get_by_label("Height (cm)").is_disabled()
    assert not errors, errors
    context.close()


def test_save_takes_the_click_that_leaves_a_corrected_field(browser, live_server, team):  # noqa: F811
    """A field's inline error goes as it is corrected, so the press on Save that leaves the field does not
    move the button from under the pointer: the form is saved by that one click.  The window shows the
    whole form: scrolled, Chromium's scroll anchoring would keep the button in place and hide a move."""
    base = live_server
    context, page, errors = as_user(browser, team, base, team.entry, height=3200)
    page.goto(f"{base}/crf/heart/H002/baseline_arm_1/demographics")
    height = page.get_by_label("Height (cm)")
    height.fill("tall")
    height.blur()
    assert page.locator("#error-height_cm").inner_text() == "'tall' is not a number"
    height.fill("180")
    assert height.evaluate("e => e === document.activeElement")
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight")
    page.get_by_role("button", name="Save form").click()
    assert "Saved: 1 change" in saved(page)
    assert team.crf.form_data(team.entry, "heart", "H002", "baseline_arm_1", "demographics")["values"] == {
        "height_cm": "180"}
    assert not errors, errors
    context.close()


def test_a_data_manager_manages_the_study_team_in_the_browser(browser, live_server, team):  # noqa: F811
    from tests.web.axe import assert_accessible, assert_fits

    base = live_server
    context, page, errors = as_user(browser, team, base, team.manager)
    page.goto(f"{base}/crf/heart")
    page.get_by_role("link", name="Study team: who holds which role").click()
    assert page.get_by_role("heading", name="Monitor (1)").is_visible()
    assert_accessible(page)
    page.get_by_label("Username").fill("cra_mo")
    page.get_by_label("Role", exact=True).select_option("data_entry")
    page.get_by_role("button", name="Give this role").click()
    assert "cra_mo is now data entry" in saved(page)
    assert page.get_by_role("heading", name="Data entry (2)").is_visible()
    page.get_by_label("Why it ends for Cra Mo (cra_mo) as data entry").fill("covered one week")
    page.get_by_role("button", name="End this role for Cra Mo (cra_mo) as data entry").click()
    assert "cra_mo's role data entry ended" in saved(page)
    assert not errors, errors
    page.get_by_label("Why it ends for Dm Dana (dm_dana) as data manager").fill("leaving")
    page.get_by_role("button", name="End this role for Dm Dana (dm_dana) as data manager").click()
    page.locator(".error-summary").wait_for()
    assert "last data manager of heart" in page.locator(".error-summary").inner_text()
    assert page.get_by_label("Why it ends for Dm Dana (dm_dana) as data manager").input_value() == "leaving"
    assert_accessible(page)
    assert_fits(page)
    assert errors == ["Failed to load resource: the server responded with a status of 409 (Conflict)"]   # the refusal
    context.close()


def test_a_participant_answers_a_survey_on_a_phone(browser, live_server, team):  # noqa: F811
    """The nurse sends record H002's enrolment form as a survey; the participant opens the link on a phone,
    with no account, sees the branching follow her answers, a wrong answer flagged next to its question, and
    the thank-you page; the link then no longer works."""
    from tests.web.axe import assert_accessible, assert_fits

    base = live_server
    context, page, errors = as_user(browser, team, base, team.entry)
    page.goto(f"{base}/crf/heart/H002/enrolment_arm_1/enrolment")
    page.get_by_role("button", name="Send as survey").click()
    link = page.get_by_label("Survey link").input_value()
    assert link.startswith(f"{base}/survey/")
    assert_accessible(page)
    context.close()

    phone = browser.new_context(viewport={"width": 390, "height": 844})
    page = phone.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(link)
    assert page.get_by_role("heading", name="HEART trial").is_visible()
    pregnant = page.locator("#group-pregnant")
    assert pregnant.is_hidden()
    page.get_by_label("Female", exact=True).check()
    assert pregnant.is_visible()                                   # the staff form's branching, live
    page.get_by_label("Participant initials").fill("CD")
    page.get_by_label("Date of consent").fill("2024-02-30")
    page.get_by_role("button", name="Send my answers").click()             # held back by the page's own check
    assert "is not a date" in page.locator("#error-consent_date").inner_text()
    assert page.get_by_label("Participant initials").input_value() == "CD"
    assert_accessible(page)
    assert_fits(page)
    page.get_by_label("Date of consent").fill("2024-02-28")
    assert page.locator("#error-consent_date").inner_text() == ""   # cleared as it was corrected
    page.get_by_label("No", exact=True).check()
    page.get_by_role("button", name="Send my answers").click()
    page.get_by_role("heading", name="Thank you").wait_for()
    assert_accessible(page)
    assert phone.cookies() == []
    page.goto(link)
    assert page.get_by_role("heading", name="This link is no longer valid").is_visible()
    assert "HEART" not in page.content()
    state = team.crf.form_state(team.crf.study("heart"), "H002", "enrolment_arm_1", "enrolment")
    assert state["status"] == "complete"
    assert errors == ["Failed to load resource: the server responded with a status of 404 (Not Found)"], errors
    phone.close()
