"""Issue 15, point 6: PROMs from the region's CSV and from FHIR QuestionnaireResponse reach OMOP as item
observations linked to their EQ-5D index (value set id and DOI), in the load's transaction."""

from __future__ import annotations

import csv

import orjson
import pyarrow as pa
import pytest

from mercia import synth
from mercia.ingest.region import PROMS_ORG
from mercia.proms.scoring import score_eq5d
from mercia.proms.valuesets import value_set

ENGLAND_DOI = "10.1002/hec.3564"
ITEMS = ("MO", "SC", "UA", "PD", "AD", "VAS")
CSV_COLUMNS = {"MO": "eq5d_mobility", "SC": "eq5d_selfcare", "UA": "eq5d_usual_activities",
               "PD": "eq5d_pain_discomfort", "AD": "eq5d_anxiety_depression", "VAS": "eq_vas"}


@pytest.fixture(autouse=True)
def eq5d_tables(shared_data, monkeypatch):
    monkeypatch.setenv("MERCIA_EQ5D_DIR", str(shared_data / "proms" / "eq5d"))
    value_set.cache_clear()
    yield
    value_set.cache_clear()


@pytest.fixture(scope="module")
def region_proms(tmp_path_factory):
    out = tmp_path_factory.mktemp("region-proms")
    synth.generate_region(out, persons=400, seed=11, error_rate=0.0)
    return out / "proms"


def _scores(store) -> dict[int, dict]:
    return {r["observation_id"]: r for r in store.query_dicts(
        "SELECT observation_id, person_id, value_as_number, value_as_string, qualifier_source_value, observation_date "
        "FROM observation WHERE observation_source_value = 'eq5d5l index'")}


def _items(store) -> list[dict]:
    return store.query_dicts("SELECT observation_id, person_id, observation_source_value, value_as_number, "
                             "observation_event_id, obs_event_field_concept_id, observation_date FROM observation "
                             "WHERE observation_source_value LIKE 'eq5d5l:%'")


def _assert_linked(store) -> dict[int, dict]:
    """Every linked item answer points at an index of the same person and day; each index has all six items."""
    scores, items = _scores(store), [i for i in _items(store) if i["observation_event_id"] is not None]
    for item in items:
        score = scores[item["observation_event_id"]]
        assert item["obs_event_field_concept_id"] == 0
        assert (item["person_id"], item["observation_date"]) == (score["person_id"], score["observation_date"])
    per_score = {}
    for item in items:
        per_score.setdefault(item["observation_event_id"], set()).add(item["observation_source_value"])
    assert per_score == {s: {f"eq5d5l:{i}" for i in ITEMS} for s in scores}
    return scores


def test_region_proms_csv_items_and_index_reach_omop_linked(store, load, region_proms, snapshot):
    rows = [r for r in csv.DictReader((region_proms / "proms.csv").open()) if r["questionnaire"] == "EQ-5D-5L"]
    assert rows, "the synthetic region has EQ-5D-5L returns"
    expected = score_eq5d(pa.table({"id": [r["record_id"] for r in rows],
                                    **{d: [r[CSV_COLUMNS[d]] for r in rows] for d in ITEMS[:5]}}), "england_2018")
    summary = load(store, "csv", region_proms, PROMS_ORG, mapping="proms", allow_synthetic_nhs_numbers=True)
    assert summary.rejected == 0
    scores = _assert_linked(store)
    assert len(scores) == len(rows) and len(_items(store)) == 6 * len(rows)
    assert sorted(s["value_as_number"] for s in scores.values()) == sorted(expected.table.column("index").to_pylist())
    assert {(s["qualifier_source_value"], s["value_as_string"]) for s in scores.values()} == {("england_2018", ENGLAND_DOI)}
    oks = store.query("SELECT count(*) FROM observation WHERE observation_source_value = 'oks total'")[0][0]
    assert oks == sum(1 for r in csv.DictReader((region_proms / "proms.csv").open()) if r["questionnaire"] == "OKS")
    before = snapshot(store)
    again = load(store, "csv", region_proms, PROMS_ORG, mapping="proms", allow_synthetic_nhs_numbers=True)
    assert again.rows["observation"] == 0 and snapshot(store) == before   # a resend changes nothing


