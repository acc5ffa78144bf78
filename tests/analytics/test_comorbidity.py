"""Charlson and Elixhauser: published weights checked one by one, and hand-scored patients."""

from __future__ import annotations

from datetime import date

import pytest

from mercia.analytics import comorbidity as cm
from mercia.analytics.characterise import characterise

# Quan et al. 2011 (Am J Epidemiol 173:676), Table 3, as printed; AIDS/HIV is 4 (comorbidipy has 2).
QUAN_2011 = {"mi": 0, "chf": 2, "pvd": 0, "cevd": 0, "dementia": 2, "cpd": 1, "rheumd": 1, "pud": 0, "mld": 2,
             "diab": 0, "diabwc": 1, "hp": 2, "rend": 1, "canc": 2, "msld": 4, "metacanc": 6, "aids": 4}
# Charlson et al. 1987 (J Chronic Dis 40:373), Table 3.
CHARLSON_1987 = {"mi": 1, "chf": 1, "pvd": 1, "cevd": 1, "dementia": 1, "cpd": 1, "rheumd": 1, "pud": 1, "mld": 1,
                 "diab": 1, "diabwc": 2, "hp": 2, "rend": 2, "canc": 2, "msld": 3, "metacanc": 6, "aids": 6}
# van Walraven et al. 2009 (Med Care 47:626), Table 2 (hypertension and diabetes 0 either way).
VAN_WALRAVEN = {"chf": 7, "carit": 5, "valv": -1, "pcd": 4, "pvd": 2, "hypunc": 0, "hypc": 0, "para": 7, "ond": 6,
                "cpd": 3, "diabunc": 0, "diabc": 0, "hypothy": 0, "rf": 5, "ld": 11, "pud": 0, "aids": 0,
                "lymph": 9, "metacanc": 12, "solidtum": 4, "rheumd": 0, "coag": 3, "obes": -4, "wloss": 6,
                "fed": 5, "blane": -2, "dane": -2, "alcohol": 0, "drug": -7, "psycho": 0, "depre": -3}


def test_every_weight_matches_the_published_tables():
    assert {c.key: c.weights["quan2011"] for c in cm.CHARLSON} == QUAN_2011
    assert {c.key: c.weights["charlson"] for c in cm.CHARLSON} == CHARLSON_1987
    assert {c.key: c.weights["van_walraven"] for c in cm.ELIXHAUSER} == VAN_WALRAVEN
    assert len(cm.CHARLSON) == 17 and len(cm.ELIXHAUSER) == 31


def test_maximum_quan_2011_score_is_24_as_published():
    weights = {c.key: c.weights["quan2011"] for c in cm.CHARLSON}
    suppressed = {mild for mild, _ in cm.CHARLSON_HIERARCHY}
    assert sum(w for k, w in weights.items() if k not in suppressed) == 24


def test_code_ranges_expand_to_three_and_four_character_prefixes():
    assert cm.expand_codes("I42.5-I42.9, I43.x, D65-D68.x, F10") == (
        "I425", "I426", "I427", "I428", "I429", "I43", "D65", "D66", "D67", "D68", "F10")
    with pytest.raises(ValueError, match="bad ICD-10 code range"):
        cm.expand_codes("I42.5-J42.9")
    prefixes = {c.key: set(c.prefixes) for c in cm.CHARLSON}
    assert {"I21", "I22", "I252"} == prefixes["mi"]
    assert {"B20", "B21", "B22", "B24"} == prefixes["aids"]
    assert "C44" not in prefixes["canc"]  # skin cancer is excluded


PATIENTS = {
    # cohort id: (codes, Charlson 1987, Quan 2011, van Walraven)
    11: (["I21.0", "E11.2", "E11.9"], 1 + 2, 0 + 1, 0),  # MI; complicated diabetes hides uncomplicated
    12: (["B20", "C78.0", "C34.1", "K70.4", "K70.0"], 6 + 6 + 3, 4 + 6 + 4, 12 + 11),  # hierarchies
    13: (["F32.1", "E66.9", "I50.0"], 1, 2, -3 - 4 + 7),
    14: (["I50.9"], 0, 0, 0),  # recorded the day after index: not counted
    15: (["195662009"], 0, 0, 0),  # a SNOMED source value is not ICD-10
}


def test_hand_scored_patients(store, cdm):
    index = date(2020, 1, 1)
    for cohort_id, (codes, *_scores) in PATIENTS.items():
        pid = cohort_id
        cdm.person(pid)
        cdm.cohort(cohort_id, pid, index)
        when = date(2020, 1, 2) if cohort_id == 14 else date(2019, 5, 1)
        for code in codes:
            cdm.condition(pid, when, source=code)
    # ICD-10 through the source concept, with no source value: MI for Charlson.
    cdm.concept(45000001, "Acute myocardial infarction, unspecified", vocabulary="ICD10", code="I21.9")
    cdm.person(16)
    cdm.cohort(16, 16, index)
    cdm.condition(16, index, source_concept=45000001)
    cdm.flush()
    expected = {**{k: v[1:] for k, v in PATIENTS.items()}, 16: (1, 0, 0)}
    for cohort_id, (charlson, quan, vw) in expected.items():
        scores = {r["variable"]: r["mean"] for r in characterise(store, cohort_id, domains=[], raw=True)
                  .table("continuous").rows if "score" in r["variable"]}
        assert scores == {"Charlson score (Charlson 1987 weights)": charlson,
                          "Charlson score (Quan 2011 weights)": quan,
                          "Elixhauser score (van Walraven weights)": vw}, f"cohort {cohort_id}"


def test_category_prevalence_and_lookback(store, cdm):
    for pid in range(1, 11):
        cdm.person(pid)
        cdm.cohort(1, pid, date(2020, 1, 1))
        cdm.condition(pid, date(2019, 12, 1) if pid <= 9 else date(2015, 1, 1), source="I50.1")
    cdm.flush()
    rows = {(r["comorbidity_index"], r["category"]): r["count_persons"]
            for r in characterise(store, 1, domains=[], raw=True).table("comorbidity").rows}
    assert rows[("charlson", "Congestive heart failure")] == 10
    assert rows[("elixhauser", "Congestive heart failure")] == 10
    assert rows[("charlson", "Dementia")] == 0
    recent = {(r["comorbidity_index"], r["category"]): r["count_persons"]
              for r in characterise(store, 1, domains=[], comorbidity_lookback_days=365, raw=True)
              .table("comorbidity").rows}
    assert recent[("charlson", "Congestive heart failure")] == 9
