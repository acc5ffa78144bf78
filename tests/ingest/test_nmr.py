"""Nightingale NMR panels -> OMOP: catalogue round trip, units, derivation check, bad input, idempotency."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.ingest.nmr import NmrError, read_manifest, read_nmr
from mercia.ingest.service import ingest
from mercia.synth.metabolomics import write_nmr_study
from mercia.vocab.metabolites import NIGHTINGALE_OFFSET, formula_names, nightingale_catalogue


@pytest.fixture(autouse=True)
def _shared_data(shared_data):
    """The public data these tests read: skipped locally when absent, a failure in CI."""
    return shared_data


# Real OMOP UCUM unit concepts (Athena), as a site's vocabulary download would hold them.
UCUM = {"mmol/L": 8753, "g/L": 8636, "%": 8554, "{ratio}": 8523, "nm": 8577, "1": 8510}


def add_ucum(store) -> None:
    store.init_schema()
    for code, concept_id in UCUM.items():
        store.execute("INSERT INTO concept VALUES (?, ?, 'Unit', 'UCUM', 'Unit', 'S', ?, DATE '1970-01-01', "
                      "DATE '2099-12-31', NULL)", [concept_id, code, code])
        store.execute("INSERT INTO concept_relationship VALUES (?, ?, 'Maps to', DATE '1970-01-01', "
                      "DATE '2099-12-31', NULL)", [concept_id, concept_id])


@pytest.fixture
def load_sampled(options):
    """load_sampled(store, kind, path, org, manifest) -> LoadSummary (readers with a sample manifest)"""
    def _load(store, kind, path, org, manifest):
        return ingest(store, kind, path, org, options=options, manifest=manifest)
    return _load


@pytest.fixture(scope="module")
def written_study(tmp_path_factory) -> Path:
    """The 40-sample study, written once for the module (0.5 CPU-s); tests get copies (``study``)."""
    folder = tmp_path_factory.mktemp("nmr-study") / "nmr"
    write_nmr_study(folder, 40, seed=3)
    return folder


@pytest.fixture
def study(written_study, tmp_path):
    """This test's own copy of the study, free to rewrite."""
    return Path(shutil.copytree(written_study, tmp_path / "nmr"))


def test_catalogue_has_ukb_panel_with_units():
    catalogue = nightingale_catalogue()
    ukb = [b for b in catalogue.values() if b.in_ukb]
    assert len(ukb) == 249
    kinds = {k: sum(b.kind == k for b in ukb) for k in ("Non-derived", "Composite", "Ratio", "Percentage")}
    assert kinds == {"Non-derived": 107, "Composite": 61, "Ratio": 4, "Percentage": 77}
    assert {b.ucum for b in ukb} == {"mmol/L", "g/L", "nm", "%", "{ratio}", "1"}


def test_panel_round_trips_every_measure_with_its_unit(store, load_sampled, study):
    add_ucum(store)
    summary = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    assert summary.rejected == 0 and summary.loaded == 40 * 2  # 40 sample records + 40 person records
    assert summary.rows["measurement"] == 40 * 249
    rows = store.query("""SELECT c.concept_code, m.unit_concept_id, m.unit_source_value, count(*)
                          FROM measurement m JOIN concept c ON c.concept_id = m.measurement_source_concept_id
                          WHERE c.vocabulary_id = 'Nightingale' GROUP BY 1, 2, 3""")
    catalogue = nightingale_catalogue()
    assert len(rows) == 249
    for code, unit_concept, unit, count in rows:
        assert count == 40 and unit == catalogue[code].ucum and unit_concept == UCUM[unit]
    assert store.query_one("SELECT min(measurement_source_concept_id) FROM measurement") > NIGHTINGALE_OFFSET
    # value exactly as in the file
    with (study / "nmr_wide.csv").open() as handle:
        first = next(csv.DictReader(handle))
    glucose = store.query_one("""SELECT value_as_number FROM measurement m JOIN concept c
                                 ON c.concept_id = m.measurement_source_concept_id AND c.concept_code = 'Glucose'
                                 JOIN mercia_provenance p ON p.cdm_table = 'measurement' AND p.row_id = m.measurement_id
                                 ORDER BY m.value_as_number""")
    assert glucose is not None and float(first["Glucose"]) > 0
    assert store.query_one("SELECT count(*) FROM specimen") == 40
    assert store.query_one("SELECT count(*) FROM observation WHERE observation_source_value = 'Spectrometer'") == 40
    # provenance for every measurement row
    assert store.query_one("""SELECT count(*) FROM measurement m WHERE NOT EXISTS (SELECT 1 FROM mercia_provenance p
                              WHERE p.cdm_table = 'measurement' AND p.row_id = m.measurement_id)""") == 0


def test_resend_is_idempotent(store, load_sampled, study, snapshot):
    load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    before = snapshot(store)
    again = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    assert again.unchanged == 80 and snapshot(store) == before


