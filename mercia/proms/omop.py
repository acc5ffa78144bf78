"""How PROM answers and scores look in OMOP, whichever way they arrived (eCRF, region CSV, FHIR).

One convention, so a query finds every EQ-5D return the same way: each item answer is an
``observation`` whose ``observation_source_value`` is ``<instrument>:<item>`` (``eq5d5l:MO`` ...,
``eq5d5l:VAS``); the derived score is an ``observation`` with source value ``<instrument> <score>``
(``eq5d5l index``), its value set id in ``qualifier_source_value`` and the set's DOI in
``value_as_string``; each item's ``observation_event_id`` is the score's ``observation_id``
(``obs_event_field_concept_id`` 0, see ``ITEM_LINK_FIELD``).  The eCRF path writes rows form by form
(``mercia.trials.crf.omop``); the ingest paths score whole extracts with ``score_item_answers``.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from mercia.proms.scoring import Rejection, score_eq5d
from mercia.proms.valuesets import DIMENSIONS, value_set

# The index is computed with these sets unless the source names another (eCRF: @PROM-VALUESET).
DEFAULT_VALUE_SETS = {"eq5d5l": "england_2018", "eq5d3l": "uk_1997"}
EQ5D_INSTRUMENTS = tuple(DEFAULT_VALUE_SETS)
# The CDM field concept of observation.observation_id is not in Mercia's vocabulary, so the link of an
# item answer to its score is carried by observation_event_id with the field concept 0 ("no concept").
ITEM_LINK_FIELD = 0
# Staged events of PROM items and scores carry this vocabulary (a Mercia local one: no concept ids).
PROM_VOCABULARY = "PROMs"
# Standard concepts for the rows that have one, by source value; the rest keep concept 0 and are found
# by their source value.  SNOMED CT observables as the HL7 Germany MII PRO implementation guide uses
# them ("EQ-5D-5L Scores", build.fhir.org/ig/medizininformatik-initiative/kerndatensatzmodul-proms):
# 736534008 "EuroQol five dimension five level index value", 736535009 "EuroQol visual analogue score".
# No item code for the five dimensions was found in a published terminology we could verify.
STANDARD_CODES = {"eq5d5l index": ("SNOMED", "736534008"), "eq5d5l:VAS": ("SNOMED", "736535009"),
                  "eq5d3l:VAS": ("SNOMED", "736535009")}


def item_source_value(instrument: str, item: str) -> str:
    return f"{instrument}:{item}"


def score_source_value(instrument: str, score_name: str) -> str:
    return f"{instrument} {score_name}"


def score_item_answers(answers: pa.Table) -> tuple[pa.Table, list[Rejection]]:
    """Index per EQ-5D return from its item answers, with the instrument's default value set.

    ``answers``: one row per item answer, columns ``record``, ``code`` (``eq5d5l:MO`` ...) and ``answer``
    (text).  Returns one row per scored return (``record``, ``instrument``, ``index``, ``value_set_id``,
    ``doi``) and a rejection per unscorable one, naming the record and the item (a missing item is
    rejected too: the index needs all five).  Pivoting is one DuckDB query; scoring is vectorised."""
    con = duckdb.connect()
    con.register("answers", answers)
    pivot = ", ".join(f"max(answer) FILTER (WHERE item = '{d}') AS {d}" for d in DIMENSIONS)
    wide = con.sql(f"""SELECT record, instrument, {pivot} FROM (
        SELECT record, split_part(code, ':', 1) AS instrument, split_part(code, ':', 2) AS item, answer
        FROM answers) GROUP BY record, instrument ORDER BY record, instrument""").to_arrow_table()
    parts, rejections = [], []
    for instrument in EQ5D_INSTRUMENTS:
        rows = wide.filter(pa.compute.equal(wide.column("instrument"), instrument))
        if not rows.num_rows:
            continue
        vs = value_set(DEFAULT_VALUE_SETS[instrument])
        scored = score_eq5d(rows, vs.id, instrument, id_column="record")
        rejections += [Rejection(r.row, r.record, item_source_value(instrument, r.field), r.value,
                                 f"{instrument} index not computed: {r.reason}") for r in scored.rejections]
        good = scored.table.filter(scored.table.column("index").is_valid())
        parts.append(pa.table({"record": good.column("record"), "instrument": good.column("instrument"),
                               "index": good.column("index"),
                               "value_set_id": pa.array([vs.id] * good.num_rows, pa.string()),
                               "doi": pa.array([vs.doi] * good.num_rows, pa.string())}))
    schema = pa.schema([("record", pa.string()), ("instrument", pa.string()), ("index", pa.float64()),
                        ("value_set_id", pa.string()), ("doi", pa.string())])
    return (pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()), rejections
