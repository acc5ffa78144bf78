"""Generative check of the plan rewrites (semi-joins, named nested criteria, batches):
random small CDM databases (seeded persons, observation periods and events drawn from GiBleed's own
concepts) x reference definitions; Mercia one at a time, Mercia as a batch and OHDSI's own Circe SQL
(the PhenotypeLibrary rendering, translated by the shared oracle) must give the same rows."""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pytest

from mercia.cdm import Store
from mercia.cdm.schema import CDM_TABLES
from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts.batch import run_batch
from tests.conftest import engine_missing

from .conftest import cdm_arrow

# nested correlated criteria, drug persistence, era collapse, censoring, demographics, visits, plain, one
# event per person (no collapse) with an era pad
DEFINITIONS = [1073, 1187, 368, 1158, 366, 29, 370, 651, 56, 134, 1401, 533, 1197, 861, 38, 994]
VOCABULARY = ["concept", "concept_ancestor", "concept_relationship"]
# table -> (id column, concept column, start column, end column or None)
EVENTS = {
    "condition_occurrence": (
        "condition_occurrence_id",
        "condition_concept_id",
        "condition_start_date",
        "condition_end_date",
    ),
    "drug_exposure": ("drug_exposure_id", "drug_concept_id", "drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_occurrence_id", "procedure_concept_id", "procedure_date", None),
    "measurement": ("measurement_id", "measurement_concept_id", "measurement_date", None),
    "observation": ("observation_id", "observation_concept_id", "observation_date", None),
    "visit_occurrence": ("visit_occurrence_id", "visit_concept_id", "visit_start_date", "visit_end_date"),
}
BASE = dt.date(2000, 1, 1)


def _days(values) -> list[dt.date]:
    return [BASE + dt.timedelta(days=int(v)) for v in values]


def random_cdm(path, gibleed: Store, seed: int, persons: int = 150) -> Store:
    """GiBleed's vocabulary; persons with one or two observation periods; events of GiBleed's concepts
    at random dates, some outside any observation period, some on the same day (ties)."""
    rng = np.random.default_rng(seed)
    store = Store(str(path))
    store.init_schema()
    for name in VOCABULARY:
        store.insert_arrow(name, gibleed.duckdb_connection.sql(f'SELECT * FROM "{name}"').to_arrow_table())
    ids = np.arange(1, persons + 1)
    store.insert_arrow(
        "person",
        cdm_arrow(
            "person",
            [
                {
                    "person_id": int(p),
                    "gender_concept_id": int(g),
                    "year_of_birth": int(y),
                    "race_concept_id": 0,
                    "ethnicity_concept_id": 0,
                }
                for p, g, y in zip(
                    ids, rng.choice([8507, 8532], persons), rng.integers(1930, 2005, persons), strict=True
                )
            ],
        ),
    )
    periods, period_id = [], 0
    for p in ids:
        start = int(rng.integers(0, 2000))
        for _ in range(int(rng.integers(1, 3))):
            end = start + int(rng.integers(30, 2500))
            period_id += 1
            periods.append(
                {
                    "observation_period_id": period_id,
                    "person_id": int(p),
                    "observation_period_start_date": _days([start])[0],
                    "observation_period_end_date": _days([end])[0],
                    "period_type_concept_id": 44814724,
                }
            )
            start = end + int(rng.integers(1, 400))
    store.insert_arrow("observation_period", cdm_arrow("observation_period", periods))
    visits = 0
    for name, (id_col, concept_col, start_col, end_col) in EVENTS.items():
        concepts = [r[0] for r in gibleed.query(f"SELECT DISTINCT {concept_col} FROM {name}")]
        n = persons * int(rng.integers(3, 12))
        starts = rng.integers(0, 6000, n)
        rows = []
        for i, (p, c, s) in enumerate(zip(rng.choice(ids, n), rng.choice(concepts, n), starts, strict=True), start=1):
            row = {id_col: i, "person_id": int(p), concept_col: int(c), start_col: _days([s])[0]}
            if end_col is not None:
                required = CDM_TABLES[name].column(end_col).required
                missing = not required and rng.random() < 0.1
                row[end_col] = None if missing else _days([s + int(rng.integers(0, 90))])[0]
            if name == "drug_exposure":
                row["days_supply"] = int(rng.integers(1, 60))
            if name != "visit_occurrence":
                row["visit_occurrence_id"] = int(rng.integers(1, visits + 1)) if visits and rng.random() < 0.5 else None
            rows.append({k: v for k, v in row.items() if k in {c.name for c in CDM_TABLES[name].columns}})
        if name == "visit_occurrence":
            visits = n
        store.insert_arrow(name, cdm_arrow(name, rows))
    return store


@pytest.fixture(scope="module")
def circe_oracle(shared_data):
    tools = shared_data.parent / "tools" / "circe"
    if not (tools / "ohdsi_oracle.py").exists():
        engine_missing(f"OHDSI oracle not found at {tools}")
    sys.path.insert(0, str(tools))
    import ohdsi_oracle

    return ohdsi_oracle


def _rows(store: Store, cid: int) -> list[tuple]:
    return sorted(
        store.query(
            "SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort WHERE cohort_definition_id = ?", [cid]
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_databases_give_circe_rows(seed, tmp_path, cohort_gibleed_duckdb, reference_dir, circe_oracle):
    store = random_cdm(tmp_path / "random.duckdb", cohort_gibleed_duckdb, seed)
    definitions = [
        (cid, CohortExpression.from_json((reference_dir / "cohorts" / f"{cid}.json").read_bytes()))
        for cid in DEFINITIONS
    ]
    con = store.duckdb_connection
    con.execute(circe_oracle.RESULTS_DDL)
    theirs = {}
    for cid, _ in definitions:
        raw = (reference_dir / "circe_sql" / f"{cid}.sql").read_text(encoding="utf-8-sig")
        theirs[cid] = sorted(circe_oracle.run_cohort(con, raw, cid))
        con.execute("DELETE FROM main.cohort")
    non_empty = sum(1 for rows in theirs.values() if rows)
    assert non_empty >= len(DEFINITIONS) // 2, "the random database should reach most definitions"
    for cid, expr in definitions:
        run_cohort(store, expr, cid)
        assert _rows(store, cid) == theirs[cid], f"cohort {cid}, seed {seed}: one at a time"
    store.execute("DELETE FROM cohort")
    run_batch(store, definitions)
    for cid, _ in definitions:
        assert _rows(store, cid) == theirs[cid], f"cohort {cid}, seed {seed}: batch"
    store.close()
