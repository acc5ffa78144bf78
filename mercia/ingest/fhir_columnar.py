"""Columnar staging of bulk-export NDJSON: one batch of resources of one type at a time.

The row-by-row reader (``fhir.FhirReader._stage``) spends most of its time checking shapes and
appending to column lists in Python.  Here a batch of lines of one type is parsed by Arrow's JSON
reader straight into columns typed from the same shapes (``fhir._RESOURCES``), so the shape check
happens in C++ while parsing (a string where an object belongs fails the batch), and DuckDB SQL
over those columns does the mapping: best coding, references, dates, Observation components.  The
rules are the row reader's, restated in SQL.

Any row the vectorised path cannot vouch for goes back to the row reader, which names the record
and the element in its reject exactly as before: every row of a batch Arrow refuses (invalid JSON,
a wrongly typed element), lines with null array items (Arrow takes them for null structs), numbers
beyond the plausible magnitude, resources without an id, conditional references and medication
references that need every file read first.
"""

from __future__ import annotations

import hashlib
import io
import re

import duckdb
import orjson
import pyarrow as pa
import pyarrow.json as pa_json

# Resource types mapped here; others (Patient, Organization, Medication, QuestionnaireResponse, ...)
# stay on the row reader: few per extract, or nested in ways SQL would only obscure.
COLUMNAR = ("Observation", "Encounter", "Condition", "Procedure", "DiagnosticReport", "MedicationRequest",
            "Immunization", "AllergyIntolerance", "CarePlan", "Goal", "ImagingStudy")

# Lines Arrow's reader would accept although the row reader rejects them: null array items.
NULL_ITEM = re.compile(rb'[\[,]\s*null\b')
BATCH = 20_000

_PRIMITIVE_TYPES = {"str": pa.string(), "num": pa.float64(), "bool": pa.bool_()}


def arrow_type(shape, datatypes: dict[str, dict]) -> pa.DataType:
    """The Arrow type of a shape (``fhir._DATATYPES`` notation); recursive datatypes are not used here."""
    if isinstance(shape, list):
        return pa.list_(arrow_type(shape[0], datatypes))
    if shape in _PRIMITIVE_TYPES:
        return _PRIMITIVE_TYPES[shape]
    return pa.struct([(name, arrow_type(sub, datatypes)) for name, sub in datatypes[shape].items()])


def suspicious_lines(data: bytes) -> set[int]:
    """1-based numbers of the lines of ``data`` that the row reader must judge."""
    lines, pos, line_no = set(), 0, 1
    if b"null" not in data:
        return lines
    for match in NULL_ITEM.finditer(data):
        line_no += data.count(b"\n", pos, match.start())
        pos = match.start()
        lines.add(line_no)
    return lines


def number_checks(expr: str, kind: pa.DataType, depth: int = 0) -> list[str]:
    """SQL conditions true when a number inside ``expr`` is beyond the plausible magnitude
    (``fhir._MAX_NUMBER``): the row reader rejects it."""
    if pa.types.is_floating(kind):
        return [f"abs({expr}) > 1e15"]
    if pa.types.is_struct(kind):
        return [check for f in kind for check in number_checks(f"{expr}.{f.name}", f.type, depth)]
    if pa.types.is_list(kind):
        inner = number_checks(f"x{depth}", kind.value_type, depth + 1)
        if inner:
            return [f"list_bool_or(list_transform({expr}, lambda x{depth}: {' OR '.join(inner)}))"]
    return []


