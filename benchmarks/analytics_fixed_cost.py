"""Benchmark the fixed cost of the analyses on small cohorts: what a user pays for characterise, incidence,
compare and survival on a cohort of a few dozen people, and what the disclosure property test pays per example.

    PYTHONPATH=. .venv/bin/python benchmarks/analytics_fixed_cost.py [--worlds 60] [--seed 7] [--label NAME]

Each of ``--worlds`` seeded random worlds (1-30 people, drawn like the examples of
tests/analytics/test_disclosure_properties.py, loaded by its ``load``) goes into one in-memory DuckDB with one
thread, and the four analyses run once on it, raw.  Counted: process CPU seconds per analysis (loading apart),
the statements the store ran, and a SHA-256 of every result's JSON, so that two trees can be checked to give
byte-identical results.  Writes benchmarks/results/analytics-fixed-cost-<label>-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson

import mercia

from mercia.analytics.base import AnalyticsError
from mercia.analytics.characterise import characterise
from mercia.analytics.compare import compare
from mercia.analytics.incidence import incidence
from mercia.analytics.survival import survival
from mercia.cdm.engines.duckdb import DuckDBStore
from tests.analytics.conftest import Cdm
from tests.analytics.test_disclosure_properties import load

RESULTS = Path(__file__).resolve().parent / "results"


def random_people(rng: random.Random) -> list[dict]:
    """One world, drawn from the ranges of the property test's ``person`` strategy."""
    return [{"sex": rng.choice([8507, 8532]), "born": rng.randint(1930, 2010), "index_day": rng.randint(0, 1500),
             "obs_days": rng.randint(1, 2500), "in_comparator": rng.random() < 0.5,
             "outcome_day": None if rng.random() < 0.3 else rng.randint(-200, 2000),
             "conditions": [(rng.choice([201, 202, 203]), rng.randint(-400, 10)) for _ in range(rng.randint(0, 3))],
             "codes": [rng.choice(["I21.0", "I50.9", "E11.2", "C78.1", "F32.0"]) for _ in range(rng.randint(0, 2))],
             "imd": None if rng.random() < 0.3 else rng.randint(1, 10)}
            for _ in range(rng.randint(1, 30))]


class CountingStore(DuckDBStore):
    """A DuckDB store counting the statements it runs (``execute`` and ``query`` both)."""
    statements = 0

    def execute(self, sql, params=None):
        CountingStore.statements += 1
        return super().execute(sql, params)

    def query(self, sql, params=None):
        CountingStore.statements += 1
        return super().query(sql, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--label", default="run")
    args = parser.parse_args()

    store = CountingStore(":memory:")
    store.execute("SET threads = 1")
    store.init_schema()
    store.execute("CREATE TABLE mercia_person_link (person_id BIGINT, imd_decile BIGINT, load_id BIGINT)")
    cdm = Cdm(store)
    rng = random.Random(args.seed)
    cpu: Counter[str] = Counter()
    statements: Counter[str] = Counter()
    digest = hashlib.sha256()
    analyses = {
        "characterise": lambda: characterise(store, 1, windows=["-365:0", "-30:0"], domains=["condition", "drug"],
                                             raw=True),
        "incidence": lambda: incidence(store, 1, 2, tars=["0:365", "0:end"], raw=True),
        "compare": lambda: compare(store, 1, 3, domains=["condition"], raw=True),
        "survival": lambda: survival(store, 1, 2, raw=True),
    }
    for _ in range(args.worlds):
        people = random_people(rng)
        load(cdm, people)
        for name, run in analyses.items():
            if name == "compare" and not any(p["in_comparator"] for p in people):
                continue
            before, started = CountingStore.statements, time.process_time()
            try:
                digest.update(orjson.dumps(run().to_json_dict()))
            except AnalyticsError as exc:  # survival when nobody is followed: an error, as in the property test
                digest.update(str(exc).encode())
            cpu[name] += time.process_time() - started
            statements[name] += CountingStore.statements - before
    store.close()

    mercia_dir = Path(mercia.__file__).resolve().parent  # the tree measured (PYTHONPATH), not this script's
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=mercia_dir).stdout.strip()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "benchmark": "analytics_fixed_cost",
        "counted": "process CPU seconds (user+sys) of each analysis summed over the worlds, loading excluded; "
                   "statements = Store.execute + Store.query calls; results_sha256 over every result's JSON",
        "worlds": args.worlds, "seed": args.seed, "label": args.label, "commit": commit,
        "mercia": str(mercia_dir), "uncommitted_changes": bool(subprocess.run(
            ["git", "status", "--porcelain", "mercia"], capture_output=True, text=True, cwd=mercia_dir.parent).stdout),
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_seconds_total": round(sum(cpu.values()), 3),
        "statements": dict(statements), "results_sha256": digest.hexdigest(),
        "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
        "at": stamp,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"analytics-fixed-cost-{args.label}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
