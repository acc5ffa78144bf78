"""Benchmark PROM returns through ingest: the region's PROMs CSV scored and linked in the load.

    .venv/bin/python benchmarks/proms_ingest.py [--rows 100000] [--invalid 0.01]

Writes ``--rows`` EQ-5D-5L returns in the region's CSV layout (docs/synth.md, "PROMs - CSV"; random
levels, a fraction ``--invalid`` with mobility 7, no NHS numbers) and loads them with ``mercia.ingest``
into a fresh DuckDB store, timing the whole load and, inside it, the two PROM steps
(``add_prom_scores``: pivot and score the extract; ``link_prom_items``: the keyed updates in the load's
transaction).  Checks that every valid return has one index equal to ``score_eq5d`` in memory and six
linked items, and that every invalid one has a reject.  Writes benchmarks/results/proms_ingest.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

RESULT = Path(__file__).resolve().parent / "results" / "proms_ingest.json"
COLUMNS = ("eq5d_mobility", "eq5d_selfcare", "eq5d_usual_activities", "eq5d_pain_discomfort",
           "eq5d_anxiety_depression")


def write_returns(path: Path, rows: int, invalid: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    levels = rng.integers(1, 6, (rows, 5))
    bad = rng.random(rows) < invalid
    levels[bad, 0] = 7
    vas = rng.integers(0, 101, rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["record_id", "nhs_number", "date_of_birth", "sex", "postcode", "provider_code",
                         "procedure_opcs4", "questionnaire", "timepoint", "completed_date", *COLUMNS, "eq_vas",
                         "oks_score"])
        for i in range(rows):
            writer.writerow([f"R{i}", "", "1950-01-01", "F" if i % 2 else "M", "", "R9A", "W37.1", "EQ-5D-5L",
                             "pre", "2024-03-01", *levels[i], vas[i], ""])
    return levels


def run(rows: int, invalid: float) -> dict:
    import mercia.ingest.load as load_module
    import mercia.ingest.proms as proms_module
    from mercia.cdm import Store
    from mercia.ingest.load import LoadOptions
    from mercia.ingest.service import ingest
    from mercia.privacy.pseudonym import Pseudonymiser, load_key
    from mercia.proms.scoring import score_eq5d
    from mercia.proms.valuesets import value_set

    timings: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    proms_module.add_prom_scores = timed("add_prom_scores", proms_module.add_prom_scores)
    load_module.link_prom_items = timed("link_prom_items", load_module.link_prom_items)
    value_set("england_2018")                       # the value set tables are read once, outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        extract = Path(tmp) / "proms"
        extract.mkdir()
        levels = write_returns(extract / "proms.csv", rows, invalid)
        store = Store(str(Path(tmp) / "bench.duckdb"))
        load_before = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        summary = ingest(store, "csv", extract, "PROMS", mapping="proms",
                         options=LoadOptions(Pseudonymiser(load_key())))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        valid = levels[:, 0] <= 5
        expected = score_eq5d(pa.table({d: pa.array(levels[valid, i]) for i, d in enumerate(("MO", "SC", "UA",
                                                                                                 "PD", "AD"))}),
                              "england_2018").table.column("index").to_pylist()
        stored = [r[0] for r in store.query("SELECT value_as_number FROM observation "
                                             "WHERE observation_source_value = 'eq5d5l index' ORDER BY observation_id")]
        linked = store.query_one("SELECT count(*) FROM observation WHERE observation_event_id IS NOT NULL")
        rejects = store.query_one("SELECT count(*) FROM mercia_reject WHERE field = 'eq5d5l:MO'")
        assert sorted(stored) == sorted(expected), "stored indexes differ from score_eq5d"
        assert linked == 6 * len(expected) and rejects == int((~valid).sum())
        store.close()
    return {"rows": rows, "invalid_rows": int((~valid).sum()), "indexes_written": len(stored),
            "items_linked": linked, "rejects": rejects, "observation_rows": summary.rows.get("observation"),
            "load_wall_s": round(wall, 2), "load_cpu_s": round(cpu, 2),
            "add_prom_scores_s": round(timings["add_prom_scores"], 3),
            "link_prom_items_s": round(timings["link_prom_items"], 3),
            "load_average_1min_before": load_before, "load_average_1min_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--invalid", type=float, default=0.01)
    args = parser.parse_args()
    if "MERCIA_PSEUDONYM_KEY" not in os.environ and "MERCIA_PSEUDONYM_KEY_FILE" not in os.environ:
        os.environ["MERCIA_PSEUDONYM_KEY"] = os.urandom(32).hex()  # a throwaway key for the run
    report = {"benchmark": "PROMs CSV through ingest: items, index and links in one DuckDB load",
              "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "counted": "one cold load of a fresh store; the value set read before timing; "
              "the CSV written before timing", **run(args.rows, args.invalid)}
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
