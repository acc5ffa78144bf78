"""A whole synthetic region on disk: each organisation's extract in its own format, plus the ground
truth (docs/synth.md is the contract for the layout).

Extract text is rendered in DuckDB from the chunk's CDM tables (``json_object`` for FHIR, string
aggregation for HL7 v2), so that no Python code runs per clinical event; Python only adds the
record-level messiness (duplicate resends, malformed lines) to the few lines chosen for it, and
writes the phenopackets of the rare-disease clinic (one per patient)."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mercia import __version__
from mercia.synth import catalogue as cat
from mercia.synth.clinical import CARE_SITE_TRUST, Chunk
from mercia.synth.identity import local_ids, sent_identities, true_identities
from mercia.synth.metabolomics import panel_long, study_panel, study_participants, write_mztab_batches
from mercia.synth.omop import (IdCounters, Organisations, ParquetParts, chunk_tables, generate_chunks,
                               reference_tables)
from mercia.synth.population import EPOCH, REFERENCE_DATE
from mercia.synth.rare import panel as rare_panel
from mercia.vocab.metabolites import nightingale_catalogue

_GENERATED = ("gp", "acute", "pathology", "rare_disease", "metabolomics", "proms", "truth", "geography",
              "manifest.json", "organisations.csv")
GEOGRAPHY_FILES = ("onspd.csv", "imd.csv")   # the published ONSPD and IoD layouts (privacy.geography)
EXTRACT_SLICE = 10_000   # people whose extract text is rendered together
MZTAB_BATCH = 48         # samples per LC-MS batch (half a 96-well plate) of the metabolomics study
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SNOMED, LOINC, RXNORM, UCUM = ("http://snomed.info/sct", "http://loinc.org",
                               "http://www.nlm.nih.gov/research/umls/rxnorm", "http://unitsofmeasure.org")


@dataclass
class Writer:
    """Appends lines to extract files and keeps the error log and file counts."""

    out: Path
    rng: np.random.Generator
    error_rate: float
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)

    def lines(self, rel: str, org: str, lines: pa.Array, refs: pa.Array, flagged: pa.Array, kind: str,
              terminator: str = "\n") -> None:
        """Append records (Arrow strings), logging the SQL-injected errors and adding resends and
        broken lines; only the few records chosen for an error are touched in Python."""
        n = len(lines)
        for i in np.flatnonzero(pc.is_valid(flagged).to_numpy(zero_copy_only=False)):
            self.errors.append({"org_code": org, "file": rel, "record_ref": refs[int(i)].as_py(),
                                "error_type": flagged[int(i)].as_py(), "detail": ""})
        order = np.arange(n)
        if n and self.error_rate > 0:
            broken = np.flatnonzero(self.rng.random(n) < self.error_rate / 4)
            resend = np.flatnonzero(self.rng.random(n) < self.error_rate)
            fixed = pa.array([_break(lines[int(i)].as_py(), kind) for i in broken], pa.string())
            order[broken] = n + np.arange(len(broken))
            order = np.concatenate([order, resend])   # a resend carries the record as first composed
            lines = pa.concat_arrays([lines.cast(pa.string()), fixed])
            for kind_, rows, detail in (("malformed_line", broken, kind), ("duplicate", resend,
                                                                           "resent later in the file")):
                self.errors += [{"org_code": org, "file": rel, "record_ref": refs[int(i)].as_py(),
                                 "error_type": kind_, "detail": detail} for i in rows]
        out = pc.binary_join_element_wise(lines.take(pa.array(order)), "", terminator).cast(pa.large_string())
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.frombuffer(out.buffers()[1], dtype=np.int64)[out.offset:out.offset + len(out) + 1]
        with open(path, "ab") as fh:
            if len(out):
                fh.write(memoryview(out.buffers()[2])[offsets[0]:offsets[-1]])
        self.counts[rel] = self.counts.get(rel, 0) + len(out)

    def csv(self, rel: str, org: str, table: pa.Table, key: str, flagged: list[str | None]) -> None:
        path = self.out / rel
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=not path.exists(), quoting_style="needed"))
        text = buf.getvalue().decode("utf-8").splitlines()
        header = [] if path.exists() else text[:1]
        body = text[len(header):]
        if header:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header[0] + "\n", encoding="utf-8")
            self.counts[rel] = 0
        self.lines(rel, org, pa.array(body, pa.string()), table[key].combine_chunks().cast(pa.string()),
                   pa.array(flagged, pa.string()), "csv")


def _break(line: str, kind: str) -> str:
    if kind == "csv":
        return line.rsplit(",", 1)[0]             # a field missing
    if kind == "hl7":
        return line.replace("\rOBX|", "\rOBX", 1) if "\rOBX|" in line else line[: len(line) // 2]
    return line[: max(1, len(line) // 2)]         # NDJSON cut mid-record


def _macros(con: duckdb.DuckDBPyConnection, seed: int) -> None:
    con.execute(f"""
        CREATE OR REPLACE MACRO u(k) AS ((hash(k || '|{seed}') % 1000000)::DOUBLE / 1000000.0);
        CREATE OR REPLACE MACRO uid(k) AS (
            substr(md5(k || '|{seed}'), 1, 8) || '-' || substr(md5(k || '|{seed}'), 9, 4) || '-4' ||
            substr(md5(k || '|{seed}'), 14, 3) || '-a' || substr(md5(k || '|{seed}'), 18, 3) || '-' ||
            substr(md5(k || '|{seed}'), 21, 12));
        CREATE OR REPLACE MACRO nonull(j) AS (regexp_replace(j::VARCHAR, ',"[A-Za-z]+":null', '', 'g'));
        CREATE OR REPLACE MACRO bad_date(d) AS (strftime(d, '%Y') || '-02-30');
        CREATE OR REPLACE MACRO key12(k) AS (substr(md5(k || '|{seed}'), 1, 12));
    """)


def generate_region(out_dir: Path | str, persons: int = 20_000, seed: int = 42, error_rate: float = 0.02,
                    practices: int | None = None, trusts: int | None = None) -> dict:
    """Write a synthetic region (extracts + truth) to ``out_dir``; returns the manifest."""
    if not 0 <= error_rate <= 0.2:
        raise ValueError(f"error_rate must be between 0 and 0.2, got {error_rate}")
    nightingale_catalogue()  # the metabolomics study's panel: a machine without it stops before writing anything
    out = Path(out_dir)
    _prepare(out)
    orgs = Organisations.for_region(persons, practices, trusts)
    truth = ParquetParts(out / "truth" / "omop")
    for name, table in reference_tables(orgs).items():
        truth.write(name, table, 0)
    writer = Writer(out, np.random.default_rng([seed, 7]), error_rate)
    con = duckdb.connect()
    con.execute("SET threads = 2")   # every query orders on unique keys, so output is thread-independent
    con.execute("SET enable_progress_bar = false")
    _macros(con, seed)
    org_table = pa.Table.from_pylist(orgs.rows())
    con.register("org", org_table)
    con.register("concept", reference_tables(orgs)["concept"])
    ids = IdCounters()
    aux: dict[str, list[pa.Table]] = {"person_identifiers": [], "crosswalk": [], "variants": [], "metabolomics": [],
                                      "mztab": []}
    reference_date = str(EPOCH + dt.timedelta(days=REFERENCE_DATE))
    samples = 0   # metabolomics study samples so far (numbers the next chunk's samples and plates)
    case_counter = 0
    for index, chunk in generate_chunks(persons, seed, orgs):
        tables = chunk_tables(chunk, ids)
        for name, table in tables.items():
            truth.write(name, table, index)
        rng = np.random.default_rng([seed, index, 1])
        ident = true_identities(rng, chunk.people)
        xw, cases = _crosswalk(rng, chunk, tables, ident, orgs, seed, error_rate, case_counter)
        case_counter += 0 if cases is None else len(cases)
        per_person = {**{k: t for k, t in tables.items() if "person_id" in t.column_names},
                      "xw": xw, "pp": _practice_table(chunk, orgs)}
        first = int(chunk.people.person_id[0])
        for lo in range(first, first + len(chunk.people), EXTRACT_SLICE):
            # Extract text for a slice of people at a time keeps memory flat (FHIR is verbose).
            for name, table in per_person.items():
                ids = table["person_id"]
                con.register(name, table.filter(pc.and_(pc.greater_equal(ids, lo),
                                                        pc.less(ids, lo + EXTRACT_SLICE))))
            _gp(con, writer, error_rate)
            _acute(con, writer, error_rate)
            _pathology(con, writer, error_rate, orgs)
            _proms(con, writer)
        if cases is not None:
            aux["variants"].append(_rare_disease(writer, chunk, cases, xw, orgs))
        participants = study_participants(tables, seed, reference_date)
        if participants.num_rows:
            panels, mztab = _metabolomics(writer, participants, ident, orgs, seed, samples)
            aux["metabolomics"].append(panels)
            aux["mztab"].append(mztab)
            samples += participants.num_rows
        aux["person_identifiers"].append(ident)
        aux["crosswalk"].append(xw.drop_columns(["given_name", "family_name", "birth_date", "sex", "postcode",
                                                 "city"]))
    con.close()
    for name, parts in aux.items():
        pq.write_table(pa.concat_tables(parts) if parts else pa.table({}), out / "truth" / f"{name}.parquet",
                       compression="zstd")
    _write_geography(out, pa.concat_tables(aux["person_identifiers"]))
    errors = pa.Table.from_pylist(writer.errors, schema=pa.schema(
        [("org_code", pa.string()), ("file", pa.string()), ("record_ref", pa.string()), ("error_type", pa.string()),
         ("detail", pa.string())]))
    pq.write_table(errors, out / "truth" / "errors.parquet", compression="zstd")
    pacsv.write_csv(org_table.select(["org_code", "org_type", "name"]).append_column(
        "postcode", pa.array([""] * org_table.num_rows)), out / "organisations.csv")
    _practice_organizations(out, orgs, writer)
    _complete_layout(out, orgs, writer)
    for code in orgs.practices:
        _bulk_manifest(out, code, writer.counts)
    manifest = {
        "generator": f"mercia.synth {__version__}", "seed": seed, "persons": persons, "error_rate": error_rate,
        "reference_date": reference_date,
        "organisations": [{k: r[k] for k in ("org_code", "org_type", "name")} for r in orgs.rows()],
        "files": dict(sorted(writer.counts.items())), "truth_rows": dict(sorted(truth.rows.items())),
        "errors_injected": len(writer.errors),
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def _metabolomics(writer: Writer, participants: pa.Table, ident: pa.Table, orgs: Organisations, seed: int,
                  first: int) -> tuple[pa.Table, pa.Table]:
    """The metabolomics study's samples of this chunk: NMR panel rows appended to ``nmr_wide.csv``, the
    sample manifest (sample id -> NHS number, collection date) to ``manifest.csv``, and the same samples'
    LC-MS batches of ``MZTAB_BATCH`` as ``mztab/batch_<n>.mzTab``; returns the truth of both."""
    study = study_panel(participants, seed, first)
    people = ident.select(["person_id", "nhs_number"])
    nhs = people.column("nhs_number").take(pc.index_in(participants.column("person_id"), people.column("person_id")))
    manifest = pa.table({"sample_id": study.panel.column("sample_id"), "nhs_number": nhs,
                         "collection_date": participants.column("collection_date")})
    for name, table in (("nmr_wide.csv", study.panel), ("manifest.csv", manifest)):
        rel = f"metabolomics/{orgs.metabolomics}/{name}"
        path = writer.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            pacsv.write_csv(table, handle, pacsv.WriteOptions(include_header=handle.tell() == 0))
        writer.counts[rel] = writer.counts.get(rel, 0) + table.num_rows
    folder = writer.out / "metabolomics" / orgs.metabolomics / "mztab"
    first_batch = 1 + len(list(folder.glob("batch_*.mzTab"))) if folder.is_dir() else 1
    mztab = write_mztab_batches(folder, study, MZTAB_BATCH, seed, first_batch)
    writer.counts[f"metabolomics/{orgs.metabolomics}/mztab"] = first_batch - 1 + len(set(mztab.column("batch").to_pylist()))
    return panel_long(study, participants), mztab


def _write_geography(out: Path, identities: pa.Table) -> None:
    """The region's own postcode directory and deprivation file, in the published column layouts
    (ONSPD ``pcds``/``lsoa21``; IoD 2025 ``LSOA code (2021)`` and IMD decile), so that ingest turns
    postcodes into deciles as it would with the real files.  A synthetic postcode is drawn within a
    district, so two people in different LSOAs can share one: the directory puts it in the smaller LSOA
    code (a postcode lies in one LSOA), and such a person gets that LSOA's decile."""
    (out / "geography").mkdir(exist_ok=True)
    con = duckdb.connect()
    con.register("ident", identities.select(["postcode", "previous_postcode", "lsoa_code", "imd_decile"]))
    con.execute(f"""COPY (SELECT postcode AS pcds, min(lsoa_code) AS lsoa21 FROM (
                        SELECT postcode, lsoa_code FROM ident UNION ALL
                        SELECT previous_postcode, lsoa_code FROM ident WHERE previous_postcode IS NOT NULL)
                    GROUP BY postcode ORDER BY postcode) TO '{out / "geography" / GEOGRAPHY_FILES[0]}' (HEADER)""")
    con.execute(f"""COPY (SELECT DISTINCT lsoa_code AS "LSOA code (2021)",
                                 imd_decile AS "Index of Multiple Deprivation (IMD) Decile"
                          FROM ident ORDER BY 1) TO '{out / "geography" / GEOGRAPHY_FILES[1]}' (HEADER)""")
    con.close()


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").exists():
            raise FileExistsError(f"{out} is not empty and is not a synthetic region: refusing to overwrite it")
        for name in _GENERATED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _practice_table(chunk: Chunk, orgs: Organisations) -> pa.Table:
    p = chunk.people
    codes = np.array(orgs.practices, dtype=object)
    return pa.table({"person_id": p.person_id, "p1": pa.array(codes[p.practice], pa.string()),
                     "p2": pa.array(codes[p.practice2], pa.string()),
                     "change_date": pa.array(p.change_date.astype(np.int32), mask=p.change_date < 0).cast(pa.date32())})