def _macros(vocabularies: dict[str, str], nhs_system: str) -> list[str]:
    names = list(dict.fromkeys(vocabularies.values()))
    rank = {v: i for i, v in enumerate(vocabularies.values())}  # as fhir._PREFERENCE (last duplicate wins)
    vocab = "CASE s " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in vocabularies.items()) + " ELSE s END"
    ranks = "CASE v " + " ".join(f"WHEN '{v}' THEN {rank[v]}" for v in names) + f" ELSE {len(rank)} END"
    return [
        f"CREATE OR REPLACE MACRO fhir_vocab(s) AS {vocab}",
        f"CREATE OR REPLACE MACRO fhir_rank(v) AS {ranks}",
        # fhir.best_coding: the first coding with a code among those of the most preferred vocabulary
        """CREATE OR REPLACE MACRO best_coding(codings) AS list_min(list_transform(
               list_filter(codings, lambda c: c.code IS NOT NULL AND c.code <> ''),
               lambda c, i: {'r': fhir_rank(fhir_vocab(c.system)), 'i': i, 'v': fhir_vocab(c.system),
                             'c': c.code}))""",
        # fhir._reference_id without a Bundle's fullUrls
        f"""CREATE OR REPLACE MACRO ref_id(ref) AS CASE
               WHEN ref.reference IS NULL OR ref.reference = '' THEN
                   CASE WHEN ref.identifier.system = '{nhs_system}' AND ref.identifier.value <> ''
                        THEN '?{nhs_system}|' || ref.identifier.value END
               WHEN starts_with(ref.reference, 'urn:uuid:') THEN substr(ref.reference, 10)
               WHEN contains(ref.reference, '?') THEN '?' || CASE
                   WHEN contains(split_part(ref.reference, '?', 2), 'identifier=')
                   THEN substr(ref.reference, strpos(ref.reference, 'identifier=') + 11)
                   ELSE substr(ref.reference, strpos(ref.reference, '?') + 1) END
               WHEN contains(ref.reference, '/') THEN regexp_extract(rtrim(ref.reference, '/'), '[^/]*$')
               ELSE ref.reference END""",
        # a Reference counts when it says something (fhir: ``res.get("subject") or res.get("patient")``)
        "CREATE OR REPLACE MACRO said(ref) AS ref.reference IS NOT NULL OR ref.identifier IS NOT NULL",
        # fhir._date over [x] choices: a string as given, a Period by its start (else end)
        "CREATE OR REPLACE MACRO period_date(p) AS COALESCE(NULLIF(p.start, ''), NULLIF(p.\"end\", ''))",
    ]


def _value_columns(part: str) -> str:
    """fhir._value over a part (an Observation or one of its components) as SQL columns."""
    quantity = f"({part}.valueQuantity IS NOT NULL AND ({part}.valueQuantity.value IS NOT NULL OR " \
               f"{part}.valueQuantity.unit IS NOT NULL OR {part}.valueQuantity.code IS NOT NULL))"
    concept = f"({part}.valueCodeableConcept IS NOT NULL AND {part}.valueCodeableConcept.coding IS NOT NULL)"
    return f"""CASE WHEN {quantity} THEN {part}.valueQuantity.value
                    WHEN NOT {concept} THEN COALESCE({part}.valueInteger, {part}.valueDecimal) END AS value_number,
               CASE WHEN {quantity} THEN COALESCE(NULLIF({part}.valueQuantity.code, ''), {part}.valueQuantity.unit)
                    END AS unit,
               CASE WHEN {quantity} THEN {part}.referenceRange[1].low.value END AS range_low,
               CASE WHEN {quantity} THEN {part}.referenceRange[1].high.value END AS range_high,
               CASE WHEN NOT {quantity} AND {concept} THEN {part}.valueCodeableConcept.coding END AS value_codings"""


