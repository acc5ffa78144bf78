"""With identity errors (2% of records: mistyped or missing NHS numbers, name typos, shifted dates),
the de-duplicated total stays within 1% of the true number of distinct persons."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mercia.cdm import Store
from mercia.federation.demo import approved_project, prepare_network
from mercia.federation.hub import Hub, HubSettings
from mercia.federation.hubapp import create_hub_app
from mercia.federation.node import NodeAgent, NodePolicy
from mercia.federation.region import reference_cohort, true_distinct_persons

from .conftest import public_key
from .test_federation_hub import answer, ask

pytestmark = pytest.mark.slow


def test_deduplicated_total_is_within_one_percent_on_a_messy_region(tmp_path):
    net, _, _ = prepare_network(tmp_path, persons=3000, seed=8, error_rate=0.02, allow_raw=True, policy="none")
    with Store(str(tmp_path / "hub-test.duckdb")) as store:
        hub = Hub(store, HubSettings(policy="none", allow_raw=True))
        for node in net.nodes:
            hub.enrol(node.org, node.org, public_key(net, node.org), actor="test")
        project_id, token, _ = approved_project(hub)
        client = TestClient(create_hub_app(hub))
        query_id = ask(client, token, project_id).json()["query_id"]
        for node in net.nodes:
            NodeAgent(node.url, node.org, "http://testserver", net.keys[node.org], NodePolicy(allow_raw=True),
                      wait=0, client=client).step()
        result = answer(client, token, query_id)
    truth = true_distinct_persons(tmp_path / "region", net.nodes, reference_cohort())
    assert result["status"] == "complete"
    assert result["naive_sum"] == truth["naive_sum"] > truth["distinct"]
    assert abs(result["deduplicated_total"] - truth["distinct"]) <= 0.01 * truth["distinct"], (result, truth)
