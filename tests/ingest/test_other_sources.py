"""HL7 v2, Phenopackets, VCF and CSV extracts; vocabulary mapping; nothing identifying stored."""

from __future__ import annotations

import json

import pyarrow as pa

from mercia.ingest.fhir import read_fhir
from mercia.ingest.hl7v2 import read_hl7v2, split_messages
from mercia.quality.report import build_report


def reconciles(summary) -> None:
    assert summary.records == summary.loaded + summary.rejected + summary.withheld + summary.removed


def test_hl7v2_lab_results_load(store, shared_data, load, snapshot):
    folder = shared_data / "hl7v2/oru_lab"
    boms = [p for p in folder.glob("*.hl7") if p.read_bytes().startswith(b"\xef\xbb\xbf")]
    assert len(boms) == 3
    assert all(m.startswith("MSH|") for p in boms for m in split_messages(p.read_bytes()))
    summary = load(store, "hl7v2", folder, "R9P")
    reconciles(summary)
    # 55 results with a value. The four OUL examples share control id 1932 (the same message sent again, by
    # MSH-10) and number two results 27 in one message: a heart rate before the specimen (group 0, NM,
    # 1999-07-02) and one after it (group 1, coded, 1999-08-02), distinct results. Each result is a version of
    # its record in reading order, and the last copy stands whether it loads or not. Group 0 comes with a value
    # in OUL-R22-01/R22-02/R23-01 and without one in R24-01, read last: the record is rejected ("result has no
    # value") and its three earlier copies superseded, none stored. Group 1 comes with 3 values (R23's "60"
    # loaded). 5 copies superseded, in 4 reject rows (R22-01 and R22-02 agree, both at message 1). The HL7
    # glucose example and ORU-R01-RMGEAD send the same result under one control id, alike: stored once (1 row).
    assert summary.rows["measurement"] == 55 - 5 - 1
    assert store.query("SELECT field, action, reason, count(*) FROM mercia_reject WHERE reason LIKE "
                       "'the record repeats%' GROUP BY 1, 2, 3 ORDER BY 3") == [
        ("record key", "superseded", "the record repeats in this extract with different content: only its last "
                                     "copy was loaded", 4),
        ("record key", "superseded", "the record repeats in this extract with the same content: stored once", 1)]
    assert store.query("""SELECT CAST(measurement_date AS VARCHAR), value_as_number, value_source_value FROM measurement
                          WHERE measurement_source_value = '8867-4' ORDER BY 1, 3""") == [
        ("1999-08-02", None, "60"), ("1999-08-02", None, "80"),
        ("2000-08-02", None, "60"), ("2002-02-15", 27.0, "27.0")]  # R24's result 7, R22-02's 17, ORU-R01-01's 2
    # a record counted rejected has no rows (an earlier copy's rows used to stand for it)
    assert store.query("""SELECT count(*) FROM mercia_reject r JOIN mercia_provenance p USING (org, source_record)
                          WHERE r.action = 'rejected'""") == [(0,)]
    before = snapshot(store)
    assert load(store, "hl7v2", folder, "R9P").changed == 0 and snapshot(store) == before
    # structured numeric "^182" with range 70_105 from the HL7 normative glucose example
    assert (182.0, 70.0, 105.0, "mg/dl") in store.query(
        "SELECT value_as_number, range_low, range_high, unit_source_value FROM measurement")
    assert store.query_one("SELECT DISTINCT measurement_type_concept_id FROM measurement") == 32856
    reasons = dict(store.query("SELECT reason, count(*) FROM mercia_reject GROUP BY 1"))
    assert reasons["value type ED is text or a document, not loaded"] == 10
    # "196203520" is not a date of birth; the same patient's other message gives 1962-03-20
    assert (1962, 3) in store.query("SELECT year_of_birth, month_of_birth FROM person")


def _case_contents(packet: dict) -> tuple[int, int, int, int]:
    """(observed, excluded, diseases, variants) of one phenopacket, as the load should store them."""
    features = packet.get("phenotypicFeatures", [])
    variants = [g for i in packet.get("interpretations", [])
                for g in i.get("diagnosis", {}).get("genomicInterpretations", [])]
    return (sum(1 for f in features if not f.get("excluded")), sum(1 for f in features if f.get("excluded")),
            sum(1 for d in packet.get("diseases", []) if not d.get("excluded")), len(variants))


