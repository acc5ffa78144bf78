"""From generated chunks to OMOP CDM v5.4 tables (Arrow), and the fast paths that stream them into a
store (``write_omop``) or partitioned Parquet (``write_omop_parquet``) chunk by chunk, so memory stays
flat whatever the region's size."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mercia.cdm import CDM_TABLES, Store
from mercia.cdm.schema import CDM_VERSION_CONCEPT_ID
from mercia.synth import catalogue as cat
from mercia.synth.clinical import CARE_SITE_GP, CARE_SITE_METABOLOMICS, CARE_SITE_PATHOLOGY, CARE_SITE_RARE, \
    CARE_SITE_TRUST, Chunk, build_chunk
from mercia.synth.metabolomics import UCUM_CONCEPTS, panel_long, study_panel, study_participants
from mercia.synth.population import EPOCH, REFERENCE_DATE, geography, nhs_numbers
from mercia.vocab.metabolites import NIGHTINGALE_VOCABULARY_ID, ensure_nightingale_vocabulary, nightingale_catalogue
from mercia.vocab.starter import ENGLISH_CONCEPT_ID

CHUNK_PERSONS = 50_000   # fixed, so that output never depends on how a run is split
MEMORY_LIMIT = "1536MB"   # DuckDB buffer cap during the fast path (Python holds one chunk besides)
_ARROW_TYPES = {"int": pa.int64(), "bigint": pa.int64(), "date": pa.date32(), "ts": pa.timestamp("us"),
                "num": pa.float64(), "text": pa.string()}
CLINICAL_TABLES = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
                   "procedure_occurrence", "measurement", "observation", "death"]


@dataclass(frozen=True)
class Organisations:
    """The region's organisations with ODS-style (synthetic) codes."""

    practices: list[str]
    trusts: list[str]
    pathology: str = "R9P"
    rare_disease: str = "R9G"
    metabolomics: str = "R9M"

    @classmethod
    def for_region(cls, persons: int, practices: int | None = None, trusts: int | None = None) -> Organisations:
        practices = practices or max(1, math.ceil(persons / 9_000))   # ~9,000 patients per English practice
        trusts = trusts or max(2 if persons >= 10_000 else 1, min(26, math.ceil(persons / 250_000)))
        return cls([f"M9{i + 1:04d}" for i in range(practices)],
                   [f"R9{chr(ord('A') + i)}" if i < 15 else f"R8{chr(ord('A') + i - 15)}" for i in range(trusts)])

    def rows(self) -> list[dict]:
        rows = [{"org_code": c, "org_type": "gp", "name": f"Synthetic Practice {c}", "care_site_id": CARE_SITE_GP + i}
                for i, c in enumerate(self.practices)]
        rows += [{"org_code": c, "org_type": "acute", "name": f"Synthetic Acute Trust {c}",
                  "care_site_id": CARE_SITE_TRUST + i} for i, c in enumerate(self.trusts)]
        rows += [{"org_code": self.pathology, "org_type": "pathology", "name": "Synthetic Regional Pathology",
                  "care_site_id": CARE_SITE_PATHOLOGY},
                 {"org_code": self.rare_disease, "org_type": "rare_disease",
                  "name": "Synthetic Regional Clinical Genetics Service", "care_site_id": CARE_SITE_RARE},
                 {"org_code": self.metabolomics, "org_type": "metabolomics",
                  "name": "Synthetic Regional Metabolomics Study", "care_site_id": CARE_SITE_METABOLOMICS}]
        return rows


