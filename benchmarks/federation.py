"""Benchmark a federated feasibility count.

    .venv/bin/python benchmarks/federation.py [--persons 20000] [--tokens 5400000]

1. Token union: the hub's de-duplication (distinct count and sites-per-person over salted tokens)
   on ``--tokens`` random 128-bit hex tokens of which about 20% repeat at a second site; time and
   Arrow memory at that size (the issue asks for 5.4 million).
2. One question end to end on a synthetic region (``--persons``, 2% identity errors; 2 practices,
   2 trusts, pathology and the genetics service: 6 nodes), true counts (policy ``none``) so the
   de-duplicated total is scored against the region's truth; hub and nodes in this process so that each part is timed on
   its own: hub time (submit, accepting every signed result, combining), each node's time (cohort,
   tokens, signing), and the parallel end-to-end time = hub time + the slowest node.  The same cohort
   on one store holding every organisation (the platform's own region ingest, linked) is the baseline;
   the target is end to end <= 2x that store's time and hub overhead <= 200 ms.

Writes benchmarks/results/federation.json (fresh each run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

RESULT = Path(__file__).resolve().parent / "results" / "federation.json"
SEED = 42


def token_union(n: int) -> dict:
    """De-duplicating n salted NHS tokens (one in six repeated at a second site) in one pass."""
    rng = np.random.default_rng(SEED)
    distinct = int(n / 1.2)
    base = pa.array([secrets.token_hex(16) for _ in range(distinct)], pa.string())
    repeats = base.take(pa.array(rng.integers(0, distinct, n - distinct)))
    rows = pa.table({"site": pa.array(["A"] * distinct + ["B"] * (n - distinct), pa.string()),
                     "nhs": pa.chunked_array([base, repeats]), "demographic": pa.nulls(n, pa.string()),
                     "cell": pa.array([""] * n, pa.string())})
    from mercia.federation.hub import network_counts

    before = pa.total_allocated_bytes()
    began = time.perf_counter()
    unique, shared, _ = network_counts(rows, partition=True)
    seconds = time.perf_counter() - began
    return {"tokens": n, "distinct": unique, "seen_at_two_or_more_sites": shared, "seconds": round(seconds, 3),
            "token_bytes_mb": round(rows.nbytes / 1e6, 1),
            "arrow_extra_mb_after": round((pa.total_allocated_bytes() - before) / 1e6, 1),
            "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def end_to_end(persons: int, directory: Path) -> dict:
    from fastapi.testclient import TestClient

    from mercia.cdm import Store
    from mercia.cohorts.model import CohortExpression
    from mercia.cohorts.runner import run_cohort
    from mercia.federation import demo as harness
    from mercia.federation.hub import Hub, HubSettings
    from mercia.federation.hubapp import create_hub_app
    from mercia.federation.messages import FeasibilityQuery
    from mercia.federation.node import COHORT_ID, NodeAgent, NodePolicy
    from mercia.federation.region import catalogue_vocabulary, reference_cohort, true_distinct_persons
    from mercia.ingest.region import ingest_region
    from mercia.linkage.probabilistic import link_store

    harness.DEMO_PRACTICES, harness.DEMO_TRUSTS = 2, 2
    os.environ["MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS"] = "1"
    os.environ.setdefault("MERCIA_PSEUDONYM_KEY", secrets.token_hex(32))   # the single-store baseline's key
    began = time.perf_counter()
    net, project_id, _ = harness.prepare_network(directory, persons, SEED, policy="none", allow_raw=True)
    build = time.perf_counter() - began
    hub_store = Store(net.hub_db)
    hub = Hub(hub_store, HubSettings(policy="none", allow_raw=True))   # true counts, to score against the truth
    user = hub.gov.user_by_name(hub.gov.db.rows("SELECT username FROM mercia_user WHERE username LIKE "
                                                "'researcher-%'")[0]["username"])
    client = TestClient(create_hub_app(hub))
    agents = [NodeAgent(n.url, n.org, "http://testserver", net.keys[n.org], NodePolicy(allow_raw=True), wait=0, client=client)
              for n in net.nodes]
    query = FeasibilityQuery(cohort=reference_cohort())
    hub_seconds, node_seconds = 0.0, {}
    t = time.perf_counter()
    query_id = hub.submit(user, project_id, query)["query_id"]
    hub_seconds += time.perf_counter() - t
    tokens = 0
    for agent in agents:
        task = agent.fetch()[0]
        t = time.perf_counter()
        result = agent.handle(task)
        node_seconds[agent.org] = round(time.perf_counter() - t, 3)
        tokens += len(result.secrets())
        t = time.perf_counter()
        agent.post(result).raise_for_status()
        hub_seconds += time.perf_counter() - t
    t = time.perf_counter()
    answer = hub.answer(user, query_id)
    hub_seconds += time.perf_counter() - t
    hub_store.close()
    truth = true_distinct_persons(directory / "region", net.nodes, COHORT_ID)

    single = Store(str(directory / "single.duckdb"))
    catalogue_vocabulary(single)
    t = time.perf_counter()
    ingest_region(single, directory / "region")
    link_store(single)
    single_ingest = time.perf_counter() - t
    t = time.perf_counter()
    single_result = run_cohort(single, CohortExpression.from_json(reference_cohort()), 1)
    single_seconds = time.perf_counter() - t
    single.close()
    parallel = hub_seconds + max(node_seconds.values())
    return {"persons": persons, "nodes": len(agents), "build_seconds": round(build, 1),
            "hub_seconds": round(hub_seconds, 3), "node_seconds": node_seconds,
            "end_to_end_parallel_seconds": round(parallel, 3), "tokens_received": tokens,
            "answer": {k: answer[k] for k in ("status", "deduplicated_total", "naive_sum", "policy")},
            "truth": {"distinct_persons": truth["distinct"], "naive_sum": truth["naive_sum"],
                      "relative_error": round(answer["deduplicated_total"] / truth["distinct"] - 1, 5)},
            "single_store": {"ingest_seconds": round(single_ingest, 1), "cohort_seconds": round(single_seconds, 3),
                             "persons_in_cohort": single_result.persons},
            "targets": {"end_to_end_within_2x_single_store": parallel <= 2 * single_seconds,
                        "hub_overhead_within_200ms": hub_seconds <= 0.2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--tokens", type=int, default=5_400_000)
    args = parser.parse_args()
    results = {"benchmark": "federation", "python": sys.version.split()[0], "machine": platform.machine(),
               "cpus": os.cpu_count(), "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["token_union"] = token_union(args.tokens)
    print(json.dumps(results["token_union"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results["end_to_end"] = end_to_end(args.persons, Path(tmp))
    print(json.dumps(results["end_to_end"]), flush=True)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