def _write_proms_csv(directory, rows):
    header = ["record_id", "nhs_number", "date_of_birth", "sex", "postcode", "provider_code", "procedure_opcs4",
              "questionnaire", "timepoint", "completed_date", *CSV_COLUMNS.values(), "oks_score"]
    directory.mkdir(exist_ok=True)
    with (directory / "proms.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for rid, answers in rows:
            writer.writerow([rid, "", "1960-03-04", "F", "", "R9A", "W37.1", "EQ-5D-5L", "pre", "2024-01-02",
                             *answers, ""])


def test_an_invalid_answer_gives_no_index_and_a_reject_naming_record_and_field(store, load, tmp_path):
    _write_proms_csv(tmp_path / "proms", [("P1", [1, 2, 3, 4, 5, 70]), ("P2", [7, 1, 1, 1, 1, 60]),
                                          ("P3", [1, "", 1, 1, 1, 50])])
    summary = load(store, "csv", tmp_path / "proms", PROMS_ORG, mapping="proms")
    scores = _assert_linked(store)
    assert [s["value_as_number"] for s in scores.values()] == [
        score_eq5d(pa.table({"id": ["P1"], "MO": [1], "SC": [2], "UA": [3], "PD": [4], "AD": [5]}),
                   "england_2018").table.column("index")[0].as_py()]
    rejects = store.query("SELECT source_record, field, reason FROM mercia_reject WHERE org = ? ORDER BY field",
                          [PROMS_ORG])
    assert [(f, why) for _, f, why in rejects] == [
        ("eq5d5l:MO", "eq5d5l index not computed: must be a level from 1 to 5 (value '7')"),
        ("eq5d5l:SC", "eq5d5l index not computed: missing answer")]
    assert all(r[0].startswith("proms.csv/") and "P2" not in r[0] for r in rejects)   # pseudonymised record key
    assert len({r[0] for r in rejects}) == 2 and summary.rejected == 2
    # the answers given still stand as observations, unlinked: there is no index to link them to
    unlinked = store.query("SELECT count(*) FROM observation WHERE observation_source_value LIKE 'eq5d5l:%' "
                           "AND observation_event_id IS NULL")[0][0]
    assert unlinked == 6 + 5


def _questionnaire_response(rid: str, answers: dict[str, int], authored: str) -> dict:
    """A UK-style EQ-5D-5L return: coded levels for the five dimensions, an integer EQ VAS."""
    system = "https://example.nhs.uk/CodeSystem/eq-5d-5l-level"
    links = {"MO": "mobility", "SC": "self-care", "UA": "usual-activities", "PD": "pain-discomfort",
             "AD": "anxiety-depression"}
    items = [{"linkId": links[d], "answer": [{"valueCoding": {"system": system, "code": str(answers[d])}}]}
             for d in links]
    items.append({"linkId": "eq-vas", "answer": [{"valueInteger": answers["VAS"]}]})
    return {"resourceType": "QuestionnaireResponse", "id": rid, "status": "completed",
            "questionnaire": "https://digital.nhs.uk/fhir/Questionnaire/eq-5d-5l", "subject": {"reference": "Patient/p1"},
            "authored": authored, "item": [{"linkId": "eq5d", "item": items}]}


def _fhir_extract(path, *responses):
    path.mkdir(exist_ok=True)
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1958-02-03"}
    (path / "extract.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in (patient, *responses)))


def _snomed_concepts(store) -> dict[str, int]:
    """Test concept ids for the two SNOMED CT observables Mercia codes (the ids are this test's own)."""
    store.init_schema()
    concepts = {"736534008": 91_000_001, "736535009": 91_000_002}
    for code, concept_id in concepts.items():
        store.execute("INSERT INTO concept VALUES (?, ?, 'Observation', 'SNOMED', 'Observable Entity', 'S', ?, "
                      "DATE '1970-01-01', DATE '2099-12-31', NULL)", [concept_id, f"EuroQol {code}", code])
    return concepts


def test_fhir_questionnaire_response_items_and_index_reach_omop_linked(store, load, tmp_path, snapshot):
    concepts = _snomed_concepts(store)
    answers = {"MO": 2, "SC": 1, "UA": 3, "PD": 2, "AD": 1, "VAS": 75}
    _fhir_extract(tmp_path / "qr", _questionnaire_response("qr1", answers, "2024-05-01T10:00:00Z"),
                  _questionnaire_response("qr2", {**answers, "PD": 0}, "2024-06-01T10:00:00Z"))
    summary = load(store, "fhir", tmp_path / "qr", "RX1")
    scores = _assert_linked(store)
    expected = score_eq5d(pa.table({d: [answers[d]] for d in ITEMS[:5]}), "england_2018").table.column("index")
    assert [(s["value_as_number"], s["qualifier_source_value"], s["value_as_string"], str(s["observation_date"]))
            for s in scores.values()] == [(expected[0].as_py(), "england_2018", ENGLAND_DOI, "2024-05-01")]
    items = {i["observation_source_value"]: i["value_as_number"] for i in _items(store) if i["observation_event_id"]}
    assert items["eq5d5l:VAS"] == 75
    coded = store.query("SELECT observation_source_value, observation_concept_id FROM observation "
                        "WHERE observation_concept_id <> 0 ORDER BY 1, 2")
    assert coded == [("eq5d5l index", concepts["736534008"])] + [("eq5d5l:VAS", concepts["736535009"])] * 2
    rejects = store.query("SELECT field, reason FROM mercia_reject WHERE org = 'RX1'")
    assert rejects == [("eq5d5l:PD", "eq5d5l index not computed: must be a level from 1 to 5 (value '0')")]
    assert summary.rejected == 1
    before = snapshot(store)
    load(store, "fhir", tmp_path / "qr", "RX1")
    assert snapshot(store) == before                                 # resend: nothing new


def test_a_corrected_fhir_resend_replaces_items_and_index(store, load, tmp_path):
    answers = {"MO": 2, "SC": 1, "UA": 3, "PD": 2, "AD": 1, "VAS": 75}
    _fhir_extract(tmp_path / "qr", _questionnaire_response("qr1", answers, "2024-05-01T10:00:00Z"))
    load(store, "fhir", tmp_path / "qr", "RX1")
    _fhir_extract(tmp_path / "qr", _questionnaire_response("qr1", {**answers, "MO": 5}, "2024-05-01T10:00:00Z"))
    load(store, "fhir", tmp_path / "qr", "RX1")
    scores = _assert_linked(store)
    expected = score_eq5d(pa.table({d: [{**answers, "MO": 5}[d]] for d in ITEMS[:5]}), "england_2018")
    assert [s["value_as_number"] for s in scores.values()] == expected.table.column("index").to_pylist()
