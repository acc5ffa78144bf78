"""Concept search: ranking, filters, synonyms, index freshness; and the 'mercia vocab' commands."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from mercia import vocab
from mercia.cdm import StoreError
from mercia.vocab.hpo import hpo_concept_id
from mercia.vocab.icd10 import icd10_concept_id
from tests.conftest import copy_store


def test_search_finds_type_2_diabetes(starter_store):
    hits = vocab.search(starter_store, "type 2 diabetes", limit=10)
    found = {(h["vocabulary_id"], h["concept_code"]) for h in hits}
    assert ("ICD10", "E11") in found
    assert ("HPO", "HP:0005978") in found  # Type II diabetes mellitus, through its synonyms


def test_search_ranks_exact_then_prefix_then_word_then_substring(starter_store):
    hits = vocab.search(starter_store, "seizure", vocabulary="HPO", limit=200)
    assert hits[0]["concept_code"] == "HP:0001250" and hits[0]["match"] == "exact"
    order = ["exact", "prefix", "word", "substring", "all words"]
    ranks = [order.index(h["match"]) for h in hits]
    assert ranks == sorted(ranks)
    assert {"prefix", "word"} <= {h["match"] for h in hits}


def test_standard_concepts_come_first_within_a_rank(starter_store):
    hits = vocab.search(starter_store, "diabetes", vocabulary="ICD10", limit=100)
    for rank in {h["match"] for h in hits}:
        flags = [h["standard_concept"] == "S" for h in hits if h["match"] == rank]
        assert flags == sorted(flags, reverse=True)
    assert any(h["standard_concept"] == "C" for h in hits)  # the chapters/blocks are there, after


def test_words_in_any_order(starter_store):
    hits = vocab.search(starter_store, "mellitus type 2", vocabulary="ICD10", limit=5)
    assert hits[0]["concept_code"] == "E11" and hits[0]["match"] == "all words"


def test_filters_and_invalid_concepts(starter_store):
    assert {h["vocabulary_id"] for h in vocab.search(starter_store, "fever", vocabulary="HPO", limit=50)} == {"HPO"}
    valid = vocab.search(starter_store, "type ii diabetes mellitus", vocabulary="HPO", limit=50)
    with_invalid = vocab.search(starter_store, "type ii diabetes mellitus", vocabulary="HPO", limit=50,
                                include_invalid=True)
    assert hpo_concept_id("HP:0005965") not in {h["concept_id"] for h in valid}
    assert hpo_concept_id("HP:0005965") in {h["concept_id"] for h in with_invalid}


def test_like_wildcards_in_the_text_are_literal(starter_store):
    percent = vocab.search(starter_store, "%", limit=50)
    literal = {r[0] for r in starter_store.query(
        "SELECT concept_id FROM concept WHERE strpos(concept_name, '%') > 0 UNION "
        "SELECT concept_id FROM concept_synonym WHERE strpos(concept_synonym_name, '%') > 0")}
    assert percent and {h["concept_id"] for h in percent} <= literal
    assert vocab.search(starter_store, "type_2", limit=5) == []
    with pytest.raises(StoreError):
        vocab.search(starter_store, "   ")


def test_index_follows_changes_to_the_concept_table(store):
    store.execute("INSERT INTO concept VALUES (1, 'Zebra stripe disorder', 'Condition', 'Test', 'X', 'S', 'Z1', "
                  "DATE '1970-01-01', DATE '2099-12-31', NULL)")
    assert [h["concept_id"] for h in vocab.search(store, "zebra")] == [1]
    store.execute("INSERT INTO concept VALUES (2, 'Zebra crossing injury', 'Condition', 'Test', 'X', NULL, 'Z2', "
                  "DATE '1970-01-01', DATE '2099-12-31', NULL)")
    store.execute("INSERT INTO concept_synonym VALUES (1, 'Striped horse syndrome', 4180186)")
    assert [h["concept_id"] for h in vocab.search(store, "zebra")] == [1, 2]
    assert [h["concept_id"] for h in vocab.search(store, "striped horse")] == [1]


def test_gibleed_real_vocabulary_is_searchable(gibleed_store):
    hits = vocab.search(gibleed_store, "gastrointestinal hemorrhage", limit=5)
    assert hits and hits[0]["concept_id"] == 192671 and hits[0]["match"] == "exact"


runner = CliRunner()


@pytest.fixture(scope="module")
def starter_db(starter_stores, tmp_path_factory) -> str:
    """A copy of the DuckDB starter vocabulary store, for the commands (which open their own store)."""
    with copy_store(starter_stores("duckdb"), tmp_path_factory.mktemp("cli")) as s:
        return s.location


def test_cli_search_json_shows_versions(starter_db):
    from mercia.cli import app

    result = runner.invoke(app, ["vocab", "search", "type 2 diabetes", "--db", starter_db,
                                 "--vocabulary", "ICD10", "--limit", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = orjson.loads(result.output)
    assert payload["concepts"][0]["concept_code"] == "E11"
    assert payload["vocabulary_versions"]["ICD10"].startswith("WHO ICD-10 2019")
    table = runner.invoke(app, ["vocab", "search", "seizure", "--db", starter_db, "--limit", "3"])
    assert table.exit_code == 0 and "HPO 2025-01-16" in table.output


def test_cli_descendants_and_unknown_concept(starter_db):
    from mercia.cli import app

    result = runner.invoke(app, ["vocab", "descendants", str(icd10_concept_id("E11")), "--db", starter_db, "--json"])
    assert result.exit_code == 0, result.output
    assert [c["concept_code"] for c in orjson.loads(result.output)["concepts"]] == [f"E11.{d}" for d in range(10)]
    result = runner.invoke(app, ["vocab", "ancestors", "12", "--db", starter_db])
    assert result.exit_code == 1 and "concept 12 is not in the concept table" in result.output


@pytest.mark.parametrize("text", ["seizure", "type 2 diabetes", "mellitus type 2", "ertens", "abnormality of the",
                                  "diabetes", "hyp", "syndrome", "ert", "marfan syndrome", "(", "cancer",
                                  "fracture femur", "e11", "zzqx"])
def test_index_gives_the_same_answer_as_a_direct_search(starter_store, text):
    for limit in (5, 40):
        indexed = vocab.search(starter_store, text, limit=limit)
        direct = vocab.search(starter_store, text, limit=limit, use_index=False)
        assert [(h["concept_id"], h["match"]) for h in indexed] == [(h["concept_id"], h["match"]) for h in direct]


def test_read_only_store_is_searched_without_an_index(tmp_path):
    from mercia.cdm import Store

    path = str(tmp_path / "ro.duckdb")
    with Store(path) as s:
        s.init_schema()
        s.execute("INSERT INTO concept VALUES (7, 'Quokka bite', 'Condition', 'Test', 'X', 'S', 'Q', "
                  "DATE '1970-01-01', DATE '2099-12-31', NULL)")
    with Store(path, read_only=True) as s:
        assert [h["concept_id"] for h in vocab.search(s, "quokka")] == [7]
        assert not s.table_exists("mercia_concept_search")


def test_starter_cache_is_built_once_and_reused(tmp_path):
    from mercia.vocab.starter import starter_files

    first = starter_files(tmp_path)
    stamp = (first / "concept.parquet").stat().st_mtime_ns
    assert starter_files(tmp_path) == first and (first / "concept.parquet").stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging left behind


def test_a_failing_index_refresh_is_raised_not_swallowed(store, monkeypatch):
    """Only a read-only store searches without refreshing the index; any other failure surfaces."""
    import sys

    def refuse(_store):
        raise StoreError("disk full")

    monkeypatch.setattr(sys.modules["mercia.vocab.concepts"], "refresh_search_index", refuse)
    with pytest.raises(StoreError, match="disk full"):
        vocab.search(store, "quokka")


def test_vocab_search_is_the_function_whichever_module_is_imported_first():
    """``mercia.vocab`` imports its names on first use; the search function lives in ``mercia.vocab.concepts``,
    so importing that module first cannot shadow ``vocab.search`` with a module."""
    import subprocess
    import sys

    code = ("import mercia.vocab.concepts as concepts; from mercia import vocab; "
            "print(vocab.search is concepts.search, vocab.maps_to is concepts.maps_to, 'search' in dir(vocab))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "True"]
