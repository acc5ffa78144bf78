"""Distribution of each measured biomarker (e.g. the Nightingale NMR panel) in a cohort, disclosure-controlled.

Each person contributes one value per biomarker: the measurement nearest the index date (on or before
it first).  Rows are the vocabulary's concepts present in the cohort; counts and the statistics derived
from them go through the disclosure policy like every analysis.
"""

from __future__ import annotations

from mercia.analytics.base import (as_id, cohort_check, count, distribution_columns, distribution_row, finish,
                                   index_table_sql, label, quantiles_sql, temp_table)
from mercia.cdm.dialect import days_between
from mercia.cdm.store import Store
from mercia.privacy.disclosure import AnalysisResult, DisclosurePolicy, StatTable


def biomarker_distribution(store: Store, cohort_id: int, vocabulary: str = "Nightingale",
                           policy: DisclosurePolicy | None = None, raw: bool = False) -> AnalysisResult:
    cohort_id = as_id(cohort_id, "cohort id")
    cohort_check(store, cohort_id)
    with temp_table(store, index_table_sql(store, cohort_id), "mercia_idx") as idx:
        persons = int(store.query_one(f"SELECT COUNT(*) FROM {idx}"))
        nearest = f"""
            SELECT c.concept_code AS biomarker, m.value_as_number AS value FROM (
                SELECT m.measurement_source_concept_id AS concept_id, m.value_as_number,
                       ROW_NUMBER() OVER (PARTITION BY m.person_id, m.measurement_source_concept_id ORDER BY
                           CASE WHEN m.measurement_date <= i.index_date THEN 0 ELSE 1 END,
                           ABS({days_between(store, 'i.index_date', 'm.measurement_date')}), m.measurement_id) AS rn
                FROM {idx} i JOIN measurement m ON m.person_id = i.person_id
                WHERE m.value_as_number IS NOT NULL) m
            JOIN concept c ON c.concept_id = m.concept_id AND c.vocabulary_id = ?
            WHERE m.rn = 1"""
        rows = store.query(f"SELECT biomarker, {quantiles_sql(store, 'value')} FROM ({nearest}) v "
                           "GROUP BY biomarker ORDER BY biomarker", [vocabulary])
    table = StatTable(name="biomarkers", title=f"{vocabulary} biomarkers nearest index", population=persons,
                      columns=[label("biomarker", "Biomarker"), count("count_persons", "Persons"),
                               *distribution_columns()],
                      rows=[{"biomarker": r[0], **distribution_row(r[1:])} for r in rows])
    result = AnalysisResult(analysis="biomarker_distribution", title=f"Biomarkers in cohort {cohort_id}",
                            parameters={"cohort_id": cohort_id, "vocabulary": vocabulary,
                                        "value": "nearest to index, on or before it first"},
                            tables=[table])
    return finish(result, policy, raw)
