"""mzTab-M 2.0: the standard's four example files, manifest linkage, local metabolite concepts, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.ingest.mztab import MzTabError, parse_mztab, read_mztab
from mercia.ingest.service import ingest
from mercia.vocab.metabolites import METABOLITE_RANGE, METABOLITE_VOCABULARIES
from tests.conftest import SHARED_DATA

EXAMPLES = SHARED_DATA / "metabolomics" / "mztab_m"
# the four examples of the HUPO-PSI standard (examples/2_0-Metabolomics_Release)
NAMES = ["MTBLS263.mztab", "StandardMix_negative_exportSpeciesLevel.mzTab", "gcxgc-ms-example.mztab",
         "lipidomics-example.mzTab"]


@pytest.fixture(autouse=True)
def _shared_data(shared_data):
    """The public data these tests read: skipped locally when absent, a failure in CI."""
    return shared_data


def write_manifest(path: Path, mztab: Path, skip: str | None = None) -> int:
    """One person per assay, keyed by its sample's name (or sample[m], the assay name, 'assay[n]')."""
    metadata, sml = parse_mztab(mztab)
    assays = sorted({int(c.split("[")[1].rstrip("]")) for c in sml.column_names if c.startswith("abundance_assay[")})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "local_id", "collection_date", "birth_date", "sex"])
        for n in assays:
            ref = metadata.get(f"assay[{n}]-sample_ref")
            key = (metadata.get(ref) or ref) if ref else metadata.get(f"assay[{n}]") or f"assay[{n}]"
            if key != skip:
                writer.writerow([key, f"M{n}", "2024-02-01", "1970-01-01", "female"])
    return len(assays)


def expected_cells(mztab: Path) -> int:
    _, sml = parse_mztab(mztab)
    return sum(sum(v is not None for v in sml.column(c).to_pylist())
               for c in sml.column_names if c.startswith("abundance_assay["))


@pytest.mark.parametrize("name", NAMES)
def test_standard_examples_load_every_abundance(name, store, options, tmp_path):
    example = EXAMPLES / name
    assays = write_manifest(tmp_path / "manifest.csv", example)
    summary = ingest(store, "mztab", example, "MZT01", options=options, manifest=tmp_path / "manifest.csv")
    # each manifest row is also a person record (birth date given); every assay's cells load
    assert summary.rejected == 0 and summary.loaded == 2 * assays
    assert summary.rows["measurement"] == expected_cells(example)
    local = store.query_one("""SELECT count(*) FROM measurement m JOIN concept c
                               ON c.concept_id = m.measurement_source_concept_id
                               WHERE c.vocabulary_id IN ('HMDB', 'ChEBI', 'LipidMaps', 'KEGG')""")
    if example.name.startswith(("MTBLS263", "lipidomics")):
        assert local == expected_cells(example)  # ChEBI / LipidMaps identifiers on every row
    else:
        assert local == 0  # GMD and LDA species identifiers: kept as source value, concept 0


def test_chebi_concepts_are_local_standard_and_named(store, options, tmp_path):
    example = EXAMPLES / "MTBLS263.mztab"
    write_manifest(tmp_path / "manifest.csv", example)
    ingest(store, "mztab", example, "MZT01", options=options, manifest=tmp_path / "manifest.csv")
    row = store.query("""SELECT concept_id, concept_name, standard_concept FROM concept
                         WHERE vocabulary_id = 'ChEBI' AND concept_code = 'CHEBI:16737'""")
    assert row and row[0][1] == "Creatinine" and row[0][2] == "S"
    assert METABOLITE_VOCABULARIES["ChEBI"] < row[0][0] < METABOLITE_VOCABULARIES["ChEBI"] + METABOLITE_RANGE
    creatinine = store.query("""SELECT measurement_concept_id, value_as_number FROM measurement
                                WHERE measurement_source_concept_id = ? ORDER BY value_as_number""", [row[0][0]])
    assert len(creatinine) == 6 and creatinine[0] == (row[0][0], 59131129.43)


def test_assay_without_person_is_rejected_by_name(store, options, tmp_path):
    example = EXAMPLES / "MTBLS263.mztab"
    write_manifest(tmp_path / "manifest.csv", example, skip="3injections_POS")  # assays 1-3 (3 injections)
    summary = ingest(store, "mztab", example, "MZT01", options=options, manifest=tmp_path / "manifest.csv")
    rejects = store.query("SELECT field, reason FROM mercia_reject WHERE action = 'rejected' ORDER BY reason")
    assert [f for f, _ in rejects] == ["sample_ref"] * 3
    assert rejects[0][1].startswith("assay[1] (sample '3injections_POS') not in the manifest")
    assert summary.rows["measurement"] == expected_cells(example) - 3 * 17


def test_wrong_version_and_not_numeric_abundance(tmp_path):
    text = (EXAMPLES / "lipidomics-example.mzTab").read_text()
    (tmp_path / "v1.mzTab").write_text(text.replace("2.0.0-M", "1.0.0"))
    with pytest.raises(MzTabError, match="only mzTab-M 2.0"):
        parse_mztab(tmp_path / "v1.mzTab")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("SMH")).split("\t")
    at = header.index("abundance_assay[1]")
    out = []
    for line in lines:
        if line.startswith("SML"):
            cells = line.split("\t")
            cells[at] = "lots"
            line = "\t".join(cells)
        out.append(line)
    (tmp_path / "bad.mzTab").write_text("\n".join(out) + "\n")
    write_manifest(tmp_path / "m.csv", EXAMPLES / "lipidomics-example.mzTab")
    staged = read_mztab(tmp_path / "bad.mzTab", tmp_path / "m.csv")
    (reject,) = staged.rejects.table().to_pylist()
    assert reject["field"] == "abundance_assay[1]" and "'lots' is not a number" in reject["reason"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.booleans())
def test_garbage_gives_mztab_error_only(tmp_path, data, with_header):
    path = tmp_path / "g.mzTab"
    path.write_bytes((b"MTD\tmzTab-version\t2.0.0-M\n" if with_header else b"") + data)
    write_manifest(tmp_path / "m.csv", EXAMPLES / "lipidomics-example.mzTab")
    try:
        read_mztab(path, tmp_path / "m.csv")
    except MzTabError:
        pass


def test_synthetic_batches_round_trip_with_ground_truth(store, options, tmp_path):
    from mercia.synth.metabolomics import nmr_panel, write_mztab_batches

    study = nmr_panel(20, seed=9)
    truth = write_mztab_batches(tmp_path / "ms", study, batch_size=12).to_pylist()
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "local_id", "collection_date", "birth_date", "sex"])
        for i, sample in enumerate(study.panel.column("sample_id").to_pylist()):
            writer.writerow([sample, f"S{i}", "2024-05-01", "1960-01-01", "male"])
    for batch in sorted((tmp_path / "ms").glob("*.mzTab")):
        summary = ingest(store, "mztab", batch, "MSLAB", options=options, manifest=tmp_path / "manifest.csv")
        assert summary.rejected == 0
    rows = store.query("""SELECT c.concept_code, m.value_as_number, m.unit_source_value FROM measurement m
                          JOIN concept c ON c.concept_id = m.measurement_source_concept_id ORDER BY 1, 2""")
    expected = sorted((t["chebi"], t["value"]) for t in truth)
    assert [(code, value) for code, value, _ in rows] == expected and {u for *_, u in rows} == {"mmol/L"}
    assert store.query_one("SELECT count(DISTINCT concept_id) FROM concept WHERE vocabulary_id = 'ChEBI'") == 4