def _crosswalk(rng, chunk: Chunk, tables, ident: pa.Table, orgs: Organisations, seed: int, error_rate: float,
               case_counter: int):
    p = chunk.people
    practices = np.array(orgs.practices, dtype=object)
    parts = []
    moved = p.change_date >= 0
    gp_person = np.concatenate([p.person_id, p.person_id[moved]])
    gp_org = np.concatenate([practices[p.practice], practices[p.practice2[moved]]])
    first_of_two = np.concatenate([moved, np.zeros(moved.sum(), bool)])
    parts.append(sent_identities(rng, ident, gp_person, gp_org, "gp", local_ids("gp", gp_org, gp_person, seed),
                                 error_rate, old_address=first_of_two))
    visits = tables["visit_occurrence"]
    site = visits["care_site_id"].to_numpy()
    at_trust = (site >= CARE_SITE_TRUST) & (site < CARE_SITE_TRUST + len(orgs.trusts))
    pairs = np.unique(np.stack([visits["person_id"].to_numpy()[at_trust], site[at_trust]], 1), axis=0) \
        if at_trust.any() else np.zeros((0, 2), dtype=np.int64)
    trust_org = np.array(orgs.trusts, dtype=object)[pairs[:, 1] - CARE_SITE_TRUST]
    parts.append(sent_identities(rng, ident, pairs[:, 0], trust_org, "acute",
                                 local_ids("acute", trust_org, pairs[:, 0], seed), error_rate))
    meas = tables["measurement"]
    lab_people = np.unique(meas["person_id"].to_numpy()[meas["measurement_type_concept_id"].to_numpy() == cat.LAB])
    path_org = np.full(len(lab_people), orgs.pathology, dtype=object)
    parts.append(sent_identities(rng, ident, lab_people, path_org, "pathology",
                                 local_ids("pathology", path_org, lab_people, seed), error_rate))
    obs = tables["observation"]
    proms_people = np.unique(obs["person_id"].to_numpy()[obs["observation_type_concept_id"].to_numpy()
                                                         == cat.PATIENT_SELF_REPORT])
    parts.append(sent_identities(rng, ident, proms_people, np.full(len(proms_people), "PROMS", dtype=object),
                                 "proms", None, error_rate))
    cases = None
    if chunk.rare is not None:
        seen = np.flatnonzero(chunk.rare_visit >= 0)
        if len(seen):
            cases = seen
            rd_person = p.person_id[chunk.rare.patient[seen]]
            rd_ids = np.array([f"{orgs.rare_disease}-{case_counter + i + 1:06d}" for i in range(len(seen))],
                              dtype=object)
            parts.append(sent_identities(rng, ident, rd_person, np.full(len(seen), orgs.rare_disease, dtype=object),
                                         "rare_disease", rd_ids, error_rate))
    return pa.concat_tables(parts), cases


