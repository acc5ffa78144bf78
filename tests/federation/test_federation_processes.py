"""A real hub and one node process per organisation on 127.0.0.1: the answer, a killed node, a
restarted hub that its nodes re-join by themselves, and nodes that never listen on a port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mercia.federation.demo import ask
from mercia.federation.region import reference_cohort, true_distinct_persons

pytestmark = pytest.mark.slow


def listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" or table.endswith(("udp", "udp6")):   # TCP LISTEN, or any bound UDP
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_hub_and_node_processes(network, tmp_path):
    policy = tmp_path / "node-policy.yaml"
    policy.write_text("auto: [feasibility]\nallow_raw: true\n")
    # counted before the nodes start: a running node holds its DuckDB store while questions keep coming
    truth = true_distinct_persons(network.directory / "region", network.nodes, reference_cohort())
    try:
        network.start_hub()
        for node in network.nodes:
            network.start_node(node, policy=policy, wait=1.0)
        first = ask(network, network.token, network.project_id, reference_cohort(), timeout=180,
                    deadline_seconds=150)   # the first answer waits for every node process to start
        assert first["status"] == "complete", first
        assert first["deduplicated_total"] == truth["distinct"] < first["naive_sum"] == truth["naive_sum"]

        hub_pid = network.processes["hub"].pid
        assert socket_inodes(hub_pid) & listening_inodes()                       # the check can see a listener
        share = max(1, len(os.sched_getaffinity(0)) // len(network.nodes))   # the nodes share this machine's cores
        for node in network.nodes:
            pid = network.processes[node.org].pid
            assert not socket_inodes(pid) & listening_inodes(), f"node {node.org} listens on a port"
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if "MERCIA_DUCKDB_THREADS" not in os.environ:
                assert f"MERCIA_DUCKDB_THREADS={share}".encode() in environment

        killed = network.nodes[0].org
        network.stop_process(killed)
        # the deadline is all this question waits for (the stopped node never answers); the four others,
        # warm after the first question, answer a small region within a second or two even on a loaded machine
        partial = ask(network, network.token, network.project_id, reference_cohort(), timeout=180,
                      deadline_seconds=12)
        assert partial["status"] == "partial" and partial["missing"] == [killed]
        assert {n["org"]: n["status"] for n in partial["nodes"]}[killed] == "timed_out"

        network.start_node(network.nodes[0], policy=policy, wait=1.0)
        network.stop_process("hub")                                              # the hub goes away...
        network.start_hub()                                                      # ...and comes back
        again = ask(network, network.token, network.project_id, reference_cohort(), timeout=180,
                    deadline_seconds=150)
        assert again["status"] == "complete", again
        assert again["deduplicated_total"] == first["deduplicated_total"]
    finally:
        network.stop()
