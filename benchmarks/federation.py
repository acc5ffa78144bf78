"""Benchmark a federated feasibility count at network scale.

    .venv/bin/python benchmarks/federation.py [--persons 1000000,100000] [--tokens 5400000] [--repeats 3]
                                              [--keep DIR] [--region 2000]

1. Token union (own child process, so its peak RSS is its own): the hub's de-duplication
   (``hub.network_counts``: distinct persons and persons at two or more sites over salted tokens) on
   ``--tokens`` 64-bit salted tokens at five sites, one in six repeating an earlier one (the issue asks 5.4 million).
2. Per size in ``--persons``: ``region.build_scaled_network`` writes one store of everybody
   (``synth.write_omop``; the single-store baseline) and cuts five node stores from it (about 20% of
   persons at two or more organisations, each event at one of its person's organisations, network
   tokens as ingest computes them).  Then, for the built-in reference cohort:
   - single store: the cohort on the one store holding everybody, DuckDB, cold (first run after
     opening the store) and warm (median of the next runs);
   - in-process parts: the hub (submit; per node result: signature check, parsing, acceptance;
     combining into the de-duplicated answer) and each node (cohort + tokens, then serialising and
     signing its result), timed one by one, for ``--repeats`` questions (the hub's median reported);
   - end to end: the hub as a uvicorn process on 127.0.0.1 and one ``mercia node run``
     process per organisation long-polling it, wall clock from submit to the de-duplicated answer
     (after one warm-up question, as nodes are long-running), ``--repeats`` times.
   The de-duplicated total (policy ``none``) is checked against the single store's count: each event
   sits at one organisation of its person, so the two must be equal.
   Targets: end to end <= 2x the single store (cold), hub time <= 200 ms per question.  CPU seconds
   (this process's for the in-process hub parts; each process's from the OS end to end) are recorded
   beside the wall clock, as they do not grow with other users' load.

3. With ``--region N``: accuracy with identity errors — a synthetic region of N persons (2% identity
   errors) ingested per organisation (the demo's path; slow), its de-duplicated total against the
   region's true distinct persons.

Writes a fresh benchmarks/results/federation-<UTC stamp>.json per run; the machine's load average
(1 minute) is recorded beside every timed phase, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 42


def load() -> float:
    return round(os.getloadavg()[0], 2)


def token_union_child(n: int) -> None:
    """Runs in the child: n salted tokens at five sites (64 bits each, as the hub holds them), one in six
    repeating an earlier token; prints the timing (wall and CPU seconds) as JSON."""
    import duckdb

    from mercia.federation.hub import MEMBER_ROWS, network_counts

    distinct = int(n / 1.2)
    rows = duckdb.sql(f"""
        SELECT chr(65 + CAST(i % 5 AS INTEGER)) AS site, hash(k, 1) AS nhs, CAST(NULL AS UBIGINT) AS demographic,
               '' AS cell
        FROM (SELECT i, CASE WHEN i < {distinct} THEN i ELSE hash(i, {SEED}) % {distinct} END AS k
              FROM range({n}) t(i))""").to_arrow_table().cast(MEMBER_ROWS)
    began, spent = time.perf_counter(), time.process_time()
    unique, shared, _ = network_counts(rows, partition=True)
    seconds, cpu = time.perf_counter() - began, time.process_time() - spent
    print(json.dumps({"tokens": rows.num_rows, "distinct": unique, "seen_at_two_or_more_sites": shared,
                      "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                      "token_mb": round(rows.nbytes / 1e6, 1)}))


def token_union(n: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child-token-union", str(n)], stdout=subprocess.PIPE,
                            text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("token union child failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb_child"] = round(usage.ru_maxrss / 1024, 1)   # the whole child: Python, DuckDB, tokens
    result["load_average_1m"] = load()
    return result


def single_store(url: str, repeats: int) -> dict:
    """The reference cohort on the store holding everybody: cold (first run after opening), then warm."""
    from mercia.cdm import Store
    from mercia.cohorts import CohortExpression, run_cohort
    from mercia.cohorts.registry import scratch_cohort
    from mercia.federation.region import reference_cohort

    expression = CohortExpression.from_json(reference_cohort())
    seconds, cpu, persons = [], [], None
    with Store(url) as store:
        for _ in range(repeats + 1):
            with scratch_cohort(store) as cohort_id:
                began, spent = time.perf_counter(), time.process_time()
                persons = run_cohort(store, expression, cohort_id).persons
                seconds.append(time.perf_counter() - began)
                cpu.append(time.process_time() - spent)
    return {"persons_in_cohort": persons, "cold_seconds": round(seconds[0], 3),
            "warm_seconds": round(statistics.median(seconds[1:]), 3), "cold_cpu_seconds": round(cpu[0], 3),
            "warm_cpu_seconds": round(statistics.median(cpu[1:]), 3), "load_average_1m": load()}


def in_process(net, project_id: int, questions: int = 1) -> dict:
    """``questions`` questions with hub and nodes in this process, each part timed: what the hub does per
    question (submit, per result: signature, parsing, acceptance; combining) and what each node does.
    The hub's figures are the median over the questions (each part's median separately), every
    question's total beside them; the nodes' are the last question's."""
    from fastapi.testclient import TestClient

    from mercia.cdm import Store
    from mercia.federation.hub import Hub, HubSettings
    from mercia.federation.hubapp import PREFIX, create_hub_app
    from mercia.federation.messages import RESULT_MEDIA_TYPE, FeasibilityQuery, NodeResult
    from mercia.federation.node import NodeAgent, NodePolicy
    from mercia.federation.region import reference_cohort

    path = f"{PREFIX}/node/results"
    asked = []   # per question: (hub parts, hub CPU seconds, nodes, member rows, answer)
    with Store(net.hub_db) as hub_store:
        hub = Hub(hub_store, HubSettings(policy="none", allow_raw=True, differencing_limit=100))
        user = hub.gov.user_by_name(hub.gov.db.rows("SELECT username FROM mercia_user WHERE username LIKE "
                                                    "'researcher-%'")[0]["username"])
        client = TestClient(create_hub_app(hub))
        agents = [NodeAgent(n.url, n.org, "http://testserver", net.keys[n.org], NodePolicy(allow_raw=True), wait=0,
                            client=client) for n in net.nodes]
        for _ in range(questions):
            hub_parts = {"submit": 0.0, "verify_signature": 0.0, "parse_result": 0.0, "accept_result": 0.0,
                         "combine_answer": 0.0}
            hub_cpu = 0.0   # CPU seconds of this process (all its threads) in the hub's parts: not inflated by others' load
            nodes, rows = {}, 0
            began, cpu = time.perf_counter(), time.process_time()
            query_id = hub.submit(user, project_id, FeasibilityQuery(cohort=reference_cohort()))["query_id"]
            hub_parts["submit"] = time.perf_counter() - began
            hub_cpu += time.process_time() - cpu
            for agent in agents:
                task = agent.fetch()[0]
                began = time.perf_counter()
                result = agent.handle(task)
                ran = time.perf_counter()
                body = result.to_wire()
                headers = agent._headers("POST", path, body, RESULT_MEDIA_TYPE)
                signed = time.perf_counter()
                nodes[agent.org] = {"cohort_and_tokens": round(ran - began, 3),
                                    "serialise_and_sign": round(signed - ran, 3),
                                    "members": result.members.num_rows, "body_mb": round(len(body) / 1e6, 2)}
                rows += result.members.num_rows
                began, cpu = time.perf_counter(), time.process_time()
                org = hub.authenticate_node(headers["X-Mercia-Node"], "POST", path, headers["X-Mercia-Time"], body,
                                            headers["X-Mercia-Signature"])
                verified = time.perf_counter()
                parsed = NodeResult.from_wire(body)
                read = time.perf_counter()
                hub.accept(org, parsed)
                hub_parts["verify_signature"] += verified - began
                hub_parts["parse_result"] += read - verified
                hub_parts["accept_result"] += time.perf_counter() - read
                hub_cpu += time.process_time() - cpu
            began, cpu = time.perf_counter(), time.process_time()
            answer = hub.answer(user, query_id)
            hub_parts["combine_answer"] = time.perf_counter() - began
            hub_cpu += time.process_time() - cpu
            asked.append((hub_parts, hub_cpu, nodes, rows, answer))
    totals = [sum(parts.values()) for parts, *_ in asked]
    _, _, nodes, rows, answer = asked[-1]
    slowest = max(n["cohort_and_tokens"] + n["serialise_and_sign"] for n in nodes.values())
    hub_seconds = statistics.median(totals)
    return {"questions": questions, "hub_seconds": round(hub_seconds, 3),
            "hub_seconds_each": [round(t, 3) for t in totals],
            "hub_cpu_seconds": round(statistics.median(cpu for _, cpu, *_ in asked), 3),
            "hub_cpu_seconds_each": [round(cpu, 3) for _, cpu, *_ in asked],
            "hub_parts": {k: round(statistics.median(parts[k] for parts, *_ in asked), 3) for k in asked[0][0]},
            "nodes": nodes, "member_rows_received": rows, "slowest_node_seconds": round(slowest, 3),
            "hub_plus_slowest_node_seconds": round(hub_seconds + slowest, 3),
            "answers_agree": len({a["deduplicated_total"] for *_, a in asked}) == 1,
            "answer": {k: answer[k] for k in ("status", "deduplicated_total", "naive_sum", "seen_at_two_or_more_sites")},
            "load_average_1m": load()}


