"""Cohort-builder helpers for metabolomics and genomics facts.

- NMR biomarkers land as measurements whose concept is the biomarker's Nightingale concept (or its
  LOINC concept where mapped), so ordinary Circe measurement criteria with value ranges select on them;
  ``biomarker_above`` and ``biomarker_zscore_above`` build those criteria, the latter with the threshold
  ``mean + k * SD`` computed from a reference population (everyone with the biomarker, or a cohort).
- Variant calls live in ``variant_occurrence`` (gene, consequence), which Circe has no criterion for:
  ``variant_carriers`` returns the persons and call dates of "a variant in gene X with consequence Y"
  so they can be written as a cohort of their own (``write_variant_cohort``) and combined with others.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from mercia.cdm.store import Store
from mercia.cohorts import builder as cb
from mercia.cohorts import model as m
from mercia.vocab.metabolites import NIGHTINGALE_VOCABULARY_ID, nightingale_catalogue


class OmicsCriterionError(ValueError):
    """A biomarker or gene that the data or catalogue does not know."""


@dataclass
class BiomarkerCriterion:
    concept_set: m.ConceptSet
    criterion: m.Measurement
    threshold: float


def biomarker_concept(store: Store, biomarker: str) -> int:
    """The measurement concept an NMR biomarker's values carry (the standard one its Nightingale concept maps to)."""
    if biomarker not in nightingale_catalogue():
        raise OmicsCriterionError(f"unknown biomarker {biomarker!r}: not in the Nightingale catalogue")
    found = store.query_one("""SELECT r.concept_id_2 FROM concept c JOIN concept_relationship r
                               ON r.concept_id_1 = c.concept_id AND r.relationship_id = 'Maps to'
                               WHERE c.vocabulary_id = ? AND c.concept_code = ?""",
                            [NIGHTINGALE_VOCABULARY_ID, biomarker])
    if found is None:
        raise OmicsCriterionError(f"biomarker {biomarker!r} has no concept in this store: load an NMR file first")
    return int(found)


def biomarker_above(store: Store, set_id: int, biomarker: str, value: float) -> BiomarkerCriterion:
    """Measurement criterion: ``biomarker`` value above ``value`` (catalogue units)."""
    concept_id = biomarker_concept(store, biomarker)
    concept_set = cb.concept_set(set_id, f"{biomarker} (Nightingale NMR)", concept_id)
    return BiomarkerCriterion(concept_set, cb.measurement(set_id, value_as_number=cb.gt(value)), float(value))


def biomarker_zscore_above(store: Store, set_id: int, biomarker: str, k: float,
                           reference_cohort_id: int | None = None) -> BiomarkerCriterion:
    """Measurement criterion: z-score of ``biomarker`` above ``k`` in the reference population (every
    measured value, or those of persons in cohort ``reference_cohort_id``)."""
    concept_id = biomarker_concept(store, biomarker)
    where = "" if reference_cohort_id is None else \
        " AND person_id IN (SELECT subject_id FROM cohort WHERE cohort_definition_id = ?)"
    params = [concept_id] + ([int(reference_cohort_id)] if reference_cohort_id is not None else [])
    mean, sd, n = store.query("SELECT AVG(value_as_number), STDDEV_SAMP(value_as_number), COUNT(value_as_number) "
                              f"FROM measurement WHERE measurement_concept_id = ?{where}", params)[0]
    if not n or n < 2 or not sd:
        raise OmicsCriterionError(f"reference population has {n or 0} values of {biomarker}: too few for a z-score")
    threshold = float(mean) + k * float(sd)
    return biomarker_above(store, set_id, biomarker, threshold)


def variant_carriers(store: Store, gene: str, consequence: str | None = None) -> pa.Table:
    """(person_id, call_date) of calls in ``gene`` whose consequence contains ``consequence`` (a Sequence
    Ontology term such as ``missense_variant``; VEP joins several with '&')."""
    sql = """SELECT v.person_id, MIN(m.measurement_date) AS call_date FROM variant_occurrence v
             JOIN measurement m ON m.measurement_id = v.measurement_id
             WHERE v.target_gene_symbol = ?"""
    params: list = [gene]
    if consequence:
        sql += " AND v.consequence LIKE ?"
        params.append(f"%{consequence}%")
    return store.query_arrow(sql + " GROUP BY v.person_id ORDER BY v.person_id", params)


def write_variant_cohort(store: Store, cohort_id: int, gene: str, consequence: str | None = None) -> int:
    """Write carriers as cohort ``cohort_id`` (start = first call, end = end of that observation period),
    registered as a variant cohort (``mercia.cohorts.registry``)."""
    from mercia.cohorts.registry import claim_cohort_id
    from mercia.cohorts.runner import ensure_result_tables

    ensure_result_tables(store)
    carriers = variant_carriers(store, gene, consequence)
    with store.transaction():
        claim_cohort_id(store, cohort_id, f"{gene} {consequence or 'any'} carriers", "variant cohort")
        store.execute("DELETE FROM cohort WHERE cohort_definition_id = ?", [cohort_id])
        if carriers.num_rows:
            store.temp_table_from_arrow("mercia_tmp_carriers", "person_id BIGINT, call_date DATE", carriers)
            store.execute("""INSERT INTO cohort (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date)
                             SELECT ?, c.person_id, c.call_date, COALESCE(MAX(op.observation_period_end_date),
                                                                       c.call_date)
                             FROM mercia_tmp_carriers c LEFT JOIN observation_period op
                               ON op.person_id = c.person_id
                              AND c.call_date BETWEEN op.observation_period_start_date
                                                  AND op.observation_period_end_date
                             GROUP BY c.person_id, c.call_date""", [cohort_id])
            store.execute("DROP TABLE IF EXISTS mercia_tmp_carriers")
    return carriers.num_rows
