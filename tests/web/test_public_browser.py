"""The public register and the patient pages in Chromium, without signing in: search and filter,
a project's page, and axe-core's WCAG 2.2 AA rules (no serious or critical violation) on each page
at desktop and phone widths."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.axe import blocking_violations
from tests.web.conftest import watched_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PATIENT_PAGES = ["/about-your-data", "/about-your-data/pseudonymisation", "/about-your-data/opting-out"]


@pytest.fixture(params=[(1280, 900), (320, 640)], ids=["desktop", "phone"])
def page(browser, request):
    with watched_page(browser, *request.param) as opened:
        yield opened


def test_register_and_patient_pages_pass_axe(page, live_server, shots):
    base = live_server
    page.goto(f"{base}/register")
    assert page.get_by_role("heading", level=1).inner_text() == "Public register of projects"
    assert blocking_violations(page) == []
    page.get_by_label("Research pillar").select_option("chronic")
    page.get_by_role("button", name="Show projects").click()
    page.wait_for_load_state()
    assert "pillar=chronic" in page.url
    assert blocking_violations(page) == []
    shots(page, f"register-index-{page.viewport_size['width']}")
    page.get_by_role("link", name="Metformin uptake after a type 2 diabetes diagnosis").click()
    page.wait_for_load_state()
    expect(page.get_by_role("heading", name="In plain English")).to_be_visible()
    assert "Reading age about" in page.content()
    assert blocking_violations(page) == []
    shots(page, f"register-project-{page.viewport_size['width']}")
    for path in PATIENT_PAGES:
        page.goto(f"{base}{path}")
        assert page.get_by_role("link", name="Public register").first.is_visible() or page.viewport_size["width"] < 400
        assert blocking_violations(page) == [], path
    shots(page, f"opting-out-{page.viewport_size['width']}")


def test_search_finds_by_words_in_the_lay_summary(page, live_server):
    page.goto(f"{live_server}/register")
    page.get_by_role("searchbox", name="Search").fill("metformin")
    page.get_by_role("button", name="Show projects").click()
    page.wait_for_load_state()
    expect(page.get_by_text("1 project found")).to_be_visible()
    page.get_by_role("searchbox", name="Search").fill("no such words anywhere")
    page.get_by_role("button", name="Show projects").click()
    page.wait_for_load_state()
    expect(page.get_by_text("0 projects found")).to_be_visible()


def test_the_axe_check_sees_a_violation(page):
    """The check above can fail: an image without a text alternative is a critical violation."""
    page.set_content('<!DOCTYPE html><html lang="en"><head><title>t</title></head>'
                     '<body><main><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="></main></body></html>')
    assert [v.split(" ")[0] for v in blocking_violations(page)] == ["image-alt"]
