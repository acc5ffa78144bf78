"""Concept sets the way ATLAS users expect (issue 16, point 4): names, domain, vocabulary, standard flag,
descendants expanded with record counts (disclosure-controlled), exclusions, ATLAS JSON in and out,
and search that finds what clinicians type; pages and API, with their refusals."""

from __future__ import annotations

import re

import orjson

from mercia.privacy.disclosure import get_policy
from mercia.vocab.usage import EVENT_CONCEPTS, record_counts
from tests.web.test_pages import sign_in

CANCER, BREAST, LUNG, PROSTATE, COLON = 443392, 4112853, 443388, 4163261, 4180790


def rows_of(html: str, caption: str) -> list[list[str]]:
    table = html.split(f'<caption class="table__caption">{caption}</caption>', 1)[1].split("</table>", 1)[0]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S) if "<td" in tr]


def make_set(client, csrf: str, **fields: str):
    return client.post("/projects/1/concept-sets", data={"csrf_token": csrf, **fields}, follow_redirects=False)


def test_a_concept_set_lists_its_concepts_expanded_with_controlled_counts(client, demo):
    csrf = sign_in(client, demo, "researcher")
    r = make_set(client, csrf, name="Cancers but not lung", include=str(CANCER), exclude=str(LUNG), descendants="on")
    assert r.status_code == 303, r.text
    set_id = int(r.headers["location"].split("?")[0].rsplit("/", 1)[1])
    page = client.get(f"/concept-sets/{set_id}").text
    assert "<h1>Cancers but not lung</h1>" in page
    assert rows_of(page, "Concepts listed in the set") == [
        [str(CANCER), "Malignant neoplastic disease", "Condition", "SNOMED", "363346000", "Standard", "No", "Yes", "No"],
        [str(LUNG), "Malignant tumor of lung", "Condition", "SNOMED", "363358000", "Standard", "Yes", "Yes", "No"]]
    expanded = rows_of(page, "Concepts the set stands for")
    assert {int(r[0]) for r in expanded} == {CANCER, BREAST, PROSTATE, COLON}  # descendants in, lung out
    state, policy = client.app.state.mercia, get_policy()
    project = state.gov.project(1)
    with state.lock:
        true = record_counts(state.store, [BREAST, PROSTATE, COLON, CANCER],
                             [t for t in EVENT_CONCEPTS if t in project.scope_domains])
    for concept_id, _, _, _, _, included_as, records, persons in expanded:
        records_true, persons_true = true.get(int(concept_id), (0, 0))
        for shown, value in ((records, records_true), (persons, persons_true)):
            assert shown == (policy.redacted_marker if policy.is_small(value) else f"{policy.publish_count(value):,}")
        assert included_as == ("listed" if int(concept_id) == CANCER else "descendant")
    assert any(r[6] not in ("0", policy.redacted_marker) for r in expanded)  # some are really recorded

    api = client.get(f"/api/v1/concept-sets/{set_id}/concepts").json()
    assert {(c["concept_id"], c["count_persons"]) for c in api["concepts"]} == {
        (int(r[0]), None if r[7] == policy.redacted_marker else int(r[7].replace(",", ""))) for r in expanded}
    assert api["disclosure"] == policy.name and "condition_occurrence" in api["counted_in"]
    assert state.gov.audit.search(action="conceptset.view", actor="researcher")


