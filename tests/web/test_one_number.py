"""One number everywhere (issue 16, point 5): a cohort's released size is the same on its page, the
project's list, the API, the attrition, every analysis denominator, the follow-up table and the
Kaplan-Meier numbers at risk at time 0, because all of them are that one true count through the one
disclosure rule."""

from __future__ import annotations

import lxml.html

from mercia.privacy.disclosure import get_policy
from tests.web.test_pages import sign_in


def tables(html: str) -> dict[str, list[list[str]]]:
    """Each table on a page by its caption: rows of cell texts."""
    found = {}
    for table in lxml.html.fromstring(html).iter("table"):
        caption = table.find("caption")
        rows = [[cell.text_content().strip() for cell in tr.iter("td")] for tr in table.iter("tr")]
        found[caption.text_content().strip() if caption is not None else ""] = [r for r in rows if r]
    return found


def cell(rows: list[list[str]], label: str, column: int = 1) -> str:
    return next(r[column] for r in rows if r[0] == label)


def run_analysis(client, csrf: str, state, kind: str, **fields: str) -> str:
    r = client.post("/cohorts/1/analyses", data={"csrf_token": csrf, "kind": kind, **fields}, follow_redirects=False)
    assert r.status_code == 303, r.text
    job = state.jobs.wait(int(r.headers["location"].split("/")[-1]), 180)
    assert job["status"] == "succeeded", job
    return client.get(f"/analyses/{job['result']['analysis_id']}").text


def test_a_cohorts_size_is_one_number_on_every_page_and_in_the_api(client, demo):
    csrf = sign_in(client, demo, "researcher")
    state = client.app.state.mercia
    cohort = client.get("/api/v1/cohorts/1").json()
    true_size = state.gov.db.scalar("SELECT COUNT(DISTINCT subject_id) FROM cohort WHERE cohort_definition_id = 1")
    released = cohort["result"]["persons"]
    assert true_size > 7 and released == get_policy().publish_count(true_size)
    shown = f"{released:,}"

    assert client.get("/api/v1/cohorts/1/attrition").json()["steps"][-1]["count_persons"] == released
    listed = {c["id"]: c for c in client.get("/api/v1/cohorts", params={"project_id": 1}).json()}
    assert listed[1]["result"]["persons"] == released
    page = client.get("/cohorts/1").text
    assert f'<span class="stat__value">{shown}</span><span class="stat__label">people</span>' in page
    assert cell(tables(page)["People remaining after each step"], "People in the cohort") == shown
    project = lxml.html.fromstring(client.get("/projects/1").text)
    assert next(tr for tr in project.iter("tr") if tr.find(".//a[@href='/cohorts/1']") is not None) \
        .findall("td")[1].text_content() == shown

    characterisation = tables(run_analysis(client, csrf, state, "characterise"))
    assert cell(characterisation["Cohort"], "Persons") == shown

    incidence = tables(run_analysis(client, csrf, state, "incidence", outcome_cohort_id="1"))
    assert {r[1] for r in incidence["People and time at risk"]} == {shown}  # target persons, each time at risk

    survival = run_analysis(client, csrf, state, "survival")  # to death: nobody in the cohort died before entry
    follow_up = tables(survival)["Follow-up and outcomes"]
    assert [(r[1], r[2], r[3]) for r in follow_up] == [(shown, "0", shown)]  # persons, excluded, followed
    life_table = next(rows for caption, rows in tables(survival).items() if caption.startswith("Kaplan-Meier"))
    assert life_table[0][1] == shown  # at risk at the first time
    texts = [t.text_content() for t in lxml.html.fromstring(survival).iter("{*}text", "text")]
    labels_and_counts = texts[texts.index("Number at risk") + 1:]
    assert labels_and_counts[1] == shown  # the chart's number at risk at year 0 (after the curve's label)