def _fetch(con, sql: str) -> pa.Table:
    return con.sql(sql).to_arrow_table()


def _emit_by_org(writer: Writer, result: pa.Table, rel_pattern: str, kind: str, terminator: str = "\n") -> None:
    if result.num_rows == 0:
        return
    result = result.combine_chunks()
    for code in sorted(set(result["org_code"].unique().to_pylist())):
        part = result.filter(pc.equal(result["org_code"], code))
        writer.lines(rel_pattern.format(org=code), code, part["line"].combine_chunks().cast(pa.string()),
                     part["ref"].combine_chunks().cast(pa.string()), part["err"].combine_chunks().cast(pa.string()),
                     kind, terminator)


def _gp(con, writer: Writer, rate: float) -> None:
    """GP practices: FHIR R4 resources, one NDJSON file per resource type per practice."""
    bad_code, bad_date = rate / 2, rate / 4
    queries = {
        "Patient": f"""
            SELECT x.org_code, x.local_id AS ref, NULL AS err, nonull(json_object(
              'resourceType', 'Patient', 'id', x.local_id,
              'meta', json_object('profile', ['https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient']),
              'name', [json_object('use', 'official', 'family', x.family_name, 'given', [x.given_name])],
              'gender', CASE x.sex WHEN 'F' THEN 'female' ELSE 'male' END,
              'birthDate', x.birth_date,
              'address', [json_object('line', [(1 + hash(x.person_id) % 180)::VARCHAR || ' ' ||
                    ['High Street', 'Church Road', 'Station Road', 'Victoria Road', 'Park Avenue', 'Green Lane',
                     'Manor Road', 'Stratford Road', 'Coventry Road', 'Soho Road'][(1 + hash(x.person_id || 's') % 10)::BIGINT]],
                    'city', x.city, 'postalCode', x.postcode)],
              'generalPractitioner', [json_object('identifier', json_object('system', '{ODS_SYSTEM}',
                    'value', x.org_code))],
              'identifier', CASE WHEN x.nhs_number_sent IS NOT NULL THEN
                    [json_object('system', '{NHS_SYSTEM}', 'value', x.nhs_number_sent)] END,
              'deceasedDateTime', CASE WHEN d.death_date IS NOT NULL AND x.org_code =
                    CASE WHEN pp.change_date IS NULL THEN pp.p1 ELSE pp.p2 END THEN strftime(d.death_date, '%Y-%m-%d') END
            )) AS line
            FROM xw x JOIN pp USING (person_id) LEFT JOIN death d USING (person_id)
            WHERE x.org_type = 'gp' ORDER BY x.person_id, x.org_code""",
        "EpisodeOfCare": """
            WITH op AS (SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY observation_period_start_date) AS k
                        FROM observation_period),
            reg AS (SELECT op.*, CASE WHEN k = 1 THEN pp.p1 ELSE pp.p2 END AS org_code,
                           (op.observation_period_end_date < DATE '2024-03-31' OR d.person_id IS NOT NULL) AS ended
                    FROM op JOIN pp USING (person_id) LEFT JOIN death d USING (person_id))
            SELECT reg.org_code, uid('eoc|' || observation_period_id) AS ref, NULL AS err, nonull(json_object(
              'resourceType', 'EpisodeOfCare', 'id', uid('eoc|' || observation_period_id),
              'status', CASE WHEN ended THEN 'finished' ELSE 'active' END,
              'patient', json_object('reference', 'Patient/' || x.local_id),
              'managingOrganization', json_object('identifier', json_object('system', '""" + ODS_SYSTEM + """',
                    'value', reg.org_code)),
              'period', nonull(json_object('start', strftime(observation_period_start_date, '%Y-%m-%d'),
                    'end', CASE WHEN ended THEN strftime(observation_period_end_date, '%Y-%m-%d') END))::JSON
            )) AS line
            FROM reg JOIN xw x ON x.person_id = reg.person_id AND x.org_code = reg.org_code AND x.org_type = 'gp'
            ORDER BY reg.person_id, observation_period_start_date""",
        "Encounter": """
            SELECT o.org_code, uid('enc|' || v.visit_occurrence_id) AS ref, NULL AS err, json_object(
              'resourceType', 'Encounter', 'id', uid('enc|' || v.visit_occurrence_id), 'status', 'finished',
              'class', json_object('system', 'http://terminology.hl7.org/CodeSystem/v3-ActCode', 'code', 'AMB',
                    'display', 'ambulatory'),
              'subject', json_object('reference', 'Patient/' || x.local_id),
              'period', json_object('start', strftime(v.visit_start_date, '%Y-%m-%d'),
                    'end', strftime(v.visit_end_date, '%Y-%m-%d'))
            )::VARCHAR AS line
            FROM visit_occurrence v JOIN org o ON o.care_site_id = v.care_site_id
            JOIN xw x ON x.person_id = v.person_id AND x.org_code = o.org_code
            WHERE v.visit_source_value = 'GP' ORDER BY v.visit_occurrence_id""",
        "Condition": f"""
            WITH c AS (SELECT c.*, o.org_code, x.local_id, u('cc|' || condition_occurrence_id) AS r1,
                              u('cd|' || condition_occurrence_id) AS r2, cn.concept_name
                       FROM condition_occurrence c JOIN visit_occurrence v USING (visit_occurrence_id)
                       JOIN org o ON o.care_site_id = v.care_site_id
                       JOIN xw x ON x.person_id = c.person_id AND x.org_code = o.org_code
                       LEFT JOIN concept cn ON cn.concept_id = c.condition_concept_id
                       WHERE v.visit_source_value = 'GP')
            SELECT org_code, uid('con|' || condition_occurrence_id) AS ref,
                   CASE WHEN r1 < {bad_code} THEN 'invalid_code' WHEN r2 < {bad_date} THEN 'impossible_date' END AS err,
                   nonull(json_object(
              'resourceType', 'Condition', 'id', uid('con|' || condition_occurrence_id),
              'clinicalStatus', json_object('coding', [json_object('system',
                    'http://terminology.hl7.org/CodeSystem/condition-clinical', 'code', 'active')]),
              'code', json_object('coding', [nonull(json_object('system', '{SNOMED}',
                    'code', CASE WHEN r1 < {bad_code} THEN condition_source_value || '9X' ELSE condition_source_value END,
                    'display', concept_name))::JSON]),
              'subject', json_object('reference', 'Patient/' || local_id),
              'encounter', json_object('reference', 'Encounter/' || uid('enc|' || visit_occurrence_id)),
              'onsetDateTime', CASE WHEN r1 >= {bad_code} AND r2 < {bad_date} THEN bad_date(condition_start_date)
                    ELSE strftime(condition_start_date, '%Y-%m-%d') END,
              'recordedDate', strftime(condition_start_date, '%Y-%m-%d')
            )) AS line FROM c ORDER BY condition_occurrence_id""",
        "Observation": """
            SELECT o.org_code, uid('obs|' || m.measurement_id) AS ref, NULL AS err, json_object(
              'resourceType', 'Observation', 'id', uid('obs|' || m.measurement_id), 'status', 'final',
              'category', [json_object('coding', [json_object('system',
                    'http://terminology.hl7.org/CodeSystem/observation-category', 'code', 'vital-signs')])],
              'code', json_object('coding', [json_object('system', '""" + LOINC + """', 'code', m.measurement_source_value,
                    'display', cn.concept_name)]),
              'subject', json_object('reference', 'Patient/' || x.local_id),
              'encounter', json_object('reference', 'Encounter/' || uid('enc|' || m.visit_occurrence_id)),
              'effectiveDateTime', strftime(m.measurement_date, '%Y-%m-%d'),
              'valueQuantity', json_object('value', m.value_as_number, 'unit', m.unit_source_value,
                    'system', '""" + UCUM + """', 'code', m.unit_source_value)
            )::VARCHAR AS line
            FROM measurement m JOIN visit_occurrence v USING (visit_occurrence_id)
            JOIN org o ON o.care_site_id = v.care_site_id
            JOIN xw x ON x.person_id = m.person_id AND x.org_code = o.org_code
            LEFT JOIN concept cn ON cn.concept_id = m.measurement_concept_id
            WHERE m.measurement_type_concept_id = """ + str(cat.EHR) + """ AND v.visit_source_value = 'GP'
            ORDER BY m.measurement_id""",
        "MedicationRequest": f"""
            WITH d AS (SELECT d.*, CASE WHEN pp.change_date IS NOT NULL AND d.drug_exposure_start_date >= pp.change_date
                                        THEN pp.p2 ELSE pp.p1 END AS org_code,
                              u('dc|' || drug_exposure_id) AS r1, cn.concept_name
                       FROM drug_exposure d JOIN pp USING (person_id)
                       LEFT JOIN concept cn ON cn.concept_id = d.drug_concept_id)
            SELECT d.org_code, uid('med|' || drug_exposure_id) AS ref,
                   CASE WHEN r1 < {bad_code} THEN 'invalid_code' END AS err, nonull(json_object(
              'resourceType', 'MedicationRequest', 'id', uid('med|' || drug_exposure_id), 'status', 'completed',
              'intent', 'order',
              'medicationCodeableConcept', json_object('coding', [nonull(json_object('system', '{RXNORM}',
                    'code', CASE WHEN r1 < {bad_code} THEN 'X' || drug_source_value ELSE drug_source_value END,
                    'display', concept_name))::JSON]),
              'subject', json_object('reference', 'Patient/' || x.local_id),
              'encounter', CASE WHEN visit_occurrence_id IS NOT NULL THEN
                    json_object('reference', 'Encounter/' || uid('enc|' || visit_occurrence_id)) END,
              'authoredOn', strftime(drug_exposure_start_date, '%Y-%m-%d'),
              'dispenseRequest', json_object('expectedSupplyDuration', json_object('value', days_supply,
                    'unit', 'days', 'system', '{UCUM}', 'code', 'd'))
            )) AS line
            FROM d JOIN xw x ON x.person_id = d.person_id AND x.org_code = d.org_code
            ORDER BY drug_exposure_id""",
        "Procedure": f"""
            SELECT o.org_code, uid('pro|' || p.procedure_occurrence_id) AS ref, NULL AS err, json_object(
              'resourceType', 'Procedure', 'id', uid('pro|' || p.procedure_occurrence_id), 'status', 'completed',
              'code', json_object('coding', [json_object('system', '{SNOMED}', 'code', p.procedure_source_value)]),
              'subject', json_object('reference', 'Patient/' || x.local_id),
              'encounter', json_object('reference', 'Encounter/' || uid('enc|' || p.visit_occurrence_id)),
              'performedDateTime', strftime(p.procedure_date, '%Y-%m-%d')
            )::VARCHAR AS line
            FROM procedure_occurrence p JOIN visit_occurrence v USING (visit_occurrence_id)
            JOIN org o ON o.care_site_id = v.care_site_id
            JOIN xw x ON x.person_id = p.person_id AND x.org_code = o.org_code
            WHERE v.visit_source_value = 'GP' ORDER BY p.procedure_occurrence_id""",
    }
    for resource, sql in queries.items():
        _emit_by_org(writer, _fetch(con, sql), "gp/{org}/" + resource + ".ndjson", "ndjson")


