"""Synthetic Nightingale NMR panels with known disease effects, for tests and benchmarks.

Measured biomarkers are log-normal around plausible adult plasma levels, with one shared
"lipoprotein" factor so lipid measures correlate.  Ground truth effects (multiplicative):
diabetes raises Glucose (x1.6) and GlycA (x1.15); chronic kidney disease raises Creatinine (x1.8);
statins lower LDL/IDL lipids and Clinical_LDL_C (x0.65) and ApoB (x0.75).  Composites, ratios and
percentages are computed from the measured values with the catalogue's own formulas (in DuckDB),
so a reader re-deriving them must agree to floating-point precision.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mercia.vocab.metabolites import formula_sql, nightingale_catalogue, quote_name

# Typical plasma levels (catalogue units) for named measured biomarkers; lipoprotein subclass
# lipids and particles default by size class below.
LEVELS = {"Clinical_LDL_C": 3.2, "VLDL_size": 36.0, "LDL_size": 23.5, "HDL_size": 9.9, "Phosphoglyc": 2.1,
          "Cholines": 2.6, "Phosphatidylc": 2.0, "Sphingomyelins": 0.5, "ApoB": 1.0, "ApoA1": 1.55,
          "Unsaturation": 1.3, "Omega_3": 0.5, "Omega_6": 3.6, "MUFA": 3.1, "SFA": 4.2, "LA": 3.0, "DHA": 0.2,
          "Ala": 0.38, "Gln": 0.55, "Gly": 0.3, "His": 0.07, "Ile": 0.06, "Leu": 0.1, "Val": 0.22, "Phe": 0.06,
          "Tyr": 0.06, "Glucose": 5.0, "Lactate": 1.5, "Pyruvate": 0.08, "Citrate": 0.1, "bOHbutyrate": 0.1,
          "Acetate": 0.04, "Acetoacetate": 0.03, "Acetone": 0.015, "Creatinine": 0.07, "Albumin": 42.0,
          "GlycA": 0.8, "Corrected_Ala": 0.38, "Glucose_Lactate": 6.5}
CLASS_LEVELS = {"XXL_VLDL": 0.005, "XL_VLDL": 0.02, "L_VLDL": 0.06, "M_VLDL": 0.12, "S_VLDL": 0.15,
                "XS_VLDL": 0.12, "IDL": 0.25, "L_LDL": 0.35, "M_LDL": 0.25, "S_LDL": 0.15, "XL_HDL": 0.12,
                "L_HDL": 0.2, "M_HDL": 0.3, "S_HDL": 0.35}
EFFECTS = {"diabetes": {"Glucose": 1.6, "GlycA": 1.15}, "ckd": {"Creatinine": 1.8},
           "statin": {"ApoB": 0.75, "Clinical_LDL_C": 0.65,
                      **{f"{c}_{x}": 0.65 for c in ("IDL", "L_LDL", "M_LDL", "S_LDL")
                         for x in ("P", "CE", "FC", "PL", "TG")}}}
PREVALENCE = {"diabetes": 0.08, "ckd": 0.06, "statin": 0.2}
STUDY_BLOCK = 100_000  # samples made and written at a time by write_nmr_study
# OMOP concepts of the UCUM units of the panel (Athena, vocabulary UCUM).
UCUM_CONCEPTS = {"mmol/L": 8753, "g/L": 8636, "%": 8554, "{ratio}": 8523, "nm": 8577, "1": 8510}


@dataclass
class NmrStudy:
    panel: pa.Table   # wide: sample_id, sample QC columns, then the biomarkers (catalogue names)
    truth: pa.Table   # sample_id, diabetes, ckd, statin


def _level(name: str) -> float:
    if name in LEVELS:
        return LEVELS[name]
    for prefix, level in sorted(CLASS_LEVELS.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix + "_"):
            return level / 10 if name.endswith("_P") else level / 4
    return 0.1


def nmr_panel(n: int, seed: int = 0, ukb_only: bool = True, conditions: dict[str, np.ndarray] | None = None,
              first: int = 0) -> NmrStudy:
    """``n`` samples of the panel (UK Biobank's 249 biomarkers, or all Nightingale ones).  ``conditions``
    (diabetes, ckd, statin: one boolean per sample) are the samples' true states, drawn at
    ``PREVALENCE`` when not given; ``first`` numbers the samples (and plates) after earlier batches."""
    rng = np.random.default_rng([seed, first])
    catalogue = [b for b in nightingale_catalogue().values() if (b.in_ukb if ukb_only else True)]
    truth = conditions if conditions is not None else {k: rng.random(n) < p for k, p in PREVALENCE.items()}
    lipid = rng.normal(0, 0.18, n)
    measured = {}
    for b in catalogue:
        if not b.measured:
            continue
        shared = lipid if b.group.startswith(("Lipoprotein", "Cholesterol", "Apolipo", "Other lipids")) else 0
        value = _level(b.name) * np.exp(rng.normal(0, 0.12, n) + shared)
        for condition, effects in EFFECTS.items():
            if b.name in effects:
                value = np.where(truth[condition], value * effects[b.name], value)
        measured[b.name] = value
    ids = [f"S{seed:02d}{first + i:07d}" for i in range(n)]
    con = duckdb.connect()
    con.register("m", pa.table(measured))
    derived = [b for b in catalogue if not b.measured]
    derived_values = con.sql("SELECT " + ", ".join(f"CAST({formula_sql(b.formula)} AS DOUBLE) AS {quote_name(b.name)}"
                                                   for b in derived) + " FROM m").to_arrow_table()
    columns = {"sample_id": pa.array(ids),
               "Spectrometer": pa.array([str(1 + i % 6) for i in range(first, first + n)]),
               "Shipment.Plate": pa.array([f"P{i // 96:05d}" for i in range(first, first + n)]),
               "Well.Position.Within.Plate": pa.array([f"{'ABCDEFGH'[(i % 96) // 12]}{1 + i % 12}"
                                                       for i in range(first, first + n)]),
               "Processing.Batch": pa.array([str(1 + i // 10_000) for i in range(first, first + n)])}
    for b in catalogue:
        columns[b.name] = pa.array(measured[b.name]) if b.measured else derived_values.column(b.name)
    return NmrStudy(pa.table(columns), pa.table({"sample_id": ids, **{k: np.asarray(truth[k], bool)
                                                                      for k in PREVALENCE}}))


def write_nmr_study(directory: Path | str, n: int, seed: int = 0, collection_date: str = "2024-03-01") -> pa.Table:
    """Write ``nmr_wide.csv``, ``manifest.csv`` (local ids, birth dates, sex) and ``truth.csv``; returns the
    truth.  The panel is made and written ``STUDY_BLOCK`` samples at a time (a million-sample benchmark
    file is ~5 GB as text), each block's CSV appended to the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    truths = []
    with (directory / "nmr_wide.csv").open("wb") as out:
        for first in range(0, max(n, 1), STUDY_BLOCK):
            study = nmr_panel(min(STUDY_BLOCK, n - first), seed, first=first)
            part = directory / "nmr_block.csv"
            con.register("panel", study.panel)
            con.execute(f"COPY panel TO '{part}' (HEADER {first == 0}, DELIMITER ',')")
            con.unregister("panel")
            with part.open("rb") as block:
                shutil.copyfileobj(block, out, 1 << 24)
            part.unlink()
            truths.append(study.truth)
    truth = pa.concat_tables(truths)
    con.register("truth", truth)
    con.execute(f"COPY truth TO '{directory / 'truth.csv'}' (HEADER, DELIMITER ',')")
    rng = np.random.default_rng(seed + 1)
    years = rng.integers(1940, 1990, n)
    with (directory / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "local_id", "collection_date", "birth_date", "sex"])
        for i, sample in enumerate(truth.column("sample_id").to_pylist()):
            writer.writerow([sample, f"P{seed:02d}{i:07d}", collection_date, f"{years[i]}-06-15",
                             "female" if i % 2 else "male"])
    return truth


