"""One small synthetic federated network per test session (region, node stores, keys), shared by the
in-process and the multi-process tests; every test makes its own hub store."""

from __future__ import annotations

import pytest

from mercia.federation.demo import approved_project, prepare_network
from mercia.federation.hub import Hub, HubSettings
from mercia.federation.hubapp import create_hub_app
from tests.conftest import drop_store, open_store


@pytest.fixture(scope="session")
def network(tmp_path_factory):
    """A region of 400 people with no identity errors (every NHS number right), one node per organisation."""
    directory = tmp_path_factory.mktemp("federation")
    net, project_id, token = prepare_network(directory, persons=400, seed=5, error_rate=0.0, allow_raw=True,
                                             policy="none", deadline=20)
    net.project_id, net.token = project_id, token   # the prepared hub store's approved project
    return net


def public_key(net, org: str) -> str:
    return net.keys[org].with_name(net.keys[org].name + ".pub").read_text()


@pytest.fixture
def hub_factory(network, tmp_path):
    """make(engine="duckdb", **settings) -> (hub, app, project_id, token): a fresh hub store on ``engine``
    with every node enrolled."""
    made = []

    def make(engine: str = "duckdb", **settings):
        directory = tmp_path / f"hub{len(made)}"
        directory.mkdir()
        store = open_store(engine, directory)
        hub = Hub(store, HubSettings(**{"allow_raw": True, "policy": "none", **settings}))
        for node in network.nodes:
            hub.enrol(node.org, f"Organisation {node.org}", public_key(network, node.org), actor="test")
        project_id, token, _ = approved_project(hub)
        made.append(store)
        return hub, create_hub_app(hub), project_id, token

    yield make
    for store in made:
        drop_store(store)