def _acute(con, writer: Writer, rate: float) -> None:
    """Acute trusts: PAS patients, encounters (IP/OP/AE), ICD-10 diagnoses and OPCS-4 procedures."""
    bad_code, bad_date = rate / 2, rate / 4
    patients = _fetch(con, """
        SELECT org_code, local_id AS local_patient_id, nhs_number_sent AS nhs_number, family_name, given_name,
               birth_date AS date_of_birth, sex, postcode
        FROM xw WHERE org_type = 'acute' ORDER BY org_code, person_id""")
    encounters = _fetch(con, f"""
        SELECT o.org_code, 'E' || key12('enc' || v.visit_occurrence_id)
                 AS encounter_id, x.local_id AS local_patient_id, v.visit_source_value AS setting,
               CASE WHEN u('ed|' || v.visit_occurrence_id) < {bad_date} THEN bad_date(v.visit_start_date)
                    ELSE strftime(v.visit_start_date, '%Y-%m-%d') END AS start_date,
               strftime(v.visit_end_date, '%Y-%m-%d') AS end_date,
               CASE WHEN v.visit_source_value = 'IP' THEN v.admitted_from_source_value ELSE '' END AS admission_method,
               CASE v.visit_source_value WHEN 'OP' THEN '' WHEN 'AE' THEN '1'
                    ELSE v.discharged_to_source_value END AS discharge_method,
               CASE WHEN v.visit_source_value = 'AE' THEN '180' WHEN v.visit_source_value = 'OP' THEN '300'
                    WHEN dx.code IN ('O80') THEN '501' WHEN dx.code IN ('S72.0', 'M19.9') THEN '110'
                    WHEN dx.code IN ('K35.8') THEN '100' WHEN dx.code LIKE 'C%' THEN '370' ELSE '300' END AS specialty,
               CASE WHEN u('ed|' || v.visit_occurrence_id) < {bad_date} THEN 'impossible_date' END AS err
        FROM visit_occurrence v JOIN org o ON o.care_site_id = v.care_site_id AND o.org_type = 'acute'
        JOIN xw x ON x.person_id = v.person_id AND x.org_code = o.org_code
        LEFT JOIN (SELECT visit_occurrence_id, arg_min(condition_source_value, condition_occurrence_id) AS code
                   FROM condition_occurrence GROUP BY ALL) dx USING (visit_occurrence_id)
        ORDER BY v.visit_occurrence_id""")
    diagnoses = _fetch(con, f"""
        SELECT o.org_code, 'E' || key12('enc' || c.visit_occurrence_id)
                 AS encounter_id,
               row_number() OVER (PARTITION BY c.visit_occurrence_id ORDER BY c.condition_occurrence_id) AS position,
               CASE WHEN u('dx|' || c.condition_occurrence_id) < {bad_code}
                    THEN replace(c.condition_source_value, '.', '') || 'Q' ELSE c.condition_source_value END AS icd10_code,
               CASE WHEN u('dx|' || c.condition_occurrence_id) < {bad_code} THEN 'invalid_code' END AS err
        FROM condition_occurrence c JOIN visit_occurrence v USING (visit_occurrence_id)
        JOIN org o ON o.care_site_id = v.care_site_id AND o.org_type = 'acute'
        ORDER BY c.condition_occurrence_id""")
    procedures = _fetch(con, """
        SELECT o.org_code, 'E' || key12('enc' || p.visit_occurrence_id)
                 AS encounter_id,
               row_number() OVER (PARTITION BY p.visit_occurrence_id ORDER BY p.procedure_occurrence_id) AS position,
               p.procedure_source_value AS opcs4_code, strftime(p.procedure_date, '%Y-%m-%d') AS procedure_date,
               NULL AS err
        FROM procedure_occurrence p JOIN visit_occurrence v USING (visit_occurrence_id)
        JOIN org o ON o.care_site_id = v.care_site_id AND o.org_type = 'acute'
        ORDER BY p.procedure_occurrence_id""")
    for name, table, key in (("patients", patients, "local_patient_id"), ("encounters", encounters, "encounter_id"),
                             ("diagnoses", diagnoses, "encounter_id"), ("procedures", procedures, "encounter_id")):
        org = np.array(table["org_code"].to_pylist(), dtype=object)
        errs = table["err"].to_pylist() if "err" in table.column_names else [None] * table.num_rows
        body = table.drop_columns([c for c in ("org_code", "err") if c in table.column_names])
        for code in sorted(set(org)):
            rows = np.flatnonzero(org == code)
            writer.csv(f"acute/{code}/{name}.csv", code, body.take(pa.array(rows)), key, [errs[i] for i in rows])