def _rewrite(path: Path, edit) -> None:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_row_ids_follow_source_record_then_code(store, load_sampled, study):
    """A load numbers its rows in (source record, code) order, so a file lands with the same ids whatever
    order the engine's threads produced them in (the numbering sorts only those keys)."""
    load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    rows = store.query("""SELECT p.source_record, m.measurement_source_value, m.measurement_id FROM measurement m
                          JOIN mercia_provenance p ON p.cdm_table = 'measurement' AND p.row_id = m.measurement_id""")
    ids = [row_id for _, _, row_id in sorted(rows)]  # code-point order, as the load sorts
    assert len(ids) == 40 * 249 and ids == list(range(ids[0], ids[0] + len(ids)))


def test_derived_values_rederived_and_mismatch_rejected(store, load_sampled, study):
    header = []

    def corrupt(rows):
        header.extend(rows[0])
        rows[1][rows[0].index("LDL_C")] = str(float(rows[1][rows[0].index("LDL_C")]) * 1.01)
        rows[2][rows[0].index("Total_C")] = "not-a-number"

    _rewrite(study / "nmr_wide.csv", corrupt)
    staged = read_nmr(study / "nmr_wide.csv", study / "manifest.csv")
    rejects = staged.rejects.table().to_pylist()
    assert {(r["field"], r["line"]) for r in rejects} == {("LDL_C", 2), ("Total_C", 3)}
    ldl = next(r for r in rejects if r["field"] == "LDL_C")
    assert "re-derived" in ldl["reason"] and ldl["record"].endswith("/LDL_C")
    summary = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    assert summary.rejected == 2 and summary.rows["measurement"] == 40 * 249 - 2


def test_unknown_biomarker_and_sample_without_person(store, load_sampled, study):
    def edit(rows):
        rows[0].append("Made_Up_Marker")
        for row in rows[1:]:
            row.append("1.0")
    _rewrite(study / "nmr_wide.csv", edit)
    _rewrite(study / "manifest.csv", lambda rows: rows.pop(1))
    summary = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    reasons = store.query("SELECT field, reason FROM mercia_reject WHERE action = 'rejected' ORDER BY field")
    assert ("Made_Up_Marker", "unknown biomarker: not in the Nightingale catalogue (nmr_info.csv); column not loaded") \
        in reasons
    assert any(f == "sample_id" and "not in the manifest" in r for f, r in reasons)
    assert summary.rows["measurement"] == 39 * 249


