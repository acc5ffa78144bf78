"""Benchmark cohort characterisation: a 100,000-person cohort in a 1,000,000-person database.

    .venv/bin/python benchmarks/analytics.py [--persons 1000000] [--cohort 100000] [--db PATH]

The database is the synthetic region of ``mercia.synth.write_omop`` (built once into ``--db`` and
reused on later runs).  The synthetic region ships no ``concept_ancestor``, so the benchmark adds a
stand-in hierarchy (every concept used gets ``ANCESTOR_DEPTH`` ancestors, shared between concepts as
in a real vocabulary) so that the roll-up is measured.  The cohort is every eighth person with an
observation period of at least two years, indexed one year after the start of observation, capped
at ``--cohort`` people.  The
timed step is ``characterise`` over every domain with a 365-day window (``-365:0``), including the
disclosure policy; target < 30 s on 2 cores.  Writes benchmarks/results/analytics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

from mercia.analytics.characterise import DOMAINS, characterise
from mercia.cdm import Store

RESULT = Path(__file__).resolve().parent / "results" / "analytics.json"
COHORT_ID = 900_001
ANCESTOR_DEPTH = 8
ANCESTOR_BASE = 2_000_000_000
TARGET_SECONDS = 30.0


def ensure_database(path: Path, persons: int) -> tuple[Store, float | None]:
    """Open the benchmark database, generating it first when it is missing or too small."""
    built = None
    if path.exists():
        store = Store(str(path))
        if (store.query_one("SELECT COUNT(*) FROM person") or 0) >= persons:
            return store, None
        store.close()
        path.unlink()
    from mercia.synth import write_omop

    started = time.perf_counter()
    write_omop(str(path), persons, seed=42)
    built = time.perf_counter() - started
    return Store(str(path)), built


def make_cohort(store: Store, size: int) -> int:
    store.execute(f"DELETE FROM cohort WHERE cohort_definition_id = {COHORT_ID}")
    store.execute(f"""
        INSERT INTO cohort (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date)
        SELECT {COHORT_ID}, person_id, observation_period_start_date + 365, observation_period_end_date
        FROM (SELECT person_id, observation_period_start_date, observation_period_end_date,
                     ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY observation_period_start_date) AS rn
              FROM observation_period
              WHERE person_id % 8 = 0
                AND observation_period_end_date - observation_period_start_date >= 730) p
        WHERE rn = 1
        ORDER BY person_id
        LIMIT {size}""")
    return int(store.query_one(f"SELECT COUNT(*) FROM cohort WHERE cohort_definition_id = {COHORT_ID}"))


def ensure_ancestors(store: Store) -> int:
    """A stand-in concept hierarchy when the database has none: ancestor k of concept c is shared by
    every concept with the same c mod 2^(depth-k), up to one root."""
    if store.query_one("SELECT COUNT(*) FROM concept_ancestor"):
        return 0
    used = " UNION ".join(f"SELECT DISTINCT {d.concept} AS concept_id FROM {d.table}" for d in DOMAINS.values())
    levels = " UNION ALL ".join(
        f"SELECT {ANCESTOR_BASE + level * 100_000} + concept_id % {2 ** (ANCESTOR_DEPTH - level)}, concept_id, "
        f"{level}, {level} FROM used" for level in range(1, ANCESTOR_DEPTH + 1))
    store.execute(f"""
        INSERT INTO concept_ancestor (ancestor_concept_id, descendant_concept_id, min_levels_of_separation,
                                      max_levels_of_separation)
        WITH used AS ({used})
        SELECT concept_id, concept_id, 0, 0 FROM used UNION ALL {levels}""")
    return int(store.query_one("SELECT COUNT(*) FROM concept_ancestor"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--cohort", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/mercia-bench/analytics_1m.duckdb"))
    args = parser.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    store, build_seconds = ensure_database(args.db, args.persons)
    store.execute("SET threads = 2")
    synthetic_ancestors = ensure_ancestors(store)
    cohort = make_cohort(store, args.cohort)
    counts = store.table_counts(["person", "observation_period", "condition_occurrence", "drug_exposure",
                                 "procedure_occurrence", "measurement", "observation", "device_exposure",
                                 "visit_occurrence", "concept_ancestor"])
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = characterise(store, COHORT_ID, windows=["-365:0"], domains=list(DOMAINS))
    seconds = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    features = result.table("features").rows
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "database": {"persons": counts.get("person"), "rows": counts, "build_seconds": build_seconds},
        "concept_ancestor_stand_in": bool(synthetic_ancestors) or bool(store.query_one(
            f"SELECT COUNT(*) FROM concept_ancestor WHERE ancestor_concept_id >= {ANCESTOR_BASE}")),
        "cohort_persons": cohort,
        "domains": list(DOMAINS),
        "window": "-365:0",
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "target_seconds": TARGET_SECONDS,
        "meets_target": seconds < TARGET_SECONDS,
        "feature_rows": len(features),
        "feature_rows_redacted": sum(1 for r in features if r["count_persons"] is None),
        "disclosure_policy": result.disclosure.policy,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    store.close()


if __name__ == "__main__":
    main()
