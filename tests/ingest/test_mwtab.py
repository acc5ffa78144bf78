"""mwTab (Metabolomics Workbench): files written by the ``mwtab`` package itself, manifest linkage,
local metabolite concepts, units, idempotent resends and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mercia.ingest.mwtab import MwTabError, read_mwtab
from mercia.ingest.service import ingest

METABOLITES = [  # name, HMDB, KEGG, ChEBI (public identifiers of these metabolites)
    ("Glucose", "HMDB0000122", "C00031", "4167"),
    ("L-Lactic acid", "HMDB0000190", "C00186", "422"),
    ("Creatinine", "HMDB0000562", "C00791", "16737"),
    ("Unknown feature 12", "", "", ""),
]


def write_mwtab(path: Path, values: dict[str, list[str]], units: str = "uM", section: str = "MS_METABOLITE_DATA",
                extra_column: str | None = None) -> Path:
    """An mwTab analysis written by the mwtab package (so the layout is the package's own)."""
    from mwtab.mwtab import MWTabFile

    samples = list(values)
    data = []
    for i, (name, *_ids) in enumerate(METABOLITES):
        row = {"Metabolite": name, **{s: values[s][i] for s in samples}}
        if extra_column:
            row[extra_column] = "1.0"
        data.append(row)
    document = {
        "METABOLOMICS WORKBENCH": {"STUDY_ID": "ST009999", "ANALYSIS_ID": "AN009999", "VERSION": "1",
                                   "CREATED_ON": "2026-12-04"},
        "PROJECT": {"PROJECT_TITLE": "Mercia test study"}, "STUDY": {"STUDY_TITLE": "Mercia test study"},
        "SUBJECT": {"SUBJECT_TYPE": "Human"},
        "SUBJECT_SAMPLE_FACTORS": [{"Subject ID": f"SUBJ{i}", "Sample ID": s, "Factors": {"Group": "case"}}
                                   for i, s in enumerate(samples, 1)],
        "MS": {"INSTRUMENT_TYPE": "QTOF"},
        section: {"Units": units, "Data": data,
                  "Metabolites": [{"Metabolite": name, "hmdb_id": hmdb, "kegg_id": kegg, "chebi_id": chebi}
                                  for name, hmdb, kegg, chebi in METABOLITES]},
    }
    path.write_text(MWTabFile.from_dict(document).writestr("mwtab"))
    return path


def write_manifest(path: Path, keys: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "local_id", "collection_date", "birth_date", "sex"])
        for n, key in enumerate(keys, 1):
            writer.writerow([key, f"MW{n}", "2025-03-01", "1965-05-05", "male"])
    return path


VALUES = {"SA1": ["5.1", "1.2", "80.5", "0.3"], "SA2": ["4.9", "", "92.0", "0.2"], "SA3": ["6.3", "2.0", "71", "0.1"]}


def test_every_value_lands_with_its_unit_and_metabolite_concept(store, options, tmp_path):
    path = write_mwtab(tmp_path / "study.txt", VALUES)
    manifest = write_manifest(tmp_path / "manifest.csv", ["SA1", "SA2", "SUBJ3"])   # SA3 found by its subject
    summary = ingest(store, "mwtab", path, "MW001", options=options, manifest=manifest)
    assert summary.rejected == 0
    assert summary.rows["measurement"] == 11                      # 12 cells, one empty
    rows = store.query_dicts("""
        SELECT c.vocabulary_id, c.concept_code, m.value_as_number, m.unit_source_value
        FROM measurement m JOIN concept c ON c.concept_id = m.measurement_source_concept_id
        ORDER BY m.value_as_number""")
    by_code = {(r["vocabulary_id"], r["concept_code"]) for r in rows}
    assert ("HMDB", "HMDB0000122") in by_code and ("HMDB", "HMDB0000562") in by_code
    assert len(rows) == 8                     # 11 values less the 3 of the unidentified feature (concept 0)
    assert {r["unit_source_value"] for r in rows} == {"umol/L"}
    assert sorted(r["value_as_number"] for r in rows if r["concept_code"] == "HMDB0000122") == [4.9, 5.1, 6.3]
    again = ingest(store, "mwtab", path, "MW001", options=options, manifest=manifest)
    assert again.unchanged == summary.loaded and store.query_one("SELECT count(*) FROM measurement") == 11


def test_a_sample_without_a_person_and_a_value_that_is_not_a_number_are_rejected_by_name(store, options, tmp_path):
    values = {**VALUES, "SA2": ["4.9", "n.d.", "92.0", "0.2"]}
    path = write_mwtab(tmp_path / "study.txt", values)
    manifest = write_manifest(tmp_path / "manifest.csv", ["SA1", "SA2"])
    summary = ingest(store, "mwtab", path, "MW001", options=options, manifest=manifest)
    rejects = store.query_dicts("SELECT field, reason FROM mercia_reject WHERE action = 'rejected' ORDER BY field")
    assert [r["field"] for r in rejects] == ["MS_METABOLITE_DATA", "Sample ID"]   # record keys are kept hashed
    assert "abundance 'n.d.' is not a number" in rejects[0]["reason"]
    assert "SA3" in rejects[1]["reason"] and "not in the manifest" in rejects[1]["reason"]
    assert summary.rows["measurement"] == 7                         # SA1: 4, SA2: 3 (n.d. rejected)


def test_free_text_units_are_kept_when_ucum_cannot_say_them(tmp_path):
    path = write_mwtab(tmp_path / "study.txt", VALUES, units="Peak area")
    staged = read_mwtab(path, write_manifest(tmp_path / "manifest.csv", ["SA1", "SA2", "SA3"]))
    assert set(staged.events.table().column("unit").to_pylist()) == {"Peak area"}


@pytest.mark.parametrize("text, message", [
    ("not an mwtab file\n", "no '#METABOLOMICS WORKBENCH' header"),
    ("#METABOLOMICS WORKBENCH STUDY_ID:ST1 ANALYSIS_ID:AN1\n#PROJECT\nPR:PROJECT_TITLE\tx\n#END\n",
     "no MS_METABOLITE_DATA or NMR_METABOLITE_DATA block"),
])
def test_files_that_are_not_mwtab_analyses_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(MwTabError, match=message):
        read_mwtab(path, write_manifest(tmp_path / "manifest.csv", ["SA1"]))


def test_binary_garbage_is_refused_and_nothing_is_loaded(store, options, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"#METABOLOMICS WORKBENCH \xff\xfe\x00")
    with pytest.raises(MwTabError, match="not UTF-8"):
        ingest(store, "mwtab", path, "MW001", options=options, manifest=write_manifest(tmp_path / "m.csv", ["SA1"]))
    assert store.query_one("SELECT count(*) FROM measurement") == 0