def cdm_table(name: str, columns: dict[str, object], n: int) -> pa.Table:
    """An Arrow table with every column of CDM table ``name`` in schema order; absent ones are null."""
    arrays, fields = [], []
    for col in CDM_TABLES[name].columns:
        typ = pa.string() if col.spec_type.startswith("vc") else _ARROW_TYPES[col.spec_type]
        value = columns.get(col.name)
        if value is None:
            arr = pa.nulls(n, typ)
        elif isinstance(value, pa.Array):
            arr = value.cast(typ)
        elif typ == pa.date32():
            arr = pa.array(np.asarray(value, dtype=np.int32), pa.int32()).cast(pa.date32())
        elif np.ndim(value) == 0:
            arr = pa.array(np.full(n, value)).cast(typ) if value is not None else pa.nulls(n, typ)
        else:
            arr = pa.array(value, type=typ, from_pandas=True)
        arrays.append(arr)
        fields.append(pa.field(col.name, typ, nullable=not col.required))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def lookup(keys: pa.Array, mapping: dict) -> pa.Array:
    """``mapping[key]`` for every element, computed once per distinct key."""
    encoded = keys.dictionary_encode()
    return pa.array([mapping[k] for k in encoded.dictionary.to_pylist()]).take(encoded.indices)


def _nullable_ids(local: np.ndarray, offset: int) -> pa.Array:
    local = np.asarray(local)
    return pa.array(local + offset, pa.int64(), mask=local < 0)


@dataclass
class IdCounters:
    """Running row ids per table, carried from chunk to chunk."""

    next_id: dict[str, int] = field(default_factory=dict)

    def take(self, table: str, n: int) -> int:
        start = self.next_id.get(table, 1)
        self.next_id[table] = start + n
        return start


