"""A Mercia server acting as the hub: the federation routes in the main API (with the server's own
sign-in and error mapping) and the researcher's and administrator's web pages."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from mercia.cdm import Store
from mercia.federation.demo import approved_project
from mercia.federation.disclosure import federated_policy
from mercia.federation.node import NodeAgent, NodePolicy
from mercia.federation.region import reference_cohort, true_distinct_persons
from mercia.governance import Role
from mercia.services.cohorts import create_cohort
from mercia.services.federation import hub_of
from mercia.services.state import ServerOptions
from mercia.web.app import create_app

from .conftest import public_key

PASSWORD = "federated-questions-9"
API = "/api/v1/federation"


@pytest.fixture
def server(network, tmp_path):
    """The main app on its own store, every node enrolled, an approved project with the permission,
    a saved cohort; yields (app, researcher token, project id, cohort id, researcher's username)."""
    store = Store(str(tmp_path / "server.duckdb"))
    app = create_app(store, ServerOptions(secure_cookies=False, job_workers=1))
    state = app.state.mercia
    hub = hub_of(state)
    for node in network.nodes:
        hub.enrol(node.org, f"Organisation {node.org}", public_key(network, node.org), actor="test")
    project_id, token, researcher = approved_project(hub, "Diabetes across the region", password=PASSWORD)
    cohort = create_cohort(state, researcher, project_id, "Type 2 diabetes or HbA1c", "", reference_cohort())
    yield app, token, project_id, cohort["id"], researcher.username
    state.jobs.shutdown()
    store.close()


def nodes_of(network, client):
    return [NodeAgent(n.url, n.org, "http://testserver", network.keys[n.org], NodePolicy(), wait=0, client=client)
            for n in network.nodes]


def test_the_server_answers_a_federated_question_through_its_own_api(network, server):
    app, token, project_id, _, _ = server
    client = TestClient(app)
    bearer = {"Authorization": f"Bearer {token}"}
    asked = client.post(f"{API}/queries", headers=bearer,
                        json={"project_id": project_id, "query": {"kind": "feasibility", "cohort": reference_cohort()}})
    assert asked.status_code == 202, asked.text
    for agent in nodes_of(network, client):
        assert agent.step() == 1
    answer = client.get(f"{API}/queries/{asked.json()['query_id']}", headers=bearer).json()
    truth = true_distinct_persons(network.directory / "region", network.nodes, reference_cohort())
    assert answer["status"] == "complete"
    assert answer["deduplicated_total"] == federated_policy("opensafely").publish(truth["distinct"], "")
    listed = client.get(f"{API}/queries", headers=bearer).json()
    assert [q["query_id"] for q in listed] == [asked.json()["query_id"]]


def test_the_servers_federation_routes_refuse_whoever_may_not_use_them(network, server):
    app, token, project_id, _, _ = server
    client = TestClient(app)
    body = {"project_id": project_id, "query": {"kind": "feasibility", "cohort": reference_cohort()}}
    assert client.post(f"{API}/queries", json=body).status_code == 401
    assert client.get(f"{API}/queries").status_code == 401
    assert client.get(f"{API}/node/work").status_code == 403                      # unsigned node request
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get(f"{API}/nodes", headers=bearer).status_code == 403           # administrators only
    assert client.post(f"{API}/projects/{project_id}/permission", headers=bearer).status_code == 403
    gov = app.state.mercia.gov
    outsider = gov.create_user("fed-outsider", "Outsider", PASSWORD, [(Role.RESEARCHER, "")])
    _, outsider_token = gov.create_token(outsider, "t")
    refused = client.post(f"{API}/queries", json=body, headers={"Authorization": f"Bearer {outsider_token}"})
    assert refused.status_code in (403, 404)
    assert client.get(f"{API}/queries", headers={"Authorization": f"Bearer {outsider_token}"}).json() == []


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_a_researcher_asks_from_a_saved_cohort_on_the_web_and_reads_the_answer(network, server):
    app, _, project_id, cohort_id, username = server
    client = TestClient(app, base_url="http://127.0.0.1")
    page = client.get("/signin")
    signed = client.post("/signin", data={"username": username, "password": PASSWORD,
                                          "csrf_token": csrf_of(page.text), "next": "/"}, follow_redirects=False)
    assert signed.status_code == 303
    page = client.get("/federation")
    assert page.status_code == 200 and "7 organisations enrolled" in page.text
    assert 'checked' not in page.text                    # no question kind is chosen for the researcher
    csrf = csrf_of(page.text)
    missing = client.post("/federation", data={"csrf_token": csrf, "cohort": f"{project_id}:{cohort_id}"})
    assert missing.status_code == 400 and "choose what to ask" in missing.text
    asked = client.post("/federation", data={"csrf_token": csrf, "cohort": f"{project_id}:{cohort_id}",
                                             "kind": "feasibility", "stratum_sex": "yes"}, follow_redirects=False)
    assert asked.status_code == 303
    location = asked.headers["location"].split("?")[0]
    assert "Waiting for the organisations" in client.get(location).text
    for agent in nodes_of(network, TestClient(app)):
        agent.step()
    answer = client.get(location).text
    assert "People (each counted once)" in answer and "sex=female" in answer and "complete" in answer
    assert client.get("/federation/nodes").status_code == 403         # node health is for administrators