# The region's metabolomics study: a share of the adults registered with a practice gives one plasma
# sample in the year before the reference date.  Disease states come from the person's own record
# (synth catalogue concepts): type 2 diabetes or CKD diagnosed, or a statin issued, by the collection date.
STUDY_FRACTION = 0.05
T2DM_CONCEPT, CKD_CONCEPT = 201826, 46271022           # SNOMED 44054006, 709044004
STATIN_CONCEPTS = (1545959, 1539411)                  # atorvastatin 80 mg, simvastatin 20 mg (RxNorm)


def study_participants(tables: dict[str, pa.Table], seed: int, reference_date: str,
                       fraction: float = STUDY_FRACTION) -> pa.Table:
    """(person_id, collection_date, diabetes, ckd, statin) of the chunk's study participants, ordered by
    person: adults whose last observation period covers the collection date, chosen by a seeded hash."""
    con = duckdb.connect()
    for name in ("person", "observation_period", "condition_occurrence", "drug_exposure"):
        con.register(name, tables[name])
    statins = ", ".join(str(c) for c in STATIN_CONCEPTS)
    return con.sql(f"""
        WITH last_period AS (
            SELECT person_id, max(observation_period_start_date) AS start_date, max(observation_period_end_date) AS end_date
            FROM observation_period GROUP BY person_id),
        chosen AS (
            SELECT o.person_id, CAST(DATE '{reference_date}' - CAST(hash(o.person_id, {seed}, 'nmr-day') % 365 AS INTEGER)
                                     AS DATE) AS collection_date, o.start_date, o.end_date
            FROM last_period o WHERE hash(o.person_id, {seed}, 'nmr') % 1000000 < {int(fraction * 1_000_000)})
        SELECT c.person_id, c.collection_date,
               EXISTS (SELECT 1 FROM condition_occurrence x WHERE x.person_id = c.person_id
                       AND x.condition_concept_id = {T2DM_CONCEPT} AND x.condition_start_date <= c.collection_date) AS diabetes,
               EXISTS (SELECT 1 FROM condition_occurrence x WHERE x.person_id = c.person_id
                       AND x.condition_concept_id = {CKD_CONCEPT} AND x.condition_start_date <= c.collection_date) AS ckd,
               EXISTS (SELECT 1 FROM drug_exposure x WHERE x.person_id = c.person_id
                       AND x.drug_concept_id IN ({statins}) AND x.drug_exposure_start_date <= c.collection_date
                       AND x.drug_exposure_start_date > c.collection_date - 365) AS statin
        FROM chosen c JOIN person p USING (person_id)
        WHERE c.collection_date BETWEEN c.start_date AND c.end_date
          AND CAST(p.birth_datetime AS DATE) <= c.collection_date - INTERVAL 18 YEAR
        ORDER BY c.person_id""").to_arrow_table()