def chunk_tables(chunk: Chunk, ids: IdCounters) -> dict[str, pa.Table]:
    """The CDM tables of one chunk.  Visit ids are allocated first so events can point at them."""
    p = chunk.people
    n = len(p)
    tables: dict[str, pa.Table] = {}
    birth = p.birth.astype("datetime64[D]")
    years = birth.astype("datetime64[Y]").astype(int) + 1970
    months = birth.astype("datetime64[M]").astype(int) % 12 + 1
    days = (birth - birth.astype("datetime64[M]")).astype(int) + 1
    race = np.select([np.isin(p.ethnic, list("ABC")), np.isin(p.ethnic, list("HJKLR")), np.isin(p.ethnic, list("MNP"))],
                     [cat.RACE_WHITE, cat.RACE_ASIAN, cat.RACE_BLACK], 0)
    last_practice = np.where(p.change_date >= 0, p.practice2, p.practice)
    tables["person"] = cdm_table("person", {
        "person_id": p.person_id, "gender_concept_id": np.where(p.female, cat.FEMALE, cat.MALE),
        "year_of_birth": years, "month_of_birth": months, "day_of_birth": days,
        "birth_datetime": pa.array(birth.astype("datetime64[us]")), "race_concept_id": race,
        "ethnicity_concept_id": 0, "location_id": p.lsoa + 1, "care_site_id": CARE_SITE_GP + last_practice,
        "gender_source_value": np.where(p.female, "F", "M"), "race_source_value": p.ethnic.astype(object)}, n)

    moved = np.flatnonzero(p.change_date >= 0)
    op_person = np.concatenate([p.person_id, p.person_id[moved]])
    op_start = np.concatenate([p.obs_start, p.change_date[moved]])
    op_end = np.concatenate([np.where(p.change_date >= 0, p.change_date - 1, p.obs_end), p.obs_end[moved]])
    order = np.lexsort((op_start, op_person))
    k = len(order)
    tables["observation_period"] = cdm_table("observation_period", {
        "observation_period_id": np.arange(ids.take("observation_period", k), ids.next_id["observation_period"]),
        "person_id": op_person[order], "observation_period_start_date": op_start[order],
        "observation_period_end_date": op_end[order], "period_type_concept_id": cat.EHR}, k)

    v = chunk.visits.get()
    nv = len(v["person"])
    v_off = ids.take("visit_occurrence", nv)
    tables["visit_occurrence"] = cdm_table("visit_occurrence", {
        "visit_occurrence_id": np.arange(v_off, v_off + nv), "person_id": p.person_id[v["person"]],
        "visit_concept_id": v["concept"], "visit_start_date": v["start"], "visit_end_date": v["end"],
        "visit_type_concept_id": cat.EHR, "care_site_id": v["care_site"], "visit_source_value": v["source"],
        "admitted_from_source_value": v.get("method"), "discharged_to_source_value": v.get("discharge")}, nv)

    c = chunk.conditions.get()
    nc = len(c["person"])
    off = ids.take("condition_occurrence", nc)
    tables["condition_occurrence"] = cdm_table("condition_occurrence", {
        "condition_occurrence_id": np.arange(off, off + nc), "person_id": p.person_id[c["person"]],
        "condition_concept_id": c["concept"], "condition_start_date": c["date"],
        "condition_type_concept_id": cat.EHR, "visit_occurrence_id": _nullable_ids(c["visit"], v_off),
        "condition_source_value": c["source"], "condition_source_concept_id": 0}, nc)

    d = chunk.drugs.get()
    nd = len(d["person"])
    off = ids.take("drug_exposure", nd)
    tables["drug_exposure"] = cdm_table("drug_exposure", {
        "drug_exposure_id": np.arange(off, off + nd), "person_id": p.person_id[d["person"]],
        "drug_concept_id": d["concept"], "drug_exposure_start_date": d["date"],
        "drug_exposure_end_date": d["date"] + d["days_supply"] - 1, "drug_type_concept_id": cat.EHR_PRESCRIPTION,
        "days_supply": d["days_supply"], "quantity": d["days_supply"].astype(float),
        "visit_occurrence_id": _nullable_ids(d["visit"], v_off), "drug_source_value": d["source"],
        "drug_source_concept_id": 0}, nd)

    pr = chunk.procedures.get()
    npr = len(pr["person"])
    off = ids.take("procedure_occurrence", npr)
    tables["procedure_occurrence"] = cdm_table("procedure_occurrence", {
        "procedure_occurrence_id": np.arange(off, off + npr), "person_id": p.person_id[pr["person"]],
        "procedure_concept_id": pr["concept"], "procedure_date": pr["date"], "procedure_type_concept_id": cat.EHR,
        "visit_occurrence_id": _nullable_ids(pr["visit"], v_off), "procedure_source_value": pr["source"],
        "procedure_source_concept_id": 0}, npr)

    m = chunk.measurements.get()
    nm = len(m["person"])
    off = ids.take("measurement", nm)
    keys = m["key"] if nm else pa.array([], pa.string())
    tables["measurement"] = cdm_table("measurement", {
        "measurement_id": np.arange(off, off + nm), "person_id": p.person_id[m["person"]],
        "measurement_concept_id": m["concept"], "measurement_date": m["date"],
        "measurement_type_concept_id": m["type"], "value_as_number": m["value"],
        "unit_concept_id": lookup(keys, {k: c.unit_concept_id for k, c in cat.MEASUREMENTS.items()}),
        "range_low": m.get("low"), "range_high": m.get("high"),
        "visit_occurrence_id": _nullable_ids(m["visit"], v_off) if nm else None,
        "measurement_source_value": lookup(keys, {k: c.code for k, c in cat.MEASUREMENTS.items()}),
        "measurement_source_concept_id": 0,
        "unit_source_value": lookup(keys, {k: c.unit for k, c in cat.MEASUREMENTS.items()})}, nm)

    o = chunk.observations.get()
    no = len(o.get("person", []))
    off = ids.take("observation", no)
    tables["observation"] = cdm_table("observation", {
        "observation_id": np.arange(off, off + no), "person_id": p.person_id[o["person"]] if no else None,
        "observation_concept_id": o.get("concept"), "observation_date": o.get("date"),
        "observation_type_concept_id": o.get("type"),
        "value_as_number": pa.array(o["value"], pa.float64(), from_pandas=True) if no else None,
        "value_as_string": o.get("text"), "visit_occurrence_id": _nullable_ids(o["visit"], v_off) if no else None,
        "observation_source_value": o.get("source"), "observation_source_concept_id": 0,
        "qualifier_source_value": o.get("qualifier")}, no)

    dd = chunk.deaths.get()
    ndd = len(dd.get("person", []))
    tables["death"] = cdm_table("death", {
        "person_id": p.person_id[dd["person"]] if ndd else None, "death_date": dd.get("date"),
        "death_type_concept_id": cat.DEATH_CERTIFICATE, "cause_concept_id": dd.get("concept"),
        "cause_source_value": dd.get("source")}, ndd)
    return tables