def test_phenopackets_load_every_case_and_keep_those_without_an_age(store, shared_data, load):
    folder = shared_data / "phenopackets/examples"
    summary = load(store, "phenopackets", folder, "R9G", type_concept_id=32879)
    reconciles(summary)
    packets = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    undated = [p for p in packets if not (p["subject"].get("dateOfBirth") or p["subject"].get("timeAtLastEncounter"))]
    assert (len(packets), len(undated)) == (40, 5)  # the published examples: 5 case reports give no age
    assert summary.rejected == 0 and summary.loaded == 2 * len(packets)
    assert store.query_one("SELECT count(*) FROM person") == len(packets)
    expected_excluded = sum(1 for p in packets for f in p.get("phenotypicFeatures", []) if f.get("excluded"))
    expected_observed = sum(1 for p in packets for f in p.get("phenotypicFeatures", []) if not f.get("excluded"))
    counts = dict(store.query("SELECT qualifier_source_value, count(*) FROM observation GROUP BY 1"))
    assert counts == {"excluded": expected_excluded, "observed": expected_observed}
    # the cases without an age: year of birth unknown, and every phenotype, diagnosis and variant kept
    age_unknown = store.query("""
        SELECT (SELECT count(*) FROM observation o WHERE o.person_id = p.person_id
                AND o.qualifier_source_value = 'observed'),
               (SELECT count(*) FROM observation o WHERE o.person_id = p.person_id
                AND o.qualifier_source_value = 'excluded'),
               (SELECT count(*) FROM condition_occurrence c WHERE c.person_id = p.person_id),
               (SELECT count(*) FROM variant_occurrence v WHERE v.person_id = p.person_id)
        FROM person p WHERE p.year_of_birth IS NULL""")
    assert sorted(age_unknown) == sorted(_case_contents(p) for p in undated)
    assert store.query_one("""SELECT count(*) FROM person WHERE year_of_birth IS NULL AND (month_of_birth IS NOT NULL
                              OR day_of_birth IS NOT NULL OR birth_datetime IS NOT NULL)""") == 0
    # ... and each flagged (counted in the summary), not rejected
    assert summary.flagged == len(undated)
    assert store.query("SELECT action, field, reason, count(*) FROM mercia_reject GROUP BY 1, 2, 3") == [
        ("flagged", "subject.dateOfBirth",
         "no date of birth or age given; case kept with the age unknown (year of birth NULL)", len(undated))]
    checks = {c.name: c for c in build_report(store, org="R9G").checks}
    unknown = checks["year_of_birth_unknown"]
    assert (unknown.violations, unknown.rows, unknown.category, unknown.passed) == (
        len(undated), len(packets), "completeness", True)
    variants = store.query("""SELECT v.target_gene_symbol, m.measurement_source_value FROM variant_occurrence v
                              JOIN measurement m USING (measurement_id)""")
    assert variants and all(src == gene for gene, src in variants)


def test_phenopacket_with_an_invalid_birth_date_or_age_is_still_rejected(store, load, tmp_path):
    def packet(pid: str, **subject) -> dict:
        return {"id": pid, "subject": {"id": pid, "sex": "FEMALE", **subject},
                "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
                "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "test",
                             "phenopacketSchemaVersion": "2.0"}}

    (tmp_path / "pp").mkdir()
    for name, subject in {"unparseable": {"dateOfBirth": "2010-13-40T00:00:00Z"},
                          "future": {"dateOfBirth": "2999-01-01T00:00:00Z"},
                          "medieval": {"dateOfBirth": "1066-10-14T00:00:00Z"},
                          "bad-age": {"timeAtLastEncounter": {"age": {"iso8601duration": "six years"}}},
                          "no-age": {}}.items():
        (tmp_path / "pp" / f"{name}.json").write_text(json.dumps(packet(name, **subject)))
    summary = load(store, "phenopackets", tmp_path / "pp", "R9G")
    reconciles(summary)
    rejects = store.query("SELECT field, reason FROM mercia_reject WHERE action = 'rejected'")
    fields = sorted(field for field, _ in rejects)
    # the subject record of each invalid packet (and the clinical record where the packet failed to parse)
    assert fields.count("subject.dateOfBirth") == 4 and fields.count("subject.timeAtLastEncounter") == 2
    assert any("dateOfBirth" in reason for _, reason in rejects)
    assert sum("plausible window" in reason for _, reason in rejects) == 2  # 2999 and 1066
    # only the case without any age is kept, age unknown
    assert store.query("SELECT year_of_birth FROM person") == [(None,)]
    assert summary.flagged == 1


