"""The trial journey in Chromium: register a trial from a saved cohort, see its feasibility chart, add
the site team, the care team sees the site worklist, the nurse records consent and randomises, the
manager downloads the CONSORT diagram."""

from __future__ import annotations

import os
import re

import orjson
import pytest

from mercia.cdm import Store
from tests.web.conftest import browser, live_server  # noqa: F401 - shared fixtures

from .conftest import SITE_A, eligibility, make_world

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEY = "MERCIA_RANDOMISATION_KEY"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from argon2 import PasswordHasher

    from mercia.governance import passwords

    previous_hasher, previous_key = passwords.hasher, os.environ.get(KEY)
    passwords.hasher = PasswordHasher(time_cost=1, memory_cost=1024)
    os.environ[KEY] = "browser-test-key-browser-test-key-0123"
    store = Store(str(tmp_path_factory.mktemp("trial-browser") / "cdm.duckdb"))
    store.init_schema()
    built = make_world(store)
    built.gov.db.insert("mercia_cohort", {"id": 1, "project_id": built.project, "name": "Type 2 diabetes",
                                          "description": "", "expression": orjson.dumps(eligibility()).decode(),
                                          "created_by": built.people["manager"].id, "created_at": "2026-01-01"})
    yield built
    passwords.hasher = previous_hasher
    os.environ.pop(KEY) if previous_key is None else os.environ.__setitem__(KEY, previous_key)
    store.close()


@pytest.fixture(scope="module")
def app(world):
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    return create_app(world.store, ServerOptions(secure_cookies=False, job_workers=1))


def as_user(browser, world, base: str, name: str):  # noqa: F811 - the fixture, passed in
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    token, _ = world.gov.start_session(world.people[name])
    context.add_cookies([{"name": "mercia_session", "value": token, "url": base}])
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return context, page, errors


def test_trial_journey(browser, live_server, world):  # noqa: F811
    base = live_server
    context, page, errors = as_user(browser, world, base, "manager")
    page.goto(f"{base}/trials")
    page.get_by_label("Trial id (ISRCTN, EudraCT or IRAS)").fill("ISRCTN99999999")
    page.get_by_label("Title").fill("Browser trial")
    page.get_by_label("Eligibility cohort").select_option("1:1")
    page.get_by_label("Sponsor").fill("Mercia NHS FT")
    page.get_by_label("Chief investigator").fill("Dr Chief")
    page.get_by_label("Sites (ODS codes, comma separated)").fill(SITE_A)
    page.get_by_label("Target sample size").fill("20")
    page.get_by_label("Recruitment opens").fill("2026-01-01")
    page.get_by_label("Recruitment closes").fill("2030-12-31")
    page.get_by_label("Randomisation").select_option("minimisation")
    page.get_by_label("Arms (comma separated; a ratio as code*2)").fill("drug, placebo")
    page.get_by_label('Factors (one per line, "name: level, level")').fill("sex: F, M")
    page.get_by_label("Criteria confirmed at screening (one per line)").fill("no insulin")
    page.get_by_label("Blinded (site staff see pack codes)").check()
    page.get_by_role("button", name="Register trial").click()
    page.wait_for_url(re.compile(r".*/trials/ISRCTN99999999.*"))
    assert page.locator("svg[aria-labelledby='feasibility-title feasibility-desc']").count() == 1     # the feasibility chart
    for username, role in (("nurse_a", "research nurse"), ("gp_a", "care team")):
        page.get_by_label("Username").fill(username)
        page.get_by_label("Role", exact=True).select_option(label=role)
        page.get_by_label("Site (for site roles)").select_option(SITE_A)
        page.get_by_role("button", name="Add").click()
        page.wait_for_url(re.compile(r".*notice=.*"))
    assert not errors, errors
    context.close()

    context, page, errors = as_user(browser, world, base, "gp_a")
    page.goto(f"{base}/trials/ISRCTN99999999")
    page.get_by_role("link", name=f"Worklist for {SITE_A}").click()
    assert page.get_by_role("cell", name="7", exact=True).count() == 1
    assert not errors, errors
    context.close()

    context, page, errors = as_user(browser, world, base, "nurse_a")
    page.goto(f"{base}/trials/ISRCTN99999999/worklist?site={SITE_A}")
    for status in ("approached", "screened", "consented"):
        page.get_by_label("New status for person 7").select_option(status)
        if status == "screened":
            page.get_by_role("row").filter(has_text="Record for person 7").get_by_label("no insulin").check()
        page.get_by_role("button", name="Record for person 7").click()
        page.wait_for_url(re.compile(r".*notice=.*"))
        assert f"Person 7: {status}" in page.locator(".notice").inner_text()
    page.get_by_label("sex", exact=True).first.select_option("F")
    page.get_by_role("button", name="Randomise person 7").click()
    page.wait_for_url(re.compile(r".*notice=.*"))
    assert "Person 7 randomised: pack" in page.locator(".notice").inner_text()
    assert not errors, errors
    context.close()

    context, page, errors = as_user(browser, world, base, "manager")
    page.goto(f"{base}/trials/ISRCTN99999999")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the CONSORT flow diagram (SVG)").click()
    with open(download.value.path()) as diagram:
        assert "Randomised (n=1)" in diagram.read()
    assert not errors, errors
    context.close()


def test_duplicate_enrolment_journey_passes_axe_and_fits_a_phone(browser, live_server, world):  # noqa: F811
    """The trial manager follows the trial page's count to the suspected duplicates, submits without a
    choice (the problem is shown, linked), then resolves one; every page is checked with axe-core and at a
    phone's width."""
    from mercia.linkage.probabilistic import link_store
    from tests.web.axe import assert_accessible, assert_fits

    from .test_trials_service import _link_as_one_human, enrol
    from mercia.trials.prescreen import worklist

    worklist(world.register, world.people["nurse_a"], world.trial_id, SITE_A)
    enrol(world, 13)
    enrol(world, 14, levels={"sex": "M", "age": "65+"})
    _link_as_one_human(world, 13, 14)
    link_store(world.store)

    def check(page) -> None:
        assert_accessible(page)
        assert_fits(page)
        page.set_viewport_size({"width": 1280, "height": 900})

    context, page, errors = as_user(browser, world, live_server, "manager")
    page.goto(f"{live_server}/trials/{world.trial_id}")
    check(page)
    page.get_by_role("link", name="1 suspected duplicate enrolment to resolve").click()
    page.wait_for_url(re.compile(r".*/duplicates$"))
    check(page)
    page.get_by_role("button", name=re.compile("Resolve duplicate enrolment")).click()
    assert page.title().startswith("Error:")
    page.locator(".error-summary").get_by_role("link", name="Choose the randomisation that stands").click()
    check(page)
    page.get_by_label(re.compile(r"Person 14, ")).check()
    page.get_by_label("Why this randomisation stands").fill("the record at 14 holds the trial data")
    page.get_by_role("button", name=re.compile("Resolve duplicate enrolment")).click()
    page.wait_for_url(re.compile(r".*notice=.*"))
    assert "the randomisation of person 14 stands" in page.locator(".notice").inner_text()
    assert page.get_by_role("cell", name="the record at 14 holds the trial data").count() == 2
    check(page)
    assert not [e for e in errors if "status of 400" not in e], errors
    context.close()