# Per type: the event parts of each record (one row per event before the code/date checks), as SQL
# over ``recs`` (idx, r = the resource struct, start, kind_name ...).  Columns not given are null.
def _parts(kind: str) -> str:
    if kind == "Observation":
        categories = "flatten(list_transform(COALESCE(r.category, []), lambda c: COALESCE(list_transform(" \
                     "c.coding, lambda x: x.code), [])))"
        omop = f"""CASE WHEN len({categories}) = 0 OR list_has_any({categories}, ['laboratory', 'vital-signs'])
                   THEN 'Measurement' ELSE 'Observation' END"""
        root = f"""SELECT idx, {omop} AS kind, r.code.coding AS codings, 'code' AS code_field,
                          {_value_columns('r')} FROM recs
                   WHERE has_value OR len(COALESCE(r.component, [])) = 0"""
        components = f"""SELECT idx, kind, c.code.coding AS codings, 'code' AS code_field, {_value_columns('c')}
                         FROM (SELECT idx, {omop} AS kind, unnest(r.component) AS c FROM recs)"""
        return f"{root} UNION ALL {components}"
    if kind == "Encounter":
        return """SELECT idx, 'Visit' AS kind, 'Visit class' AS fixed_vocabulary,
                         COALESCE(NULLIF(r.class.code, ''), 'UNK') AS fixed_code, record AS own_visit,
                         'Organization/' || ref_id(r.serviceProvider) AS site_ref,
                         CASE WHEN r.period.start IS NULL OR r.period.start = '' THEN 'period.start' END AS pre_field,
                         CASE WHEN r.period.start IS NULL OR r.period.start = '' THEN 'Encounter has no start'
                              END AS pre_reason
                  FROM recs"""
    all_codings = "flatten(list_transform(COALESCE(r.{}, []), lambda c: COALESCE(c.coding, [])))"
    if kind == "CarePlan":
        return f"""SELECT idx, 'Observation' AS kind, {all_codings.format('category')} AS codings,
                          'category' AS code_field, 'care plan' AS qualifier FROM recs"""
    if kind == "ImagingStudy":
        return f"""SELECT idx, 'Procedure' AS kind,
                          CASE WHEN best_coding(procedure) IS NOT NULL THEN procedure
                               WHEN s.modality IS NOT NULL THEN [s.modality] ELSE [] END AS codings,
                          'procedureCode' AS code_field, s.bodySite.code AS qualifier, NULLIF(s.started, '') AS part_start
                   FROM (SELECT idx, {all_codings.format('procedureCode')} AS procedure,
                                unnest(CASE WHEN len(COALESCE(r.series, [])) = 0 THEN [NULL] ELSE r.series END) AS s
                         FROM recs)"""
    simple = {  # kind -> (OMOP kind, concept element, qualifier)
        "Condition": ("Condition", "code", None), "Procedure": ("Procedure", "code", None),
        "DiagnosticReport": ("Observation", "code", None), "AllergyIntolerance": ("Observation", "code", "allergy"),
        "MedicationRequest": ("Drug", "medicationCodeableConcept", None),
        "Immunization": ("Drug", "vaccineCode", None), "Goal": ("Observation", "description", "goal")}
    omop, element, qualifier = simple[kind]
    field = "medication[x]" if kind == "MedicationRequest" else element
    not_done = "r.status = 'not-done'" if kind == "Immunization" else "false"
    return f"""SELECT idx, '{omop}' AS kind, r.{element}.coding AS codings, '{field}' AS code_field,
                      {f"'{qualifier}'" if qualifier else 'NULL'} AS qualifier,
                      CASE WHEN {not_done} THEN 'status' END AS pre_field,
                      CASE WHEN {not_done} THEN 'Immunization not done' END AS pre_reason
               FROM recs"""