def study_panel(participants: pa.Table, seed: int, first: int) -> NmrStudy:
    """The participants' NMR panels, their disease states shifting the values (``EFFECTS``)."""
    conditions = {k: participants.column(k).to_numpy(zero_copy_only=False) for k in PREVALENCE}
    return nmr_panel(participants.num_rows, seed, conditions=conditions, first=first)


def panel_long(study: NmrStudy, participants: pa.Table) -> pa.Table:
    """The panel as ground truth rows (person_id, sample_id, collection_date, biomarker, value)."""
    con = duckdb.connect()
    con.register("panel", study.panel.drop_columns(["Spectrometer", "Shipment.Plate", "Well.Position.Within.Plate",
                                                    "Processing.Batch"]))
    con.register("who", pa.table({"sample_id": study.panel.column("sample_id"),
                                  "person_id": participants.column("person_id"),
                                  "collection_date": participants.column("collection_date")}))
    return con.sql("""SELECT w.person_id, u.sample_id, w.collection_date, u.biomarker, u.value
                      FROM (UNPIVOT panel ON COLUMNS(* EXCLUDE (sample_id)) INTO NAME biomarker VALUE value) u
                      JOIN who w USING (sample_id) ORDER BY w.person_id, u.biomarker""").to_arrow_table()


# LC-MS targets of the synthetic metabolomics study: ChEBI id, name, neutral mass, NMR biomarker it tracks.
MZTAB_TARGETS = [("CHEBI:16737", "Creatinine", 113.0589, "Creatinine"),
                 ("CHEBI:17234", "Glucose", 180.0634, "Glucose"),
                 ("CHEBI:16977", "L-Alanine", 89.0477, "Ala"),
                 ("CHEBI:17368", "Hypoxanthine", 136.0385, None)]