def _pathology(con, writer: Writer, rate: float, orgs: Organisations) -> None:
    """The pathology service: one ORU^R01 message per order (panel), HL7 v2.4."""
    tests = [(k, c.code, c.name, c.unit) for k, c in cat.MEASUREMENTS.items()]
    panel_of = {k: panel for panel, (_, keys) in cat.LAB_PANELS.items() for k in keys}
    panel_rows = pa.table({"loinc": [t[1] for t in tests if t[0] in panel_of],
                           "panel": [panel_of[t[0]] for t in tests if t[0] in panel_of],
                           "panel_name": [cat.LAB_PANELS[panel_of[t[0]]][0] for t in tests if t[0] in panel_of],
                           "test_name": [t[2] for t in tests if t[0] in panel_of]})
    con.register("panels", panel_rows)
    bad_code, bad_date = rate / 2, rate / 4
    result = _fetch(con, f"""
        WITH m AS (
            SELECT m.*, pa.panel, pa.panel_name, pa.test_name, o.org_code AS requester,
                   min(m.measurement_id) OVER (PARTITION BY m.person_id, m.measurement_date, m.visit_occurrence_id,
                                               pa.panel) AS order_id,
                   u('lc|' || m.measurement_id) AS r1
            FROM measurement m JOIN panels pa ON pa.loinc = m.measurement_source_value
            JOIN visit_occurrence v USING (visit_occurrence_id) JOIN org o ON o.care_site_id = v.care_site_id
            WHERE m.measurement_type_concept_id = {cat.LAB}),
        obx AS (
            SELECT order_id, person_id, measurement_date, panel, panel_name, requester, measurement_id,
                   bool_or(r1 < {bad_code}) OVER (PARTITION BY order_id) AS bad_code,
                   'OBX|' || row_number() OVER (PARTITION BY order_id ORDER BY measurement_id) || '|NM|' ||
                   CASE WHEN r1 < {bad_code} THEN '99999-' || (measurement_id % 10) ELSE measurement_source_value END
                   || '^' || test_name || '^LN||' || value_as_number || '|' || unit_source_value || '^' ||
                   unit_source_value || '^UCUM|' || range_low || '-' || range_high || '|' ||
                   CASE WHEN value_as_number > range_high THEN 'H' WHEN value_as_number < range_low THEN 'L'
                        ELSE 'N' END || '|||F|||' || strftime(measurement_date, '%Y%m%d') || '0930' AS seg
            FROM m),
        msg AS (
            SELECT order_id, any_value(person_id) AS person_id, any_value(measurement_date) AS d,
                   any_value(panel) AS panel, any_value(panel_name) AS panel_name, any_value(requester) AS requester,
                   bool_or(bad_code) AS bad_code, string_agg(seg, chr(13) ORDER BY measurement_id) AS obx
            FROM obx GROUP BY order_id)
        SELECT '{orgs.pathology}' AS org_code, 'M' || substr(md5('msg' || order_id || '|' || x.local_id), 1, 15) AS ref,
               CASE WHEN bad_code THEN 'invalid_code' WHEN u('ld|' || order_id) < {bad_date} THEN 'impossible_date'
                    END AS err,
               'MSH|^~\\&|WMPATH|{orgs.pathology}|MERCIA|MERCIA|' || strftime(d, '%Y%m%d') || '1700||ORU^R01^ORU_R01|'
               || 'M' || substr(md5('msg' || order_id || '|' || x.local_id), 1, 15) || '|P|2.4' || chr(13) ||
               'PID|1||' || CASE WHEN x.nhs_number_sent IS NOT NULL THEN x.nhs_number_sent || '^^^NHS^NH~' ELSE '' END
               || x.local_id || '^^^{orgs.pathology}^MR||' || x.family_name || '^' || x.given_name || '||'
               || replace(x.birth_date, '-', '') || '|' || x.sex || '|||^^' || x.city || '^^' || x.postcode || chr(13) ||
               'OBR|1||F' || key12('ord' || order_id) || '|' || panel || '^' || panel_name || '^L|||' ||
               CASE WHEN NOT bad_code AND u('ld|' || order_id) < {bad_date} THEN strftime(d, '%Y') || '0230'
                    ELSE strftime(d, '%Y%m%d') END || '0930|||||||||' || requester || '|||||||||F' || chr(13) || obx
               AS line
        FROM msg JOIN xw x ON x.person_id = msg.person_id AND x.org_type = 'pathology'
        ORDER BY order_id""")
    _emit_by_org(writer, result, "pathology/{org}/results.hl7", "hl7")


