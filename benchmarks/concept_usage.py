"""Concept search ranked by use: what counting the candidates' records costs per search.

Writes a synthetic region (``mercia.synth.omop.write_omop``, DuckDB file) and times, alternating in
one process, ``mercia.vocab.concepts.search`` (match ranking only) and
``mercia.services.vocabulary.find_concepts`` (the web app's and API's search: up to 200 candidates,
then their records counted over every CDM event table and used to order equal matches).  Best,
median and worst of several runs per query after one warm-up, the store opened fresh after the write.

    .venv/bin/python benchmarks/concept_usage.py [--persons 100000]

Writes a fresh benchmarks/results/concept_usage-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from mercia.cdm import Store
from mercia.services.vocabulary import find_concepts
from mercia.synth.omop import write_omop
from mercia.vocab.concepts import search
from mercia.vocab.usage import EVENT_CONCEPTS

QUERIES = ["HbA1c", "cancer", "stroke", "diabetes", "heart attack", "malignant", "cholesterol", "tablet", "zzqx"]
RUNS = 9


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "region.duckdb")
        started = time.perf_counter()
        writer = Store(path)
        write_omop(writer, args.persons, seed=11)
        writer.close()
        write_seconds = time.perf_counter() - started
        store = Store(path)
        rows = {t: int(store.query_one(f"SELECT COUNT(*) FROM {t}")) for t in EVENT_CONCEPTS}
        search(store, "warm")  # builds the search index once, outside the timings
        results = {}
        for query in QUERIES:
            plain, ranked = [], []
            search(store, query, limit=20)
            find_concepts(store, query, limit=20)
            for _ in range(RUNS):  # alternating, so load changes hit both alike
                plain.append(timed(lambda: search(store, query, limit=20)))
                ranked.append(timed(lambda: find_concepts(store, query, limit=20)))
            results[query] = {name: {"best_ms": round(min(v), 1), "median_ms": round(statistics.median(v), 1),
                                     "worst_ms": round(max(v), 1)}
                              for name, v in (("search_only", plain), ("ranked_by_use", ranked))}
        store.close()
    out = {
        "what": "per-query wall time of vocab search alone vs the services' search ranked by use "
                "(limit 20; ranked: 200 candidates, their records counted over every event table)",
        "store": "DuckDB file written by mercia.synth.omop.write_omop, reopened (warm OS cache, search index built)",
        "persons": args.persons, "event_table_rows": rows, "runs_per_query": RUNS, "write_seconds": round(write_seconds, 1),
        "queries": results, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                        "load_average": os.getloadavg()},
    }
    target = Path(__file__).parent / "results" / f"concept_usage-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    target.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
