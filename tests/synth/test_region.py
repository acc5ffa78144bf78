"""The region on disk: every extract parses with a real parser of its format, the injected errors
are exactly the ones logged, the crosswalk tells the truth, and the same seed gives the same bytes."""

from __future__ import annotations

import csv
import gzip
import hashlib
from pathlib import Path

import duckdb
import hl7
import orjson
import pyarrow.parquet as pq
import pytest
from google.protobuf.json_format import Parse
from phenopackets import Phenopacket

from mercia.cdm import CDM_TABLES
from mercia.synth import generate_region, load_truth
from mercia.synth.population import nhs_check_digits

REGION_PERSONS = 2_000  # as in conftest.py

FHIR_TYPES = ["Organization", "Patient", "EpisodeOfCare", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure"]


def _errors(out: Path):
    return pq.read_table(out / "truth" / "errors.parquet").to_pylist()


def _malformed(out: Path, rel_prefix: str) -> set[str]:
    return {e["record_ref"] for e in _errors(out) if e["error_type"] == "malformed_line"
            and e["file"].startswith(rel_prefix)}


def test_layout_matches_the_contract(region):
    out, manifest = region
    assert (out / "manifest.json").exists() and (out / "organisations.csv").exists()
    orgs = list(csv.DictReader(open(out / "organisations.csv")))
    assert {o["org_type"] for o in orgs} == {"gp", "acute", "pathology", "rare_disease", "metabolomics"}
    for o in orgs:
        if o["org_type"] == "gp":
            assert all((out / "gp" / o["org_code"] / f"{t}.ndjson").exists() for t in FHIR_TYPES)
            assert orjson.loads((out / "gp" / o["org_code"] / "manifest.json").read_bytes())["output"]
        if o["org_type"] == "acute":
            for name in ("patients", "encounters", "diagnoses", "procedures"):
                assert (out / "acute" / o["org_code"] / f"{name}.csv").exists()
    assert (out / "pathology" / "R9P" / "results.hl7").exists()
    assert list((out / "rare_disease" / "R9G" / "phenopackets").glob("*.json"))
    assert list((out / "rare_disease" / "R9G" / "vcf").glob("*.vcf.gz"))
    assert (out / "proms" / "proms.csv").exists()
    samples = manifest["files"]["metabolomics/R9M/nmr_wide.csv"]
    assert samples == manifest["files"]["metabolomics/R9M/manifest.csv"] > 0
    assert pq.read_table(out / "truth" / "metabolomics.parquet").num_rows == samples * 249
    batches = sorted((out / "metabolomics" / "R9M" / "mztab").glob("batch_*.mzTab"))
    assert len(batches) == manifest["files"]["metabolomics/R9M/mztab"] == -(-samples // 48)
    assert pq.read_table(out / "truth" / "mztab.parquet").num_rows == samples * 4   # four LC-MS targets
    for name in ("person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
                 "measurement", "observation", "death", "concept"):
        part = pq.read_table(next((out / "truth" / "omop" / name).glob("part-*.parquet")))
        assert part.column_names == CDM_TABLES[name].column_names
    assert manifest["truth_rows"]["person"] == REGION_PERSONS


def test_fhir_ndjson_parses_with_orjson_and_validates_against_r4b_models(region):
    from fhir.resources.R4B import get_fhir_model_class

    out, _ = region
    broken = _malformed(out, "gp/")
    validated = {t: 0 for t in FHIR_TYPES}
    unparsable = set()
    for path in sorted((out / "gp").glob("*/*.ndjson")):
        for i, line in enumerate(path.read_text().splitlines()):
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                unparsable.add(line)
                continue
            kind = resource["resourceType"]
            assert kind == path.stem
            if validated[kind] < 40 and i % 7 == 0:   # a sample through the pydantic FHIR models
                get_fhir_model_class(kind).model_validate(resource)
                validated[kind] += 1
    assert all(n > 0 for k, n in validated.items() if k != "Procedure"), validated
    assert len(unparsable) == len(broken) > 0


def test_patients_carry_nhs_numbers_in_the_nhs_system_and_identifiers_to_strip(region):
    out, _ = region
    xw = pq.read_table(out / "truth" / "crosswalk.parquet").to_pylist()
    sent = {(r["org_code"], r["local_id"]): r for r in xw if r["org_type"] == "gp"}
    seen = 0
    for path in (out / "gp").glob("*/Patient.ndjson"):
        for line in path.read_text().splitlines():
            try:
                patient = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            row = sent[(path.parent.name, patient["id"])]
            ids = [i["value"] for i in patient.get("identifier", []) if i["system"] == "https://fhir.nhs.uk/Id/nhs-number"]
            assert ids == ([row["nhs_number_sent"]] if row["nhs_number_sent"] else [])
            assert patient["name"][0]["family"] and patient["birthDate"] and patient["address"][0]["postalCode"]
            seen += 1
    assert seen >= REGION_PERSONS


def test_crosswalk_nhs_number_errors_are_real(region):
    out, _ = region
    truth = {r["person_id"]: r for r in pq.read_table(out / "truth" / "person_identifiers.parquet").to_pylist()}
    rows = pq.read_table(out / "truth" / "crosswalk.parquet").to_pylist()
    kinds = {"none": 0, "missing": 0, "mistyped": 0}
    for r in rows:
        kinds[r["nhs_number_error"]] += 1
        true = truth[r["person_id"]]["nhs_number"]
        if r["nhs_number_error"] == "none":
            assert r["nhs_number_sent"] == true
        elif r["nhs_number_error"] == "missing":
            assert r["nhs_number_sent"] is None
        else:
            assert r["nhs_number_sent"] != true and len(r["nhs_number_sent"]) == 10
    assert kinds["missing"] > 0 and kinds["mistyped"] > 0
    valid = [int(r["nhs_number_sent"][:9]) for r in rows if r["nhs_number_error"] == "none"]
    import numpy as np
    checks = nhs_check_digits(np.array(valid))
    assert all(int(r["nhs_number_sent"][9]) == c for r, c in
               zip([r for r in rows if r["nhs_number_error"] == "none"], checks))
    assert any(r["demographics_altered"] for r in rows)


def test_hl7_messages_parse_with_python_hl7(region):
    out, _ = region
    text = (out / "pathology" / "R9P" / "results.hl7").read_bytes().decode("utf-8")  # keep the \r
    messages = [m for m in text.split("\n") if m]
    broken = _malformed(out, "pathology/")
    parsed = 0
    loinc = set()
    for raw in messages:
        msg = hl7.parse(raw)
        if str(msg.segment("MSH")[10]) in broken:
            continue
        assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01"
        pid = msg.segment("PID")
        assert str(pid[5]).count("^") == 1 and len(str(pid[7])) == 8
        for obx in msg.segments("OBX"):
            loinc.add(str(obx[3][0][0]))
            float(str(obx[5]))
        parsed += 1
    assert parsed > 100
    assert {"4548-4", "62238-1", "2160-0", "718-7"} <= loinc


def test_phenopackets_parse_with_the_ga4gh_package_and_point_at_their_vcf(region):
    out, _ = region
    files = sorted((out / "rare_disease" / "R9G" / "phenopackets").glob("*.json"))
    assert files
    solved = 0
    for path in files:
        packet = Parse(path.read_text(), Phenopacket())
        assert packet.id == path.stem and packet.phenotypic_features
        assert all(f.type.id.startswith("HP:") for f in packet.phenotypic_features)
        assert packet.diseases[0].term.id.startswith("OMIM:")
        if packet.interpretations:
            solved += 1
            vcf = out / "rare_disease" / "R9G" / "vcf" / f"{packet.id}.vcf.gz"
            assert packet.files[0].uri == f"file://vcf/{vcf.name}"
            assert vcf.read_bytes()[12:16] == b"BC\x02\x00"  # a BGZF block (SAM/BAM spec 4.1), not plain gzip
            lines = gzip.decompress(vcf.read_bytes()).decode().splitlines()
            assert lines[0] == "##fileformat=VCFv4.2"
            record = lines[-1].split("\t")
            desc = packet.interpretations[0].diagnosis.genomic_interpretations[0].variant_interpretation\
                .variation_descriptor
            assert record[1] == str(desc.vcf_record.pos) and f"GENE={desc.gene_context.symbol}" == record[7]
    assert solved > 0


def test_csv_extracts_parse_and_broken_lines_are_the_logged_ones(region):
    out, _ = region
    short = 0
    for path in sorted((out / "acute").glob("*/*.csv")) + [out / "proms" / "proms.csv"]:
        rows = list(csv.reader(open(path, newline="")))
        width = len(rows[0])
        short += sum(1 for r in rows[1:] if len(r) != width)
        assert sum(1 for r in rows[1:] if len(r) == width) > 0
    assert short == len([e for e in _errors(out) if e["error_type"] == "malformed_line"
                         and e["file"].endswith(".csv")])


def test_errors_are_injected_at_the_requested_rate(region):
    out, manifest = region
    errors = _errors(out)
    kinds = {e["error_type"] for e in errors}
    assert {"invalid_code", "impossible_date", "duplicate", "malformed_line"} <= kinds
    records = sum(manifest["files"].values())
    dup = sum(1 for e in errors if e["error_type"] == "duplicate")
    assert 0.015 < dup / records < 0.045     # error rate 0.03 per record


def test_clean_region_extracts_carry_every_true_event_once(tmp_path):
    out = tmp_path / "clean"
    manifest = generate_region(out, persons=1_000, seed=1, error_rate=0.0, practices=2, trusts=2)
    assert manifest["errors_injected"] == 0
    con = duckdb.connect()
    for name in ("visit_occurrence", "condition_occurrence", "drug_exposure", "measurement", "procedure_occurrence",
                 "observation"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{out}/truth/omop/{name}/*.parquet')")
    gp_visits = "(SELECT visit_occurrence_id FROM visit_occurrence WHERE visit_source_value = 'GP')"
    trust_visits = "(SELECT visit_occurrence_id FROM visit_occurrence WHERE visit_source_value IN ('IP', 'OP', 'AE'))"
    truth = {
        "Condition": f"SELECT count(*) FROM condition_occurrence WHERE visit_occurrence_id IN {gp_visits}",
        "MedicationRequest": "SELECT count(*) FROM drug_exposure",
        "Encounter": f"SELECT count(*) FROM {gp_visits}",
        "Observation": "SELECT count(*) FROM measurement WHERE measurement_type_concept_id = 32817",
        "diagnoses": f"SELECT count(*) FROM condition_occurrence WHERE visit_occurrence_id IN {trust_visits}",
        "encounters": f"SELECT count(*) FROM {trust_visits}",
        "procedures": f"SELECT count(*) FROM procedure_occurrence WHERE visit_occurrence_id IN {trust_visits}",
        "OBX": "SELECT count(*) FROM measurement WHERE measurement_type_concept_id = 32856",
        "phenopackets": "SELECT count(*) FROM condition_occurrence WHERE condition_source_value LIKE 'OMIM:%'",
    }
    found = {k: 0 for k in truth}
    for path in (out / "gp").glob("*/*.ndjson"):
        if path.stem in found:
            found[path.stem] += sum(1 for line in path.read_text().splitlines() if orjson.loads(line))
    for path in (out / "acute").glob("*/*.csv"):
        if path.stem in found:
            found[path.stem] += len(path.read_text().splitlines()) - 1
    hl7_text = (out / "pathology" / "R9P" / "results.hl7").read_bytes().decode()
    found["OBX"] = hl7_text.count("\rOBX|")
    found["phenopackets"] = len(list((out / "rare_disease" / "R9G" / "phenopackets").glob("*.json")))
    assert found == {k: con.execute(sql).fetchone()[0] for k, sql in truth.items()}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_output_and_another_seed_differs(tmp_path):
    a = _digest(Path(generate_region(tmp_path / "a", persons=800, seed=9, error_rate=0.05) and tmp_path / "a"))
    b = _digest(Path(generate_region(tmp_path / "b", persons=800, seed=9, error_rate=0.05) and tmp_path / "b"))
    assert a == b and len(a) > 20
    c = _digest(Path(generate_region(tmp_path / "c", persons=800, seed=10, error_rate=0.05) and tmp_path / "c"))
    assert c["truth/omop/person/part-00000.parquet"] != a["truth/omop/person/part-00000.parquet"]


def test_refuses_to_overwrite_a_directory_that_is_not_a_region(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic region"):
        generate_region(tmp_path, persons=10)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_truth_loads_into_the_store(region, store):
    out, manifest = region
    counts = load_truth(store, out)
    assert counts["person"] == REGION_PERSONS
    assert store.table_counts(["measurement"])["measurement"] == manifest["truth_rows"]["measurement"]
    orphans = store.query_one("SELECT count(*) FROM condition_occurrence c LEFT JOIN person p USING (person_id) "
                              "WHERE p.person_id IS NULL")
    assert orphans == 0
    outside = store.query_one(
        "SELECT count(*) FROM visit_occurrence v WHERE NOT EXISTS (SELECT 1 FROM observation_period o "
        "WHERE o.person_id = v.person_id AND v.visit_start_date BETWEEN o.observation_period_start_date "
        "AND o.observation_period_end_date)")
    assert outside == 0


def test_people_who_changed_practice_moved_house(region):
    out, _ = region
    truth = {r["person_id"]: r for r in pq.read_table(out / "truth" / "person_identifiers.parquet").to_pylist()}
    gp = [r for r in pq.read_table(out / "truth" / "crosswalk.parquet").to_pylist() if r["org_type"] == "gp"]
    registrations: dict[int, int] = {}
    for r in gp:
        registrations[r["person_id"]] = registrations.get(r["person_id"], 0) + 1
    movers = {p for p, n in registrations.items() if n == 2}
    assert movers and all(truth[p]["previous_postcode"] for p in movers)
    assert all(truth[p]["previous_postcode"] is None for p in truth if p not in movers)


@pytest.mark.slow
def test_region_larger_than_an_extract_slice_is_byte_identical(tmp_path):
    a = _digest(Path(generate_region(tmp_path / "a", persons=12_000, seed=4) and tmp_path / "a"))
    b = _digest(Path(generate_region(tmp_path / "b", persons=12_000, seed=4) and tmp_path / "b"))
    assert a == b
