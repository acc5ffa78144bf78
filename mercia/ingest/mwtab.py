"""Metabolomics Workbench mwTab -> staged measurements, parsed with the ``mwtab`` package.

An mwTab file holds one analysis of a study: its subjects and samples (``SUBJECT_SAMPLE_FACTORS``),
a data block (``MS_METABOLITE_DATA`` or ``NMR_METABOLITE_DATA``: one row per metabolite, one column
per sample, with ``UNITS``) and a ``METABOLITES`` block whose columns carry database identifiers
(HMDB, KEGG, ChEBI, LipidMaps; named freely, e.g. ``hmdb_id`` or ``HMDB``).  It lands as mzTab-M
does (``mercia.ingest.mztab.land_abundances``): each sample links to a person through the sample
manifest (by Sample ID, else Subject ID) and each value becomes a measurement whose source concept is
the metabolite's local HMDB / ChEBI / LipidMaps / KEGG concept.  Records are ``MWTAB/<file>/<sample>``.
Binned NMR data (``NMR_BINNED_DATA``: spectral bins, no metabolite) is refused.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa

from mercia.ingest.mztab import Sample, _identifier, land_abundances
from mercia.ingest.staging import Staged

# free-text mwTab units -> UCUM (others are kept as the source unit text, e.g. "Peak area")
UNITS = {"um": "umol/L", "µm": "umol/L", "umol/l": "umol/L", "mm": "mmol/L", "mmol/l": "mmol/L", "nm": "nmol/L",
         "nmol/l": "nmol/L", "pm": "pmol/L", "ng/ml": "ng/mL", "ug/ml": "ug/mL", "mg/dl": "mg/dL",
         "mg/l": "mg/L", "g/l": "g/L"}
# METABOLITES column (lower case, without punctuation) -> prefix _identifier understands
ID_COLUMNS = [(re.compile(r"^hmdb"), "hmdb"), (re.compile(r"^chebi"), "chebi"), (re.compile(r"^kegg"), "kegg"),
              (re.compile(r"^(lipidmaps|lm)(id|_id)?"), "lm")]


class MwTabError(ValueError):
    """The file is not an mwTab analysis this reader can load (nothing staged)."""


def parse_mwtab(path: Path):
    """The ``mwtab`` package's reader plus the checks a load needs; returns the parsed file."""
    from mwtab.mwtab import MWTabFile

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MwTabError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not text.lstrip().startswith("#METABOLOMICS WORKBENCH") and not text.lstrip().startswith("{"):
        raise MwTabError(f"{path.name}: line 1: no '#METABOLOMICS WORKBENCH' header: not an mwTab file")
    parsed = MWTabFile(str(path))
    try:
        parsed.read(io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 (the mwtab tokenizer raises many kinds on malformed blocks)
        raise MwTabError(f"{path.name}: the mwtab reader cannot parse it: {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from exc
    section = parsed.data_section_key
    if section is None:
        raise MwTabError(f"{path.name}: no MS_METABOLITE_DATA or NMR_METABOLITE_DATA block")
    if section == "NMR_BINNED_DATA":
        raise MwTabError(f"{path.name}: NMR_BINNED_DATA holds spectral bins, not metabolites: not loaded")
    if not parsed[section].get("Data"):
        raise MwTabError(f"{path.name}: {section} has no data rows")
    return parsed


def _database_identifiers(metabolites: list[dict]) -> dict[str, str]:
    """Metabolite name -> 'prefix:accession|...' from the METABOLITES block's identifier columns."""
    out = {}
    for row in metabolites:
        ids = []
        for column, value in row.items():
            key = re.sub(r"[^a-z_]", "", column.lower())
            prefix = next((p for pattern, p in ID_COLUMNS if pattern.match(key)), None)
            if prefix and value and str(value).strip():
                ids.append(f"{prefix}:{str(value).strip()}")
        name = row.get("Metabolite") or row.get("metabolite_name")
        if name and ids:
            out[name] = "|".join(ids)
    return out


def read_mwtab(path: Path | str, manifest: Path | str | pa.Table) -> Staged:
    path = Path(path)
    parsed = parse_mwtab(path)
    section = parsed.data_section_key
    block = parsed[section]
    data = block["Data"]
    names = [row.get("Metabolite", "") for row in data]
    if len(set(names)) != len(names):
        raise MwTabError(f"{path.name}: metabolite {next(n for n in names if names.count(n) > 1)!r} "
                         f"appears more than once in {section}")
    subjects = {f.get("Sample ID"): f.get("Subject ID") for f in parsed.get("SUBJECT_SAMPLE_FACTORS", [])}
    sample_ids = [k for k in data[0] if k != "Metabolite"]
    unknown = [s for s in sample_ids if s not in subjects]
    if unknown:
        raise MwTabError(f"{path.name}: {section} column {unknown[0]!r} is not a sample of SUBJECT_SAMPLE_FACTORS")
    identifiers = _database_identifiers(block.get("Metabolites", []))
    parsed_ids = [_identifier(identifiers.get(n)) for n in names]
    rows = pa.table({"sml_id": [str(i + 1) for i in range(len(names))],
                     "vocabulary": [i[0] for i in parsed_ids], "code": [i[1] for i in parsed_ids],
                     "identifier": [i[2] or n for i, n in zip(parsed_ids, names)], "name": names,
                     "reliability": pa.nulls(len(names), pa.string()),
                     **{f"a{j}": pa.array([row.get(s) for row in data], pa.string())
                        for j, s in enumerate(sample_ids, 1)}})
    samples = [Sample(j, s, [k for k in (s, subjects.get(s)) if k], "Sample ID", section)
               for j, s in enumerate(sample_ids, 1)]
    units = str(block.get("Units") or "").strip() or None
    return land_abundances(path.name, "MWTAB", rows, samples, manifest, UNITS.get((units or "").lower()) or units)