def reference_tables(orgs: Organisations) -> dict[str, pa.Table]:
    """location (one per synthetic LSOA), care_site, cdm_source and the catalogue's concepts with their
    ICD-10 codes ("Maps to"), hierarchy (``concept_ancestor``) and synonyms (see ``catalogue.vocabulary_rows``)."""
    geo = geography()
    nl = len(geo.lsoa_codes)
    org_rows = orgs.rows()
    extra, maps, ancestors, synonyms = cat.vocabulary_rows()
    concepts = cat.concept_rows() + extra
    start, end = 0, (dt.date(2099, 12, 31) - EPOCH).days
    today = (dt.date(2024, 3, 31) - EPOCH).days
    return {
        "location": cdm_table("location", {
            "location_id": np.arange(1, nl + 1), "county": "West Midlands",
            "location_source_value": geo.lsoa_codes.astype(object), "country_source_value": "United Kingdom"}, nl),
        "care_site": cdm_table("care_site", {
            "care_site_id": [r["care_site_id"] for r in org_rows], "care_site_name": [r["name"] for r in org_rows],
            "care_site_source_value": [r["org_code"] for r in org_rows],
            "place_of_service_source_value": [r["org_type"] for r in org_rows]}, len(org_rows)),
        "cdm_source": cdm_table("cdm_source", {
            "cdm_source_name": "Mercia synthetic West Midlands region", "cdm_source_abbreviation": "MerciaSynth",
            "cdm_holder": "Mercia", "source_description": "Synthetic data generated by mercia.synth; no real patients.",
            "source_release_date": np.array([today]), "cdm_release_date": np.array([today]), "cdm_version": "5.4",
            "cdm_version_concept_id": CDM_VERSION_CONCEPT_ID, "vocabulary_version": "catalogue"}, 1),
        "concept": cdm_table("concept", {
            **{k: [r[k] for r in concepts] for k in concepts[0]},
            "valid_start_date": np.full(len(concepts), start, dtype=np.int32),
            "valid_end_date": np.full(len(concepts), end, dtype=np.int32)},
            len(concepts)),
        "concept_relationship": cdm_table("concept_relationship", {
            "concept_id_1": [a for a, _ in maps] + [b for _, b in maps],
            "concept_id_2": [b for _, b in maps] + [a for a, _ in maps],
            "relationship_id": ["Maps to"] * len(maps) + ["Mapped from"] * len(maps),
            "valid_start_date": np.full(2 * len(maps), start, dtype=np.int32),
            "valid_end_date": np.full(2 * len(maps), end, dtype=np.int32)}, 2 * len(maps)),
        "concept_ancestor": cdm_table("concept_ancestor", {
            "ancestor_concept_id": [a for a, _, _ in ancestors], "descendant_concept_id": [d for _, d, _ in ancestors],
            "min_levels_of_separation": [n for _, _, n in ancestors],
            "max_levels_of_separation": [n for _, _, n in ancestors]}, len(ancestors)),
        "concept_synonym": cdm_table("concept_synonym", {
            "concept_id": [c for c, _ in synonyms], "concept_synonym_name": [n for _, n in synonyms],
            "language_concept_id": np.full(len(synonyms), ENGLISH_CONCEPT_ID, dtype=np.int64)}, len(synonyms)),
    }


