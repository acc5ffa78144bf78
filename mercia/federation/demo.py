"""``mercia federation demo`` and the test/benchmark harness: a real hub and real node processes on
127.0.0.1, on a synthetic region whose ground truth stays on disk for checking."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from mercia.cdm import Store
from mercia.federation.hub import Hub
from mercia.federation.hubapp import MAX_WAIT, PREFIX
from mercia.federation.region import NodeStore, build_node_stores, reference_cohort
from mercia.federation.signing import generate_keypair
from mercia.governance.model import Role

DEMO_PRACTICES, DEMO_TRUSTS = 3, 2
MERCIA = [sys.executable, "-c", "from mercia.cli import app; app()"]   # the CLI in a child process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def approved_project(hub: Hub, title: str = "Federated feasibility", password: str | None = None
                     ) -> tuple[int, str, Any]:
    """A researcher, an approved project with the federated permission, and the researcher's API token."""
    gov = hub.gov
    password = password or secrets.token_urlsafe(16)
    researcher = gov.create_user(f"researcher-{secrets.token_hex(3)}", "Researcher", password, [(Role.RESEARCHER, "")])
    lead = gov.create_user(f"lead-{secrets.token_hex(3)}", "Pillar lead", password, [(Role.PILLAR_LEAD, "chronic")])
    officer = gov.create_user(f"officer-{secrets.token_hex(3)}", "Officer", password, [(Role.GOVERNANCE_OFFICER, "")])
    project = gov.create_project(researcher, title=title, pillar="chronic", purpose="How many patients could take part?",
                                 scope_domains=["person", "condition_occurrence", "measurement"],
                                 expires_on=str(date.today() + timedelta(days=365)),
                                 lay_summary="We want to know how many people in the region could take part in a study.",
                                 purpose_category="trial_feasibility", lead_organisation="Midlands research network")
    gov.submit(researcher, project.id)
    gov.decide(lead, project.id, "approve")
    gov.decide(officer, project.id, "approve")
    hub.allow_project(project.id, actor="demo")
    _, token = gov.create_token(researcher, "federation")
    return project.id, token, researcher


