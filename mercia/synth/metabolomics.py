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
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mercia.ingest.nmr import _formula_sql, _q
from mercia.vocab.metabolites import nightingale_catalogue

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


def nmr_panel(n: int, seed: int = 0, ukb_only: bool = True) -> NmrStudy:
    """``n`` samples of the panel (UK Biobank's 249 biomarkers, or all Nightingale ones)."""
    rng = np.random.default_rng(seed)
    catalogue = [b for b in nightingale_catalogue().values() if (b.in_ukb if ukb_only else True)]
    truth = {k: rng.random(n) < p for k, p in PREVALENCE.items()}
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
    ids = [f"S{seed:02d}{i:07d}" for i in range(n)]
    con = duckdb.connect()
    con.register("m", pa.table(measured))
    derived = [b for b in catalogue if not b.measured]
    derived_values = con.sql("SELECT " + ", ".join(f"CAST({_formula_sql(b.formula)} AS DOUBLE) AS {_q(b.name)}"
                                                   for b in derived) + " FROM m").to_arrow_table()
    columns = {"sample_id": pa.array(ids),
               "Spectrometer": pa.array([str(1 + i % 6) for i in range(n)]),
               "Shipment.Plate": pa.array([f"P{i // 96:05d}" for i in range(n)]),
               "Well.Position.Within.Plate": pa.array([f"{'ABCDEFGH'[(i % 96) // 12]}{1 + i % 12}" for i in range(n)]),
               "Processing.Batch": pa.array([str(1 + i // 10_000) for i in range(n)])}
    for b in catalogue:
        columns[b.name] = pa.array(measured[b.name]) if b.measured else derived_values.column(b.name)
    return NmrStudy(pa.table(columns), pa.table({"sample_id": ids, **{k: v for k, v in truth.items()}}))


def write_nmr_study(directory: Path | str, n: int, seed: int = 0, collection_date: str = "2024-03-01") -> NmrStudy:
    """Write ``nmr_wide.csv``, ``manifest.csv`` (local ids, birth dates, sex) and ``truth.csv``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study = nmr_panel(n, seed)
    con = duckdb.connect()
    con.register("panel", study.panel)
    con.execute(f"COPY panel TO '{directory / 'nmr_wide.csv'}' (HEADER, DELIMITER ',')")
    con.register("truth", study.truth)
    con.execute(f"COPY truth TO '{directory / 'truth.csv'}' (HEADER, DELIMITER ',')")
    rng = np.random.default_rng(seed + 1)
    years = rng.integers(1940, 1990, n)
    with (directory / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "local_id", "collection_date", "birth_date", "sex"])
        for i, sample in enumerate(study.panel.column("sample_id").to_pylist()):
            writer.writerow([sample, f"P{seed:02d}{i:07d}", collection_date, f"{years[i]}-06-15",
                             "female" if i % 2 else "male"])
    return study
