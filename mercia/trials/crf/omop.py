"""CRF data written through into the participant's OMOP record, and corrected when the form is edited.

A field annotated ``@OMOP=<concept_id>`` (or ``@LOINC=<code>``, looked up in the vocabulary) becomes a
``measurement`` or ``observation`` row (the concept's domain decides, ``@OMOP-TABLE`` overrides) of
the participant's pseudonymous ``person_id``, dated on the visit's scheduled day and typed 32809 "Case
Report Form".  Items annotated ``@PROM=<instrument>:<item>`` (EQ-5D-5L/3L, Oxford Hip/Knee) are scored
once the form holds a full set of answers with ``mercia.proms.scoring`` (value set from
``@PROM-VALUESET``, default England 2018 / UK 1997): the score is an observation carrying its value
set id (``qualifier_source_value``) and DOI (``value_as_string``), and each item answer is an
observation whose ``observation_event_id`` is the score's ``observation_id`` (the convention of
``mercia.proms.omop``, which the ingest paths follow too).  The answers are also a
row of the PROMs store's ``mercia_prom_response`` (source ``crf``), where ``mercia proms rescore`` and
PROM reports find them beside the region's returns and FHIR responses.

``mercia_crf_omop`` is the provenance: which OMOP (or PROMs store) row each form fact became.  Every save recomputes
the form's facts and updates, inserts or deletes rows so the CDM always shows the current values; the
change list goes into the audit log beside the save that caused it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa

from mercia.governance import Conflict
from mercia.proms.omop import DEFAULT_VALUE_SETS, ITEM_LINK_FIELD, item_source_value, score_source_value
from mercia.proms.valuesets import DIMENSIONS
from mercia.trials.crf.dictionary import OMOP_TABLES, Field

CASE_REPORT_FORM = 32809          # OMOP type concept "Case Report Form"
# Tables a form fact can become, with their id column; only the OMOP ones carry person_id.
ID_COLUMNS = {"measurement": "measurement_id", "observation": "observation_id", "mercia_prom_response": "response_id"}
NUMERIC_VALIDATIONS = ("integer", "number")


@dataclass(frozen=True)
class Fact:
    key: str                      # column (field___code for a ticked choice), or "prom:<instrument>[:<item>|:response]"
    table: str                    # measurement, observation or mercia_prom_response
    row: dict[str, Any]           # the columns other than the id, person and link
    link: str | None = None       # key of the score an item answer belongs to


def _concept(store, f: Field, choice: str | None = None) -> tuple[int, str | None]:
    """(concept id, domain) for a field's (or a checkbox choice's) @OMOP or @LOINC tag; 0 and None when
    the vocabulary lacks it."""
    concept_id, loinc = f.mapping_target("OMOP", choice), f.mapping_target("LOINC", choice)
    if concept_id:
        found = store.query("SELECT concept_id, domain_id FROM concept WHERE concept_id = ?", [int(concept_id)])
        return (int(concept_id), found[0][1] if found else None)
    if loinc:
        found = store.query("SELECT concept_id, domain_id FROM concept WHERE vocabulary_id = 'LOINC' "
                            "AND concept_code = ?", [loinc])
        return (int(found[0][0]), found[0][1]) if found else (0, None)
    return 0, None


def _number(f: Field, value: str) -> float | None:
    numeric = f.field_type in ("calc", "slider") or f.validation in NUMERIC_VALIDATIONS
    try:
        return float(value) if numeric else None
    except ValueError:
        return None


def _field_fact(store, f: Field, value: str, on: date, source: str, key: str | None = None) -> Fact:
    """One value as a row; for a ticked checkbox choice ``value`` is its code and ``key`` its column."""
    concept, domain = _concept(store, f, value if f.field_type == "checkbox" else None)
    table = f.tags.get("OMOP-TABLE") or ("measurement" if domain == "Measurement" else "observation")
    number = _number(f, value)
    shown = f.choices.get(value, value) if f.choices else value
    unit = int(f.tags["OMOP-UNIT"]) if "OMOP-UNIT" in f.tags else None
    if table == "measurement":
        row = {"measurement_concept_id": concept, "measurement_date": on,
               "measurement_type_concept_id": CASE_REPORT_FORM, "value_as_number": number, "unit_concept_id": unit,
               "measurement_source_value": source[:50], "value_source_value": value[:50]}
    else:
        row = {"observation_concept_id": concept, "observation_date": on,
               "observation_type_concept_id": CASE_REPORT_FORM, "value_as_number": number,
               "value_as_string": None if number is not None else shown[:60], "unit_concept_id": unit,
               "observation_source_value": source[:50], "value_source_value": value[:50]}
    return Fact(key or f.name, table, row)


def _checkbox_facts(store, f: Field, values: dict[str, str], on: date, source: str) -> list[Fact]:
    """One row per ticked choice (REDCap stores each as ``field___code`` = 1): with one @OMOP/@LOINC target
    every tick is a row of that concept, with per-choice targets only the listed choices are written."""
    facts = []
    for code, column in zip(f.choices, f.export_columns(), strict=True):
        mapped = f.mapping_target("OMOP", code) or f.mapping_target("LOINC", code)
        if values.get(column) == "1" and mapped:
            facts.append(_field_fact(store, f, code, on, source, key=column))
    return facts


def _prom_facts(store, form_ref: str, event: str, fields: list[Field], values: dict[str, str], on: date) -> list[Fact]:
    from mercia.proms.scoring import score_eq5d, score_oxford
    from mercia.proms.valuesets import value_set

    by_instrument: dict[str, dict[str, Field]] = {}
    for f in fields:
        if "PROM" in f.tags:
            instrument, _, item = f.tags["PROM"].partition(":")
            by_instrument.setdefault(instrument, {})[item] = f
    facts: list[Fact] = []
    for instrument, items in by_instrument.items():
        answered = {item: values.get(f.name, "") for item, f in items.items()}
        if instrument.startswith("eq5d"):
            vs_id = next((f.tags["PROM-VALUESET"] for f in items.values() if "PROM-VALUESET" in f.tags),
                         DEFAULT_VALUE_SETS[instrument])
            dims = ("MO", "SC", "UA", "PD", "AD")
            scored = score_eq5d(pa.table({"id": ["crf"], **{d: [answered.get(d, "")] for d in dims}}),
                                vs_id, instrument)
            score, name = scored.table.column("index")[0].as_py(), "index"
            vs = value_set(vs_id)
            qualifier, doi = vs.id, vs.doi
        else:
            scored = score_oxford(pa.table({"id": ["crf"], **{f"q{i}": [answered.get(f"q{i}", "")]
                                                               for i in range(1, 13)}}))
            score, name, qualifier, doi = scored.table.column("score")[0].as_py(), "total", "oxford_2007", None
        score_key = f"prom:{instrument}"
        if any(answered.values()):
            facts.append(_response_fact(score_key, form_ref, event, instrument, answered, score, on))
        if score is not None:
            concept = next((int(f.tags["PROM-OMOP"]) for f in items.values() if "PROM-OMOP" in f.tags), 0)
            facts.append(Fact(score_key, "observation", {
                "observation_concept_id": concept, "observation_date": on,
                "observation_type_concept_id": CASE_REPORT_FORM, "value_as_number": float(score),
                "value_as_string": doi, "qualifier_source_value": qualifier,
                "observation_source_value": score_source_value(instrument, name)[:50], "value_source_value": None,
                "unit_concept_id": None}))
        for item, f in items.items():
            if answered[item] == "":
                continue
            concept, _ = _concept(store, f)
            facts.append(Fact(f"{score_key}:{item}", "observation", {
                "observation_concept_id": concept, "observation_date": on,
                "observation_type_concept_id": CASE_REPORT_FORM, "value_as_number": _int_or_none(answered[item]),
                "value_as_string": None, "qualifier_source_value": None,
                "observation_source_value": item_source_value(instrument, item), "value_source_value": answered[item][:50],
                "unit_concept_id": None}, link=score_key if score is not None else None))
    return facts


def _response_fact(score_key: str, form_ref: str, event: str, instrument: str, answered: dict[str, str],
                   score: float | None, on: date) -> Fact:
    """The answers as a ``mercia_prom_response`` row, as the PROMs store keeps every return (scores there
    come from ``mercia proms rescore``; the Oxford total is kept with the answers, as the region's are)."""
    vas = _int_or_none(answered.get("VAS", ""))
    return Fact(f"{score_key}:response", "mercia_prom_response", {
        "source": "crf", "source_record": form_ref, "instrument": instrument, "timepoint": event,
        "completed_date": on, **{d.lower(): answered.get(d) or None for d in DIMENSIONS},
        "vas": int(vas) if vas is not None else None,
        "total": float(score) if score is not None and not instrument.startswith("eq5d") else None})


def _int_or_none(value: str) -> float | None:
    try:
        return float(int(value))
    except ValueError:
        return None


def form_facts(store, study: str, record_id: str, event: str, form: str, fields: list[Field],
               values: dict[str, str], on: date) -> list[Fact]:
    """The facts a form's current values amount to (scores before the items that link to them)."""
    facts = _prom_facts(store, f"{study}/{record_id}/{event}/{form}", event, fields, values, on)
    for f in fields:
        if not ("OMOP" in f.tags or "LOINC" in f.tags) or "PROM" in f.tags:
            continue
        if f.field_type == "checkbox":
            facts += _checkbox_facts(store, f, values, on, f"{study}.{f.name}")
        elif values.get(f.name, "") != "":
            facts.append(_field_fact(store, f, values[f.name], on, f"{study}.{f.name}"))
    return facts


def visit_date(db, study_id: int, participant: dict[str, Any], event: str) -> date:
    offset = db.scalar("SELECT day_offset FROM mercia_crf_event WHERE study_id = ? AND event_name = ?", [study_id, event])
    return date.fromisoformat(participant["start_date"]) + timedelta(days=int(offset or 0))


def write_through(db, study_id: int, study: str, record_id: str, event: str, form: str, facts: list[Fact],
                  person_id: int | None) -> list[dict[str, Any]]:
    """Make the OMOP and PROMs-store rows of one form equal ``facts``; returns what changed (for the
    audit entry).  Runs inside the caller's transaction.  Scores of a PROM response that is corrected or
    removed go with it: they were computed from answers that no longer stand (the audit keeps those)."""
    if any(f.table in OMOP_TABLES for f in facts) and not (
            db.store.table_exists("observation") and db.store.table_exists("measurement")):
        raise Conflict(f"study {study} maps fields into OMOP but this store has no OMOP tables")
    key = [study_id, record_id, event, form]
    existing = {r["fact_key"]: r for r in db.rows(
        "SELECT fact_key, omop_table, omop_id, content FROM mercia_crf_omop WHERE study_id = ? AND record_id = ? "
        "AND event_name = ? AND form_name = ?", key)}
    wanted = {f.key: f for f in facts}
    changes: list[dict[str, Any]] = []
    for fact_key, old in existing.items():
        if fact_key not in wanted or wanted[fact_key].table != old["omop_table"]:
            _drop_scores(db, old["omop_table"], old["omop_id"])
            db.execute(f"DELETE FROM {old['omop_table']} WHERE {ID_COLUMNS[old['omop_table']]} = ?", [old["omop_id"]])
            db.execute("DELETE FROM mercia_crf_omop WHERE study_id = ? AND record_id = ? AND event_name = ? "
                       "AND form_name = ? AND fact_key = ?", [*key, fact_key])
            changes.append({"fact": fact_key, "table": old["omop_table"], "id": old["omop_id"], "action": "deleted",
                            "old": json.loads(old["content"]), "new": None})
    kept = {k: v for k, v in existing.items() if k in wanted and wanted[k].table == v["omop_table"]}
    ids: dict[str, int] = {}
    for fact in facts:                     # scores come first, so their ids exist for the items' link
        row = dict(fact.row)
        if fact.table == "observation":
            row["observation_event_id"] = ids.get(fact.link) if fact.link else None
            row["obs_event_field_concept_id"] = ITEM_LINK_FIELD if fact.link else None
        content = json.dumps(row, default=str, sort_keys=True)
        old = kept.get(fact.key)
        if old is not None:
            ids[fact.key] = old["omop_id"]
            if old["content"] == content:
                continue
            sets = ", ".join(f"{c} = ?" for c in row)
            _drop_scores(db, fact.table, old["omop_id"])
            db.execute(f"UPDATE {fact.table} SET {sets} WHERE {ID_COLUMNS[fact.table]} = ?", [*row.values(), old["omop_id"]])
            db.execute("UPDATE mercia_crf_omop SET content = ? WHERE study_id = ? AND record_id = ? AND event_name = ? "
                       "AND form_name = ? AND fact_key = ?", [content, *key, fact.key])
            changes.append({"fact": fact.key, "table": fact.table, "id": old["omop_id"], "action": "corrected",
                            "old": json.loads(old["content"]), "new": json.loads(content)})
            continue
        new_id = db.next_id(fact.table, ID_COLUMNS[fact.table])
        ids[fact.key] = new_id
        person = {"person_id": person_id} if fact.table in OMOP_TABLES else {}
        db.insert(fact.table, {ID_COLUMNS[fact.table]: new_id, **person, **row})
        db.insert("mercia_crf_omop", {"study_id": study_id, "record_id": record_id, "event_name": event,
                                      "form_name": form, "fact_key": fact.key, "omop_table": fact.table,
                                      "omop_id": new_id, "content": content})
        changes.append({"fact": fact.key, "table": fact.table, "id": new_id, "action": "written", "old": None,
                        "new": json.loads(content)})
    return changes


def _drop_scores(db, table: str, row_id: int) -> None:
    if table == "mercia_prom_response":
        db.execute("DELETE FROM mercia_prom_score WHERE response_id = ?", [row_id])