def write_mztab_batches(directory: Path | str, study: NmrStudy, batch_size: int = 48, seed: int = 0,
                        first_batch: int = 1) -> pa.Table:
    """One mzTab-M 2.0 file per batch of samples (``batch_<n>.mzTab``, numbered from ``first_batch``),
    concentrations in millimolar; returns the ground truth (batch, sample_id, chebi, value) that a load
    must reproduce."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, first_batch])
    samples = study.panel.column("sample_id").to_pylist()
    tracked = {t[3]: study.panel.column(t[3]).to_numpy() for t in MZTAB_TARGETS if t[3]}
    truth = {"batch": [], "sample_id": [], "chebi": [], "value": []}
    for batch, start in enumerate(range(0, len(samples), batch_size), start=first_batch):
        members = list(range(start, min(start + batch_size, len(samples))))
        lines = ["MTD\tmzTab-version\t2.0.0-M", f"MTD\tmzTab-ID\tMERCIA-SYNTH-{seed}-{batch}",
                 "MTD\tdescription\tSynthetic LC-MS targeted metabolomics batch (Mercia)",
                 "MTD\tsoftware[1]\t[MS, MS:1000799, custom unreleased software tool, mercia.synth]",
                 "MTD\tquantification_method\t[MS, MS:1001834, LC-MS label-free quantitation analysis, ]",
                 "MTD\tsmall_molecule-quantification_unit\t[UO, UO:0000063, millimolar, ]",
                 "MTD\tsmall_molecule_feature-quantification_unit\t[UO, UO:0000063, millimolar, ]",
                 "MTD\tsmall_molecule-identification_reliability\t[MS, MS:1002896, compound identification "
                 "confidence level, ]",
                 "MTD\tid_confidence_measure[1]\t[MS, MS:1002889, Progenesis MetaScope score, ]",
                 "MTD\tcv[1]-label\tMS", "MTD\tcv[1]-full_name\tPSI-MS controlled vocabulary",
                 "MTD\tcv[1]-version\t4.1.0", "MTD\tcv[1]-uri\thttps://purl.obolibrary.org/obo/ms.obo",
                 "MTD\tdatabase[1]\t[MIRIAM, MIR:00000002, ChEBI, ]", "MTD\tdatabase[1]-prefix\tCHEBI",
                 "MTD\tdatabase[1]-version\tsynthetic", "MTD\tdatabase[1]-uri\thttps://www.ebi.ac.uk/chebi/"]
        for i, s in enumerate(members, start=1):
            lines += [f"MTD\tms_run[{i}]-location\tfile:///synthetic/{samples[s]}.mzML",
                      f"MTD\tsample[{i}]\t{samples[s]}", f"MTD\tassay[{i}]\t{samples[s]} injection 1",
                      f"MTD\tassay[{i}]-sample_ref\tsample[{i}]", f"MTD\tassay[{i}]-ms_run_ref\tms_run[{i}]"]
        refs = " | ".join(f"assay[{i}]" for i in range(1, len(members) + 1))
        lines += ["MTD\tstudy_variable[1]\tall samples", f"MTD\tstudy_variable[1]-assay_refs\t{refs}",
                  "MTD\tstudy_variable[1]-description\tevery sample of the batch", ""]
        header = ["SMH", "SML_ID", "SMF_ID_REFS", "database_identifier", "chemical_formula", "smiles", "inchi",
                  "chemical_name", "uri", "theoretical_neutral_mass", "adduct_ions", "reliability",
                  "best_id_confidence_measure", "best_id_confidence_value",
                  *[f"abundance_assay[{i}]" for i in range(1, len(members) + 1)],
                  "abundance_study_variable[1]", "abundance_variation_study_variable[1]"]
        lines.append("\t".join(header))
        for number, (chebi, name, mass, marker) in enumerate(MZTAB_TARGETS, start=1):
            values = [float(tracked[marker][s]) if marker else float(rng.lognormal(np.log(0.004), 0.2))
                      for s in members]
            for s, v in zip(members, values):
                truth["batch"].append(batch)
                truth["sample_id"].append(samples[s])
                truth["chebi"].append(chebi)
                truth["value"].append(v)
            lines.append("\t".join(["SML", str(number), str(number), chebi, "null", "null", "null", name, "null",
                                    repr(mass), "[M+H]1+", "2", "[MS, MS:1002889, Progenesis MetaScope score, ]",
                                    "50.0", *(repr(v) for v in values), repr(float(np.mean(values))),
                                    repr(float(np.std(values) / np.mean(values) * 100))]))
        (directory / f"batch_{batch}.mzTab").write_text("\n".join(lines) + "\n")
    return pa.table(truth)
