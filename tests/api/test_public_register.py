"""The public register, its feeds and its API: who appears, with exactly which fields, and that no
patient-derived number or other person ever does."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import feedparser
import jsonschema
import orjson
import pytest

from mercia.api.ratelimit import PublicRateLimit
from mercia.services.register import PROJECT_FIELDS, RELEASE_FIELDS, SUMMARY_FIELDS
from tests.api.api_world import FUTURE, Filled, approve, fill_world, open_world, serve
from tests.api.test_api import make_cohort, run

LEAD_NAME, OTHER_LEAD = "Rhea Quillfeather", "Oona Otherteam"  # the leads of the world's two teams
PUBLIC_TEXT = {"lay_summary": "We want to learn why some people bleed in the gut after taking aspirin.",
               "purpose_category": "research", "lead_organisation": "University of the Midlands",
               "legal_basis": "UK GDPR Article 6(1)(e) and 9(2)(j)", "approval_refs": "REC 26/WM/0001; CAG 26/CAG/0002"}
ISO_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?")
READABILITY = re.compile(r"Reading age about \d+ \(reading ease [\d.]+ out of 100\)")

# JSON Feed 1.1 (https://jsonfeed.org/version/1.1): the parts a reader relies on.
JSON_FEED_SCHEMA = {
    "type": "object", "required": ["version", "title", "items"],
    "properties": {
        "version": {"const": "https://jsonfeed.org/version/1.1"}, "title": {"type": "string"},
        "home_page_url": {"type": "string", "format": "uri"}, "feed_url": {"type": "string", "format": "uri"},
        "items": {"type": "array", "items": {
            "type": "object", "required": ["id"], "anyOf": [{"required": ["content_text"]}, {"required": ["content_html"]}],
            "properties": {"id": {"type": "string"}, "url": {"type": "string"}, "title": {"type": "string"},
                           "content_text": {"type": "string"}, "date_published": {"type": "string", "format": "date-time"},
                           "tags": {"type": "array", "items": {"type": "string"}}}}}}}


def fill_register(store) -> tuple[Filled, dict]:
    """The world with every project state, distinct names for everyone, a cohort run and one export
    awaiting its check; built once per engine, each test gets a copy."""
    filled = fill_world(store)
    world = open_world(store, filled)
    with world.client:
        made = register_everything(world)
    return filled, made


def register_everything(world) -> dict:
    """Names, project states, a cohort run and its export, made through the server as a user would."""
    gov, people = world.gov, world.people
    for username, user in people.items():
        gov.db.execute("UPDATE mercia_user SET display_name = ? WHERE id = ?",
                       [{"res": LEAD_NAME, "res2": OTHER_LEAD}.get(username, f"Zq{username.title()} Personname"),
                        user.id])
    fields = dict(pillar="cancer", purpose="p", scope_domains=["person", "condition_occurrence"], expires_on=FUTURE,
                  **PUBLIC_TEXT)
    res, govo = people["res"], people["govo"]
    for pid in (world.approved, world.other, world.draft, world.expired):
        gov.db.execute(f"UPDATE mercia_project SET {', '.join(f'{k} = ?' for k in PUBLIC_TEXT)} WHERE id = ?",
                       [*PUBLIC_TEXT.values(), pid])
    rejected = gov.create_project(res, title="Turned down", **fields).id
    gov.submit(res, rejected)
    gov.decide(govo, rejected, "reject", "Not proportionate")
    withdrawn = gov.create_project(res, title="Withdrawn later", **fields).id
    approve(gov, people, withdrawn)
    gov.withdraw(res, withdrawn, "Funding ended")
    waiting = gov.create_project(res, title="Waiting first decision", **fields).id
    gov.submit(res, waiting)
    h = world.login("res")
    cohort = make_cohort(world, h)
    run(world, h, cohort)
    r = world.client.post("/api/v1/exports", headers=h, json={"project_id": world.approved, "kind": "cohort_attrition",
                                                               "ref": str(cohort), "justification": "paper",
                                                               "title": "Attrition of the GI bleed cohort"})
    assert r.status_code == 201, r.text
    export = r.json()["id"]
    return {"rejected": rejected, "withdrawn": withdrawn, "waiting": waiting, "export": export, "cohort": cohort}


@pytest.fixture
def copied(engine, prepared, tmp_path):
    return prepared(engine, fill_register, tmp_path)


@pytest.fixture
def world(copied):
    store, (filled, _) = copied
    yield from serve(store, filled)


@pytest.fixture
def register(copied) -> dict:
    return copied[1][1]


def release(world, export_id: int) -> None:
    r = world.client.post(f"/api/v1/exports/{export_id}/decision", headers=world.login("checker"),
                          json={"decision": "approve", "reason": "rounded"})
    assert r.status_code == 200, r.text


def public_texts(world) -> dict[str, str]:
    """Every public page and feed, as text."""
    c = world.client
    listed = c.get("/api/v1/public/projects").json()["projects"]
    paths = ["/register", "/register/feed.json", "/register/feed.atom", "/api/v1/public/projects",
             "/api/v1/public/releases", *(f"/register/projects/{p['id']}" for p in listed),
             *(f"/api/v1/public/projects/{p['id']}" for p in listed)]
    texts = {}
    for path in paths:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        texts[path] = r.text
    return texts


def patient_numbers(world) -> set[int]:
    """Every count Mercia derived from patient records: table and person counts of the CDM, every
    number in cohort results and in export contents (released or not)."""
    store, gov = world.client.app.state.mercia.store, world.gov
    numbers: set[int] = set()
    for table in ("person", "observation_period", "condition_occurrence", "drug_exposure", "cohort"):
        numbers.add(int(store.query_one(f"SELECT COUNT(*) FROM {table}")))
        column = "subject_id" if table == "cohort" else "person_id"
        numbers.add(int(store.query_one(f"SELECT COUNT(DISTINCT {column}) FROM {table}")))

    def walk(value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)) and float(value).is_integer():
            numbers.add(int(value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
    for row in gov.db.rows("SELECT result FROM mercia_cohort WHERE result IS NOT NULL"):
        walk(orjson.loads(row["result"]))
    for row in gov.db.rows("SELECT content FROM mercia_export"):
        walk(orjson.loads(row["content"]))
    # small numbers are ids, page numbers and reading ages; disclosure control never releases them as counts
    return {n for n in numbers if n >= 5}


def leaked_numbers(text: str, numbers: set[int]) -> set[int]:
    text = READABILITY.sub("", ISO_MOMENT.sub("", text))
    text = re.sub(r'"lay_summary_readability":\{[^}]*\}', "", text)
    return {n for n in numbers if re.search(rf"(?<![\d.]){n}(?![\d])", text)}


def test_only_projects_once_approved_appear_with_exactly_the_allowed_fields(world, register):
    c = world.client
    listing = c.get("/api/v1/public/projects").json()
    titles = {p["title"]: p for p in listing["projects"]}
    assert set(titles) == {"GI bleed outcomes", "Other team", "Old study"}
    assert listing["total"] == 3
    assert {p["status"] for p in listing["projects"]} == {"approved", "expired"}
    assert all(set(p) == set(SUMMARY_FIELDS) for p in listing["projects"])
    for hidden in (world.draft, register["rejected"], register["withdrawn"], register["waiting"]):
        assert c.get(f"/api/v1/public/projects/{hidden}").status_code == 404
        assert c.get(f"/register/projects/{hidden}").status_code == 404
    page = c.get(f"/api/v1/public/projects/{world.approved}").json()
    assert set(page) == set(PROJECT_FIELDS)
    assert page["lead"] == LEAD_NAME and page["approval_refs"] == PUBLIC_TEXT["approval_refs"]
    assert page["data_domains"] == ["Conditions", "Drug exposures", "Demographics", "Deaths"]
    assert [s["event"] for s in page["status_history"]] == ["Submitted for review", "Approved"]
    assert page["lay_summary_readability"]["reading_age"] >= 5
    # an approved project sent back for a fresh decision stays listed, as under review again
    world.gov.add_member(world.people["govo"], world.other, world.people["clin"].id)
    again = c.get(f"/api/v1/public/projects/{world.other}").json()
    assert again["status"] == "submitted" and again["status_label"] == "Under review again"
    assert again["status_history"][-1]["event"] == "Sent back for a fresh decision"


def test_a_release_appears_only_once_approved_and_numbers_only_if_published(world, register):
    c = world.client
    assert c.get("/api/v1/public/releases").json()["releases"] == []
    assert c.get(f"/api/v1/public/projects/{world.approved}").json()["releases"] == []
    release(world, register["export"])
    releases = c.get("/api/v1/public/releases").json()["releases"]
    assert [r["id"] for r in releases] == [register["export"]]
    assert set(releases[0]) == set(RELEASE_FIELDS) and releases[0]["numbers"] is None
    assert releases[0]["released"] == date.today().isoformat()
    assert "Attrition of the GI bleed cohort" in c.get(f"/register/projects/{world.approved}").text
    # the lead publishes the numbers that disclosure control and the checker passed
    h = world.login("res")
    assert c.put(f"/api/v1/exports/{register['export']}/publish-numbers", headers=world.login("res2"),
                 json={"publish": True}).status_code == 404
    assert c.put(f"/api/v1/exports/{register['export']}/publish-numbers", headers=world.login("checker"),
                 json={"publish": True}).status_code == 403
    assert c.put(f"/api/v1/exports/{register['export']}/publish-numbers", headers=h,
                 json={"publish": True}).json()["publish_numbers"] is True
    published = c.get("/api/v1/public/releases").json()["releases"][0]["numbers"]
    released = c.get(f"/api/v1/exports/{register['export']}", headers=h).json()["content"]["tables"][0]["rows"]
    assert published[0]["rows"] == released
    assert "count_persons" in c.get(f"/register/projects/{world.approved}").text


def test_no_patient_number_and_no_person_but_the_lead_on_any_public_page(world, register):
    release(world, register["export"])
    numbers = patient_numbers(world)
    assert {40, 24, 10} <= numbers  # the scan knows the world's counts
    named = {p["lead"] for p in world.client.get("/api/v1/public/projects").json()["projects"]}
    assert named == {LEAD_NAME, OTHER_LEAD}
    others = [u["display_name"] for u in world.gov.users() if u["display_name"] not in named]
    assert len(others) == 7 and all(name.startswith("Zq") for name in others)
    for path, text in public_texts(world).items():
        assert not leaked_numbers(text, numbers), (path, leaked_numbers(text, numbers))
        assert not [name for name in others if name in text], path
        assert "Zq" not in text, path
    # the scan would see a leak: the same pages once the lead publishes the numbers
    world.client.put(f"/api/v1/exports/{register['export']}/publish-numbers", headers=world.login("res"),
                     json={"publish": True})
    assert leaked_numbers(world.client.get(f"/register/projects/{world.approved}").text, numbers)


def test_lay_review_is_shown_only_with_consent_and_without_the_reviewers_name(world, register):
    gov, people = world.gov, world.people
    reviewers = [gov.create_user(f"lay{i}", f"Zq Lay Reviewer {i}", "correct horse battery",
                                 [("lay_reviewer", "cancer")]) for i in range(2)]
    fields = dict(pillar="cancer", purpose="p", scope_domains=["person"], expires_on=FUTURE, **PUBLIC_TEXT)
    pid = gov.create_project(people["res"], title="Reviewed", **fields).id
    gov.submit(people["res"], pid)
    r = world.client.post(f"/api/v1/projects/{pid}/lay-review", headers=world.login("clin"),
                          json={"recommendation": "support", "comments": "x"})
    assert r.status_code in (403, 404)
    _, secret = gov.create_token(reviewers[0], "t")
    r = world.client.post(f"/api/v1/projects/{pid}/lay-review", headers={"Authorization": f"Bearer {secret}"},
                          json={"recommendation": "support", "comments": "Please share the results with patients.",
                                "public": True})
    assert r.status_code == 200, r.text
    gov.lay_review(reviewers[1], pid, "do_not_support", "Private worry.", public=False)
    gov.decide(people["lead"], pid, "approve")
    gov.decide(people["govo"], pid, "approve")
    page = world.client.get(f"/api/v1/public/projects/{pid}").json()
    assert page["lay_reviews"] == [{"recommendation": "Supports the project", "date": date.today().isoformat(),
                                    "comments": "Please share the results with patients."}]
    html = world.client.get(f"/register/projects/{pid}").text
    assert "Please share the results" in html and "Private worry" not in html and "Zq Lay" not in html


def test_register_search_and_filters(world, register):
    c = world.client
    assert [p["title"] for p in c.get("/api/v1/public/projects?q=OLD").json()["projects"]] == ["Old study"]
    assert {p["title"] for p in c.get("/api/v1/public/projects?status=expired").json()["projects"]} == {"Old study"}
    assert c.get("/api/v1/public/projects?pillar=chronic").json()["total"] == 0
    year = str(date.today().year)
    assert c.get(f"/api/v1/public/projects?year={year}").json()["total"] == 3
    assert c.get(f"/api/v1/public/projects?year={int(year) - 1}").json()["total"] == 0
    assert c.get("/api/v1/public/projects?q=%25").json()["total"] == 0  # searched for, not a wildcard
    assert c.get("/api/v1/public/projects?q=_").json()["total"] == 0
    assert c.get("/api/v1/public/projects?pillar=nowhere").status_code == 400
    assert c.get("/api/v1/public/projects?status=draft").status_code == 400
    html = c.get("/register?q=gi+bleed").text
    assert "GI bleed outcomes" in html and "Old study" not in html and "1 project found" in html


def test_feeds_validate_and_carry_approvals_and_releases(world, register):
    release(world, register["export"])
    c = world.client
    r = c.get("/register/feed.json")
    assert r.headers["content-type"].startswith("application/feed+json")
    feed = r.json()
    jsonschema.validate(feed, JSON_FEED_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert {i["tags"][0] for i in feed["items"]} == {"approval", "release"}
    assert len(feed["items"]) == 4  # three approvals, one release
    r = c.get("/register/feed.atom")
    assert r.headers["content-type"].startswith("application/atom+xml")
    atom = feedparser.parse(r.content)
    assert not atom.bozo, atom.get("bozo_exception")
    assert atom.version == "atom10"
    assert [e.title for e in atom.entries] == [i["title"] for i in feed["items"]]
    assert all(e.id and e.link and e.published_parsed for e in atom.entries)


def test_public_api_is_rate_limited_per_client_address(world):
    api = next(route.app for route in world.client.app.routes if getattr(route, "path", "") == "/api/v1")
    api.state.public_rate_limit = PublicRateLimit(per_minute=3)
    c = world.client
    assert [c.get("/api/v1/public/projects").status_code for _ in range(3)] == [200, 200, 200]
    refused = c.get("/api/v1/public/releases")
    assert refused.status_code == 429 and "at most 3 a minute" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60   # when the oldest of the three leaves the window
    api.state.public_rate_limit.check("198.51.100.7")  # another address has its own budget


def test_public_operations_are_in_the_openapi_document(world):
    paths = world.client.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/public/projects", "/public/projects/{project_id}", "/public/releases"):
        operation = paths[path]["get"]
        assert operation["tags"] == ["public register"] and "security" not in operation
