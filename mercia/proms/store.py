"""PROM responses and their scores in the store, each score tagged with its value set and DOI.

``mercia_prom_response`` keeps the answers as they arrived (one row per questionnaire return);
``mercia_prom_score`` keeps every score ever derived from them.  Re-scoring with another value set
appends rows, so the history of which index was reported with which set is never overwritten.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from mercia.cdm import Store
from mercia.proms.scoring import Rejection, score_eq5d
from mercia.proms.valuesets import DIMENSIONS, value_set

DDL = [
    """CREATE TABLE IF NOT EXISTS mercia_prom_response (
        response_id BIGINT NOT NULL, source VARCHAR NOT NULL, source_record VARCHAR NOT NULL,
        instrument VARCHAR NOT NULL, timepoint VARCHAR, completed_date DATE,
        mo VARCHAR, sc VARCHAR, ua VARCHAR, pd VARCHAR, ad VARCHAR, vas BIGINT, total DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS mercia_prom_score (
        score_id BIGINT NOT NULL, response_id BIGINT NOT NULL, instrument VARCHAR NOT NULL,
        score_name VARCHAR NOT NULL, value_set_id VARCHAR NOT NULL, doi VARCHAR NOT NULL,
        score DOUBLE PRECISION NOT NULL, scored_at VARCHAR NOT NULL)""",
]

# The synthetic region's national PROMs return (mercia.synth, docs/synth.md) -> response columns.
DIMENSION_COLUMNS = {"eq5d_mobility": "mo", "eq5d_selfcare": "sc", "eq5d_usual_activities": "ua",
                     "eq5d_pain_discomfort": "pd", "eq5d_anxiety_depression": "ad"}


def ensure_prom_tables(store: Store) -> None:
    for ddl in DDL:
        store.execute(ddl)


def import_region_csv(store: Store, path: Path) -> int:
    """Load the region's ``proms.csv`` (EQ-5D-5L and Oxford Knee Score returns); idempotent per record."""
    ensure_prom_tables(store)
    table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
        column_types={c: pa.string() for c in ("record_id", "questionnaire", "timepoint", *DIMENSION_COLUMNS)}
        | {"completed_date": pa.date32(), "eq_vas": pa.int64(), "oks_score": pa.float64()}))
    known = {r[0] for r in store.query("SELECT source_record FROM mercia_prom_response WHERE source = 'proms_csv'")}
    table = table.filter(pc.invert(pc.is_in(table.column("record_id"), pa.array(sorted(known), pa.string()))))
    instrument = pc.utf8_lower(pc.replace_substring(table.column("questionnaire"), "-", ""))
    instrument = pc.if_else(pc.equal(instrument, "eq5d5l"), instrument, pc.utf8_lower(table.column("questionnaire")))
    with store.transaction():
        n = table.num_rows
        start = store.allocate_ids("mercia_prom_response", "response_id", n)
        rows = pa.table({
            "response_id": pa.array(range(start, start + n), pa.int64()),
            "source": pa.array(["proms_csv"] * n, pa.string()), "source_record": table.column("record_id"),
            "instrument": instrument, "timepoint": table.column("timepoint").cast(pa.string()),
            "completed_date": table.column("completed_date").cast(pa.date32()),
            **{col: table.column(src) for src, col in DIMENSION_COLUMNS.items()},
            "vas": table.column("eq_vas"), "total": table.column("oks_score")})
        store.insert_arrow("mercia_prom_response", rows)
    return n


def rescore(store: Store, value_set_id: str) -> tuple[int, list[Rejection]]:
    """Score every stored EQ-5D response of the set's instrument again into new rows; old rows stay."""
    ensure_prom_tables(store)
    vs = value_set(value_set_id)
    answers = store.query_arrow(
        "SELECT response_id, source_record AS id, mo AS MO, sc AS SC, ua AS UA, pd AS PD, ad AS AD "
        "FROM mercia_prom_response WHERE instrument = ? ORDER BY response_id", [vs.spec.instrument])
    answers = answers.rename_columns(["response_id", "id", *DIMENSIONS])
    scored = score_eq5d(answers, value_set_id, vs.spec.instrument)
    good = scored.table.filter(scored.table.column("index").is_valid())
    with store.transaction():
        n = good.num_rows
        start = store.allocate_ids("mercia_prom_score", "score_id", n)
        rows = pa.table({
            "score_id": pa.array(range(start, start + n), pa.int64()),
            "response_id": good.column("response_id").cast(pa.int64()),
            "instrument": pa.array([vs.spec.instrument] * n), "score_name": pa.array(["index"] * n),
            "value_set_id": pa.array([vs.id] * n), "doi": pa.array([vs.doi] * n),
            "score": good.column("index"),
            "scored_at": pa.array([datetime.now(UTC).isoformat(timespec="seconds")] * n)})
        store.insert_arrow("mercia_prom_score", rows)
    return n, scored.rejections


