"""Local vocabularies for metabolomics: the Nightingale NMR biomarkers and metabolite identifiers.

OMOP has no HMDB, ChEBI or Nightingale vocabulary, so Mercia keeps its own local concepts
(ids above 2,000,000,000, as OMOP reserves for local use):

- ``Nightingale``: one concept per biomarker of the Nightingale catalogue (``nmr_info.csv`` from the
  ``ukbnmr`` R package, MIT), ``concept_code`` = the catalogue's ``Biomarker`` name, id =
  ``NIGHTINGALE_OFFSET`` + the biomarker's 1-based row in the catalogue.  A biomarker with a LOINC
  code (``LOINC_CODES``) maps to that LOINC concept when the store's vocabulary has it; otherwise
  the Nightingale concept is standard and maps to itself, so cohorts can use it directly.
- ``HMDB``, ``ChEBI``, ``LipidMaps``, ``KEGG``: a concept per identifier seen in an mzTab-M file,
  created on demand, numbered upwards inside each vocabulary's range; standard, mapping to itself.

Units: the catalogue's unit text -> UCUM code (``UCUM_UNITS``); the load maps UCUM codes to the
store's UCUM unit concepts as for every other reader.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mercia.cdm.store import Store
from mercia.config import ConfigError
from mercia.vocab.local_ids import block_size, block_start

NIGHTINGALE_VOCABULARY_ID = "Nightingale"
# Local id blocks (32-bit, no overlaps) come from mercia.vocab.local_ids.
NIGHTINGALE_OFFSET = block_start("Nightingale")
METABOLITE_VOCABULARIES = {v: block_start(v) for v in ("HMDB", "ChEBI", "LipidMaps", "KEGG")}
METABOLITE_RANGE = block_size("HMDB")
# The catalogue's unit text -> UCUM code (ucum.org): "degree" is the unsaturation index, a pure number.
UCUM_UNITS = {"mmol/L": "mmol/L", "mmol/l": "mmol/L", "g/l": "g/L", "g/L": "g/L", "nm": "nm", "%": "%",
              "ratio": "{ratio}", "degree": "1"}
# LOINC codes for biomarkers whose property, system and scale match a LOINC term exactly
# (names as published on loinc.org for each code, checked against the unit of the catalogue).
LOINC_CODES = {
    "Total_C": "14647-2",     # Cholesterol [Moles/volume] in Serum or Plasma
    "HDL_C": "14646-4",       # Cholesterol in HDL [Moles/volume] in Serum or Plasma
    "Clinical_LDL_C": "22748-8",  # Cholesterol in LDL [Moles/volume] in Serum or Plasma
    "Total_TG": "14927-8",    # Triglyceride [Moles/volume] in Serum or Plasma
    "Glucose": "14749-6",     # Glucose [Moles/volume] in Serum or Plasma
    "Creatinine": "14682-9",  # Creatinine [Moles/volume] in Serum or Plasma
    "Albumin": "1751-7",      # Albumin [Mass/volume] in Serum or Plasma
    "ApoB": "1884-6",         # Apolipoprotein B [Mass/volume] in Serum or Plasma
    "ApoA1": "1869-7",        # Apolipoprotein A-I [Mass/volume] in Serum or Plasma
}
# UK Biobank's release of the panel: the 249 biomarkers with fields 23400-23648.
UKB_FIELDS = range(23400, 23649)


@dataclass(frozen=True)
class Biomarker:
    name: str
    description: str
    unit: str            # as the catalogue writes it
    group: str
    kind: str            # Non-derived, Composite, Ratio or Percentage
    ukb_field: int | None
    qc_field: int | None
    formula: str         # Full.Formula: in terms of measured (Non-derived) biomarkers only
    concept_id: int

    @property
    def ucum(self) -> str:
        return UCUM_UNITS[self.unit]

    @property
    def measured(self) -> bool:
        return self.kind == "Non-derived"

    @property
    def in_ukb(self) -> bool:
        return self.ukb_field in UKB_FIELDS


def catalogue_path() -> Path:
    """``MERCIA_NMR_CATALOGUE``, else ``metabolomics/nightingale/nmr_info.csv`` under ``MERCIA_SHARED_DATA``
    (default: the ``shared/data`` folder beside the checkout)."""
    import os
    override = os.environ.get("MERCIA_NMR_CATALOGUE")
    if override:
        return Path(override)
    shared = Path(os.environ.get("MERCIA_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    return shared / "metabolomics" / "nightingale" / "nmr_info.csv"


class CatalogueMissing(ConfigError, FileNotFoundError):
    """The Nightingale catalogue is public data outside the repository: a machine without it is not set up
    for NMR (the command line says so in one line, not a traceback)."""


def nightingale_catalogue(path: Path | None = None) -> dict[str, Biomarker]:
    """Biomarker name -> its catalogue entry, in catalogue order (read once per file)."""
    return _read_catalogue(Path(path or catalogue_path()))


@functools.cache
def _read_catalogue(path: Path) -> dict[str, Biomarker]:
    if not path.exists():
        raise CatalogueMissing(f"Nightingale catalogue not found at {path}; set MERCIA_NMR_CATALOGUE to the ukbnmr "
                               "package's nmr_info.csv, or MERCIA_SHARED_DATA to the public test data folder")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = {}
    for number, row in enumerate(rows, start=1):
        if row["Units"] not in UCUM_UNITS:
            raise ValueError(f"{path}: line {number + 1}, Units: unknown unit {row['Units']!r}")
        out[row["Biomarker"]] = Biomarker(
            name=row["Biomarker"], description=row["Description"], unit=row["Units"], group=row["Group"],
            kind=row["Type"], ukb_field=int(row["UKB.Field.ID"]) if row["UKB.Field.ID"] else None,
            qc_field=int(row["QC.Flag.Field.ID"]) if row["QC.Flag.Field.ID"] else None,
            formula=row["Full.Formula"], concept_id=NIGHTINGALE_OFFSET + number)
    return out


def _dates(n: int) -> dict[str, pa.Array]:
    return {"valid_start_date": pa.array([dt.date(1970, 1, 1)] * n, pa.date32()),
            "valid_end_date": pa.array([dt.date(2099, 12, 31)] * n, pa.date32())}


def _replace(store: Store, low: int, high: int, vocabulary: str, name: str, concepts: pa.Table,
             targets: list[int]) -> None:
    """Swap the concepts (and their Maps to) of one local id range, in one transaction."""
    with store.transaction():
        store.execute("DELETE FROM concept_relationship WHERE concept_id_1 >= ? AND concept_id_1 < ?", [low, high])
        store.execute("DELETE FROM concept WHERE concept_id >= ? AND concept_id < ?", [low, high])
        store.execute("DELETE FROM vocabulary WHERE vocabulary_id = ?", [vocabulary])
        store.execute("INSERT INTO vocabulary (vocabulary_id, vocabulary_name, vocabulary_concept_id) VALUES (?, ?, 0)",
                      [vocabulary, name])
        store.insert_arrow("concept", concepts)
        n = concepts.num_rows
        store.insert_arrow("concept_relationship", pa.table({
            "concept_id_1": concepts.column("concept_id"), "concept_id_2": pa.array(targets, pa.int64()),
            "relationship_id": pa.array(["Maps to"] * n, pa.string()), **_dates(n),
            "invalid_reason": pa.nulls(n, pa.string())}))


def _standard_loinc(store: Store, codes: list[str]) -> dict[str, int]:
    rows = store.query_arrow("SELECT concept_code, concept_id FROM concept WHERE vocabulary_id = 'LOINC' "
                             "AND standard_concept = 'S' AND invalid_reason IS NULL") if codes else None
    if rows is None or rows.num_rows == 0:
        return {}
    wanted = set(codes)
    return {c: i for c, i in zip(rows.column(0).to_pylist(), rows.column(1).to_pylist()) if c in wanted}


def ensure_nightingale_vocabulary(store: Store) -> int:
    """Write the Nightingale concepts (idempotent; re-run after loading LOINC to pick up the maps)."""
    catalogue = nightingale_catalogue()
    loinc = _standard_loinc(store, list(LOINC_CODES.values()))
    existing = store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id = ?", [NIGHTINGALE_VOCABULARY_ID])
    mapped = store.query_one("SELECT count(*) FROM concept_relationship WHERE concept_id_1 >= ? AND concept_id_1 < ? "
                             "AND concept_id_2 < ?", [NIGHTINGALE_OFFSET, NIGHTINGALE_OFFSET + 1000,
                                                      NIGHTINGALE_OFFSET])
    if existing == len(catalogue) and mapped == len(loinc):
        return 0
    markers = list(catalogue.values())
    targets = [loinc.get(LOINC_CODES.get(b.name, ""), b.concept_id) for b in markers]
    n = len(markers)
    concepts = pa.table({
        "concept_id": pa.array([b.concept_id for b in markers], pa.int64()),
        "concept_name": pa.array([b.description[:255] for b in markers], pa.string()),
        "domain_id": pa.array(["Measurement"] * n, pa.string()),
        "vocabulary_id": pa.array([NIGHTINGALE_VOCABULARY_ID] * n, pa.string()),
        "concept_class_id": pa.array([b.kind[:20] for b in markers], pa.string()),
        "standard_concept": pa.array([None if t != b.concept_id else "S" for b, t in zip(markers, targets)],
                                     pa.string()),
        "concept_code": pa.array([b.name for b in markers], pa.string()), **_dates(n),
        "invalid_reason": pa.nulls(n, pa.string())})
    _replace(store, NIGHTINGALE_OFFSET, NIGHTINGALE_OFFSET + 1000, NIGHTINGALE_VOCABULARY_ID,
             "Nightingale Health NMR biomarkers (ukbnmr catalogue)", concepts, targets)
    return n


def ensure_metabolite_concepts(store: Store, vocabulary: str, names: dict[str, str]) -> dict[str, int]:
    """Local concepts for metabolite identifiers (code -> name); returns code -> concept_id.

    Codes already present keep their ids; new ones are numbered after the highest id in the range."""
    if vocabulary not in METABOLITE_VOCABULARIES:
        raise ValueError(f"unknown metabolite vocabulary {vocabulary!r}; one of {', '.join(METABOLITE_VOCABULARIES)}")
    low = METABOLITE_VOCABULARIES[vocabulary]
    have = store.query_arrow("SELECT concept_code, concept_id, concept_name FROM concept WHERE concept_id >= ? "
                             "AND concept_id < ?", [low, low + METABOLITE_RANGE])
    ids = dict(zip(have.column(0).to_pylist(), have.column(1).to_pylist()))
    labels = dict(zip(have.column(0).to_pylist(), have.column(2).to_pylist()))
    new = sorted(set(names) - set(ids))
    if not new:
        return {c: ids[c] for c in names}
    start = max(ids.values(), default=low)
    for offset, code in enumerate(new, start=1):
        ids[code], labels[code] = start + offset, names[code]
    codes = sorted(ids, key=ids.get)
    n = len(codes)
    concepts = pa.table({
        "concept_id": pa.array([ids[c] for c in codes], pa.int64()),
        "concept_name": pa.array([(labels[c] or c)[:255] for c in codes], pa.string()),
        "domain_id": pa.array(["Measurement"] * n, pa.string()),
        "vocabulary_id": pa.array([vocabulary] * n, pa.string()),
        "concept_class_id": pa.array(["Metabolite"] * n, pa.string()),
        "standard_concept": pa.array(["S"] * n, pa.string()),
        "concept_code": pa.array([c[:50] for c in codes], pa.string()), **_dates(n),
        "invalid_reason": pa.nulls(n, pa.string())})
    _replace(store, low, low + METABOLITE_RANGE, vocabulary, f"{vocabulary} metabolite identifiers (local)",
             concepts, [ids[c] for c in codes])
    return {c: ids[c] for c in names}


def ensure_local_concepts(store: Store, events: pa.Table, names: dict[tuple[str, str], str] | None = None) -> None:
    """The local concepts a staged metabolomics extract refers to (before its load maps codes);
    ``events``: its (vocabulary, code) pairs (``Staged.codes``)."""
    import pyarrow.compute as pc

    store.init_schema()
    vocabularies = set(pc.unique(events.column("vocabulary")).to_pylist()) if events.num_rows else set()
    if NIGHTINGALE_VOCABULARY_ID in vocabularies:
        ensure_nightingale_vocabulary(store)
    names = names or {}
    for vocabulary in sorted(vocabularies & set(METABOLITE_VOCABULARIES)):
        codes = pc.unique(events.filter(pc.equal(events.column("vocabulary"), vocabulary)).column("code"))
        ensure_metabolite_concepts(store, vocabulary, {c: names.get((vocabulary, c), c) for c in codes.to_pylist()
                                                       if c})


def quote_name(name: str) -> str:
    """A biomarker name as a quoted SQL identifier (names such as ``Total-C`` need quoting)."""
    return '"' + name.replace('"', '""') + '"'


_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+(?:\.\d+)?)|(?P<op>[-+*/()]))")


def formula_names(formula: str) -> list[str]:
    """The biomarker names a catalogue formula uses."""
    return [m.group("name") for m in _TOKEN.finditer(formula) if m.group("name")]


def formula_sql(formula: str) -> str:
    """A catalogue formula as SQL: names quoted; only names, numbers and + - * / ( ) are allowed.
    (A zero divisor gives inf/NaN in DuckDB; such re-derived values are not compared.)"""
    out, pos = [], 0
    formula = formula.strip()
    while pos < len(formula):
        m = _TOKEN.match(formula, pos)
        if not m or m.end() == pos:
            raise ValueError(f"formula {formula!r}: unexpected text at {formula[pos:pos + 20]!r}")
        out.append(quote_name(m.group("name")) if m.group("name") else m.group("number") or m.group("op"))
        pos = m.end()
    return " ".join(out)