def test_long_format_wrong_unit_rejected(store, load_sampled, tmp_path):
    write_nmr_study(tmp_path, 2, seed=4)
    with (tmp_path / "nmr_wide.csv").open() as handle:
        wide = list(csv.DictReader(handle))
    catalogue = nightingale_catalogue()
    with (tmp_path / "long.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "biomarker", "value", "unit", "qc_flag"])
        for row in wide:
            for name, value in row.items():
                if name in catalogue:
                    unit = catalogue[name].unit
                    if name == "Glucose" and row is wide[0]:
                        unit = "mg/dL"
                    writer.writerow([row["sample_id"], name, value, unit,
                                     "Below limit of quantification" if name == "Acetone" else ""])
    summary = load_sampled(store, "nmr", tmp_path / "long.csv", "NMR02", tmp_path / "manifest.csv")
    assert summary.rows["measurement"] == 2 * 249 - 1
    (field, reason), = store.query("SELECT field, reason FROM mercia_reject WHERE action = 'rejected'")
    assert field == "unit" and "'mg/dL' is not mmol/L" in reason
    assert store.query_one("""SELECT count(*) FROM observation WHERE observation_source_value = 'QC flag'
                              AND qualifier_source_value = 'Acetone'""") == 2


def test_long_format_repeated_biomarker_of_a_sample_loads_once_or_not_at_all(store, load_sampled, tmp_path):
    """One value per biomarker and sample: a line repeated alike is loaded once; lines that disagree are all
    rejected (nothing says which is right), and the sample's other values load."""
    write_nmr_study(tmp_path, 2, seed=4)
    with (tmp_path / "nmr_wide.csv").open() as handle:
        first, second = list(csv.DictReader(handle))
    catalogue = nightingale_catalogue()
    rows = [[row["sample_id"], name, row[name], catalogue[name].unit]
            for row in (first, second) for name in catalogue if name in row]
    glucose = [r for r in rows if r[1] == "Glucose"]
    rows += [glucose[0], [*glucose[1][:2], str(float(glucose[1][2]) + 1), glucose[1][3]]]
    with (tmp_path / "long.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["sample_id", "biomarker", "value", "unit"], *rows])
    summary = load_sampled(store, "nmr", tmp_path / "long.csv", "NMR02", tmp_path / "manifest.csv")
    assert summary.rows["measurement"] == 2 * 249 - 1
    repeat_line, copy_line = rows.index(glucose[0]) + 2, len(rows)       # file lines: header is line 1
    conflict_lines = sorted([rows.index(glucose[1]) + 2, len(rows) + 1])
    assert store.query("SELECT line, field, reason FROM mercia_reject ORDER BY line") == [
        (conflict_lines[0], "value", f"Glucose has 2 different values in sample {second['sample_id']} "
                                     f"(lines {conflict_lines[0]}, {conflict_lines[1]}): none loaded"),
        (copy_line, "biomarker", f"repeats line {repeat_line} (Glucose of sample {first['sample_id']}, the same "
                                 "value): loaded once"),
        (conflict_lines[1], "value", f"Glucose has 2 different values in sample {second['sample_id']} "
                                     f"(lines {conflict_lines[0]}, {conflict_lines[1]}): none loaded")]
    glucoses = store.query("""SELECT value_as_number FROM measurement m JOIN concept c
                              ON c.concept_id = m.measurement_source_concept_id WHERE c.concept_code = 'Glucose'""")
    assert glucoses == [(float(first["Glucose"]),)]


def test_ukb_field_columns(tmp_path):
    write_nmr_study(tmp_path, 3, seed=5)
    catalogue = nightingale_catalogue()
    with (tmp_path / "nmr_wide.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    with (tmp_path / "ukb.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        names = [n for n in rows[0] if n in catalogue]
        writer.writerow(["eid"] + [f"{catalogue[n].ukb_field}-0.0" for n in names] + ["23650-0.0"])
        for i, row in enumerate(rows):
            writer.writerow([1000 + i] + [row[n] for n in names] + ["2"])
    with (tmp_path / "manifest.csv").open("w") as handle:
        handle.write("sample_id,local_id,collection_date\n" + "".join(f"{1000 + i}_0,L{i},2020-01-01\n"
                                                                     for i in range(3)))
    staged = read_nmr(tmp_path / "ukb.csv", tmp_path / "manifest.csv")
    events = staged.events.table()
    assert staged.rejects.table().num_rows == 0
    assert staged.values.num_rows == 3 * 249
    assert set(staged.values.column("record").to_pylist()) == {"NMR/1000_0", "NMR/1001_0", "NMR/1002_0"}
    assert set(events.column("person_ref").to_pylist()) == {"Patient/L0", "Patient/L1", "Patient/L2"}


def test_missing_manifest_or_garbage_file_is_a_clear_error(tmp_path, study):
    (tmp_path / "x.csv").write_text("hello,world\n1,2\n")
    with pytest.raises(NmrError, match="no sample id column"):
        read_nmr(tmp_path / "x.csv", study / "manifest.csv")
    with pytest.raises(NmrError, match="needs columns sample_id"):
        read_nmr(study / "nmr_wide.csv", tmp_path / "x.csv")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_garbage_bytes_give_documented_errors_only(tmp_path, study, data):
    path = tmp_path / "garbage.csv"
    path.write_bytes(data)
    try:
        read_nmr(path, study / "manifest.csv")
    except NmrError:
        pass


def test_cli_needs_a_manifest_and_loads_with_one(study, tmp_path, pseudonym_key):
    from typer.testing import CliRunner

    from mercia.cli import app

    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    refused = runner.invoke(app, ["ingest", "nmr", str(study / "nmr_wide.csv"), "--org", "NMR01", "--db", db])
    assert refused.exit_code != 0 and "--manifest" in refused.output
    done = runner.invoke(app, ["ingest", "nmr", str(study / "nmr_wide.csv"), "--org", "NMR01", "--db", db,
                               "--manifest", str(study / "manifest.csv"), "--json"])
    assert done.exit_code == 0, done.output
    assert '"loaded": 80' in done.output


def _flag(rows, line: int, biomarker: str, flag: str, scale: float = 1.0) -> None:
    """Give the value of ``biomarker`` on file line ``line`` a QC flag (and optionally a wrong value)."""
    column = f"{biomarker}_QC_Flag"
    if column not in rows[0]:
        rows[0].append(column)
        for row in rows[1:]:
            row.append("")
    rows[line - 1][rows[0].index(column)] = flag
    rows[line - 1][rows[0].index(biomarker)] = repr(float(rows[line - 1][rows[0].index(biomarker)]) * scale)


def test_unusable_qc_flag_excluded_before_rederivation(store, load_sampled, study):
    """A degraded value (here also 10x off) is kept in its QC-flag observation, not measured, and neither it
    nor the composites computed from it are compared or loaded; a below-LOQ value stays a measurement."""
    _rewrite(study / "nmr_wide.csv", lambda rows: (_flag(rows, 2, "XL_HDL_CE", "Degraded sample", 10.0),
                                                   _flag(rows, 3, "Acetone", "Below limit of quantification")))
    catalogue = nightingale_catalogue()
    dependants = {b.name for b in catalogue.values() if b.in_ukb and "XL_HDL_CE" in formula_names(b.formula)}
    assert {"Total_C", "HDL_C", "XL_HDL_C"} <= dependants
    staged = read_nmr(study / "nmr_wide.csv", study / "manifest.csv")
    assert staged.rejects.table().num_rows == 0  # nothing re-derived from the degraded value
    summary = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    assert summary.rejected == 0
    assert summary.rows["measurement"] == 40 * 249 - 1 - len(dependants)
    kept = dict(store.query("""SELECT qualifier_source_value, value_source_value FROM observation
                               WHERE observation_source_value = 'QC flag' AND value_as_number IS NOT NULL"""))
    assert set(kept) == {"XL_HDL_CE"} | dependants
    assert kept["XL_HDL_CE"] == "Degraded sample"
    assert kept["Total_C"] == "computed from QC-flagged XL_HDL_CE"
    acetone = store.query_one("""SELECT count(*) FROM measurement m JOIN concept c
                                 ON c.concept_id = m.measurement_source_concept_id WHERE c.concept_code = 'Acetone'""")
    assert acetone == 40


def test_usable_flag_does_not_hide_a_wrong_value(study):
    """The same 10x error under a usable flag (below LOQ) is still caught by the re-derivation."""
    _rewrite(study / "nmr_wide.csv", lambda rows: _flag(rows, 2, "XL_HDL_CE", "Below limit of quantification", 10.0))
    rejects = read_nmr(study / "nmr_wide.csv", study / "manifest.csv").rejects.table().to_pylist()
    assert {r["field"] for r in rejects} >= {"Total_C", "HDL_C", "XL_HDL_C"}
    assert all("re-derived" in r["reason"] and r["line"] == 2 for r in rejects)


def _technical_study(tmp_path: Path) -> tuple[Path, Path]:
    """960 samples (ten plates) with known technical effects on every measured biomarker: x1.25 on plate
    row A and exp(0.004 per hour) between preparation and measurement; composites computed from the
    affected values, as a laboratory would deliver them."""
    import duckdb
    import numpy as np

    from mercia.synth.metabolomics import nmr_panel
    from mercia.vocab.metabolites import formula_sql, quote_name

    study = nmr_panel(960, seed=21)
    rng = np.random.default_rng(4)
    hours = rng.uniform(1, 48, 960)
    row_a = np.array([w.startswith("A") for w in study.panel.column("Well.Position.Within.Plate").to_pylist()])
    factor = np.exp(0.004 * hours) * np.where(row_a, 1.25, 1.0)
    catalogue = nightingale_catalogue()
    measured = {b.name: study.panel.column(b.name).to_numpy() * factor for b in catalogue.values()
                if b.in_ukb and b.measured}
    con = duckdb.connect()
    con.register("m", pa.table(measured))
    derived = con.sql("SELECT " + ", ".join(f"CAST({formula_sql(b.formula)} AS DOUBLE) AS {quote_name(b.name)}"
                                            for b in catalogue.values() if b.in_ukb and not b.measured)
                      + " FROM m").to_arrow_table()
    prepared = np.datetime64("2024-01-01T08:00") + np.arange(960).astype("timedelta64[m]") * 30
    columns = {name: study.panel.column(name) for name in study.panel.column_names[:5]}
    columns["Sample.Prepared.Date.and.Time"] = pa.array(prepared.astype(str))
    columns["Sample.Measured.Date.and.Time"] = pa.array(
        (prepared + (hours * 3600).astype("timedelta64[s]")).astype("datetime64[s]").astype(str))
    for b in catalogue.values():
        if b.in_ukb:
            columns[b.name] = pa.array(measured[b.name]) if b.measured else derived.column(b.name)
    con.register("panel", pa.table(columns))
    con.execute(f"COPY panel TO '{tmp_path / 'tv.csv'}' (HEADER)")
    with (tmp_path / "tv_manifest.csv").open("w") as handle:
        handle.write("sample_id,local_id,collection_date\n" + "".join(
            f"{s},L{i},2024-01-01\n" for i, s in enumerate(study.panel.column("sample_id").to_pylist())))
    con.register("truth", pa.table({"sample_id": study.panel.column("sample_id"), "hours": hours, "row_a": row_a,
                                    "diabetes": study.truth.column("diabetes")}))
    con.execute(f"COPY truth TO '{tmp_path / 'tv_truth.csv'}' (HEADER)")
    return tmp_path / "tv.csv", tmp_path / "tv_manifest.csv"


def _values(staged, truth: Path):
    """A DuckDB connection with ``vals`` (sample_id, biomarker, value, hours, row_a, diabetes) of a staged panel."""
    import duckdb
    con = duckdb.connect()
    con.register("staged_values", staged.values)
    con.execute(f"""CREATE TABLE vals AS SELECT replace(e.record, 'NMR/', '') AS sample_id, e.code AS biomarker,
                                                e.value_number AS value, t.hours, t.row_a, t.diabetes
                    FROM staged_values e JOIN read_csv('{truth}') t ON t.sample_id = replace(e.record, 'NMR/', '')""")
    return con


def test_technical_variation_removed_and_composites_rederived(tmp_path):
    """Opt-in (Ritchie et al. 2023 steps): the row and time effects injected into every measured biomarker
    are gone, diabetes still raises glucose, composites equal their adjusted parts."""
    panel, manifest = _technical_study(tmp_path)
    truth = tmp_path / "tv_truth.csv"
    raw = read_nmr(panel, manifest)
    assert raw.rejects.table().num_rows == 0

    def effects(staged):
        return _values(staged, truth).execute("""SELECT max(abs(row_effect)), max(abs(slope)) FROM (
            SELECT biomarker, avg(ln(value)) FILTER (WHERE row_a) - avg(ln(value)) FILTER (WHERE NOT row_a) AS row_effect,
                   regr_slope(ln(value), hours) AS slope
            FROM vals WHERE biomarker IN ('Glucose', 'Creatinine', 'XL_HDL_CE', 'Albumin', 'Ala') GROUP BY 1)""").fetchall()[0]
    raw_row, raw_slope = effects(raw)
    assert raw_row > 0.15 and raw_slope > 0.003        # the injected log(1.25) = 0.22 and 0.004 per hour
    adjusted = read_nmr(panel, manifest, remove_technical_variation=True)
    assert adjusted.rejects.table().num_rows == 0
    row, slope = effects(adjusted)
    assert row < 0.03 and slope < 0.0005
    con = _values(adjusted, truth)
    (ratio,) = con.execute("""SELECT avg(value) FILTER (WHERE diabetes) / avg(value) FILTER (WHERE NOT diabetes)
                              FROM vals WHERE biomarker = 'Glucose'""").fetchall()[0]
    assert 1.45 < ratio < 1.75                           # the synthetic disease effect (x1.6) survives
    parts = ", ".join(f"'{b}'" for b in formula_names(nightingale_catalogue()["Total_C"].formula))
    (worst,) = con.execute(f"""SELECT max(abs(t.value - s.value) / t.value)
        FROM (SELECT sample_id, value FROM vals WHERE biomarker = 'Total_C') t
        JOIN (SELECT sample_id, sum(value) AS value FROM vals WHERE biomarker IN ({parts}) GROUP BY 1) s
        USING (sample_id)""").fetchall()[0]
    assert worst < 1e-9
    marks = [e for e in adjusted.events.table().to_pylist() if e["code"] == "Technical variation removed"]
    assert len(marks) == 960 and "Ritchie 2023" in marks[0]["value_code"]


def test_technical_variation_only_for_nmr(tmp_path):
    from mercia.ingest.service import read_source
    (tmp_path / "x.vcf").write_text("")
    with pytest.raises(ValueError, match="applies to NMR panels"):
        read_source("vcf", tmp_path / "x.vcf", remove_technical_variation=True)


def test_cli_remove_technical_variation_flag(study, tmp_path, pseudonym_key):
    from typer.testing import CliRunner

    from mercia.cdm import Store
    from mercia.cli import app

    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    refused = runner.invoke(app, ["ingest", "vcf", str(study / "nmr_wide.csv"), "--org", "NMR01", "--db", db,
                                  "--remove-technical-variation"])
    assert refused.exit_code != 0 and "nmr panels only" in refused.output
    done = runner.invoke(app, ["ingest", "nmr", str(study / "nmr_wide.csv"), "--org", "NMR01", "--db", db,
                               "--manifest", str(study / "manifest.csv"), "--remove-technical-variation", "--json"])
    assert done.exit_code == 0, done.output
    with Store(db) as store:
        assert store.query_one("""SELECT count(*) FROM observation
                                  WHERE observation_source_value = 'Technical variation removed'""") == 40


def _loaded_content(store) -> dict[str, list]:
    """What a load produced, independent of the row ids it drew (which depend on the chunking)."""
    return {
        "rejects": store.query("SELECT source_record, line, field, reason, action FROM mercia_reject "
                               "ORDER BY 1, 2, 3, 4"),
        "links": store.query("SELECT source_pseudonym, record_hash FROM mercia_person_link ORDER BY 1"),
        "values": store.query("""SELECT p.source_record, m.measurement_source_concept_id, m.value_as_number,
                                        l.source_pseudonym
                                 FROM measurement m JOIN mercia_provenance p ON p.cdm_table = 'measurement'
                                   AND p.row_id = m.measurement_id
                                 JOIN mercia_person_link l ON l.person_id = m.person_id ORDER BY 1, 2"""),
        "observations": store.query("""SELECT observation_source_value, qualifier_source_value, value_source_value,
                                              count(*) FROM observation GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""),
        "specimens": store.query("SELECT count(*), count(DISTINCT person_id) FROM specimen"),
        "persons": store.query("SELECT count(*) FROM person"),
        "periods": store.query("""SELECT l.source_pseudonym, o.observation_period_start_date,
                                         o.observation_period_end_date FROM observation_period o
                                  JOIN mercia_person_link l USING (person_id) ORDER BY 1, 2"""),
    }


@pytest.fixture
def awkward_study(study):
    """The 40-sample study with a value that fails re-derivation (line 13), an unknown column, and
    samples 1 and 30 given by the same person (one person record used by two chunks)."""
    def corrupt(rows):
        rows[12][rows[0].index("LDL_C")] = str(float(rows[12][rows[0].index("LDL_C")]) * 1.01)
        rows[0].append("Made_Up_Marker")
        for row in rows[1:]:
            row.append("1.0")
    _rewrite(study / "nmr_wide.csv", corrupt)

    def same_person(rows):
        rows[30][rows[0].index("local_id")] = rows[1][rows[0].index("local_id")]
        rows[30][rows[0].index("birth_date")] = rows[1][rows[0].index("birth_date")]
        rows[30][rows[0].index("sex")] = rows[1][rows[0].index("sex")]
    _rewrite(study / "manifest.csv", same_person)
    return study


def _chunked_and_whole(store, whole_store, options, study) -> tuple:
    """The study's file loaded in chunks of 14 rows into ``store`` and as one chunk into ``whole_store``."""
    from mercia.ingest.load import load_staged
    from mercia.ingest.nmr import read_nmr_chunks
    from mercia.vocab.metabolites import ensure_local_concepts

    summaries = []
    for target, chunk_samples in ((store, 14), (whole_store, None)):
        chunks = list(read_nmr_chunks(study / "nmr_wide.csv", study / "manifest.csv", chunk_samples=chunk_samples))
        assert len(chunks) == (3 if chunk_samples else 1)
        for chunk in chunks:
            ensure_local_concepts(target, chunk.codes())
        summaries.append(load_staged(target, chunks, "NMR01", "nmr", options))
    return tuple(summaries)


def test_chunked_load_lands_exactly_what_a_whole_file_load_does(store, store_factory, engine, options,
                                                                 awkward_study):
    whole_store = store_factory(engine)
    chunked, whole = _chunked_and_whole(store, whole_store, options, awkward_study)
    assert chunked.__dict__ | {"load_id": 0} == whole.__dict__ | {"load_id": 0}
    assert chunked.loaded == 40 + 39 and chunked.rejected == 2 and chunked.rows["measurement"] == 40 * 249 - 1
    assert _loaded_content(store) == _loaded_content(whole_store)
    assert store.query("SELECT line FROM mercia_reject WHERE field = 'LDL_C'") == [(13,)]
    assert store.query_one("SELECT count(*) FROM mercia_load") == 1


def test_value_provenance_is_one_row_per_measurement_row_naming_its_record(store, options, awkward_study,
                                                                          monkeypatch):
    """Each chunk numbers its values' provenance in Arrow apart from the rows themselves: every measurement
    row has exactly one provenance row, no provenance row lacks its row, and each names the record its
    value came from (records of unequal sizes, three chunks, so a shifted id or record would show)."""
    import functools
    import math

    from mercia.ingest import nmr

    monkeypatch.setattr(nmr, "read_nmr_chunks", functools.partial(nmr.read_nmr_chunks, chunk_samples=14))
    ingest(store, "nmr", awkward_study / "nmr_wide.csv", "NMR01", options=options,
           manifest=awkward_study / "manifest.csv")
    ids = [row_id for (row_id,) in store.query("SELECT measurement_id FROM measurement ORDER BY 1")]
    provenance = store.query("""SELECT row_id, source_record, record_hash, org, extract, load_id FROM mercia_provenance
                                WHERE cdm_table = 'measurement' ORDER BY row_id""")
    assert len(ids) == 40 * 249 - 1 and [row[0] for row in provenance] == ids
    assert {row[3:] for row in provenance} == {("NMR01", "nmr_wide.csv", 1)}
    specimen_hash = dict(store.query("SELECT source_record, record_hash FROM mercia_provenance "
                                     "WHERE cdm_table = 'specimen'"))
    records: dict[str, list] = {}
    for row_id, record, record_hash, *_ in provenance:
        assert record_hash == specimen_hash[record]  # the record's own hash on each of its rows
        records.setdefault(record, []).append(row_id)
    assert all(rows == list(range(rows[0], rows[0] + len(rows))) for rows in records.values())
    # the record each row names is the one it was loaded from: its sample's person, and its sample's values
    assert store.query_one("""SELECT count(*) FROM measurement m
                              JOIN mercia_provenance p ON p.cdm_table = 'measurement' AND p.row_id = m.measurement_id
                              JOIN mercia_provenance ps ON ps.cdm_table = 'specimen'
                                                       AND ps.source_record = p.source_record
                              JOIN specimen s ON s.specimen_id = ps.row_id
                              WHERE s.person_id <> m.person_id""") == 0
    values: dict[str, dict[str, float]] = {}
    for record, code, value in store.query("""SELECT p.source_record, m.measurement_source_value, m.value_as_number
                                              FROM measurement m JOIN mercia_provenance p
                                                ON p.cdm_table = 'measurement' AND p.row_id = m.measurement_id"""):
        values.setdefault(record, {})[code] = float(value)
    with (awkward_study / "nmr_wide.csv").open() as handle:
        samples = list(csv.DictReader(handle))

    def holds(sample, record_values):
        return all(math.isclose(float(sample[code]), value, rel_tol=1e-12) for code, value in record_values.items())

    assert len(values) == 40
    assert all(sum(holds(sample, found) for sample in samples) == 1 for found in values.values())


def test_failure_in_a_later_chunk_leaves_nothing_and_resend_adds_nothing(store, options, snapshot, study):
    from mercia.ingest.load import load_staged
    from mercia.ingest.nmr import read_nmr_chunks
    from mercia.vocab.metabolites import ensure_local_concepts

    wide, manifest = study / "nmr_wide.csv", study / "manifest.csv"
    ensure_local_concepts(store, read_nmr(wide, manifest).codes())
    empty = snapshot(store)

    def failing():
        for number, chunk in enumerate(read_nmr_chunks(wide, manifest, chunk_samples=15)):
            if number == 2:
                raise NmrError("disk went away after two chunks")
            yield chunk

    with pytest.raises(NmrError, match="two chunks"):
        load_staged(store, failing(), "NMR01", "nmr", options)
    assert snapshot(store) == empty
    first = load_staged(store, read_nmr_chunks(wide, manifest, chunk_samples=15), "NMR01", "nmr", options)
    loaded = snapshot(store)
    again = load_staged(store, read_nmr_chunks(wide, manifest, chunk_samples=15), "NMR01", "nmr", options)
    assert first.loaded == 80 and again.unchanged == 80 and again.rows.get("measurement", 0) == 0
    assert snapshot(store) == loaded


def test_a_file_broken_where_the_read_ahead_reads_fails_the_whole_load_naming_the_row(heavy_store, options, snapshot,
                                                                                       tmp_path, monkeypatch):
    """``ingest`` reads chunk k+1 in a thread while chunk k loads: a file broken past its first CSV block
    fails in that thread after earlier chunks were written, and the load still fails as a whole, naming
    the broken row (its sample id), with nothing of it left in the store."""
    import functools

    from mercia.ingest import nmr

    write_nmr_study(tmp_path / "nmr", 300, seed=3)  # ~1.4 MB: the streaming CSV reader's second block
    wide, manifest = tmp_path / "nmr" / "nmr_wide.csv", tmp_path / "nmr" / "manifest.csv"
    _rewrite(wide, lambda rows: rows.__setitem__(280, [rows[280][0], "1.0", "2.0"]))
    broken_sample = read_manifest(manifest).column("sample_id")[279].as_py()
    monkeypatch.setattr(nmr, "read_nmr_chunks", functools.partial(nmr.read_nmr_chunks, chunk_samples=60))
    store = heavy_store
    add_ucum(store)
    empty = snapshot(store)
    steps = []
    with pytest.raises(NmrError, match=f"nmr_wide.csv: not a readable .*got 3: {broken_sample},1.0,2.0"):
        ingest(store, "nmr", wide, "NMR01", options=options, manifest=manifest, on_step=steps.append)
    assert sum(step.startswith("loading") for step in steps) >= 2  # earlier chunks were loaded meanwhile
    assert snapshot(store) == empty
    assert store.query_one("SELECT count(*) FROM mercia_load") == 0


def test_a_load_failing_while_the_next_chunk_is_read_leaves_no_thread_or_open_file(heavy_store, options, study,
                                                                                     monkeypatch):
    """The load fails on its first chunk while the read-ahead thread reads the second: by the time the error
    reaches the caller (which still holds it, and so the failed frames), that read has ended, the thread is
    gone and the file is closed."""
    import functools
    import os
    import threading

    from mercia.ingest import load, nmr

    def failing(*args, **kwargs):
        raise RuntimeError("the store went away")

    monkeypatch.setattr(nmr, "read_nmr_chunks", functools.partial(nmr.read_nmr_chunks, chunk_samples=10))
    monkeypatch.setattr(load, "_load_chunk", failing)
    wide = study / "nmr_wide.csv"
    with pytest.raises(RuntimeError, match="went away") as failed:
        ingest(heavy_store, "nmr", wide, "NMR01", options=options, manifest=study / "manifest.csv")
    assert failed.value is not None  # held: its traceback keeps the failed load's frames alive
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("mercia-read-ahead")]
    open_files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    assert str(wide.resolve()) not in open_files


def test_a_sample_again_in_a_later_chunk_is_stored_once_or_replaces_the_earlier_copy(store, options, study):
    """A chunk finds the records earlier chunks of its own load read (the load's record list, not a
    read of its provenance): the same sample again is stored once, a changed one replaces the earlier
    copy; each is one record, loaded, neither unchanged nor changed (nothing was stored before the load;
    they counted as one of each before)."""
    from mercia.ingest.load import load_staged
    from mercia.ingest.nmr import read_nmr_chunks
    from mercia.vocab.metabolites import ensure_local_concepts

    def repeat_two_samples(rows):
        glucose = rows[0].index("Glucose")
        corrected = list(rows[2])
        corrected[glucose] = str(float(corrected[glucose]) + 1.0)
        rows.extend([list(rows[1]), corrected])
    _rewrite(study / "nmr_wide.csv", repeat_two_samples)
    wide, manifest = study / "nmr_wide.csv", study / "manifest.csv"
    chunks = list(read_nmr_chunks(wide, manifest, chunk_samples=14))
    assert len(chunks) == 3  # samples 1 and 2 in the first chunk, again in the last
    for chunk in chunks:
        ensure_local_concepts(store, chunk.codes())
    summary = load_staged(store, chunks, "NMR01", "nmr", options)
    assert (summary.records, summary.loaded, summary.unchanged, summary.changed) == (80, 80, 0, 0)
    assert store.query_one("SELECT count(*) FROM measurement") == summary.rows["measurement"] == 40 * 249
    assert store.query_one("SELECT count(*) FROM specimen") == 40
    with wide.open() as handle:
        rows = list(csv.reader(handle))
    glucose = rows[0].index("Glucose")
    values = [v for (v,) in store.query("SELECT value_as_number FROM measurement "
                                        "WHERE measurement_source_value = 'Glucose'")]
    assert len(values) == 40 and float(rows[-1][glucose]) in values and float(rows[2][glucose]) not in values


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)   # one DuckDB file has one writing process
def test_a_second_load_at_once_waits_for_the_first_on_postgres(store, options, tmp_path):
    """A chunk looks records up among earlier loads by ``load_id <`` its own and numbers rows from the
    tables' largest ids read once per load: both need loads on one store to take turns.  A second
    session's load waits for the first's transaction, then takes the next load id and ids after its rows."""
    import threading

    from mercia.cdm import Store
    from mercia.cdm.extensions import ensure_extension_tables
    from mercia.ingest.load import load_staged
    from mercia.ingest.nmr import read_nmr_chunks
    from mercia.vocab.metabolites import ensure_local_concepts
    from tests.conftest import postgres_url

    loads = []
    for n in (1, 2):
        folder = tmp_path / f"nmr{n}"
        write_nmr_study(folder, 6, seed=n)
        loads.append(list(read_nmr_chunks(folder / "nmr_wide.csv", folder / "manifest.csv", chunk_samples=3)))
        for chunk in loads[-1]:
            ensure_local_concepts(store, chunk.codes())
    ensure_extension_tables(store)
    other = Store(postgres_url(), schema=store.schema)
    second = []
    try:
        with store.transaction():
            first = load_staged(store, loads[0], "NMR01", "nmr", options)
            waiting = threading.Thread(target=lambda: second.append(load_staged(other, loads[1], "NMR02", "nmr",
                                                                                options)))
            waiting.start()
            waiting.join(2)
            assert waiting.is_alive()  # the second load waits for this transaction
        waiting.join(120)
    finally:
        other.close()
    assert second and second[0].load_id == first.load_id + 1
    assert store.query("SELECT measurement_id FROM measurement GROUP BY 1 HAVING count(*) > 1") == []
    written = first.rows["measurement"] + second[0].rows["measurement"]
    assert store.query_one("SELECT count(*) FROM measurement") == written


def _glucose(store) -> list[float]:
    return sorted(v for (v,) in store.query("""SELECT m.value_as_number FROM measurement m JOIN concept c
        ON c.concept_id = m.measurement_source_concept_id AND c.concept_code = 'Glucose'"""))


def _repeat_twice(study) -> tuple[list[float], float]:
    """Sample 1's row again at line 42 with another glucose, sample 2's again alike at line 43: the glucose
    values a load should keep, and sample 1's new one."""
    glucoses = []

    def repeat(rows):
        column = rows[0].index("Glucose")
        glucoses.extend(float(row[column]) for row in rows[1:])
        changed = list(rows[1])
        changed[column] = str(float(changed[column]) + 1.5)
        rows.extend([changed, list(rows[2])])
        glucoses[0] = float(changed[column])
    _rewrite(study / "nmr_wide.csv", repeat)
    return sorted(glucoses), glucoses[0]


def test_sample_repeated_in_a_wide_file_keeps_its_last_row_like_any_record(store, load_sampled, study, snapshot):
    """A sample's row repeated with other values keeps the last row, values and all (both rows' values were
    loaded into one record before); repeated alike it is stored once."""
    from mercia.ingest.load import REPEATED_RECORD, SAME_RECORD

    glucoses, _ = _repeat_twice(study)
    summary = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    assert (summary.records, summary.loaded, summary.rejected) == (80, 80, 0)  # 40 samples + 40 persons
    assert summary.rows["measurement"] == 40 * 249 and store.query_one("SELECT count(*) FROM specimen") == 40
    assert _glucose(store) == glucoses
    assert store.query("SELECT line, reason, action FROM mercia_reject ORDER BY 1") == [
        (2, REPEATED_RECORD, "superseded"), (3, SAME_RECORD, "superseded")]
    before = snapshot(store)
    again = load_sampled(store, "nmr", study / "nmr_wide.csv", "NMR01", study / "manifest.csv")
    assert (again.unchanged, again.changed) == (80, 0) and snapshot(store) == before


def test_sample_repeated_across_chunks_lands_as_in_one_chunk(store, store_factory, engine, options, study):
    """Sample 1 at lines 2 and 42 (other glucose), sample 2 at 3 and 43 (alike), in chunks of 14 rows: the
    first and third chunk hold the copies. Counts, rows and rejects are those of the whole file read as one
    chunk (the earlier chunk's copy was loaded and counted again, and its rows replaced, before). A resend
    in chunks counts every record unchanged and leaves the same content; sample 1's rows are written
    again (new ids): its first chunk, not knowing of the later copy, replaced them with the earlier one."""
    from mercia.ingest.load import load_staged
    from mercia.ingest.nmr import read_nmr_chunks

    glucoses, _ = _repeat_twice(study)
    whole_store = store_factory(engine)
    chunked, whole = _chunked_and_whole(store, whole_store, options, study)
    assert (whole.records, whole.loaded, whole.rejected, whole.changed, whole.unchanged) == (80, 80, 0, 0, 0)
    assert chunked.__dict__ | {"load_id": 0} == whole.__dict__ | {"load_id": 0}
    assert chunked.rows["measurement"] == 40 * 249 and _glucose(store) == glucoses
    assert _loaded_content(store) == _loaded_content(whole_store)
    before = _loaded_content(store)
    again = load_staged(store, read_nmr_chunks(study / "nmr_wide.csv", study / "manifest.csv", chunk_samples=14),
                        "NMR01", "nmr", options)
    assert (again.records, again.loaded, again.unchanged, again.changed) == (80, 80, 80, 0)
    assert _loaded_content(store) == before and _glucose(store) == glucoses