def scores(store: Store, response_id: int) -> list[dict]:
    return store.query_dicts("SELECT * FROM mercia_prom_score WHERE response_id = ? ORDER BY score_id", [response_id])


# linkIds accepted for each EQ-5D item of a QuestionnaireResponse (case-insensitive).
FHIR_ITEMS = {"mo": ("mo", "mobility"), "sc": ("sc", "selfcare", "self-care", "self_care"),
              "ua": ("ua", "usualactivities", "usual-activities", "usual_activities"),
              "pd": ("pd", "paindiscomfort", "pain-discomfort", "pain_discomfort"),
              "ad": ("ad", "anxietydepression", "anxiety-depression", "anxiety_depression"),
              "vas": ("vas", "eqvas", "eq-vas", "eq_vas")}
FHIR_INSTRUMENTS = {"eq-5d-5l": "eq5d5l", "eq5d5l": "eq5d5l", "eq-5d-3l": "eq5d3l", "eq5d3l": "eq5d3l"}


def _fhir_answer(item: dict) -> str | None:
    for answer in item.get("answer") or []:
        for key in ("valueInteger", "valueDecimal", "valueString"):
            if key in answer:
                return str(answer[key])
        if "valueCoding" in answer:
            return str(answer["valueCoding"].get("code"))
    return None


def import_fhir_responses(store: Store, resources: list[dict]) -> tuple[int, list[str]]:
    """Load EQ-5D QuestionnaireResponses (questionnaire canonical ending in ``eq-5d-5l`` or ``eq-5d-3l``;
    items by linkId, see ``FHIR_ITEMS``); idempotent per resource id.  Returns (loaded, problems), each
    problem naming the resource and field; answers are checked when scored."""
    ensure_prom_tables(store)
    known = {r[0] for r in store.query("SELECT source_record FROM mercia_prom_response WHERE source = 'fhir'")}
    rows: dict[str, list] = {c: [] for c in ("source_record", "instrument", "completed_date", "mo", "sc", "ua", "pd",
                                             "ad", "vas")}
    problems: list[str] = []
    for res in resources:
        rid = f"QuestionnaireResponse/{res.get('id', '?')}"
        if res.get("resourceType") != "QuestionnaireResponse":
            problems.append(f"{res.get('resourceType', '?')}/{res.get('id', '?')}: resourceType: not a QuestionnaireResponse")
            continue
        instrument = FHIR_INSTRUMENTS.get(str(res.get("questionnaire", "")).rstrip("/").rsplit("/", 1)[-1].split("|")[0].lower())
        if instrument is None:
            problems.append(f"{rid}: questionnaire: {res.get('questionnaire')!r} is not an EQ-5D questionnaire")
            continue
        if not res.get("authored"):
            problems.append(f"{rid}: authored: missing")
            continue
        if rid in known:
            continue
        stack, answers = list(res.get("item") or []), {}
        while stack:
            item = stack.pop()
            stack.extend(item.get("item") or [])
            link = str(item.get("linkId", "")).lower()
            for column, aliases in FHIR_ITEMS.items():
                if link in aliases:
                    answers[column] = _fhir_answer(item)
        rows["source_record"].append(rid)
        rows["instrument"].append(instrument)
        rows["completed_date"].append(str(res["authored"])[:10])
        for column in FHIR_ITEMS:
            rows[column].append(answers.get(column))
        known.add(rid)
    n = len(rows["source_record"])
    with store.transaction():
        start = store.allocate_ids("mercia_prom_response", "response_id", n)
        vas = pc.cast(pa.array(rows.pop("vas"), pa.string()), pa.int64(), safe=False) if n else pa.array([], pa.int64())
        table = pa.table({
            "response_id": pa.array(range(start, start + n), pa.int64()), "source": pa.array(["fhir"] * n, pa.string()),
            "source_record": pa.array(rows["source_record"], pa.string()),
            "instrument": pa.array(rows["instrument"], pa.string()), "timepoint": pa.nulls(n, pa.string()),
            "completed_date": pa.array(rows["completed_date"], pa.string()).cast(pa.date32()),
            **{c: pa.array(rows[c], pa.string()) for c in ("mo", "sc", "ua", "pd", "ad")},
            "vas": vas, "total": pa.nulls(n, pa.float64())})
        store.insert_arrow("mercia_prom_response", table)
    return n, problems
