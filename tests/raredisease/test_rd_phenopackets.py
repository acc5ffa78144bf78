"""Phenopackets v2: validation, reading and lossless writing."""

from __future__ import annotations

import json

import pytest

from mercia.raredisease.phenopackets import (
    Disease,
    Onset,
    PhenopacketError,
    Phenotype,
    RareDiseaseCase,
    Variant,
    read_phenopacket,
    write_phenopacket,
)


def test_reads_the_published_examples(examples):
    cases = [read_phenopacket(f) for f in examples]
    assert len(cases) == len(examples)
    first = read_phenopacket(examples[0])
    assert first.id == examples[0].stem
    assert first.observed and first.excluded
    assert first.diseases[0].term.startswith("OMIM:")
    assert first.genes
    onsets = [p.onset for c in cases for p in c.phenotypes if p.onset]
    assert any(o.age for o in onsets) and any(o.term for o in onsets)


def test_round_trip_is_lossless_for_every_example(examples):
    for path in examples:
        case = read_phenopacket(path)
        document = write_phenopacket(case, hpo_version="2025-01-16")
        assert read_phenopacket(json.dumps(document)) == case


def test_written_document_is_valid_v2():
    case = RareDiseaseCase(
        id="case-1", subject_id="p1", sex="FEMALE", age_at_last_encounter="P3Y",
        phenotypes=[Phenotype("HP:0001250", "Seizure", onset=Onset(age="P4M")),
                    Phenotype("HP:0000252", "Microcephaly", excluded=True, onset=Onset(term="HP:0003577"))],
        diseases=[Disease("OMIM:610042", "Pitt-Hopkins like syndrome 1")],
        variants=[Variant("CNTNAP2", "HGNC:13830", "NM_014141.6:c.1671-1G>T", "hg38:chr7:147485934:G:T",
                          "GENO:0000135", "CAUSATIVE", "PATHOGENIC")],
    )
    document = write_phenopacket(case, hpo_version="2025-01-16")
    assert document["metaData"]["phenopacketSchemaVersion"] == "2.0"
    assert document["metaData"]["resources"][0]["version"] == "2025-01-16"
    descriptor = document["interpretations"][0]["diagnosis"]["genomicInterpretations"][0]["variantInterpretation"]
    assert descriptor["variationDescriptor"]["vcfRecord"]["pos"] == 147485934
    assert read_phenopacket(document).variants == case.variants


@pytest.mark.parametrize(("document", "message"), [
    ({"id": "x", "metaData": {}, "phenotypicFeatures": [{"type": {"id": "HP:0001250"}, "excluded": "yes"}]},
     "excluded"),
    ({"id": "x", "metaData": {"createdBy": "me"}, "phenotypicFeaturez": []}, "phenotypicFeaturez"),
    ({"id": "x", "subject": {"id": "s"}}, "field metaData is required"),
    ({"id": "x", "metaData": {"createdBy": "me"}, "phenotypicFeatures": [{"excluded": True}]},
     r"phenotypicFeatures\[0\].type.id"),
])
def test_invalid_documents_name_the_field(document, message):
    with pytest.raises(PhenopacketError, match=message):
        read_phenopacket(document)


def test_not_json_is_a_clear_error():
    with pytest.raises(PhenopacketError, match="not JSON"):
        read_phenopacket("{nope")
