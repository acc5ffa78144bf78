"""The staff side of the public register in the web app: the project form's public fields and
readability, a lay reviewer's form, withdrawal; and the public pages answering without sign-in."""

from __future__ import annotations

from tests.web.test_pages import sign_in

PUBLIC_FORM = {"lay_summary": "We want to know how many people with kidney disease could join a trial of a "
                              "new medicine.", "purpose_category": "trial_feasibility",
               "lead_organisation": "Midlands Kidney Network", "legal_basis": "UK GDPR Article 6(1)(e)",
               "approval_refs": "REC 26/WM/0042"}


def _new_project(client, csrf, **extra) -> str:
    form = {"csrf_token": csrf, "title": "Kidney trial feasibility", "pillar": "cancer", "purpose": "Count",
            "scope_domains": ["person"], "expires_on": "2099-01-01", **PUBLIC_FORM} | extra
    r = client.post("/projects/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["location"].split("?")[0]


def test_project_form_takes_the_public_fields_and_shows_readability(client, demo):
    csrf = sign_in(client, demo, "coordinator")
    assert 'name="lay_summary"' in client.get("/projects/new").text
    path = _new_project(client, csrf)
    page = client.get(path).text
    assert "Midlands Kidney Network" in page and "REC 26/WM/0042" in page and "Reading age about" in page
    assert "Clinical trial feasibility and recruitment" in page
    r = client.post(f"{path}/submit", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    bare = _new_project(client, csrf, lay_summary="")
    r = client.post(f"{bare}/submit", data={"csrf_token": csrf})
    assert r.status_code == 400 and "lay summary" in r.text


def test_lay_reviewer_reviews_through_the_form_and_cannot_decide(client, demo):
    lead_client = client.__class__(client.app, base_url="http://127.0.0.1")
    csrf = sign_in(lead_client, demo, "coordinator")
    path = _new_project(lead_client, csrf, title="Reviewed by the public")
    lead_client.post(f"{path}/submit", data={"csrf_token": csrf})
    csrf = sign_in(client, demo, "layreviewer")
    page = client.get(path).text
    assert "Record lay review" in page and "Record decision" not in page
    r = client.post(f"{path}/lay-review", data={"csrf_token": csrf, "recommendation": "support",
                                                "comments": "Clear and worthwhile.", "public": "yes"},
                    follow_redirects=False)
    assert r.status_code == 303
    page = client.get(path).text
    assert "Clear and worthwhile." in page and "Record lay review" not in page
    assert client.post(f"{path}/decision", data={"csrf_token": csrf, "decision": "approve"}).status_code == 403
    assert client.post(f"{path}/withdraw", data={"csrf_token": csrf, "reason": "no"}).status_code == 403


def test_lead_withdraws_a_project(client, demo):
    csrf = sign_in(client, demo, "coordinator")
    path = _new_project(client, csrf, title="Soon withdrawn")
    r = client.post(f"{path}/withdraw", data={"csrf_token": csrf, "reason": "Funding ended"}, follow_redirects=False)
    assert r.status_code == 303
    assert "Withdrawn" in client.get(path).text


def test_public_pages_answer_without_signing_in(client, demo):
    client.cookies.clear()
    register = client.get("/register")
    assert register.status_code == 200 and "Metformin uptake" in register.text
    assert "Breast cancer pathways" not in register.text  # submitted, never approved
    assert "Childhood asthma" not in register.text  # a draft
    for path in ("/about-your-data", "/about-your-data/pseudonymisation", "/about-your-data/opting-out"):
        r = client.get(path)
        assert r.status_code == 200 and "Sign out" not in r.text
    assert "0300 303 5678" in client.get("/about-your-data/opting-out").text
    assert client.get("/register?year=20x6").status_code == 400


def release_section(page: str, export_id: int) -> str:
    """One released output's card on a public register page (others of the project may sit beside it)."""
    start = page.index(f'id="release-{export_id}"')
    return page[start:page.index("</section>", start)]


def test_lead_publishes_a_released_outputs_numbers_from_the_export_page(client, demo):
    from mercia.services.exportable import request_export

    state = client.app.state.mercia
    researcher, checker = state.gov.user_by_name("researcher"), state.gov.user_by_name("checker")
    cohort = state.gov.db.row("SELECT id, project_id FROM mercia_cohort WHERE result IS NOT NULL ORDER BY id LIMIT 1")
    export = request_export(state, researcher, cohort["project_id"], "cohort_attrition", str(cohort["id"]),
                            "Who started metformin", "a paper")
    state.airlock.decide(checker, export["id"], "approve", "rounded")
    public = f"/register/projects/{cohort['project_id']}"
    assert "Who started metformin" in client.get(public).text
    assert "has not chosen to publish the numbers" in release_section(client.get(public).text, export["id"])
    csrf = sign_in(client, demo, "researcher")
    page = client.get(f"/exports/{export['id']}").text
    assert "Show the numbers on the public register" in page
    r = client.post(f"/exports/{export['id']}/publish-numbers", data={"csrf_token": csrf, "publish": "yes"},
                    follow_redirects=False)
    assert r.status_code == 303
    assert "Stop showing the numbers" in client.get(f"/exports/{export['id']}").text
    client.cookies.clear()
    assert "has not chosen to publish the numbers" not in release_section(client.get(public).text, export["id"])


def test_only_an_independent_output_checker_is_asked_to_confirm_a_release(client, demo):
    """The confirmation step comes after the permission check: a researcher, or a checker on their
    own request, is refused at once and never shown what a release would do."""
    from mercia.services.exportable import request_export

    state = client.app.state.mercia
    researcher = state.gov.user_by_name("researcher")
    cohort = state.gov.db.row("SELECT id, project_id FROM mercia_cohort WHERE result IS NOT NULL ORDER BY id LIMIT 1")
    export = request_export(state, researcher, cohort["project_id"], "cohort_attrition", str(cohort["id"]),
                            "Attrition for the confirm test", "a report")
    csrf = sign_in(client, demo, "researcher")
    refused = client.post(f"/exports/{export['id']}/decision", data={"csrf_token": csrf, "decision": "approve"})
    assert refused.status_code == 403 and "Release this export?" not in refused.text
    client.cookies.clear()
    csrf = sign_in(client, demo, "checker")
    asked = client.post(f"/exports/{export['id']}/decision", data={"csrf_token": csrf, "decision": "approve"})
    assert asked.status_code == 200 and "Release this export?" in asked.text
    assert state.airlock.list_for(state.gov.user_by_name("checker"), "pending")
