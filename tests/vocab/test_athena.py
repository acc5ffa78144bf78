"""Loading an OHDSI Athena download: tab-separated upper-case files, YYYYMMDD dates, no quoting."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mercia import vocab
from mercia.cdm.loader import LoadError

TAB = "\t"
CONCEPT_HEADER = ["concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id", "standard_concept",
                  "concept_code", "valid_start_date", "valid_end_date", "invalid_reason"]
CONCEPTS = [
    ["201826", "Type 2 diabetes mellitus", "Condition", "SNOMED", "Clinical Finding", "S", "44054006", "19700101",
     "20991231", ""],
    ["201820", "Diabetes mellitus", "Condition", "SNOMED", "Clinical Finding", "S", "73211009", "19700101",
     "20991231", ""],
    ["45576876", "Type 2 diabetes mellitus without complications", "Condition", "ICD10", "ICD10 code", "", "E11.9",
     "19700101", "20991231", ""],
    ["40000001", '"Odd" name with a bare quote', "Observation", "SNOMED", "Clinical Finding", "", "1", "19700101",
     "20991231", "D"],
]


def athena_dir(path: Path) -> Path:
    path.mkdir()
    rows = ["\t".join(CONCEPT_HEADER)] + ["\t".join(r) for r in CONCEPTS]
    (path / "CONCEPT.csv").write_text("\n".join(rows) + "\n")
    (path / "CONCEPT_RELATIONSHIP.csv").write_text(
        "concept_id_1\tconcept_id_2\trelationship_id\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
        "45576876\t201826\tMaps to\t19700101\t20991231\t\n")
    (path / "CONCEPT_ANCESTOR.csv").write_text(
        "ancestor_concept_id\tdescendant_concept_id\tmin_levels_of_separation\tmax_levels_of_separation\n"
        "201820\t201826\t1\t1\n201826\t201826\t0\t0\n201820\t201820\t0\t0\n")
    (path / "VOCABULARY.csv").write_text(
        "vocabulary_id\tvocabulary_name\tvocabulary_reference\tvocabulary_version\tvocabulary_concept_id\n"
        "SNOMED\tSystematic Nomenclature of Medicine\thttp://snomed.info\tSNOMED 2024-09-01\t44819097\n"
        "ICD10\tInternational Classification of Diseases\tWHO\t2021 Release\t44819124\n")
    (path / "readme.txt").write_text("Athena download")
    return path


def test_athena_download_loads_and_maps(store, tmp_path):
    report = vocab.load_athena(store, athena_dir(tmp_path / "athena"))
    assert report.rows == {"concept": 4, "concept_relationship": 1, "concept_ancestor": 3, "vocabulary": 2}
    assert [p.name for p in report.ignored_files] == ["readme.txt"]
    odd = vocab.concept(store, 40000001)
    assert odd["concept_name"] == '"Odd" name with a bare quote' and str(odd["valid_start_date"]) == "1970-01-01"
    mapped = vocab.maps_to(store, "ICD10", ["E11.9"]).to_pylist()
    assert [(m["source_concept_id"], m["target_concept_id"]) for m in mapped] == [(45576876, 201826)]
    assert [d["concept_id"] for d in vocab.descendants(store, 201820)] == [201826]
    assert vocab.search(store, "type 2 diabetes", standard_only=True)[0]["concept_id"] == 201826


def test_athena_keeps_the_starter_vocabularies_it_does_not_replace(heavy_store, tmp_path):
    store = heavy_store
    vocab.install_starter(store)
    vocab.load_athena(store, athena_dir(tmp_path / "athena"))
    versions = {v: n for v, n in store.query("SELECT vocabulary_id, vocabulary_version FROM vocabulary")}
    assert versions["ICD10"] == "2021 Release"  # Athena's ICD10 wins
    assert versions["HPO"] == "2025-01-16"      # the starter HPO is put back
    assert vocab.concept(store, vocab.hpo_concept_id("HP:0001250"))["concept_name"] == "Seizure"
    assert vocab.concept(store, vocab.icd10_concept_id("E11")) is None


def test_athena_refuses_clinical_tables(store, tmp_path):
    d = athena_dir(tmp_path / "athena")
    (d / "person.csv").write_text("person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n")
    before = store.table_counts()
    with pytest.raises(LoadError, match="person is not a vocabulary table"):
        vocab.load_athena(store, d)
    assert store.table_counts() == before


def test_cli_install_starter_and_load_athena(tmp_path):
    from mercia.cli import app

    runner = CliRunner()
    db = str(tmp_path / "v.duckdb")
    first = runner.invoke(app, ["vocab", "install-starter", "--db", db])
    assert first.exit_code == 0 and "HPO: 2025-01-16" in first.output, first.output
    again = runner.invoke(app, ["vocab", "install-starter", "--db", db])
    assert again.exit_code == 0 and "already installed" in again.output
    loaded = runner.invoke(app, ["vocab", "load-athena", str(athena_dir(tmp_path / "athena")), "--db", db])
    assert loaded.exit_code == 0 and "concept: 4 rows from CONCEPT.csv" in loaded.output, loaded.output