def _proms(con, writer: Writer) -> None:
    """National PROMs returns: EQ-5D-5L (and the Oxford Knee Score for knees) before and after surgery."""
    table = _fetch(con, f"""
        WITH o AS (
            SELECT person_id, observation_date AS d, split_part(qualifier_source_value, ':', 1) AS proc,
                   split_part(qualifier_source_value, ':', 2) AS timepoint, observation_source_value AS q,
                   value_as_number AS num, value_as_string AS txt
            FROM observation WHERE observation_type_concept_id = {cat.PATIENT_SELF_REPORT}),
        t AS (SELECT person_id, d, proc, timepoint, 'EQ-5D-5L' AS questionnaire,
                     max(txt) FILTER (WHERE q = 'EQ5D5L') AS profile, max(num) FILTER (WHERE q = 'EQVAS') AS vas,
                     NULL::DOUBLE AS oks
              FROM o WHERE q IN ('EQ5D5L', 'EQVAS') GROUP BY ALL
              UNION ALL
              SELECT person_id, d, proc, timepoint, 'OKS', NULL, NULL, max(num) FROM o WHERE q = 'OKS' GROUP BY ALL)
        SELECT 'PROMS' AS org_code, 'P' || key12(t.person_id || t.proc || t.timepoint || t.questionnaire) AS record_id,
               x.nhs_number_sent AS nhs_number, x.birth_date AS date_of_birth, x.sex, x.postcode,
               tr.org_code AS provider_code,
               CASE t.proc WHEN 'knee_replacement' THEN 'W40.1' ELSE 'W37.1' END AS procedure_opcs4,
               t.questionnaire, t.timepoint, strftime(t.d, '%Y-%m-%d') AS completed_date,
               substr(profile, 1, 1) AS eq5d_mobility, substr(profile, 2, 1) AS eq5d_selfcare,
               substr(profile, 3, 1) AS eq5d_usual_activities, substr(profile, 4, 1) AS eq5d_pain_discomfort,
               substr(profile, 5, 1) AS eq5d_anxiety_depression, vas::BIGINT AS eq_vas, oks::BIGINT AS oks_score
        FROM t JOIN xw x ON x.person_id = t.person_id AND x.org_type = 'proms'
        LEFT JOIN (SELECT person_id, min(org_code) AS org_code FROM xw WHERE org_type = 'acute' GROUP BY ALL) tr
             ON tr.person_id = t.person_id
        ORDER BY t.person_id, t.d, t.questionnaire""")
    if table.num_rows:
        writer.csv("proms/proms.csv", "PROMS", table.drop_columns(["org_code"]), "record_id", [None] * table.num_rows)


