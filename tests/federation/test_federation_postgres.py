"""A node whose store is PostgreSQL answers in the same network, and the total still equals the truth."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from mercia.cohorts.model import CohortExpression
from mercia.cohorts.runner import run_cohort
from mercia.federation.hubapp import PREFIX
from mercia.federation.messages import KINDS
from mercia.federation.node import NodePolicy
from mercia.federation.region import (
    NodeStore, load_node, organisation_extracts, reference_cohort, true_distinct_persons,
)
from mercia.ingest.region import region_geography
from tests.conftest import postgres_url

from .test_federation_hub import agents, answer, ask

TWIN_COHORT = 1

pytestmark = pytest.mark.slow


def test_a_postgresql_node_store_answers_like_its_duckdb_twin(network, hub_factory):
    url = postgres_url()
    twin = next(n for n in network.nodes if n.org.startswith("R9A"))
    node = NodeStore(twin.org, url, twin.key_file, schema=f"t_{uuid.uuid4().hex[:12]}")
    try:
        load_node(node, organisation_extracts(network.directory / "region")[twin.org],
                  (network.directory / "keys" / "network.key").read_text().encode(),
                  region_geography(network.directory / "region"))
        nodes = [node if n.org == twin.org else n for n in network.nodes]
        hub, app, project_id, token = hub_factory()
        client = TestClient(app)
        query_id = ask(client, token, project_id).json()["query_id"]
        for agent in agents(network, client, nodes=nodes).values():
            assert agent.step() == 1
        result = answer(client, token, query_id)
        truth = true_distinct_persons(network.directory / "region", nodes, reference_cohort())
        assert result["status"] == "complete"
        assert result["deduplicated_total"] == truth["distinct"]
        with twin.open() as duck, node.open() as pg:
            for store in (duck, pg):   # the nodes ran it under scratch ids and removed the rows
                run_cohort(store, CohortExpression.from_json(reference_cohort()), TWIN_COHORT)
            counts = [s.query_one("SELECT count(DISTINCT subject_id) FROM cohort WHERE cohort_definition_id = ?",
                                  [TWIN_COHORT]) for s in (duck, pg)]
        assert counts[0] == counts[1] == {n["org"]: n["count"] for n in result["nodes"]}[twin.org] > 0
        # every question kind: the network with the PostgreSQL twin gives the all-DuckDB network's cells
        everything = {n.org: NodePolicy(auto=set(KINDS), approve=set(), allow_raw=True) for n in network.nodes}
        for query in ({"kind": "feasibility", "strata": ["imd_quintile", "age_band"]},
                      {"kind": "trial_feasibility", "start_month": "2018-01", "end_month": "2023-12"},
                      {"kind": "characterisation", "domains": ["condition", "drug"]}):
            cells = []
            for members in (nodes, network.nodes):
                hub, app, project_id, token = hub_factory(differencing_limit=100)
                client = TestClient(app)
                body = {"project_id": project_id, "query": {"cohort": reference_cohort(), **query}}
                query_id = client.post(f"{PREFIX}/queries", json=body,
                                       headers={"Authorization": f"Bearer {token}"}).json()["query_id"]
                for agent in agents(network, client, everything, nodes=members).values():
                    assert agent.step() == 1
                cells.append({(c["cell"], c["deduplicated"]) for c in answer(client, token, query_id)["cells"]})
            assert cells[0] == cells[1] and len(cells[0]) > 3, query["kind"]
    finally:
        with node.open() as pg:
            pg.execute(f'DROP SCHEMA IF EXISTS "{node.schema}" CASCADE')


def test_a_hub_whose_store_is_postgresql_runs_rounds_like_duckdb(network, hub_factory):
    """The hub's statements on PostgreSQL: a question answered by every node equals the truth; a refresh
    while a node works supersedes its open task (neither handed out again nor accepted)."""
    hub, app, project_id, token = hub_factory("postgres")
    assert hub.store.dialect == "postgres"
    client = TestClient(app)
    nodes = agents(network, client)
    query_id = ask(client, token, project_id).json()["query_id"]
    for agent in nodes.values():
        assert agent.step() == 1
    result = answer(client, token, query_id)
    truth = true_distinct_persons(network.directory / "region", network.nodes, reference_cohort())
    assert result["status"] == "complete" and result["deduplicated_total"] == truth["distinct"]
    agent = nodes[network.nodes[0].org]
    query_id = ask(client, token, project_id).json()["query_id"]
    stale = agent.handle(agent.fetch()[0])
    assert client.post(f"{PREFIX}/queries/{query_id}/refresh",
                       headers={"Authorization": f"Bearer {token}"}).json()["round"] == 2
    assert [t.query_id for t in agent.fetch()] == [query_id]
    refused = agent.post(stale)
    assert refused.status_code == 403 and "superseded" in refused.json()["detail"]
