"""PROM returns arriving through ingest (the region's PROMs CSV, FHIR QuestionnaireResponse) scored and linked.

Readers stage each EQ-5D item answer as an ``Observation`` event of vocabulary ``PROMs`` with code
``<instrument>:<item>`` (``mercia.proms.omop``).  Before the load, ``add_prom_scores`` scores every
return of the extract at once and stages the index as one more event of the same source record (so a
resend is skipped or replaced with its items); a return that cannot be scored gets no index and a
reject naming the record and the item.  Inside the load's transaction, ``link_prom_items`` points each
item observation of the load at its score (``observation_event_id``), stores the value set's DOI and
gives the index and EQ VAS their SNOMED CT concepts when the vocabulary holds them.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mercia.cdm import Store
from mercia.ingest.staging import Staged
from mercia.proms.omop import EQ5D_INSTRUMENTS, ITEM_LINK_FIELD, PROM_VOCABULARY, STANDARD_CODES, \
    item_source_value, score_item_answers, score_source_value
from mercia.proms.valuesets import DIMENSIONS, value_set

SCORE_NAME = "index"
ITEM_CODES = {instrument: [item_source_value(instrument, item) for item in (*DIMENSIONS, "VAS")]
              for instrument in EQ5D_INSTRUMENTS}


def add_prom_scores(staged: Staged) -> int:
    """Stage the index of every EQ-5D return among ``staged``'s events; returns how many were scored."""
    events = staged.events.table()
    if not pc.any(pc.equal(events.column("vocabulary"), PROM_VOCABULARY)).as_py():
        return 0
    con = duckdb.connect()
    con.register("events", events)
    codes = ", ".join(f"'{c}'" for codes in ITEM_CODES.values() for c in codes)
    items = con.sql(f"""SELECT record, code,
            COALESCE(value_code, CASE WHEN value_number = trunc(value_number)
                THEN CAST(CAST(value_number AS BIGINT) AS VARCHAR) ELSE CAST(value_number AS VARCHAR) END) AS answer
        FROM events WHERE vocabulary = '{PROM_VOCABULARY}' AND code IN ({codes})""").to_arrow_table()
    if not items.num_rows:
        return 0
    scores, rejections = score_item_answers(items)
    con.register("scores", scores)
    staged.events.add_table(con.sql(f"""
        SELECT e.record, any_value(e.record_hash) AS record_hash, any_value(e.person_ref) AS person_ref,
               any_value(e.visit_ref) AS visit_ref, 'Observation' AS kind, '{PROM_VOCABULARY}' AS vocabulary,
               s.instrument || ' {SCORE_NAME}' AS code, min(e.start) AS start, any_value(s."index") AS value_number,
               any_value(s.value_set_id) AS qualifier, min(e.line) AS line
        FROM scores s JOIN events e ON e.record = s.record AND e.vocabulary = '{PROM_VOCABULARY}'
             AND starts_with(e.code, s.instrument || ':')
        GROUP BY e.record, s.instrument""").to_arrow_table())
    if rejections:
        con.register("rejected", pa.table({"record": [r.record for r in rejections],
                                           "field": [r.field for r in rejections],
                                           "reason": [f"{r.reason} (value {r.value!r})" if r.value not in (None, "")
                                                      else r.reason for r in rejections]}))
        staged.rejects.add_table(con.sql("""SELECT r.record, min(e.line) AS line, r.field, r.reason
            FROM rejected r LEFT JOIN events e ON e.record = r.record GROUP BY r.record, r.field, r.reason
            ORDER BY r.record, r.field""").to_arrow_table())
    return scores.num_rows


def link_prom_items(store: Store, load_id: int) -> None:
    """Point the item observations of load ``load_id`` at their return's score, store each score's DOI
    and set the standard concepts; runs inside the load's transaction (keyed updates, no rows in Python)."""
    in_load = "SELECT row_id FROM mercia_provenance WHERE load_id = ? AND cdm_table = 'observation'"
    wanted = [score_source_value(instrument, SCORE_NAME) for instrument in EQ5D_INSTRUMENTS] + list(STANDARD_CODES)
    present = store.query(f"""SELECT DISTINCT observation_source_value, qualifier_source_value FROM observation
        WHERE observation_id IN ({in_load}) AND observation_source_value IN ({", ".join("?" for _ in wanted)})""",
                          [load_id, *wanted])
    for source_value, value_set_id in present:
        if source_value in STANDARD_CODES:
            vocabulary, code = STANDARD_CODES[source_value]
            store.execute(f"""UPDATE observation SET observation_concept_id = COALESCE((SELECT min(concept_id)
                    FROM concept WHERE vocabulary_id = ? AND concept_code = ? AND standard_concept = 'S'), 0)
                WHERE observation_id IN ({in_load}) AND observation_source_value = ?""",
                          [vocabulary, code, load_id, source_value])
        if not source_value.endswith(f" {SCORE_NAME}"):
            continue
        items = ITEM_CODES[source_value.split(" ")[0]]
        marks = ", ".join("?" for _ in items)
        store.execute(f"""UPDATE observation SET observation_event_id = link.score_id,
                obs_event_field_concept_id = {ITEM_LINK_FIELD}
            FROM (SELECT pi.row_id AS item_id, min(ps.row_id) AS score_id FROM mercia_provenance pi
                  JOIN mercia_provenance ps ON ps.load_id = pi.load_id AND ps.org = pi.org
                       AND ps.source_record = pi.source_record AND ps.cdm_table = 'observation'
                  JOIN observation s ON s.observation_id = ps.row_id AND s.observation_source_value = ?
                  WHERE pi.load_id = ? AND pi.cdm_table = 'observation' GROUP BY pi.row_id) link
            WHERE observation.observation_id = link.item_id AND observation.observation_source_value IN ({marks})""",
                      [source_value, load_id, *items])
        store.execute(f"""UPDATE observation SET value_as_string = ?
            WHERE observation_id IN ({in_load}) AND observation_source_value = ? AND qualifier_source_value = ?""",
                      [value_set(value_set_id).doi, load_id, source_value, value_set_id])