def _rare_disease(writer: Writer, chunk: Chunk, seen: np.ndarray, xw: pa.Table, orgs: Organisations) -> pa.Table:
    """The clinic's phenopackets (v2 JSON) and, for solved cases, a one-variant VCF."""
    p, rare, panel = chunk.people, chunk.rare, rare_panel()
    rd = xw.filter(pc.equal(xw["org_type"], "rare_disease")).to_pylist()
    by_case = np.argsort(rare.feature_case, kind="stable")
    starts = np.searchsorted(rare.feature_case[by_case], np.arange(len(rare.patient) + 1))
    variants = []
    for row, case in zip(rd, seen):
        pid = row["local_id"]
        person = rare.patient[case]
        seen_day = int(rare.seen_day[case])
        disease = rare.disease[case]
        features = []
        for f in by_case[starts[case]:starts[case + 1]]:
            ann = rare.feature_ann[f]
            feature = {"type": {"id": panel.ann_hpo[ann], "label": panel.ann_label[ann]}}
            if rare.feature_excluded[f]:
                feature["excluded"] = True
            features.append(feature)
        subject = {"id": pid, "dateOfBirth": f"{row['birth_date']}T00:00:00Z",
                   "sex": "FEMALE" if row["sex"] == "F" else "MALE"}
        if row["nhs_number_sent"]:
            subject["alternateIds"] = [f"nhs:{row['nhs_number_sent']}"]
        packet = {"id": pid, "subject": subject, "phenotypicFeatures": features,
                  "diseases": [{"term": {"id": panel.disease_ids[disease], "label": panel.disease_names[disease]}}],
                  "metaData": {"created": f"{EPOCH + dt.timedelta(days=seen_day)}T12:00:00Z",
                               "createdBy": f"{orgs.rare_disease} clinical genetics",
                               "resources": [
                                   {"id": "hp", "name": "human phenotype ontology", "namespacePrefix": "HP",
                                    "url": "http://purl.obolibrary.org/obo/hp.owl", "version": "2025-01-16",
                                    "iriPrefix": "http://purl.obolibrary.org/obo/HP_"},
                                   {"id": "omim", "name": "Online Mendelian Inheritance in Man",
                                    "namespacePrefix": "OMIM", "url": "https://www.omim.org", "version": "2025",
                                    "iriPrefix": "https://www.omim.org/entry/"}],
                               "phenopacketSchemaVersion": "2.0"}}
        if rare.solved[case]:
            gene = panel.gene[disease]
            vcf_rel = f"rare_disease/{orgs.rare_disease}/vcf/{pid}.vcf.gz"
            packet["interpretations"] = [{
                "id": f"{pid}-interpretation", "progressStatus": "SOLVED",
                "diagnosis": {"disease": {"id": panel.disease_ids[disease], "label": panel.disease_names[disease]},
                              "genomicInterpretations": [{
                                  "subjectOrBiosampleId": pid, "interpretationStatus": "CAUSATIVE",
                                  "variantInterpretation": {"variationDescriptor": {
                                      "id": f"{pid}-var1", "geneContext": {"valueId": f"HGNC:{gene}", "symbol": gene},
                                      "vcfRecord": {"genomeAssembly": "GRCh38", "chrom": f"chr{rare.chrom[case]}",
                                                    "pos": str(int(rare.pos[case])), "ref": rare.ref[case],
                                                    "alt": rare.alt[case]},
                                      "allelicState": {"id": "GENO:0000136" if rare.genotype[case] == "0/1"
                                                       else "GENO:0000137",
                                                       "label": "heterozygous" if rare.genotype[case] == "0/1"
                                                       else "homozygous"}}}}]}}]
            packet["files"] = [{"uri": f"file://vcf/{pid}.vcf.gz", "individualToFileIdentifiers": {pid: pid},
                                "fileAttributes": {"genomeAssembly": "GRCh38", "fileFormat": "VCF"}}]
            header = ("##fileformat=VCFv4.2\n"
                      f"##fileDate={(EPOCH + dt.timedelta(days=seen_day)).strftime('%Y%m%d')}\n##reference=GRCh38\n"
                      f"##contig=<ID=chr{rare.chrom[case]}>\n"
                      '##INFO=<ID=GENE,Number=1,Type=String,Description="HGNC gene symbol">\n'
                      '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
                      f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{pid}\n")
            site = (f"chr{rare.chrom[case]}\t{int(rare.pos[case])}\t.\t{rare.ref[case]}\t{rare.alt[case]}\t50\tPASS\t"
                    f"GENE={gene}\tGT\t{rare.genotype[case]}")
            path = writer.out / vcf_rel
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_bgzipped_vcf(path, header, [site])
            writer.counts[vcf_rel] = 1
            variants.append({"person_id": int(p.person_id[person]), "phenopacket_id": pid, "gene": gene,
                             "chrom": f"chr{rare.chrom[case]}", "pos": int(rare.pos[case]), "ref": rare.ref[case],
                             "alt": rare.alt[case], "genotype": rare.genotype[case],
                             "disease_id": panel.disease_ids[disease]})
        rel = f"rare_disease/{orgs.rare_disease}/phenopackets/{pid}.json"
        path = writer.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(packet, option=orjson.OPT_INDENT_2))
        writer.counts[rel] = 1
    schema = pa.schema([("person_id", pa.int64()), ("phenopacket_id", pa.string()), ("gene", pa.string()),
                        ("chrom", pa.string()), ("pos", pa.int64()), ("ref", pa.string()), ("alt", pa.string()),
                        ("genotype", pa.string()), ("disease_id", pa.string())])
    return pa.Table.from_pylist(variants, schema=schema)