_DATES = {  # kind -> (start expression, end expression) over r, as fhir._date / fhir._end
    "Observation": ("COALESCE(r.effectiveDateTime, period_date(r.effectivePeriod), r.effectiveInstant, r.issued)",
                    "NULL"),
    "Encounter": ("r.period.start", "NULLIF(r.period.\"end\", '')"),
    "Condition": ("COALESCE(r.onsetDateTime, period_date(r.onsetPeriod), r.recordedDate)",
                  "COALESCE(r.abatementDateTime, NULLIF(r.abatementPeriod.\"end\", ''))"),
    "Procedure": ("COALESCE(r.performedDateTime, period_date(r.performedPeriod))",
                  "NULLIF(r.performedPeriod.\"end\", '')"),
    "DiagnosticReport": ("COALESCE(r.effectiveDateTime, period_date(r.effectivePeriod), r.issued)", "NULL"),
    "AllergyIntolerance": ("COALESCE(r.onsetDateTime, period_date(r.onsetPeriod), r.recordedDate)", "NULL"),
    "MedicationRequest": ("r.authoredOn", "NULL"),
    "Immunization": ("COALESCE(r.occurrenceDateTime, r.recorded)", "NULL"),
    "CarePlan": ("period_date(r.period)", "NULLIF(r.period.\"end\", '')"),
    "Goal": ("COALESCE(r.startDate, r.statusDate)", "NULL"),
    "ImagingStudy": ("r.started", "NULL"),
}
_PART_COLUMNS = {"kind": "VARCHAR", "codings": "STRUCT(system VARCHAR, code VARCHAR)[]", "code_field": "VARCHAR",
                 "fixed_vocabulary": "VARCHAR", "fixed_code": "VARCHAR", "own_visit": "VARCHAR", "site_ref": "VARCHAR",
                 "value_number": "DOUBLE", "unit": "VARCHAR", "range_low": "DOUBLE", "range_high": "DOUBLE",
                 "value_codings": "STRUCT(system VARCHAR, code VARCHAR)[]", "qualifier": "VARCHAR",
                 "pre_field": "VARCHAR", "pre_reason": "VARCHAR", "part_start": "VARCHAR"}


def _select_parts(kind: str) -> str:
    """The type's parts with every part column present (null where the type has none)."""
    sql = _parts(kind)
    given = set(re.findall(r"\bAS (\w+)", sql))
    columns = ", ".join(f"p.{c}" if c in given else f"CAST(NULL AS {t}) AS {c}" for c, t in _PART_COLUMNS.items())
    return f"SELECT p.idx, {columns} FROM ({sql}) p"


