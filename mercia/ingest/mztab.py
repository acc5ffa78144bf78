"""mzTab-M 2.0 (HUPO-PSI metabolomics results) -> staged measurements, parsed with ``pyteomics.mztab``.

pyteomics reads the MTD section into a dict and the small-molecule summary (SML) into a table; this
module adds the checks a load needs (version 2.0 "M", an SML section, numeric abundances) and lands:

- one source record per assay, ``MZTAB/<file>/assay[n]``, linked to a person through the sample
  manifest by the assay's sample name (``assay[n]-sample_ref`` -> ``sample[m]``), else the sample's
  reference (``sample[m]``: the GCxGC example's samples have no name), else the assay's name, else ``assay[n]``;
- per SML row with an abundance for that assay: a ``measurement`` (value = ``abundance_assay[n]``; unit =
  the MTD ``small_molecule-quantification_unit`` when it is a concentration UCUM can say, else its
  name kept as source text), whose source concept is a local HMDB / ChEBI / LipidMaps / KEGG concept
  of the row's first recognised ``database_identifier`` (others, e.g. GMD or LDA species, keep the
  identifier as source value with concept 0); and an ``observation`` of its ``reliability`` (1-4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from mercia.ingest.nmr import ArrowColumns, manifest_persons, person_ref_sql, read_manifest
from mercia.ingest.staging import EVENT_SCHEMA, REJECT_SCHEMA, Staged, conform

# database_identifier prefix (lower case) -> (vocabulary, whether the prefix is part of the code)
DATABASES = {"hmdb": ("HMDB", False), "chebi": ("ChEBI", True), "lm": ("LipidMaps", False),
             "lipidmaps": ("LipidMaps", False), "kegg": ("KEGG", False)}
# quantification unit (CV term name) -> UCUM; arbitrary units have none.
UNITS = {"molar": "mol/L", "millimolar": "mmol/L", "micromolar": "umol/L", "nanomolar": "nmol/L",
         "picomolar": "pmol/L", "picomolal": "pmol/kg", "micromolal": "umol/kg"}
_ASSAY = re.compile(r"^abundance_assay\[(\d+)\]$")


class MzTabError(ValueError):
    """The file is not an mzTab-M 2.0 file this reader can load (nothing staged)."""


def _identifier(value: str | None) -> tuple[str | None, str | None, str | None]:
    """(vocabulary, code, original) of the first recognised identifier of a '|'-separated list."""
    if not value or value == "null":
        return None, None, None
    parts = [p.strip() for p in str(value).split("|") if p.strip()]
    for part in parts:
        prefix, _, rest = part.partition(":")
        known = DATABASES.get(prefix.lower())
        if known and rest:
            vocabulary, keep_prefix = known
            return vocabulary, (f"{prefix.upper()}:{rest}" if keep_prefix else rest)[:50], part
    return None, None, parts[0] if parts else None


def _cv_name(term: str | None) -> str | None:
    """'[UO, UO:0000072, picomolal, ]' -> 'picomolal'."""
    if not term:
        return None
    parts = [p.strip() for p in term.strip().strip("[]").split(",")]
    return parts[2] if len(parts) >= 3 and parts[2] else term


def parse_mztab(path: Path):
    """pyteomics' reader plus the strict checks; returns (metadata, SML table as Arrow)."""
    from pyteomics import mztab

    try:
        with open(path, "rb") as handle:
            head = handle.read(65536).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MzTabError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    version = re.search(r"^MTD\tmzTab-version\t([^\t\r\n]+)", head, re.MULTILINE)
    if not version:
        raise MzTabError(f"{path.name}: line 1: no 'MTD mzTab-version' line: not an mzTab file")
    if not version.group(1).strip().startswith("2.0") or not version.group(1).strip().endswith("M"):
        raise MzTabError(f"{path.name}: mzTab-version {version.group(1).strip()!r}: only mzTab-M 2.0 is read")
    try:
        parsed = mztab.MzTab(str(path), table_format="df")
        metadata, table = dict(parsed.metadata), parsed.small_molecule_table
    except Exception as exc:  # noqa: BLE001 (pyteomics raises many kinds on malformed sections)
        raise MzTabError(f"{path.name}: pyteomics cannot parse it: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if table is None or len(table) == 0 or "SML_ID" not in table.columns:
        raise MzTabError(f"{path.name}: no small molecule (SML) section")
    table = table.astype({c: "string" for c in table.columns if table[c].dtype == object})
    try:
        arrow = pa.Table.from_pandas(table, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise MzTabError(f"{path.name}: SML section has mixed-type columns: {str(exc)[:200]}") from exc
    return metadata, arrow


def read_mztab(path: Path | str, manifest: Path | str | pa.Table) -> Staged:
    path = Path(path)
    metadata, sml = parse_mztab(path)
    assays = sorted(int(m.group(1)) for c in sml.column_names if (m := _ASSAY.match(c)))
    if not assays:
        raise MzTabError(f"{path.name}: SML section has no abundance_assay[n] columns")
    unit_name = _cv_name(metadata.get("small_molecule-quantification_unit"))
    # SML rows: identifier -> vocabulary/code (a few hundred rows: plain Python is fine)
    ids = [_identifier(v) for v in sml.column("database_identifier").to_pylist()]
    names = sml.column("chemical_name").to_pylist() if "chemical_name" in sml.column_names else [None] * len(ids)
    rel = sml.column("reliability").cast(pa.string()).to_pylist() if "reliability" in sml.column_names \
        else [None] * len(ids)
    sml_ids = sml.column("SML_ID").cast(pa.string()).to_pylist()
    if len(set(sml_ids)) != len(sml_ids):
        dup = next(s for s in sml_ids if sml_ids.count(s) > 1)
        raise MzTabError(f"{path.name}: SML_ID {dup} appears more than once")
    rows = pa.table({"sml_id": sml_ids, "vocabulary": [i[0] for i in ids], "code": [i[1] for i in ids],
                     "identifier": [i[2] or n for i, n in zip(ids, names)], "name": names, "reliability": rel,
                     **{f"a{n}": sml.column(f"abundance_assay[{n}]").cast(pa.string()) for n in assays}})
    samples = []
    for n in assays:
        sample_ref = metadata.get(f"assay[{n}]-sample_ref")
        sample = metadata.get(sample_ref) if sample_ref else None
        samples.append(Sample(n, f"assay[{n}]", [k for k in (sample, sample_ref, metadata.get(f"assay[{n}]"),
                                                             f"assay[{n}]") if k],
                              "sample_ref", f"abundance_assay[{n}]"))
    return land_abundances(path.name, "MZTAB", rows, samples, manifest, UNITS.get((unit_name or "").lower())
                           or unit_name)


@dataclass(frozen=True)
class Sample:
    """One measured sample (an mzTab assay, an mwTab sample): its column ``a{index}`` of the value
    table, its name in record ids, the manifest keys tried in order, and the fields named in rejects."""
    index: int
    name: str
    keys: list[str]
    link_field: str
    value_field: str


def land_abundances(file: str, source: str, rows: pa.Table, samples: list[Sample],
                    manifest: Path | str | pa.Table, unit: str | None) -> Staged:
    """Stage one file's abundances: per sample linked to a person through the manifest, a measurement per
    metabolite with a value (source concept: the metabolite's HMDB/ChEBI/LipidMaps/KEGG identifier) and
    an observation of its reliability where given.  ``rows``: sml_id, vocabulary, code, identifier, name,
    reliability and one string column ``a{index}`` per sample.  Records are ``SOURCE/file/sample``."""
    manifest_table = manifest if isinstance(manifest, pa.Table) else read_manifest(manifest)
    con = duckdb.connect()
    con.register("manifest", manifest_table)
    staged = Staged(file)
    rejects: list[dict] = []
    for vocabulary, code, name in zip(*(rows.column(c).to_pylist() for c in ("vocabulary", "code", "name"))):
        if vocabulary:
            staged.concept_names[(vocabulary, code)] = name or code
    con.register("sml", rows)
    con.register("assays", pa.Table.from_pylist(
        [{"assay": s.index, "name": s.name, "keys": s.keys} for s in samples],
        schema=pa.schema([("assay", pa.int64()), ("name", pa.string()), ("keys", pa.list_(pa.string()))])))
    by_index = {s.index: s for s in samples}
    con.execute("""CREATE TABLE linked AS
        SELECT a.assay, a.name, m.sample_id, m.nhs_number, m.local_id, m.birth_date, m.collection_date FROM assays a
        LEFT JOIN LATERAL (SELECT * FROM manifest m WHERE list_contains(a.keys, m.sample_id)
                           ORDER BY list_position(a.keys, m.sample_id), m.line DESC LIMIT 1) m ON true""")
    for assay, keys in con.execute("""SELECT a.assay, a.keys FROM assays a JOIN linked l USING (assay)
                                      WHERE l.sample_id IS NULL ORDER BY 1""").fetchall():
        sample = by_index[assay]
        rejects.append({"record": f"{source}/{file}/{sample.name}", "line": None, "field": sample.link_field,
                        "reason": f"{sample.name} (sample {keys[0]!r}) not in the manifest: no person to attach it to"})
    cells = " UNION ALL ".join(f"SELECT {s.index} AS assay, sml_id, vocabulary, code, identifier, reliability, "
                               f"a{s.index} AS raw FROM sml WHERE a{s.index} IS NOT NULL AND a{s.index} NOT IN "
                               "('null', '')" for s in samples)
    con.execute(f"CREATE TABLE cells AS {cells}")
    for assay, sml_id, raw in con.execute(
            "SELECT assay, sml_id, raw FROM cells WHERE TRY_CAST(raw AS DOUBLE) IS NULL ORDER BY 1, 2").fetchall():
        sample = by_index[assay]
        rejects.append({"record": f"{source}/{file}/{sample.name}/SML_{sml_id}", "line": None,
                        "field": sample.value_field, "reason": f"SML_ID {sml_id}: abundance {raw!r} is not a number"})
    prefix = f"{source}/{file}/".replace("'", "''")
    record = f"'{prefix}' || l.name"
    person = person_ref_sql("l")
    events = con.sql(f"""
        WITH good AS (SELECT c.*, TRY_CAST(c.raw AS DOUBLE) AS value FROM cells c
                      WHERE TRY_CAST(c.raw AS DOUBLE) IS NOT NULL),
             hashed AS (SELECT assay, md5(string_agg(sml_id || '=' || raw || '|' || COALESCE(reliability, ''), ';'
                                                     ORDER BY sml_id)) AS content FROM good GROUP BY assay)
        SELECT {record} AS record, md5(h.content || COALESCE(l.nhs_number, '') || COALESCE(l.local_id, '')
                                       || COALESCE(l.collection_date, '')) AS record_hash,
               {person} AS person_ref, 'Measurement' AS kind, g.vocabulary, COALESCE(g.code, left(g.identifier, 50))
               AS code, l.collection_date AS start, g.value AS value_number, NULL AS value_code, ? AS unit,
               'SML_' || g.sml_id AS qualifier, NULL::BIGINT AS line
        FROM good g JOIN linked l USING (assay) JOIN hashed h USING (assay) WHERE l.sample_id IS NOT NULL
        UNION ALL
        SELECT {record}, md5(h.content || COALESCE(l.nhs_number, '') || COALESCE(l.local_id, '')
                             || COALESCE(l.collection_date, '')),
               {person}, 'Observation', NULL, 'mzTab reliability', l.collection_date, NULL, g.reliability, NULL,
               COALESCE(g.code, left(g.identifier, 50)), NULL
        FROM good g JOIN linked l USING (assay) JOIN hashed h USING (assay)
        WHERE l.sample_id IS NOT NULL AND g.reliability IS NOT NULL""", params=[unit]).to_arrow_table()
    staged.events = ArrowColumns(conform(events, EVENT_SCHEMA))
    staged.persons = ArrowColumns(manifest_persons(con, "SELECT sample_id FROM linked"))
    staged.rejects = ArrowColumns(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))
    staged.read = con.execute("SELECT count(*) FROM cells").fetchall()[0][0]
    return staged
