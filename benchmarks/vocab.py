"""Concept search over 1 million concepts (target: under 100 ms per query).

Builds a DuckDB store with 1,000,000 synthetic concepts whose names are 3-7 words drawn from the
real words of the starter vocabulary (ICD-10 + HPO names), so word frequencies look clinical,
plus 500,000 synonyms.  Times the search index build, then each query (best, median and worst of
several runs, after one warm-up) through ``mercia.vocab.search`` — the exact code the CLI uses —
and, for comparison, the same search without the precomputed index.

    .venv/bin/python benchmarks/vocab.py [--concepts 1000000]

Writes benchmarks/results/vocab.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from mercia.cdm import Store
from mercia.vocab import ensure_starter_vocabulary, refresh_search_index, search

QUERIES = ["type 2 diabetes", "seizure", "fracture of femur", "carcinoma", "abnormality of the",
           "kidney", "zzqx no such thing", "mellitus type 2", "acute", "hyp", "ertens", "ert"]
RUNS = 15


def build(store: Store, concepts: int) -> dict[str, float]:
    started = time.perf_counter()
    ensure_starter_vocabulary(store)  # the source of real clinical words
    store.execute("""
        CREATE TEMP TABLE words AS
        SELECT row_number() OVER () - 1 AS i, w FROM (
            SELECT DISTINCT unnest(string_split(lower(concept_name), ' ')) AS w FROM concept
        ) WHERE length(w) > 2""")
    n_words = store.query_one("SELECT count(*) FROM words")
    store.execute(f"""
        INSERT INTO concept
        SELECT 1000000 + r AS concept_id,
               concat_ws(' ', w1.w, w2.w, w3.w, CASE WHEN r % 3 > 0 THEN w4.w END,
                         CASE WHEN r % 4 = 0 THEN w5.w END) AS concept_name,
               'Condition', (['SNOMED', 'ICD10CM', 'LOINC', 'RxNorm'])[1 + r % 4], 'Synthetic',
               CASE WHEN r % 3 = 0 THEN 'S' END, 'SYN' || r, DATE '1970-01-01', DATE '2099-12-31', NULL
        FROM range({concepts}) t(r)
        JOIN words w1 ON w1.i = hash(r, 1) % {n_words}
        JOIN words w2 ON w2.i = hash(r, 2) % {n_words}
        JOIN words w3 ON w3.i = hash(r, 3) % {n_words}
        JOIN words w4 ON w4.i = hash(r, 4) % {n_words}
        JOIN words w5 ON w5.i = hash(r, 5) % {n_words}""")
    store.execute("""
        INSERT INTO concept_synonym
        SELECT concept_id, concept_name || ' (synonym)', 4180186 FROM concept
        WHERE concept_id >= 1000000 AND concept_id % 2 = 0""")
    generated = time.perf_counter() - started
    started = time.perf_counter()
    refresh_search_index(store, force=True)
    return {"generate_s": round(generated, 2), "index_build_s": round(time.perf_counter() - started, 2)}


def time_queries(store: Store) -> dict[str, dict]:
    out = {}
    for text in QUERIES:
        hits = search(store, text, limit=20)  # warm-up
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            search(store, text, limit=20)
            times.append((time.perf_counter() - started) * 1000)
        out[text] = {"hits": len(hits), "best_ms": round(min(times), 1), "median_ms": round(statistics.median(times), 1),
                     "worst_ms": round(max(times), 1), "top": hits[0]["concept_name"] if hits else None}
    return out


def time_without_index(store: Store) -> dict[str, float]:
    """The same ranking computed from concept/concept_synonym directly (what a stale read-only
    store falls back to)."""
    out = {}
    for text in QUERIES[:3]:
        search(store, text, use_index=False)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            search(store, text, use_index=False)
            times.append((time.perf_counter() - started) * 1000)
        out[text] = round(statistics.median(times), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=1_000_000)
    args = parser.parse_args()
    load_before = [round(x, 1) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "vocab-bench.duckdb"))
        store.init_schema()
        setup = build(store, args.concepts)
        store.close()  # searched later, as a user would: a store built once, opened again
        store = Store(str(Path(tmp) / "vocab-bench.duckdb"))
        counts = store.table_counts(["concept", "concept_synonym"])
        queries = time_queries(store)
        without = time_without_index(store)
        store.close()
    medians = [q["median_ms"] for q in queries.values()]
    result = {
        "benchmark": "vocab search", "engine": "duckdb", "concepts": counts["concept"],
        "synonyms": counts["concept_synonym"], **setup, "runs_per_query": RUNS, "queries": queries,
        "median_of_medians_ms": round(statistics.median(medians), 1), "worst_median_ms": max(medians),
        "target_ms": 100, "load_average_before": load_before, "meets_target": max(medians) < 100,
        "without_index_median_ms": without,
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(__file__).parent / "results" / "vocab.json"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
