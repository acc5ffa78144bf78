"""Diagnosis ranking: known answers, excluded terms, explanations, errors and batch behaviour."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from mercia.raredisease.ontology import ObsoleteTermWarning, UnknownTermError
from mercia.raredisease.ranker import Case, ModelParameters, Ranker, _values_at, rank_of

MARFAN = Case([
    "HP:0001166",  # Arachnodactyly
    "HP:0001083",  # Ectopia lentis
    "HP:0002616",  # Aortic root aneurysm
    "HP:0000098",  # Tall stature
    "HP:0000767",  # Pectus excavatum
    "HP:0001634",  # Mitral valve prolapse
    "HP:0100775",  # Dural ectasia
    "HP:0002650",  # Scoliosis
    "HP:0001065",  # Striae distensae
])


def _rank(ranker, case, disease):
    scores, _ = ranker.score_matrix([case])
    return rank_of(scores[0], ranker.disease_position[ranker.kb.disease_index[disease]])


def test_classic_marfan_ranks_marfan_syndrome_first(ranker):
    top = ranker.rank(MARFAN, top=5)
    assert top[0].disease_id == "OMIM:154700"
    assert top[0].label == "Marfan syndrome"
    assert "FBN1" in top[0].genes
    assert [c.rank for c in top] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(top, top[1:]))
    assert sum(c.posterior for c in top) <= 1 + 1e-9


def test_classic_neurofibromatosis_ranks_nf1_first(ranker):
    nf1 = Case(["HP:0007565", "HP:0009736", "HP:0001480", "HP:0009737"])  # cafe-au-lait, neurofibromas, freckling, Lisch
    assert ranker.rank(nf1, top=1)[0].disease_id == "OMIM:162200"


def test_excluding_an_obligate_feature_lowers_the_disease(ranker):
    """Miller-Dieker syndrome is annotated with intellectual disability as obligate (HP:0040280)."""
    observed = ["HP:0001339", "HP:0000252", "HP:0001250"]  # lissencephaly, microcephaly, seizure
    intellectual_disability = ranker.kb.ontology.index["HP:0001249"]
    without, _ = ranker.score_matrix([Case(observed)])
    with_excluded, _ = ranker.score_matrix([Case(observed, ["HP:0001249"])])
    resolved = [ranker.resolve_case(Case(observed, ["HP:0001249"]))]
    change = with_excluded[0] - without[0]
    mds = ranker.disease_position[ranker.kb.disease_index["OMIM:247200"]]
    lacking = np.flatnonzero(ranker.implied[intellectual_disability].toarray().ravel() == 0)
    assert change[mds] < change[lacking].min() - 1.0  # at least e-fold below every disease without the feature
    evidence = [e for e in ranker.explain(resolved[0], mds) if e.status == "excluded"][0]
    assert evidence.match == "disease-feature" and evidence.lr < 0.5


def test_without_ascertainment_any_annotated_excluded_feature_lowers_the_disease(kb):
    plain = Ranker(kb, replace(ModelParameters(), excluded_ascertainment=1.0))
    case = Case(["HP:0001166"], ["HP:0001083"])  # arachnodactyly, no ectopia lentis
    resolved = [plain.resolve_case(case)]
    marfan = plain.disease_position[kb.disease_index["OMIM:154700"]]
    excluded = [e for e in plain.explain(resolved[0], marfan) if e.status == "excluded"][0]
    assert excluded.match == "disease-feature" and excluded.lr < 1


def test_explanation_multiplies_to_the_score(ranker):
    case = replace(MARFAN, excluded=["HP:0001250", "HP:0001249"])
    for candidate in ranker.rank(case, top=3):
        total = sum(math.log10(e.lr) for e in candidate.evidence)
        assert total == pytest.approx(candidate.score, abs=1e-6)
        statuses = {e.status for e in candidate.evidence}
        assert {"observed", "excluded"} <= statuses


def test_explanation_kinds_of_match(ranker):
    case = Case(["HP:0001083", "HP:0001302"])  # ectopia lentis; pachygyria (not a Marfan feature)
    resolved = [ranker.resolve_case(case)]
    evidence = ranker.explain(resolved[0], ranker.disease_position[ranker.kb.disease_index["OMIM:154700"]])
    by_term = {e.term: e for e in evidence}
    assert by_term["HP:0001083"].match == "exact" and by_term["HP:0001083"].lr > 10
    assert by_term["HP:0001302"].match == "unexplained"
    assert by_term["HP:0001302"].lr == pytest.approx(ranker.params.floor)


def test_more_specific_patient_term_still_matches(ranker):
    # "Bilateral ectopia lentis" is below "Ectopia lentis", which Marfan syndrome is annotated with
    specific = Case(["HP:0001166", "HP:0007676"])
    resolved = [ranker.resolve_case(specific)]
    marfan = ranker.disease_position[ranker.kb.disease_index["OMIM:154700"]]
    lens = [e for e in ranker.explain(resolved[0], marfan) if e.term == "HP:0007676"][0]
    assert lens.match in ("more-specific", "exact")
    assert lens.lr > 1


def test_unknown_id_is_an_error_and_obsolete_id_is_mapped(ranker):
    with pytest.raises(UnknownTermError, match="HP:9999999"):
        ranker.rank(Case(["HP:0001166", "HP:9999999"]))
    with pytest.warns(ObsoleteTermWarning):
        top = ranker.rank(Case(["HP:0001275"]), top=1)  # alt id of Seizure
    assert top
    lenient, _ = ranker.score_matrix([Case(["HP:0001166", "HP:9999999"])], strict=False)
    strict_only, _ = ranker.score_matrix([Case(["HP:0001166"])])
    assert np.allclose(lenient, strict_only)


def test_batch_equals_single_cases(ranker):
    cases = [MARFAN, Case(["HP:0001250", "HP:0001263"], ["HP:0000252"]), Case(["HP:0000365"])]
    batch, _ = ranker.score_matrix(cases)
    for i, case in enumerate(cases):
        single, _ = ranker.score_matrix([case])
        assert np.allclose(batch[i], single[0])


def test_redundant_ancestor_terms_do_not_double_count(ranker):
    plain, _ = ranker.score_matrix([Case(["HP:0007359"])])
    with_parent, _ = ranker.score_matrix([Case(["HP:0007359", "HP:0001250"])])
    assert np.allclose(plain, with_parent)


def test_genes_restrict_the_diseases(ranker):
    top = ranker.rank(replace(MARFAN, genes=["TGFBR2"]), top=3)
    assert top and all("TGFBR2" in c.genes for c in top)


def test_orphanet_can_be_ranked_too(kb):
    both = Ranker(kb, replace(ModelParameters(), sources=("OMIM", "ORPHA")))
    ids = [c.disease_id for c in both.rank(MARFAN, top=10, explain=False)]
    assert any(i.startswith("ORPHA:") for i in ids)
    assert "OMIM:154700" in ids


def test_a_case_without_usable_terms_gets_no_ranking(ranker):
    assert ranker.rank_many([Case(["HP:9999999"]), MARFAN], top=3, strict=False)[0] == []


def test_batch_resolution_matches_single_case_resolution(ranker):
    cases = [Case(["HP:0001250", "HP:0007359", "HP:0001250"], ["HP:0012638", "HP:0000252"]),
             Case(["HP:0001275"], ["HP:0001250"])]  # alt id of Seizure, excluded Seizure contradicts it
    observed, excluded = ranker.selectors(cases, strict=False)
    for i, case in enumerate(cases):
        single = ranker.resolve_case(case, strict=False)
        assert sorted(single[0]) == observed[i].indices.tolist()
        assert sorted(single[1]) == excluded[i].indices.tolist()


def test_a_negated_annotation_contradicts_the_observed_term(ranker):
    """MASS syndrome (OMIM:604308) is annotated NOT to have ectopia lentis, which tells it apart from Marfan."""
    case = Case(["HP:0001166", "HP:0001083"])
    mass = ranker.disease_position[ranker.kb.disease_index["OMIM:604308"]]
    lens = [e for e in ranker.explain(ranker.resolve_case(case), mass) if e.term == "HP:0001083"][0]
    assert lens.match == "contradicted" and lens.lr == pytest.approx(ranker.params.not_lr)
    with_lens, _ = ranker.score_matrix([case])
    without, _ = ranker.score_matrix([Case(["HP:0001166"])])
    marfan = ranker.disease_position[ranker.kb.disease_index["OMIM:154700"]]
    assert with_lens[0, mass] - without[0, mass] < with_lens[0, marfan] - without[0, marfan]


def test_term_rows_of_a_batch_equal_those_built_per_chunk_and_are_looked_up_exactly(ranker):
    """A batch's term rows are built a block of terms at a time; each term's row is its own (the same as in a
    small batch), and the binary-search lookup the explanations use equals scipy's indexing, absent entries 0."""
    cases = [Case(["HP:0001166", "HP:0001083", "HP:0002616"], ["HP:0001250"]), Case(["HP:0001250", "HP:0000252"]),
             Case(["HP:0000098"], ["HP:0001083"])]
    observed, excluded = ranker.selectors(cases, strict=False)
    batch = ranker.term_rows(observed, excluded)
    for i in range(len(cases)):
        alone = ranker.term_rows(observed[i:i + 1], excluded[i:i + 1])
        rows = np.searchsorted(batch.observed_terms, alone.observed_terms)
        assert (batch.observed[rows] != alone.observed).nnz == 0
    rng = np.random.default_rng(3)
    rows = rng.integers(0, batch.observed.shape[0], 500)
    columns = rng.integers(0, batch.observed.shape[1], 500)
    columns[:50] = batch.observed.indices[batch.observed.indptr[rows[:50]]]  # some certainly stored
    expected = np.asarray(batch.observed[rows, columns]).ravel()
    found = _values_at(batch.observed, batch.observed_keys, rows, columns)
    assert np.array_equal(found, expected) and (found[:50] != 0).all() and (found == 0).any()