def generate_chunks(persons: int, seed: int, orgs: Organisations) -> Iterator[tuple[int, Chunk]]:
    """Chunks of ``CHUNK_PERSONS`` people in order; the same seed gives the same chunks."""
    nhs = nhs_numbers(persons, seed)
    for index, first in enumerate(range(0, persons, CHUNK_PERSONS)):
        n = min(CHUNK_PERSONS, persons - first)
        yield index, build_chunk(seed, index, first, n, nhs, len(orgs.practices), len(orgs.trusts))


def write_omop(store_or_url: Store | str, persons: int, seed: int = 42, practices: int | None = None,
               trusts: int | None = None, metabolomics: bool = False) -> dict[str, int]:
    """The fast path: the region's OMOP CDM straight into a store (no extracts).  Returns row counts.
    ``metabolomics`` adds the metabolomics study's NMR panels (specimens and Nightingale measurements, as
    an NMR load would land them) with the Nightingale vocabulary."""
    store = store_or_url if isinstance(store_or_url, Store) else Store.open(str(store_or_url))
    try:
        store.init_schema()
        orgs = Organisations.for_region(persons, practices, trusts)
        counts: dict[str, int] = {}
        with store.bulk_writes(MEMORY_LIMIT):
            # One transaction per chunk: a single transaction over millions of people would hold every
            # uncommitted row in memory.
            with store.transaction():
                for name, table in reference_tables(orgs).items():
                    counts[name] = counts.get(name, 0) + store.insert_arrow(name, table)
            targets = _nightingale_targets(store) if metabolomics else {}
            ids = IdCounters()
            samples = 0
            for _, chunk in generate_chunks(persons, seed, orgs):
                tables = chunk_tables(chunk, ids)
                del chunk
                if metabolomics:
                    participants = study_participants(tables, seed, str(EPOCH + dt.timedelta(days=REFERENCE_DATE)))
                    for name, table in study_tables(participants, study_panel(participants, seed, samples), ids,
                                                    targets).items():
                        tables[name] = pa.concat_tables([tables[name], table]) if name in tables else table
                    samples += participants.num_rows
                with store.transaction():
                    for name, table in tables.items():
                        counts[name] = counts.get(name, 0) + store.insert_arrow(name, table)
        return counts
    finally:
        if not isinstance(store_or_url, Store):
            store.close()