@dataclass
class Network:
    """A running hub and node processes; stop() ends exactly the processes it started."""
    directory: Path
    hub_db: str
    hub_url: str
    nodes: list[NodeStore]
    keys: dict[str, Path]
    hub_args: list[str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_hub(self) -> None:
        log = open(self.directory / "logs" / "hub.log", "ab")
        self.processes["hub"] = subprocess.Popen(self.hub_args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_hub(self.hub_url, self.processes["hub"])

    def start_node(self, node: NodeStore, policy: Path | None = None, wait: float = 2.0) -> None:
        args = [*MERCIA, "node", "run", "--db", node.url, "--org", node.org,
                "--hub", self.hub_url, "--key", str(self.keys[node.org]), "--wait", str(wait)]
        if policy:
            args += ["--policy", str(policy)]
        log = open(self.directory / "logs" / f"node-{node.org}.log", "ab")
        self.processes[node.org] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                    env=self.node_environment())

    def node_environment(self) -> dict[str, str]:
        """The nodes of a demo share this machine's cores (a real node has its organisation's machine):
        each node's store gets an equal share of DuckDB threads, unless ``MERCIA_DUCKDB_THREADS`` is set.
        Ten threads on two cores would spend CPU on switching and waiting instead of on the cohort."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return {"MERCIA_DUCKDB_THREADS": str(max(1, cores // len(self.nodes))), **os.environ}

    def stop_process(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_process(name)


def wait_for_hub(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the hub exited with code {process.returncode} (see its log)")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the hub at {url} did not start within {timeout:.0f} s")


def prepare_network(directory: Path | str, persons: int, seed: int, policy: str = "opensafely",
                    allow_raw: bool = False, deadline: float = 60.0, differencing_limit: int = 7,
                    progress: Callable[[str], None] | None = None, error_rate: float = 0.02) -> tuple[Network, int, str]:
    """Region, node stores, keys, an enrolled hub store and an approved project; nothing running yet."""
    from mercia.synth.region import generate_region

    say = progress or (lambda _: None)
    directory = Path(directory).resolve()
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    say(f"Generating a synthetic region of {persons:,} people (seed {seed})...")
    generate_region(directory / "region", persons=persons, seed=seed, error_rate=error_rate,
                    practices=DEMO_PRACTICES, trusts=DEMO_TRUSTS)
    network_key = directory / "keys" / "network.key"
    network_key.parent.mkdir(parents=True, exist_ok=True)
    network_key.write_text(secrets.token_hex(32))
    network_key.chmod(0o600)
    say("Ingesting each organisation's extract into its own node store...")
    nodes = build_node_stores(directory / "region", directory, network_key.read_text().encode())
    return prepare_hub(directory, nodes, policy, allow_raw, deadline, differencing_limit)


def prepare_hub(directory: Path, nodes: list[NodeStore], policy: str = "opensafely", allow_raw: bool = False,
                deadline: float = 60.0, differencing_limit: int = 7) -> tuple[Network, int, str]:
    """A hub store with ``nodes`` enrolled (a key pair each under ``directory/keys``) and an approved project;
    the hub's command line on a free port.  Nothing running yet."""
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    hub_db = str(directory / "hub.duckdb")
    if Path(hub_db).exists():
        Path(hub_db).unlink()
    keys = {}
    with Store(hub_db) as store:
        hub = Hub(store)
        for node in nodes:
            keys[node.org], public = generate_keypair(directory / "keys" / f"{node.org}.node")
            hub.enrol(node.org, f"Synthetic organisation {node.org}", public.read_text(), actor="demo")
        project_id, token, _ = approved_project(hub)
    port = free_port()
    hub_args = [*MERCIA, "hub", "serve", "--db", hub_db, "--port", str(port),
                "--policy", policy, "--deadline", str(deadline), "--differencing-limit", str(differencing_limit)]
    if allow_raw:
        hub_args.append("--allow-raw-counts")
    net = Network(directory, hub_db, f"http://127.0.0.1:{port}", nodes, keys, hub_args)
    return net, project_id, token


@contextmanager
def running(net: Network, node_policy: Path | None = None) -> Iterator[Network]:
    try:
        net.start_hub()
        for node in net.nodes:
            net.start_node(node, node_policy)
        yield net
    finally:
        net.stop()


def ask(net: Network, token: str, project_id: int, cohort: dict, timeout: float = 120.0,
        deadline_seconds: float | None = None, policy: str | None = None) -> dict[str, Any]:
    """Submit a feasibility question and wait for its answer (complete or partial)."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {"project_id": project_id, "query": {"kind": "feasibility", "version": 1, "cohort": cohort},
            "deadline_seconds": deadline_seconds, "policy": policy}
    with httpx.Client(base_url=net.hub_url, headers=headers, timeout=60) as client:
        submitted = client.post(f"{PREFIX}/queries", json=body)
        submitted.raise_for_status()
        return _wait(client, submitted.json()["query_id"], timeout)


def wait_answer(net: Network, token: str, query_id: int, timeout: float = 120.0) -> dict[str, Any]:
    with httpx.Client(base_url=net.hub_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        return _wait(client, query_id, timeout)


def _wait(client: httpx.Client, query_id: int, timeout: float) -> dict[str, Any]:
    """Long-poll the answer until the question is no longer running (or ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while True:
        wait = max(0.0, min(MAX_WAIT, end - time.monotonic()))
        answer = client.get(f"{PREFIX}/queries/{query_id}", params={"wait": wait}).json()
        if answer["status"] != "running" or time.monotonic() >= end:
            return answer


def run_demo(persons: int, seed: int, directory: Path | str, cohort_file: Path | None = None,
             policy: str = "opensafely", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _: None)
    cohort = orjson.loads(Path(cohort_file).read_bytes()) if cohort_file else reference_cohort()
    os.environ.setdefault("MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS", "1")
    net, project_id, token = prepare_network(directory, persons, seed, policy=policy, progress=say)
    say(f"Starting a hub on {net.hub_url} and {len(net.nodes)} node processes...")
    with running(net):
        began = time.perf_counter()
        answer = ask(net, token, project_id, cohort)
        answer["seconds"] = round(time.perf_counter() - began, 3)
    answer["region"] = str(Path(directory).resolve() / "region")
    return answer