def processes(net, token: str, project_id: int, repeats: int) -> dict:
    """The hub and every node as processes on 127.0.0.1: wall clock submit -> de-duplicated answer."""
    from mercia.federation.demo import ask, running
    from mercia.federation.region import reference_cohort

    cohort = reference_cohort()
    seconds, answers, cpu = [], [], []
    with running(net, node_policy=write_raw_policy(net.directory)):
        warm_up = ask(net, token, project_id, cohort, timeout=600)
        for _ in range(repeats):
            before = cpu_seconds(net)
            began = time.perf_counter()
            answers.append(ask(net, token, project_id, cohort, timeout=600))
            seconds.append(time.perf_counter() - began)
            cpu.append({name: round(spent - before[name], 3) for name, spent in cpu_seconds(net).items()})
    last = answers[-1]
    return {"warm_up_status": warm_up["status"], "seconds": [round(s, 3) for s in seconds],
            "median_seconds": round(statistics.median(seconds), 3),
            "cpu_seconds_per_question": cpu,   # per process (hub, each node), from the operating system
            "cpu_seconds_all_processes": [round(sum(c.values()), 3) for c in cpu],
            "median_cpu_seconds_all_processes": round(statistics.median(sum(c.values()) for c in cpu), 3),
            "median_cpu_seconds_hub_process": round(statistics.median(c["hub"] for c in cpu), 3),
            "hub_http": uvicorn_implementations(),
            "answer": {k: last[k] for k in ("status", "deduplicated_total", "naive_sum", "seen_at_two_or_more_sites")},
            "nodes": {n["org"]: n["count"] for n in last["nodes"]}, "load_average_1m": load()}