def _write_bgzipped_vcf(path: Path, header: str, sites: list[str]) -> None:
    """A VCF compressed with BGZF blocks (as sequencing pipelines deliver them, indexable by tabix),
    written by htslib through cyvcf2 so the file is what the VCF reader meets in practice."""
    from cyvcf2 import Writer as VcfWriter

    vcf = VcfWriter.from_string(str(path), header, mode="wz")
    try:
        for site in sites:
            vcf.write_record(vcf.variant_from_string(site))
    finally:
        vcf.close()


CSV_HEADERS = {
    "patients": "local_patient_id,nhs_number,family_name,given_name,date_of_birth,sex,postcode",
    "encounters": "encounter_id,local_patient_id,setting,start_date,end_date,admission_method,discharge_method,"
                  "specialty",
    "diagnoses": "encounter_id,position,icd10_code",
    "procedures": "encounter_id,position,opcs4_code,procedure_date",
    "proms": "record_id,nhs_number,date_of_birth,sex,postcode,provider_code,procedure_opcs4,questionnaire,timepoint,"
             "completed_date,eq5d_mobility,eq5d_selfcare,eq5d_usual_activities,eq5d_pain_discomfort,"
             "eq5d_anxiety_depression,eq_vas,oks_score",
}
FHIR_TYPES = ("Organization", "Patient", "EpisodeOfCare", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure")


def _practice_organizations(out: Path, orgs: Organisations, writer: Writer) -> None:
    """Each practice's own Organization resource (ODS code and name), which names its care site when loaded;
    written whole, outside the injected errors and their random draws (the other files stay as they were)."""
    for row in orgs.rows():
        if row["org_type"] != "gp":
            continue
        rel = f"gp/{row['org_code']}/Organization.ndjson"
        resource = {"resourceType": "Organization", "id": row["org_code"], "name": row["name"],
                    "identifier": [{"system": ODS_SYSTEM, "value": row["org_code"]}]}
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(orjson.dumps(resource) + b"\n")
        writer.counts[rel] = 1


def _complete_layout(out: Path, orgs: Organisations, writer: Writer) -> None:
    """Every file of the contract exists, empty (or header only) when an organisation had no records."""
    expected = {f"gp/{c}/{t}.ndjson": "" for c in orgs.practices for t in FHIR_TYPES}
    expected |= {f"acute/{c}/{n}.csv": CSV_HEADERS[n] + "\n" for c in orgs.trusts
                 for n in ("patients", "encounters", "diagnoses", "procedures")}
    expected |= {f"pathology/{orgs.pathology}/results.hl7": "", "proms/proms.csv": CSV_HEADERS["proms"] + "\n"}
    for rel, content in expected.items():
        path = out / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            writer.counts[rel] = 0


def _bulk_manifest(out: Path, practice: str, counts: dict[str, int]) -> None:
    """The FHIR Bulk Data ($export) completion manifest of one practice."""
    folder = out / "gp" / practice
    if not folder.is_dir():
        return
    output = [{"type": rel.rsplit("/", 1)[1].removesuffix(".ndjson"), "url": rel.rsplit("/", 1)[1], "count": n}
              for rel, n in sorted(counts.items()) if rel.startswith(f"gp/{practice}/")]
    manifest = {"transactionTime": "2024-03-31T23:59:59Z",
                "request": f"https://{practice.lower()}.gp.example.nhs.uk/fhir/$export", "requiresAccessToken": True,
                "output": output, "error": []}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