def test_vcf_calls_attach_to_the_phenopacket_person(store, load, tmp_path):
    packet = {"id": "R9G-000001", "subject": {"id": "R9G-000001", "dateOfBirth": "2010-04-02T00:00:00Z",
                                               "sex": "MALE", "alternateIds": ["nhs:9434765919"]},
              "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
              "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "test", "phenopacketSchemaVersion": "2.0"}}
    (tmp_path / "pp").mkdir()
    (tmp_path / "pp/R9G-000001.json").write_text(json.dumps(packet))
    (tmp_path / "sample.vcf").write_text(
        "##fileformat=VCFv4.2\n##reference=GRCh38\n##fileDate=20240101\n"
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tR9G-000001\n"
        "chr2\t165310406\t.\tG\tA\t.\tPASS\tGENE=SCN2A\tGT\t0/1\n"
        "chr17\t7675088\t.\tC\tT\t.\tPASS\tGENE=TP53\tGT\t0/0\n")
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    summary = load(store, "vcf", tmp_path / "sample.vcf", "R9G")
    assert (summary.loaded, summary.rejected) == (1, 0)  # a hom-ref call is read, not a record
    rows = store.query("""SELECT v.chromosome, v.position, v.reference_allele, v.alternate_allele, v.genotype,
                                 v.reference_sequence, m.measurement_date, p.year_of_birth
                          FROM variant_occurrence v JOIN measurement m USING (measurement_id)
                          JOIN person p ON p.person_id = v.person_id""")
    assert [r[:6] for r in rows] == [("chr2", 165310406, "G", "A", "0/1", "GRCh38")]
    assert str(rows[0][6]) == "2024-01-01" and rows[0][7] == 2010


ACUTE = {
    "patients.csv": "local_patient_id,nhs_number,family_name,given_name,date_of_birth,sex,postcode\n"
                    "R9A0000001,9434765919,Okafor,Chidi,1961-07-30,M,B15 2TT\n"
                    "R9A0000002,,Nowak,Agnieszka,1975-02-30,F,B29 6AA\n"
                    "R9A0000003,9434765870,Evans,Megan,1990-12-01,F,CV1 5FB\n",
    "encounters.csv": "encounter_id,local_patient_id,setting,start_date,end_date,admission_method,"
                      "discharge_method,specialty\n"
                      "E1,R9A0000001,IP,2023-03-01,2023-03-05,21,1,300\n"
                      "E2,R9A0000003,OP,2023-04-01,2023-04-01,,,110\n"
                      "E3,R9A0000003,AE,2023-05-01\n",
    "diagnoses.csv": "encounter_id,position,icd10_code\nE1,1,I21.9\nE1,2,E11.9\nE2,1,M17.1\n",
    "procedures.csv": "encounter_id,position,opcs4_code,procedure_date\nE1,1,K40.1,2023-03-02\n",
}


def write_acute(folder):
    folder.mkdir(parents=True)
    for name, text in ACUTE.items():
        (folder / name).write_text(text)
    return folder


def add_vocabulary(store) -> None:
    """A tiny vocabulary: ICD10 I21.9 maps to a SNOMED condition; ICD10 E11.9 maps to a concept in
    the Observation domain (routing follows the standard concept); standard concepts map to
    themselves, as in the OHDSI vocabularies."""
    concepts = pa.table({
        "concept_id": [1, 2, 3, 4, 5], "concept_name": ["AMI", "AMI", "DM", "DM finding", "Body height"],
        "domain_id": ["Condition", "Condition", "Condition", "Observation", "Measurement"],
        "vocabulary_id": ["ICD10", "SNOMED", "ICD10", "SNOMED", "LOINC"],
        "concept_class_id": ["x"] * 5, "standard_concept": [None, "S", None, "S", "S"],
        "concept_code": ["I21.9", "22298006", "E11.9", "44054006", "8302-2"],
        "valid_start_date": pa.array([pa.scalar(0, pa.date32()).as_py()] * 5, pa.date32()),
        "valid_end_date": pa.array([pa.scalar(40000, pa.date32()).as_py()] * 5, pa.date32())})
    store.insert_arrow("concept", concepts)
    store.insert_arrow("concept_relationship", pa.table({
        "concept_id_1": [1, 3, 2, 4, 5], "concept_id_2": [2, 4, 2, 4, 5], "relationship_id": ["Maps to"] * 5,
        "valid_start_date": concepts.column("valid_start_date"),
        "valid_end_date": concepts.column("valid_end_date")}))


def test_csv_extract_with_shipped_mapping_and_vocabulary(store, load, tmp_path):
    add_vocabulary(store)
    summary = load(store, "csv", write_acute(tmp_path / "R9A"), "R9A", mapping="acute_trust")
    reconciles(summary)
    reasons = {(r[0], r[1]) for r in store.query("SELECT field, reason FROM mercia_reject WHERE action='rejected'")}
    assert ("birthDate", "date of birth missing or not a valid date") in reasons  # 1975-02-30
    assert any(reason.startswith("malformed CSV line") for _, reason in reasons)   # E3 lacks fields
    assert store.query_one("SELECT count(*) FROM person") == 2
    assert store.query("""SELECT condition_concept_id, condition_source_concept_id, condition_source_value
                          FROM condition_occurrence ORDER BY 1""") == [(0, 0, "M17.1"), (2, 1, "I21.9")]
    assert store.query("SELECT observation_concept_id, observation_source_value FROM observation") == \
        [(4, "E11.9")]
    # unmapped (M17.1 above, OPCS4 K40.1 here): concept 0, source value kept
    assert store.query("""SELECT procedure_concept_id, procedure_source_value, visit_occurrence_id IS NOT NULL
                          FROM procedure_occurrence""") == [(0, "K40.1", True)]
    assert sorted(r[0] for r in store.query("SELECT visit_concept_id FROM visit_occurrence")) == [9201, 9202]


def test_no_identifier_reaches_any_text_column(store, shared_data, load, tmp_path):
    sources = [("fhir", shared_data / "fhir/ukcore_examples/json", "RR8", None),
               ("fhir", shared_data / "fhir/synthea_small/bundles", "RX1", None),
               ("hl7v2", shared_data / "hl7v2/oru_lab", "R9P", None),
               ("csv", write_acute(tmp_path / "R9A"), "R9A", "acute_trust")]
    identifiers: set[str] = set()
    for kind, path, org, mapping in sources:
        load(store, kind, path, org, mapping=mapping)
        if kind == "fhir":
            persons = read_fhir(path).persons.data
        elif kind == "hl7v2":
            persons = read_hl7v2(path).persons.data
        else:
            from mercia.ingest.csv import read_csv_extract
            persons = read_csv_extract(path, mapping).persons.data
        for column in ("nhs_number", "family", "given", "postcode"):
            identifiers |= {v for v in persons[column] if v and len(v) >= 3}
    assert {"9912003890", "JONES", "Melanie", "LS8 3DR", "9434765919", "Okafor"} <= identifiers
    text_columns = store.query("""SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND data_type IN ('VARCHAR', 'character varying', 'text')""")
    assert len(text_columns) > 100
    store.execute("CREATE TEMP TABLE ids (v VARCHAR)")
    store.insert_arrow("ids", pa.table({"v": sorted(identifiers)}))
    found = []
    for table, column in text_columns:
        hits = store.query(f"""SELECT DISTINCT i.v FROM "{table}" t JOIN ids i
            ON upper(t."{column}") = upper(i.v) OR (length(i.v) >= 6 AND strpos(upper(t."{column}"), upper(i.v)) > 0)
            OR strpos(t."{column}", replace(i.v, ' ', '')) > 0 AND length(i.v) = 10""")
        found += [(table, column, h[0]) for h in hits]
    assert found == []
