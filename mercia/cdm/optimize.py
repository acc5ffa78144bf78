"""Keep the clinical tables in concept order, so that reading one concept's rows skips the rest.

A cohort criterion joins a domain table to a handful of concepts.  On DuckDB, when the table's rows
are stored ordered by that concept column, the join's filter on the concept (DuckDB pushes the
codeset's values into the scan) skips every row group whose min/max cannot hold them: a rare
condition reads one row group of eleven instead of all.  Rows appended later (an incremental load)
land at the end, unordered; the queries stay correct, only slower, until ``optimize`` is run again
(``mercia db optimize``).  On PostgreSQL and Spark nothing is rewritten (``Store.cluster``).
"""

from __future__ import annotations

from collections.abc import Iterable

from mercia.cdm.store import Store

# Per clinical table: the order its rows are stored in (its main concept, then the person).
CONCEPT_ORDER: dict[str, tuple[str, str]] = {
    "condition_occurrence": ("condition_concept_id", "person_id"),
    "drug_exposure": ("drug_concept_id", "person_id"),
    "procedure_occurrence": ("procedure_concept_id", "person_id"),
    "measurement": ("measurement_concept_id", "person_id"),
    "observation": ("observation_concept_id", "person_id"),
    "device_exposure": ("device_concept_id", "person_id"),
    "specimen": ("specimen_concept_id", "person_id"),
    "visit_occurrence": ("visit_concept_id", "person_id"),
    "visit_detail": ("visit_detail_concept_id", "person_id"),
    "condition_era": ("condition_concept_id", "person_id"),
    "drug_era": ("drug_concept_id", "person_id"),
    "dose_era": ("drug_concept_id", "person_id"),
}


def optimize(store: Store, tables: Iterable[str] | None = None) -> list[str]:
    """Rewrite the clinical tables (or ``tables`` among them) in concept order, one transaction per
    table; returns the tables rewritten (none on an engine without zone maps).

    Not one transaction for all: the rows never change, so a table left unordered by a failure is
    only slower, while DuckDB keeps each table's staged copy, dropped or not, until the COMMIT
    (all twelve at once in memory or its temporary directory, instead of the largest)."""
    wanted = list(CONCEPT_ORDER if tables is None else tables)
    unknown = [t for t in wanted if t not in CONCEPT_ORDER]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a clinical table kept in concept order "
                         f"(choose from {', '.join(CONCEPT_ORDER)})")
    done = [name for name in wanted if store.table_exists(name) and store.cluster(name, CONCEPT_ORDER[name])]
    store.compact()
    return done