def test_atlas_json_round_trip_and_a_bad_import_keeps_the_form(client, demo):
    csrf = sign_in(client, demo, "researcher")
    r = make_set(client, csrf, name="Breast cancer", include=str(BREAST))
    set_id = int(r.headers["location"].split("?")[0].rsplit("/", 1)[1])
    exported = client.get(f"/concept-sets/{set_id}/atlas.json")
    assert exported.headers["content-disposition"].startswith("attachment")
    items = orjson.loads(exported.content)["items"]
    assert items == [{"concept": {
        "CONCEPT_ID": BREAST, "CONCEPT_NAME": "Malignant tumor of breast", "STANDARD_CONCEPT": "S",
        "STANDARD_CONCEPT_CAPTION": "Standard", "INVALID_REASON": "V", "INVALID_REASON_CAPTION": "Valid",
        "CONCEPT_CODE": "254837009", "DOMAIN_ID": "Condition", "VOCABULARY_ID": "SNOMED",
        "CONCEPT_CLASS_ID": "Clinical Finding"}, "isExcluded": False, "includeDescendants": False, "includeMapped": False}]
    assert client.get(f"/api/v1/concept-sets/{set_id}").json()["expression"]["items"] == items

    # ATLAS's own export (a whole concept set, only ids given) comes in with its names filled from the vocabulary.
    atlas = {"id": 12, "name": "From ATLAS", "expression": {"items": [
        {"concept": {"CONCEPT_ID": CANCER}, "isExcluded": False, "includeDescendants": True, "includeMapped": False},
        {"concept": {"CONCEPT_ID": COLON}, "isExcluded": True, "includeDescendants": False, "includeMapped": False}]}}
    r = make_set(client, csrf, name="Imported", atlas_json=orjson.dumps(atlas).decode())
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"]).text
    assert "Malignant tumor of colon" in page
    assert {int(r[0]) for r in rows_of(page, "Concepts the set stands for")} == {CANCER, BREAST, LUNG, PROSTATE}

    bad = {"items": [{"concept": {"CONCEPT_ID": BREAST}}, {"concept": {"CONCEPT_ID": 999999999}}]}
    r = make_set(client, csrf, name="Kept name", include="", atlas_json=orjson.dumps(bad).decode())
    assert r.status_code == 400 and "<title>Error:" in r.text
    assert "item 2 (concept.CONCEPT_ID 999999999) is not in this store" in r.text and 'href="#atlas_json"' in r.text
    assert 'value="Kept name"' in r.text and "999999999}}]}</textarea>" in r.text.replace("&#34;", '"')
    r = make_set(client, csrf, name="", include="12x", exclude="y")
    assert r.status_code == 400 and 'href="#name"' in r.text and 'href="#include"' in r.text
    assert 'href="#exclude"' in r.text and "Concept ids to exclude: a value is not a concept id" in r.text


def test_concept_sets_refuse_strangers_and_forged_forms(client, demo):
    csrf = sign_in(client, demo, "researcher")
    set_id = int(make_set(client, csrf, name="Mine", include=str(BREAST)).headers["location"]
                 .split("?")[0].rsplit("/", 1)[1])
    assert client.post("/projects/1/concept-sets", data={"name": "x", "include": str(BREAST)}).status_code == 403
    client.cookies.clear()
    assert client.get(f"/concept-sets/{set_id}", follow_redirects=False).status_code == 303  # to sign in
    assert client.get(f"/api/v1/concept-sets/{set_id}/concepts").status_code == 401
    sign_in(client, demo, "checker")  # not a member of the project
    assert client.get(f"/concept-sets/{set_id}").status_code == 404
    assert client.get(f"/concept-sets/{set_id}/atlas.json").status_code == 404
    assert client.get(f"/api/v1/concept-sets/{set_id}").status_code == 404
    assert client.get("/projects/1/concept-sets").status_code in (403, 404)


def test_search_finds_what_clinicians_type(client, demo):
    sign_in(client, demo, "researcher")
    for typed, concept in (("HbA1c", 3004410), ("stroke", 381316), ("cancer", BREAST), ("heart attack", 4329847)):
        page = client.get("/concepts", params={"q": typed}).text
        assert f"<td class=\"numeric\">{concept}</td>" in page, typed


def test_the_builder_uses_a_saved_concept_set_with_its_exclusions(client, demo):
    csrf = sign_in(client, demo, "researcher")
    r = make_set(client, csrf, name="Cancers, not colon", include=str(CANCER), exclude=str(COLON), descendants="on")
    set_id = int(r.headers["location"].split("?")[0].rsplit("/", 1)[1])
    builder = client.get("/projects/1/cohorts/new").text
    assert f'<option value="{set_id}">Cancers, not colon</option>' in builder
    form = {"csrf_token": csrf, "name": "First cancer", "entry_domain": "condition", "entry_concept_set": str(set_id),
            "entry_first": "on", "exit": "end_of_observation"}
    r = client.post("/projects/1/cohorts/new", data=form | {"action": "save"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    cohort_id = int(r.headers["location"].split("?")[0].rsplit("/", 1)[1])
    circe = client.get(f"/cohorts/{cohort_id}/circe.json").json()
    saved = client.get(f"/api/v1/concept-sets/{set_id}").json()["expression"]["items"]
    assert circe["ConceptSets"][0]["name"] == "Cancers, not colon"
    assert [(i["concept"]["CONCEPT_ID"], i["isExcluded"], i["includeDescendants"])
            for i in circe["ConceptSets"][0]["expression"]["items"]] == \
        [(i["concept"]["CONCEPT_ID"], i["isExcluded"], i["includeDescendants"]) for i in saved] == \
        [(CANCER, False, True), (COLON, True, True)]
    r = client.post("/projects/1/cohorts/new", data=form | {"action": "preview", "entry_concept_set": "987654"})
    assert r.status_code == 400 and "Entry event concept set: choose one of this project&#39;s concept sets" in r.text
    r = client.post("/projects/1/cohorts/new", data=form | {"action": "preview", "entry_concepts": "201826"})
    assert r.status_code == 400 and "or choose a saved concept set, not both" in r.text
