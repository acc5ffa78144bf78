"""Clinical histories: prevalences, lab values and prescribing follow the stated targets."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from mercia.synth import catalogue as cat
from mercia.synth.clinical import CONDITION_MODELS, ChunkBuilder
from mercia.synth.population import REFERENCE_DATE, geography, nhs_numbers
from mercia.synth.rare import panel

N = 60_000


@pytest.fixture(scope="module")
def built():
    builder = ChunkBuilder(5, 0, 0, N, nhs_numbers(N, 5), 8, 2, geography())
    chunk = builder.build()
    return builder, chunk


@pytest.mark.parametrize("model", CONDITION_MODELS, ids=lambda m: m.key)
def test_prevalence_on_the_reference_date_matches_qof_target(built, model):
    builder, chunk = built
    p = chunk.people
    alive = p.obs_end == REFERENCE_DATE
    eligible = alive & (p.age_years(REFERENCE_DATE) >= model.min_age)
    observed = builder.has[model.key][eligible].mean()
    se = np.sqrt(model.target * (1 - model.target) / eligible.sum())
    # Within 4 standard errors or 10% of the target, whichever is wider.
    assert abs(observed - model.target) <= max(4 * se, 0.10 * model.target), (observed, model.target)


def test_conditions_follow_age_sex_and_ethnicity(built):
    builder, chunk = built
    p = chunk.people
    age = p.age_years(p.obs_end)
    htn = builder.has["hypertension"]
    assert htn[age >= 65].mean() > 3 * htn[(age >= 18) & (age < 45)].mean()
    assert not builder.has["prostate_cancer"][p.female].any()
    assert not builder.has["breast_cancer"][~p.female].any()
    dm = builder.has["t2dm"]
    south_asian, white = p.group == 2, p.group == 0
    adults = age >= 40
    assert dm[south_asian & adults].mean() > 1.8 * dm[white & adults].mean()
    assert builder.has["dementia"][age < 65].sum() == 0


def _is(column, value):
    return pc.equal(column, value).to_numpy(zero_copy_only=False)


def _values(chunk, key):
    m = chunk.measurements.get()
    rows = _is(m["key"], key)
    return m["person"][rows], m["date"][rows], m["value"][rows]


def test_lab_values_depend_on_disease_state(built):
    builder, chunk = built
    person, days, hba1c = _values(chunk, "hba1c")
    diabetic = builder.has["t2dm"][person] & (builder.rec["t2dm"][person] <= days)
    assert 54 < hba1c[diabetic].mean() < 62 and hba1c[diabetic].min() >= 40
    assert 35 < hba1c[~diabetic].mean() < 39 and hba1c[~diabetic].max() <= 47
    person, days, egfr = _values(chunk, "egfr")
    ckd = builder.has["ckd"][person] & (builder.rec["ckd"][person] <= days)
    assert egfr[ckd].max() < 60 and egfr[~ckd].min() >= 60
    _, _, creat = _values(chunk, "creatinine")
    assert np.corrcoef(egfr, creat)[0, 1] < -0.5          # creatinine rises as eGFR falls
    person, days, chol = _values(chunk, "cholesterol")
    statin = (builder.has["t2dm"] | builder.has["chd"])[person]
    assert chol[statin].mean() < chol[~statin].mean() - 0.5
    _, _, hb = _values(chunk, "haemoglobin")
    assert 125 < hb.mean() < 150


def test_prescribing_follows_guidelines(built):
    builder, chunk = built
    d = chunk.drugs.get()
    metformin_people = np.unique(d["person"][_is(d["key"], "metformin")])
    assert builder.has["t2dm"][metformin_people].all()
    treated = len(metformin_people) / builder.has["t2dm"].sum()
    assert 0.8 < treated < 0.95
    levo = np.unique(d["person"][_is(d["key"], "levothyroxine")])
    assert builder.has["hypothyroidism"][levo].all()
    assert (d["days_supply"][_is(d["key"], "metformin")] == 84).all()


def test_every_event_lies_in_the_persons_lifetime(built):
    _, chunk = built
    p = chunk.people
    for cols in (chunk.conditions.get(), chunk.drugs.get(), chunk.measurements.get()):
        assert (cols["date"] >= p.birth[cols["person"]]).all()
    v = chunk.visits.get()
    assert (v["end"] >= v["start"]).all()
    dead = p.death[v["person"]] >= 0
    assert (v["start"][dead] <= p.death[v["person"]][dead]).all()


def test_rare_diseases_affect_one_in_17_half_of_them_children(built):
    _, chunk = built
    p, rare = chunk.people, chunk.rare
    share = len(rare.patient) / len(p)
    assert abs(share - 1 / 17) < 0.005
    child = p.age_years(p.obs_end)[rare.patient] < 18
    assert abs(child.mean() - 0.5) < 0.03


def test_rare_phenotypes_follow_hpo_frequencies(built):
    _, chunk = built
    rare, pnl = chunk.rare, panel()
    present = ~rare.feature_excluded
    ann = rare.feature_ann[present]
    cases_per_disease = np.bincount(rare.disease, minlength=len(pnl.disease_ids))
    disease_of_ann = np.searchsorted(pnl.ann_start, np.arange(len(pnl.ann_hpo)), side="right") - 1
    expected = cases_per_disease[disease_of_ann] * np.where(pnl.ann_not, 0, pnl.ann_freq)
    observed = np.bincount(ann, minlength=len(pnl.ann_hpo))
    common = expected > 200
    assert common.sum() > 10
    assert np.abs(observed[common] / expected[common] - 1).max() < 0.2
    assert observed[pnl.ann_not].sum() == 0                     # NOT-annotated features never present
    assert rare.solved.any() and (pnl.gene[rare.disease[rare.solved]] != "").all()


def test_catalogue_concepts_are_unique_and_coded():
    ids = [c.concept_id for c in cat.ALL.values() if c.concept_id]
    assert len(ids) == len(set(ids))
    assert all(c.icd10 for c in cat.CONDITIONS.values())
    assert all(c.code for c in cat.ALL.values())