def uvicorn_implementations() -> dict[str, str]:
    """What uvicorn's "auto" picks in the hub process: httptools and uvloop when installed, else h11 and asyncio."""
    import importlib.util

    return {"http": "httptools" if importlib.util.find_spec("httptools") else "h11",
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"}


def cpu_seconds(net) -> dict[str, float]:
    """User + system CPU seconds so far of each process the network started (all threads; Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    spent = {}
    for name, process in net.processes.items():
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        spent[name] = (int(fields[11]) + int(fields[12])) / tick   # utime, stime (fields 14 and 15 of stat)
    return spent


def write_raw_policy(directory: Path) -> Path:
    """Node policy for ground-truth runs: true counts (policy ``none``) so the total can be checked."""
    path = directory / "node-policy.yaml"
    path.write_text("auto: [feasibility]\nallow_raw: true\n")
    return path


def network_run(persons: int, directory: Path, repeats: int) -> dict:
    from mercia.federation.demo import prepare_hub
    from mercia.federation.region import NodeStore, ScaledNetwork, build_scaled_network

    os.environ["MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS"] = "1"
    saved = directory / "network.json"   # a network kept by --keep: timed again without building it again
    if saved.exists() and json.loads(saved.read_text())["build"]["persons"] == persons:
        kept = json.loads(saved.read_text())
        built = ScaledNetwork(kept["single"], [NodeStore(org, url, Path(key)) for org, url, key in kept["nodes"]],
                              kept["build"]["persons_per_node"], kept["build"]["persons_at_two_or_more_organisations"],
                              persons)
        build = {**kept["build"], "reused_from": str(directory)}
        build["person_tokens_rebuilt"] = bring_person_tokens_up_to_date(built)
    else:
        began = time.perf_counter()
        built = build_scaled_network(directory, persons, SEED, os.urandom(32).hex().encode())
        build = {"persons": persons, "seconds": round(time.perf_counter() - began, 1),
                 "persons_per_node": built.persons_per_node, "person_records": sum(built.persons_per_node.values()),
                 "persons_at_two_or_more_organisations": built.seen_by_two_or_more,
                 "share_at_two_or_more": round(built.seen_by_two_or_more / persons, 4), "load_average_1m": load()}
        saved.write_text(json.dumps({"single": built.single, "build": build,
                                     "nodes": [(n.org, n.url, str(n.key_file)) for n in built.nodes]}))
    print(json.dumps({"persons": persons, "build": build}), flush=True)
    single = single_store(built.single, repeats)
    print(json.dumps({"single_store": single}), flush=True)
    net, project_id, token = prepare_hub(directory, built.nodes, policy="none", allow_raw=True,
                                         differencing_limit=100, deadline=600)
    parts = in_process(net, project_id, repeats)
    print(json.dumps({"in_process": parts}), flush=True)
    wall = processes(net, token, project_id, repeats)
    print(json.dumps({"end_to_end": wall}), flush=True)
    truth = single["persons_in_cohort"]
    return {"persons": persons, "nodes": len(built.nodes), "build": build, "single_store": single,
            "in_process": parts, "end_to_end": wall,
            "deduplicated_total_equals_single_store": (wall["answer"]["deduplicated_total"] == truth
                                                       and parts["answer"]["deduplicated_total"] == truth),
            "ratio_end_to_end_to_single_cold": round(wall["median_seconds"] / single["cold_seconds"], 2),
            "ratio_end_to_end_to_single_warm": round(wall["median_seconds"] / single["warm_seconds"], 2),
            # like for like on a shared machine: CPU seconds of every process of the network per question
            # against the single store's (cold: the first run after opening, as a node's first question)
            "ratio_cpu_all_processes_to_single_cold": round(wall["median_cpu_seconds_all_processes"]
                                                            / single["cold_cpu_seconds"], 2),
            "ratio_cpu_all_processes_to_single_warm": round(wall["median_cpu_seconds_all_processes"]
                                                            / single["warm_cpu_seconds"], 2),
            "targets": {"end_to_end_within_2x_single_store_cold": wall["median_seconds"] <= 2 * single["cold_seconds"],
                        "end_to_end_within_2x_single_store_warm": wall["median_seconds"] <= 2 * single["warm_seconds"],
                        "hub_overhead_within_200ms": parts["hub_seconds"] <= 0.2,
                        "hub_overhead_within_200ms_cpu": parts["hub_cpu_seconds"] <= 0.2}}


def bring_person_tokens_up_to_date(built) -> dict:
    """A network kept from an earlier version has no per-person token table yet: build it once, as a node
    does on its first question, so that no timed question pays for it.  Seconds per node rebuilt."""
    from mercia.cdm.extensions import ensure_extension_tables
    from mercia.federation.tokens import person_tokens_current, refresh_person_tokens

    rebuilt = {}
    for node in built.nodes:
        with node.open() as store:
            ensure_extension_tables(store)
            if not person_tokens_current(store):
                began = time.perf_counter()
                refresh_person_tokens(store)
                rebuilt[node.org] = round(time.perf_counter() - began, 3)
    return rebuilt


def region_accuracy(persons: int, directory: Path) -> dict:
    """The de-duplicated total against the truth with identity errors: a synthetic region (2% identity
    errors: wrong, missing NHS numbers, typos) ingested per organisation, one question in process."""
    from mercia.federation.demo import prepare_network
    from mercia.federation.region import reference_cohort, true_distinct_persons

    os.environ["MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS"] = "1"
    began = time.perf_counter()
    net, project_id, _ = prepare_network(directory, persons, SEED, policy="none", allow_raw=True,
                                         differencing_limit=100)
    build = time.perf_counter() - began
    parts = in_process(net, project_id)
    truth = true_distinct_persons(directory / "region", net.nodes, reference_cohort())
    total = parts["answer"]["deduplicated_total"]
    return {"persons": persons, "nodes": len(net.nodes), "build_seconds": round(build, 1),
            "deduplicated_total": total, "naive_sum": parts["answer"]["naive_sum"],
            "true_distinct_persons": truth["distinct"], "relative_error": round(total / truth["distinct"] - 1, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", default="1000000,100000", help="network sizes, comma-separated")
    parser.add_argument("--tokens", type=int, default=5_400_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="build networks under this directory and keep them; a later run with the "
                                           "same --keep times them again without building")
    parser.add_argument("--region", type=int, default=0,
                        help="persons in a region with identity errors, to score the total against the truth "
                             "(slow: every extract is ingested; 0 = skip)")
    parser.add_argument("--child-token-union", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_token_union:
        token_union_child(args.child_token_union)
        return
    started = datetime.now(UTC)
    results = {"benchmark": "federation", "python": platform.python_version(), "platform": platform.platform(),
               "cpus": os.cpu_count(), "run_at": f"{started:%Y-%m-%dT%H:%M:%SZ}", "seed": SEED,
               "load_average_1m_at_start": load(), "networks": []}
    if args.tokens:
        results["token_union"] = token_union(args.tokens)
        print(json.dumps({"token_union": results["token_union"]}), flush=True)
    for persons in [int(p) for p in args.persons.split(",") if p]:
        if args.keep:
            directory = Path(args.keep) / f"network-{persons}"
            directory.mkdir(parents=True, exist_ok=True)
            results["networks"].append(network_run(persons, directory, args.repeats))
        else:
            with tempfile.TemporaryDirectory(prefix="federation-bench-") as tmp:
                results["networks"].append(network_run(persons, Path(tmp), args.repeats))
    if args.region:
        with tempfile.TemporaryDirectory(prefix="federation-region-") as tmp:
            results["region_accuracy"] = region_accuracy(args.region, Path(tmp))
        print(json.dumps({"region_accuracy": results["region_accuracy"]}), flush=True)
    out = RESULTS / f"federation-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