def write_omop_parquet(out_dir: Path | str, persons: int, seed: int = 42, practices: int | None = None,
                       trusts: int | None = None) -> dict[str, int]:
    """The region's OMOP CDM as partitioned Parquet, ``OUT/<table>/part-NNNNN.parquet`` with one part per
    chunk of people (what ``mercia db load-omop OUT`` reads on every engine).  Returns row counts.
    Memory stays at one chunk whatever ``persons`` is; the same seed gives the same rows."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new or empty directory for the Parquet tables")
    orgs = Organisations.for_region(persons, practices, trusts)
    parts = ParquetParts(out)
    for name, table in reference_tables(orgs).items():
        parts.write(name, table, 0)
    ids = IdCounters()
    for index, chunk in generate_chunks(persons, seed, orgs):
        for name, table in chunk_tables(chunk, ids).items():
            parts.write(name, table, index)
    return parts.rows


def _nightingale_targets(store: Store) -> dict[str, tuple[int, int]]:
    """Biomarker -> (Nightingale concept, the standard concept it maps to), writing the vocabulary first."""
    ensure_nightingale_vocabulary(store)
    return {code: (source, target) for code, source, target in store.query(
        """SELECT c.concept_code, c.concept_id, r.concept_id_2 FROM concept c JOIN concept_relationship r
           ON r.concept_id_1 = c.concept_id AND r.relationship_id = 'Maps to' WHERE c.vocabulary_id = ?""",
        [NIGHTINGALE_VOCABULARY_ID])}


def study_tables(participants: pa.Table, study, ids: IdCounters, targets: dict[str, tuple[int, int]]) -> dict[str, pa.Table]:
    """The study's samples as CDM rows: a plasma specimen per sample (SNOMED 119361006, concept 0 as the
    synthetic vocabulary lacks it) and a measurement per biomarker value, typed Lab."""
    n = participants.num_rows
    off = ids.take("specimen", n)
    dates = participants.column("collection_date")
    specimen = cdm_table("specimen", {
        "specimen_id": np.arange(off, off + n), "person_id": participants.column("person_id"), "specimen_concept_id": 0,
        "specimen_type_concept_id": cat.LAB, "specimen_date": dates, "specimen_source_id": study.panel.column("sample_id"),
        "specimen_source_value": "119361006"}, n)
    con = duckdb.connect()
    con.register("vals", panel_long(study, participants))
    con.register("markers", pa.table({
        "biomarker": list(targets), "source": [s for s, _ in targets.values()], "target": [t for _, t in targets.values()],
        "unit": [nightingale_catalogue()[b].ucum for b in targets]}))
    con.register("units", pa.table({"unit": list(UCUM_CONCEPTS), "unit_concept": list(UCUM_CONCEPTS.values())}))
    values = con.sql("""SELECT v.person_id, v.collection_date, v.biomarker, v.value, m.source, m.target, m.unit,
                               u.unit_concept FROM vals v JOIN markers m USING (biomarker) JOIN units u USING (unit)
                        ORDER BY v.person_id, v.biomarker""").to_arrow_table()
    m = values.num_rows
    off = ids.take("measurement", m)
    measurement = cdm_table("measurement", {
        "measurement_id": np.arange(off, off + m), "person_id": values.column("person_id"),
        "measurement_concept_id": values.column("target"), "measurement_date": values.column("collection_date"),
        "measurement_type_concept_id": cat.LAB, "value_as_number": values.column("value"),
        "unit_concept_id": values.column("unit_concept"), "measurement_source_value": values.column("biomarker"),
        "measurement_source_concept_id": values.column("source"), "unit_source_value": values.column("unit")}, m)
    return {"specimen": specimen, "measurement": measurement}


class ParquetParts:
    """Writes each table as ``<dir>/<table>/part-NNNNN.parquet``, one part per chunk (deterministic)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.rows: dict[str, int] = {}

    def write(self, name: str, table: pa.Table, part: int) -> None:
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{part:05d}.parquet", compression="zstd")
        self.rows[name] = self.rows.get(name, 0) + table.num_rows


def load_truth(store: Store, out_dir: Path | str, tables: list[str] | None = None) -> dict[str, int]:
    """Load a region's true CDM (``OUT/truth/omop``) into ``store``; returns rows per table."""
    base = Path(out_dir) / "truth" / "omop"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} not found: is {out_dir} the output of `mercia synth region`?")
    store.init_schema()
    counts = {}
    with store.transaction():
        for folder in sorted(base.iterdir()):
            if tables and folder.name not in tables:
                continue
            n = 0
            for part in sorted(folder.glob("part-*.parquet")):
                table = pq.read_table(part)
                if folder.name == "concept":
                    table = _new_concepts(store, table)
                n += store.insert_arrow(folder.name, table)
            counts[folder.name] = n
    return counts


def _new_concepts(store: Store, table: pa.Table) -> pa.Table:
    """The catalogue concepts a store's vocabulary does not hold yet (a full vocabulary has them all)."""
    ids = table["concept_id"].to_pylist()
    listed = ", ".join(map(str, ids))
    present = {r[0] for r in store.query(f"SELECT concept_id FROM concept WHERE concept_id IN ({listed})")}
    return table.filter(pa.array([i not in present for i in ids]))


__all__ = ["CHUNK_PERSONS", "Organisations", "chunk_tables", "generate_chunks", "load_truth",
           "reference_tables", "write_omop", "write_omop_parquet"]
