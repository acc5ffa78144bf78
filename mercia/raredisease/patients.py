"""Rare-disease cases in the OMOP CDM: write a case's phenotypes, diseases and variants; read them back.

Conventions (docs/raredisease.md):

* each HPO term is one ``observation`` row: ``observation_concept_id`` = the term's Mercia HPO concept
  (``mercia.vocab.hpo``), ``observation_source_value`` = the HP id, ``value_as_concept_id`` = 4181412
  "Present" for an observed term or 4132135 "Absent" for an excluded one (SNOMED qualifier values, as the OHDSI
  rare-disease work uses); onset goes to ``qualifier_source_value`` (the HPO onset class id or the ISO 8601
  age) and, for an onset class, ``qualifier_concept_id`` = its HPO concept;
* each disease is a ``condition_occurrence`` with ``condition_source_value`` = its OMIM/ORPHA/MONDO id
  and ``condition_concept_id`` its local concept (``mercia.vocab.diseases``; 0 for MONDO, which has
  none), so cohorts can select the diagnosis; the onset goes in
  ``condition_status_source_value``;
* each variant is an ``observation`` with concept 0, ``observation_source_value`` = ``gene:<symbol>``,
  ``value_as_string`` = the HGVS expression, ``value_source_value`` = the VCF record
  (assembly:chrom:pos:ref:alt), ``qualifier_source_value`` = the GENO allelic state and
  ``unit_source_value`` = "<interpretation status>|<ACMG class>|<gene id>".

Rows are typed 32809 "Case Report Form" and dated with the Phenopacket's creation date.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mercia.cdm import Store
from mercia.raredisease.phenopackets import (
    Disease,
    Onset,
    Phenotype,
    RareDiseaseCase,
    Variant,
)
from mercia.vocab.diseases import disease_concept_id
from mercia.vocab.hpo import HPO_CONCEPT_OFFSET, hp_id_from_concept_id, hpo_concept_id

PRESENT = 4181412  # SNOMED 52101004 "Present"
ABSENT = 4132135  # SNOMED 2667000 "Absent"
ABSENT_SNOMED = "2667000"
CASE_REPORT_FORM = 32809
GENDER = {"MALE": 8507, "FEMALE": 8532}
GENDER_SOURCE = {8507: "MALE", 8532: "FEMALE"}
VARIANT_PREFIX = "gene:"
HPO_RANGE = f"observation_concept_id BETWEEN {HPO_CONCEPT_OFFSET} AND {HPO_CONCEPT_OFFSET + 9_999_999}"


class CaseNotFoundError(LookupError):
    """No person with that id in the store."""


def save_case(store: Store, case: RareDiseaseCase, person_id: int | None = None) -> int:
    """Write one case (a new person unless ``person_id`` is given); returns the person id."""
    recorded = (case.created or dt.datetime.now(dt.UTC)).date()
    with store.transaction():
        if person_id is None:
            person_id = store.allocate_ids("person", "person_id")
            store.insert_arrow("person", pa.table({
                "person_id": pa.array([person_id], pa.int64()),
                "gender_concept_id": pa.array([GENDER.get(case.sex, 0)], pa.int64()),
                "year_of_birth": pa.array([case.birth_year(recorded)], pa.int64()),  # NULL: age unknown
                "month_of_birth": pa.array([case.date_of_birth.month if case.date_of_birth else None], pa.int64()),
                "day_of_birth": pa.array([case.date_of_birth.day if case.date_of_birth else None], pa.int64()),
                "race_concept_id": pa.array([0], pa.int64()),
                "ethnicity_concept_id": pa.array([0], pa.int64()),
                "person_source_value": pa.array([case.id[:50]]),
                "gender_source_value": pa.array([case.sex]),
            }))
        rows = [_phenotype_row(p) for p in case.phenotypes] + [_variant_row(v) for v in case.variants]
        first = store.allocate_ids("observation", "observation_id", len(rows))
        if rows:
            columns = {key: [row[key] for row in rows] for key in rows[0]}
            store.insert_arrow("observation", pa.table({
                "observation_id": pa.array(range(first, first + len(rows)), pa.int64()),
                "person_id": pa.array([person_id] * len(rows), pa.int64()),
                "observation_date": pa.array([recorded] * len(rows), pa.date32()),
                "observation_type_concept_id": pa.array([CASE_REPORT_FORM] * len(rows), pa.int64()),
                **{key: pa.array(values, pa.int64() if key.endswith("concept_id") else pa.string())
                   for key, values in columns.items()},
            }))
        if case.diseases:
            diseases = [d for d in case.diseases if not d.excluded]
            first = store.allocate_ids("condition_occurrence", "condition_occurrence_id", len(diseases))
            store.insert_arrow("condition_occurrence", pa.table({
                "condition_occurrence_id": pa.array(range(first, first + len(diseases)), pa.int64()),
                "person_id": pa.array([person_id] * len(diseases), pa.int64()),
                "condition_concept_id": pa.array([_disease_concept(d.term) for d in diseases], pa.int64()),
                "condition_start_date": pa.array([recorded] * len(diseases), pa.date32()),
                "condition_type_concept_id": pa.array([CASE_REPORT_FORM] * len(diseases), pa.int64()),
                "condition_source_value": pa.array([d.term for d in diseases]),
                "condition_status_source_value": pa.array([d.onset.source_value() if d.onset else None
                                                           for d in diseases], pa.string()),
            }))
    return person_id


def _disease_concept(term: str) -> int:
    """The local concept of an OMIM/ORPHA/DECIPHER diagnosis (so cohorts can select it); 0 for others."""
    try:
        return disease_concept_id(term)
    except ValueError:
        return 0


def _phenotype_row(p: Phenotype) -> dict:
    onset_class = p.onset.term if p.onset and p.onset.term else None
    return {
        "observation_concept_id": hpo_concept_id(p.term),
        "value_as_concept_id": ABSENT if p.excluded else PRESENT,
        "qualifier_concept_id": hpo_concept_id(onset_class) if onset_class else None,
        "observation_source_value": p.term,
        "qualifier_source_value": p.onset.source_value() if p.onset else None,
        "value_as_string": None,
        "value_source_value": None,
        "unit_source_value": None,
    }


def _variant_row(v: Variant) -> dict:
    return {
        "observation_concept_id": 0,
        "value_as_concept_id": None,
        "qualifier_concept_id": None,
        "observation_source_value": f"{VARIANT_PREFIX}{v.gene_symbol}"[:50],
        "qualifier_source_value": v.allelic_state or None,
        "value_as_string": v.hgvs[:60] or None,
        "value_source_value": v.vcf[:50] or None,
        "unit_source_value": f"{v.interpretation_status}|{v.acmg}|{v.gene_id}"[:50],
    }


def load_case(store: Store, person_id: int, kb=None) -> RareDiseaseCase:
    """The case of one person, from the CDM (labels from the knowledge base when one is given)."""
    person = store.query(
        "SELECT person_source_value, gender_concept_id, year_of_birth, month_of_birth, day_of_birth "
        f"FROM person WHERE person_id = {int(person_id)}")
    if not person:
        raise CaseNotFoundError(f"no person {person_id} in the store")
    source, gender, year, month, day = person[0]
    birth = dt.date(year, month, day) if year and month and day else None
    case = RareDiseaseCase(id=source or f"person-{person_id}", subject_id=source or str(person_id),
                           sex=GENDER_SOURCE.get(gender, "UNKNOWN_SEX"), date_of_birth=birth)
    observations = store.query(
        "SELECT observation_concept_id, observation_source_value, value_as_concept_id, qualifier_source_value, "
        "value_as_string, value_source_value, unit_source_value, observation_date FROM observation "
        f"WHERE person_id = {int(person_id)} AND ({HPO_RANGE} OR observation_source_value LIKE '{VARIANT_PREFIX}%') "
        "ORDER BY observation_id")
    names = kb.ontology.names if kb is not None else None
    for concept, source_value, value, onset, hgvs, vcf, unit, date in observations:
        case.created = case.created or dt.datetime.combine(date, dt.time(), dt.UTC)
        if HPO_CONCEPT_OFFSET <= concept < HPO_CONCEPT_OFFSET + 10_000_000:
            label = ""
            if names is not None and source_value in kb.ontology.index:
                label = str(names[kb.ontology.index[source_value]])
            case.phenotypes.append(Phenotype(source_value, label, value == ABSENT, _onset(onset, kb)))
        else:
            status, acmg, gene_id = (unit or "||").split("|", 2)
            case.variants.append(Variant(source_value[len(VARIANT_PREFIX):], gene_id, hgvs or "", vcf or "", onset or "",
                                         status, acmg))
    for term, onset in store.query(
            "SELECT condition_source_value, condition_status_source_value FROM condition_occurrence "
            f"WHERE person_id = {int(person_id)} ORDER BY condition_occurrence_id"):
        label = ""
        if kb is not None and term in kb.disease_index:
            label = str(kb.disease_names[kb.disease_index[term]])
        case.diseases.append(Disease(term, label, False, _onset(onset, kb)))
    return case


def _onset(value: str | None, kb) -> Onset | None:
    onset = Onset.from_source_value(value)
    if onset and onset.term and kb is not None and onset.term in kb.ontology.index:
        onset.label = str(kb.ontology.names[kb.ontology.index[onset.term]])
    return onset


def phenotype_table(store: Store) -> pa.Table:
    """Every person's HPO observations: person_id, hp_id, excluded (bool).

    Reads this module's rows and those of ``mercia ingest`` (which may leave ``value_as_concept_id`` empty when
    the SNOMED qualifier is not in the vocabulary but keeps ``value_source_value`` 'SNOMED:2667000' and the
    qualifier 'excluded').
    """
    table = store.query_arrow(
        "SELECT person_id, observation_concept_id AS concept, observation_source_value AS source, "
        f"COALESCE(value_as_concept_id = {ABSENT} OR value_source_value LIKE '%:{ABSENT_SNOMED}' "
        "OR qualifier_source_value = 'excluded', FALSE) AS excluded "
        f"FROM observation WHERE {HPO_RANGE} OR observation_source_value LIKE '%HP:_______' ORDER BY person_id")
    if table.num_rows == 0:  # (PostgreSQL gives untyped columns for an empty result)
        return pa.table({"person_id": pa.array([], pa.int64()), "hp_id": pa.array([], pa.string()),
                         "excluded": pa.array([], pa.bool_())})
    # the HP id from the concept (one call per distinct concept), else the tail of the source value
    concepts = np.asarray(table.column("concept").fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    distinct, inverse = np.unique(concepts, return_inverse=True)
    from_concept = np.array([hp_id_from_concept_id(int(c)) if HPO_CONCEPT_OFFSET <= c < HPO_CONCEPT_OFFSET + 10_000_000
                             else "" for c in distinct], dtype=object)[inverse]
    from_source = pc.utf8_slice_codeunits(table.column("source").fill_null(""), -10).to_numpy(zero_copy_only=False)
    hp_ids = np.where(from_concept != "", from_concept, from_source)
    return pa.table({"person_id": table.column("person_id").cast(pa.int64()), "hp_id": pa.array(hp_ids, pa.string()),
                     "excluded": table.column("excluded").cast(pa.bool_())})


def gene_table(store: Store) -> pa.Table:
    """Every person's variant genes: person_id, gene (this module's rows and ``mercia ingest``'s
    ``HGNC:<symbol>`` measurements)."""
    table = store.query_arrow(
        f"SELECT DISTINCT person_id, SUBSTRING(observation_source_value, {len(VARIANT_PREFIX) + 1}) AS gene "
        f"FROM observation WHERE observation_concept_id = 0 AND observation_source_value LIKE '{VARIANT_PREFIX}%' "
        "UNION SELECT DISTINCT person_id, SUBSTRING(measurement_source_value, 6) AS gene FROM measurement "
        "WHERE measurement_source_value LIKE 'HGNC:%'")
    return table.cast(pa.schema([("person_id", pa.int64()), ("gene", pa.string())]))