class ColumnarStager:
    """Stages batches of one resource type into a reader's ``Staged`` through one DuckDB connection."""

    def __init__(self, resources: dict[str, dict], datatypes: dict[str, dict], vocabularies: dict[str, str],
                 nhs_system: str):
        self.types = {kind: arrow_type(kind, {**datatypes, kind: {"id": "str", **resources[kind]}})
                      for kind in COLUMNAR}
        # one thread: a batch of 20,000 rows is too small for a second thread to pay for its sync
        # (0.6-0.7 CPU s less over synthea_medium's 152,000 columnar resources, measured under load ~19)
        self.con = duckdb.connect(config={"threads": 1})
        self.vouched = 0  # resources staged here rather than by the row reader
        for macro in _macros(vocabularies, nhs_system):
            self.con.execute(macro)

    def stage(self, staged, kind: str, raws: list[bytes], lines: list[int], line_base: int) -> list[int]:
        """Stage what can be staged; return the positions the row reader must handle.  ``line_base`` +
        line is a resource's place in reading order (``Staged.versions``)."""
        schema = pa.schema(list(self.types[kind]))
        text = b"\n".join(raws)
        try:
            text.decode("utf-8")  # Arrow's reader lets invalid UTF-8 through; the row reader names the line
            table = pa_json.read_json(io.BytesIO(text), parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"))
            has_value = [b'"component"' in raw and any(k.startswith("value") for k in orjson.loads(raw))
                         for raw in raws]
        except (UnicodeDecodeError, pa.ArrowInvalid, pa.ArrowTypeError, orjson.JSONDecodeError):
            return list(range(len(raws)))  # some line is not JSON or has a wrongly shaped element
        if table.num_rows != len(raws):
            return list(range(len(raws)))
        batch = pa.table({"idx": pa.array(range(len(raws)), pa.int64()),
                          "record_hash": [hashlib.blake2b(raw, digest_size=16).hexdigest() for raw in raws],
                          "line": pa.array(lines, pa.int64()),
                          "r": pa.StructArray.from_arrays([c.combine_chunks() for c in table.columns],
                                                          fields=list(schema)),
                          "has_value": pa.array(has_value, pa.bool_())})
        con = self.con
        con.register("batch", batch)
        numbers = " OR ".join(number_checks("r", self.types[kind])) or "false"
        start, end = _DATES[kind]
        con.execute(f"""CREATE OR REPLACE TABLE recs AS
            SELECT idx, '{kind}/' || r.id AS record, record_hash, line, r, has_value,
                   ref_id(CASE WHEN said(r.subject) THEN r.subject ELSE r.patient END) AS person_ref,
                   ref_id(CASE WHEN said(r.encounter) THEN r.encounter ELSE r.context END) AS visit_id,
                   {start} AS start, {end} AS "end",
                   r.id IS NULL OR r.id = '' OR COALESCE({numbers}, false) OR starts_with(person_ref, '?') OR {'r.medicationCodeableConcept IS NULL AND said(r.medicationReference)'
                                                     if kind == 'MedicationRequest' else 'false'} AS row_reader
            FROM batch""")
        fallback = [i for (i,) in con.execute("SELECT idx FROM recs WHERE row_reader").fetchall()]
        con.execute("DELETE FROM recs WHERE row_reader")
        staged.versions.add_table(con.sql(f"""SELECT record, record_hash, r.meta.lastUpdated AS last_updated,
            r.meta.versionId AS version_id, {line_base} + line AS seq, line FROM recs""").to_arrow_table())
        con.execute(f"""CREATE OR REPLACE TABLE parts AS
            SELECT p.*, best_coding(p.codings) AS best, best_coding(p.value_codings) AS value_best
            FROM ({_select_parts(kind)}) p JOIN recs USING (idx) WHERE recs.person_ref IS NOT NULL""")
        staged.events.add_table(con.sql("""
            SELECT record, record_hash, person_ref,
                   COALESCE(own_visit, 'Encounter/' || visit_id) AS visit_ref, p.kind,
                   COALESCE(fixed_vocabulary, best.v) AS vocabulary, COALESCE(fixed_code, best.c) AS code,
                   COALESCE(part_start, start) AS start, "end", value_number, value_best.v AS value_vocabulary, value_best.c AS value_code,
                   unit, range_low, range_high, qualifier, site_ref, line
            FROM parts p JOIN recs USING (idx)
            WHERE pre_reason IS NULL AND (fixed_code IS NOT NULL OR best IS NOT NULL)
              AND COALESCE(part_start, start) <> ''
            ORDER BY idx""").to_arrow_table())
        staged.rejects.add_table(con.sql(f"""
            SELECT record, line, 'subject' AS field, 'no subject/patient reference' AS reason, record_hash, idx
            FROM recs WHERE person_ref IS NULL
            UNION ALL
            SELECT record, line, CASE WHEN pre_reason IS NOT NULL THEN pre_field
                                      WHEN fixed_code IS NULL AND best IS NULL THEN code_field ELSE 'date' END,
                   CASE WHEN pre_reason IS NOT NULL THEN pre_reason
                        WHEN fixed_code IS NULL AND best IS NULL THEN 'no coded value'
                        ELSE '{kind} has no date' END, record_hash, idx
            FROM parts p JOIN recs USING (idx)
            WHERE pre_reason IS NOT NULL OR (fixed_code IS NULL AND best IS NULL)
               OR COALESCE(part_start, start, '') = ''
            ORDER BY idx""").to_arrow_table().drop_columns(["idx"]))
        con.unregister("batch")
        staged.read += len(raws) - len(fallback)
        self.vouched += len(raws) - len(fallback)
        return fallback
