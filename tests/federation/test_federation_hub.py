"""Hub and nodes in one process (ASGI test client, nodes stepped by hand): de-duplication against the
region's ground truth, signatures, replay, late results, governance refusals, budget, local control."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from datetime import timedelta

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from mercia.cdm import Store
from mercia.federation.hubapp import PREFIX
from mercia.federation.messages import (MEMBERS, PROTOCOL_HEADER, PROTOCOL_VERSION, RESULT_MEDIA_TYPE, FeasibilityQuery,
                                        NodeResult)
from mercia.federation.node import (NODE_DDL, NodeAgent, NodePolicy, decide, node_audit, open_node_store, pending,
                                    set_paused)
from mercia.federation.region import reference_cohort, true_distinct_persons
from mercia.federation.signing import generate_keypair, sign
from mercia.federation.tokens import new_salt
from mercia.governance.model import Role

from .conftest import public_key


def agents(network, client, policies=None, nodes=None):
    return {n.org: NodeAgent(n.url, n.org, "http://testserver", network.keys[n.org],
                             (policies or {}).get(n.org, NodePolicy(allow_raw=True)), schema=n.schema, wait=0, client=client)
            for n in (nodes or network.nodes)}


def ask(client, token, project_id, cohort=None, **extra):
    return client.post(f"{PREFIX}/queries", headers={"Authorization": f"Bearer {token}"},
                       json={"project_id": project_id, "query": {"kind": "feasibility", "version": 1,
                                                                 "cohort": cohort or reference_cohort()}, **extra})


def answer(client, token, query_id):
    return client.get(f"{PREFIX}/queries/{query_id}", headers={"Authorization": f"Bearer {token}"}).json()


def test_deduplicated_total_equals_the_true_number_of_distinct_persons(network, hub_factory):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    query_id = ask(client, token, project_id).json()["query_id"]
    for agent in agents(network, client).values():
        assert agent.step() == 1
    result = answer(client, token, query_id)
    truth = true_distinct_persons(network.directory / "region", network.nodes, reference_cohort())
    assert result["status"] == "complete" and result["missing"] == []
    assert {n["org"]: n["count"] for n in result["nodes"]} == truth["per_site"]
    assert result["deduplicated_total"] == truth["distinct"]
    assert result["naive_sum"] == truth["naive_sum"] > truth["distinct"]   # persons are shared between sites
    assert result["seen_at_two_or_more_sites"] > 0
    assert all(n["last_load"] for n in result["nodes"])


def test_no_token_pseudonym_or_row_reaches_the_hub(network, hub_factory, tmp_path):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    query_id = ask(client, token, project_id).json()["query_id"]
    sent = []
    for agent in agents(network, client).values():
        original = agent.post
        agent.post = lambda result, original=original: (
            sent.extend(result.secrets()), original(result))[1]
        agent.step()
    response = client.get(f"{PREFIX}/queries/{query_id}", headers={"Authorization": f"Bearer {token}"}).text
    secrets_ = set(sent)
    for node in network.nodes:
        with Store(node.url) as store:
            secrets_ |= {r[0] for r in store.query("SELECT token FROM mercia_network_token")}
            secrets_ |= {t for row in store.query("SELECT nhs, demographic FROM mercia_person_token") for t in row if t}
            secrets_ |= {r[0] for r in store.query("SELECT source_pseudonym FROM mercia_person_link")}
            secrets_ |= {r[0] for r in store.query("SELECT nhs_pseudonym FROM mercia_person_link "
                                                   "WHERE nhs_pseudonym IS NOT NULL")}
    assert len(sent) > 100 and len(secrets_) > 1000
    hub_text = [response]
    for (table,) in hub.store.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"):
        hub_text += [str(row) for row in hub.store.query(f'SELECT * FROM "{table}"')]
    blob = "\n".join(hub_text)
    leaked = [s for s in secrets_ if s in blob]
    assert leaked == []
    assert not any(s[:32] in blob for s in sent)


def test_unsigned_wrongly_signed_replayed_and_unknown_requests_are_refused(network, hub_factory, tmp_path):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    org = network.nodes[0].org
    agent = agents(network, client)[org]
    query_id = ask(client, token, project_id).json()["query_id"]
    path = f"{PREFIX}/node/work"
    assert client.get(path).status_code == 403                               # unsigned
    headers = agent._headers("GET", path, b"")
    assert client.get(path, headers={**headers, "X-Mercia-Signature": ""}).status_code == 403
    assert client.get(path, headers=headers).status_code == 200
    assert client.get(path, headers=headers).status_code == 403              # the same request again: replay
    stranger, _ = generate_keypair(tmp_path / "stranger")
    impostor = NodeAgent(network.nodes[0].url, org, "http://testserver", stranger, wait=0, client=client)
    assert client.get(path, headers=impostor._headers("GET", path, b"")).status_code == 403   # wrong key
    unknown = NodeAgent(network.nodes[0].url, "ZZZ99", "http://testserver", stranger, wait=0, client=client)
    refused = client.get(path, headers=unknown._headers("GET", path, b""))
    assert refused.status_code == 403 and "unknown node" in refused.json()["detail"]
    stale = agent._headers("GET", path, b"")
    stale["X-Mercia-Time"] = f"{time.time() - 3600:.6f}"
    assert client.get(path, headers=stale).status_code == 403
    # a result with a forged nonce, then the genuine one, then the genuine one again (replayed)
    task = agent.fetch()[0]
    result = agent.handle(task)
    forged = result.model_copy(update={"nonce": "0" * 32})
    assert agent.post(forged).status_code == 403
    assert agent.post(result).status_code == 200
    again = agent.post(result)
    assert again.status_code == 403 and "already answered" in again.json()["detail"]
    actions = [e["action"] for e in hub.gov.audit.search(action="federation.reject")]
    assert len(actions) == 2
    assert answer(client, token, query_id)["status"] == "running"


def test_a_node_request_longer_than_the_bound_is_refused_before_it_is_read(network, hub_factory, monkeypatch):
    """A body is read before its signature is checked: one over the bound gets 413, declared or streamed."""
    from mercia.federation import hubapp
    monkeypatch.setattr(hubapp, "MAX_NODE_BODY", 1000)
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    agent = agents(network, client)[network.nodes[0].org]
    ask(client, token, project_id)
    result = agent.handle(agent.fetch()[0])
    refused = agent.post(result)                        # a real, signed result, longer than 1,000 bytes
    assert refused.status_code == 413 and "at most 1000 bytes" in refused.json()["detail"]
    streamed = client.post(f"{PREFIX}/node/results", content=iter([b"x" * 600, b"x" * 600]))
    assert streamed.status_code == 413
    monkeypatch.setattr(hubapp, "MAX_NODE_BODY", 2**20)
    assert agent.post(result).status_code == 200        # the same result within the bound is taken


@pytest.mark.parametrize("old", [1, 2])
def test_a_node_of_another_protocol_version_is_refused_clearly_and_audited(network, hub_factory, old):
    """Versions 1 and 2 salted tokens otherwise (never equal to this version's) and version 2 sent JSON results:
    their requests are refused with a message saying so, before anything else is looked at, and the refusal
    is in the audit log (once per node per ten minutes, with the number refused since)."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    org = network.nodes[0].org
    agent = agents(network, client)[org]
    path = f"{PREFIX}/node/work"

    def old_node() -> dict[str, str]:
        stamp = f"{time.time():.6f}"
        lines = [org, "GET", path, stamp, hashlib.sha256(b"").hexdigest()]
        if old == 1:   # version 1 neither said its version nor signed it
            return {"X-Mercia-Node": org, "X-Mercia-Time": stamp,
                    "X-Mercia-Signature": sign(agent.key, "\n".join(lines).encode())}
        return {"X-Mercia-Node": org, "X-Mercia-Time": stamp, PROTOCOL_HEADER: "2",
                "X-Mercia-Signature": sign(agent.key, "\n".join(["mercia-federation/2", *lines]).encode())}

    refused = [client.get(path, headers=old_node()) for _ in range(3)]
    assert [r.status_code for r in refused] == [426] * 3
    assert refused[0].json()["detail"] == (f"this hub speaks federation protocol {PROTOCOL_VERSION} and node '{org}' "
                                           f"speaks {old}: upgrade the node's Mercia")
    audited = hub.gov.audit.search(action="federation.reject")
    assert [(e["actor"], e["target"]) for e in audited] == [(f"node:{org} (claimed, unverified)", f"node:{org}")]
    assert "upgrade the node's Mercia" in str(audited[0]) and audited[0]["detail"]["verified"] is False
    newer = agent._headers("GET", path, b"")
    newer[PROTOCOL_HEADER] = str(PROTOCOL_VERSION + 1)
    assert client.get(path, headers=newer).status_code == 426
    assert len(hub.gov.audit.search(action="federation.reject")) == 1   # the same node within ten minutes
    for name in ("ZZZ1", "ZZZ2"):                       # names not enrolled share one record
        assert client.get(path, headers={**old_node(), "X-Mercia-Node": name}).status_code == 426
    assert [e["actor"] for e in hub.gov.audit.search(action="federation.reject")] == [
        "unknown node", f"node:{org} (claimed, unverified)"]
    assert client.get(path, headers=agent._headers("GET", path, b"")).status_code == 200


def opens_elsewhere(url: str) -> bool:
    """Can another process open this DuckDB file (as the data manager's commands and loads must)?"""
    probe = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({url!r}).close()"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def test_the_node_loop_keeps_its_store_open_only_while_questions_keep_coming(network, hub_factory, monkeypatch):
    """...and makes the store's tables at its first opening only (reopening skips ~100 statements)."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    node = network.nodes[0]
    agent = agents(network, client, nodes=[node])[node.org]
    ask(client, token, project_id)
    assert agent.step(keep_open=True) == 1
    assert not opens_elsewhere(node.url)        # held for the next question...
    store_class = type(agent._store)
    assert agent.step(keep_open=True) == 0
    assert opens_elsewhere(node.url)            # ...and let go when none came
    statements = []
    original = store_class.execute
    monkeypatch.setattr(store_class, "execute", lambda self, sql, *rest: (statements.append(sql),
                                                                          original(self, sql, *rest))[1])

    def making() -> list[str]:
        return [s for s in statements if s in NODE_DDL or s.startswith("CREATE TABLE IF NOT EXISTS mercia_audit ")]
    ask(client, token, project_id)
    assert agent.step(keep_open=True) == 1 and making() == []   # opened again, its tables not made again
    agent.release()
    ask(client, token, project_id)
    assert agent.step() == 1 and opens_elsewhere(node.url)   # a step outside the loop never holds it
    assert making() == []
    fresh = agents(network, client, nodes=[node])[node.org]  # another process makes the tables again
    fresh.hold()
    fresh.release()
    assert len(making()) == len(NODE_DDL) + 1


def test_a_late_result_does_not_change_a_returned_answer_and_refresh_asks_again(network, hub_factory, monkeypatch):
    import mercia.federation.hub as hub_module

    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    nodes = agents(network, client)
    query_id = ask(client, token, project_id, deadline_seconds=30).json()["query_id"]
    late_org = network.nodes[-1].org
    tasks = {org: agent.fetch() for org, agent in nodes.items()}
    for org, agent in nodes.items():
        if org != late_org:
            agent.post(agent.handle(tasks[org][0]))
    late = nodes[late_org].handle(tasks[late_org][0])
    real_now = hub_module._now
    monkeypatch.setattr(hub_module, "_now", lambda: real_now() + timedelta(seconds=31))   # the deadline passes
    partial = answer(client, token, query_id)
    assert partial["status"] == "partial" and partial["missing"] == [late_org]
    assert {n["org"]: n["status"] for n in partial["nodes"]}[late_org] == "timed_out"
    refused = nodes[late_org].post(late)
    assert refused.status_code == 403 and "after the deadline" in refused.json()["detail"]
    assert answer(client, token, query_id) == partial                     # unchanged
    refreshed = client.post(f"{PREFIX}/queries/{query_id}/refresh", headers={"Authorization": f"Bearer {token}"})
    assert refreshed.status_code == 200 and refreshed.json()["round"] == 2
    for agent in nodes.values():
        agent.step()
    complete = answer(client, token, query_id)
    assert complete["status"] == "complete" and complete["deduplicated_total"] >= partial["deduplicated_total"]


def test_a_refresh_while_nodes_work_supersedes_the_open_round(network, hub_factory, tmp_path):
    """A task of a round a refresh replaced is neither handed out again nor accepted; a hub store from before
    superseded tasks were marked gets them marked when the hub starts."""
    from mercia.federation.hub import Hub, HubSettings

    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    agent = agents(network, client)[network.nodes[0].org]
    query_id = ask(client, token, project_id).json()["query_id"]
    first = agent.fetch()
    assert [t.query_id for t in first] == [query_id]
    stale = agent.handle(first[0])
    assert client.post(f"{PREFIX}/queries/{query_id}/refresh",
                       headers={"Authorization": f"Bearer {token}"}).json()["round"] == 2
    second = agent.fetch()
    assert [t.task_id for t in second] != [first[0].task_id] and len(second) == 1   # only the new round's
    refused = agent.post(stale)
    assert refused.status_code == 403 and "superseded" in refused.json()["detail"]
    statuses = dict(hub.store.query("SELECT round, status FROM mercia_fed_task WHERE query_id = ? AND org = ?",
                                    [query_id, agent.org]))
    assert statuses == {1: "superseded", 2: "sent"}
    # as a store written before: the old round's task still open; a hub started on it marks it
    hub.store.execute("UPDATE mercia_fed_task SET status = 'sent' WHERE query_id = ? AND round = 1", [query_id])
    Hub(hub.store, HubSettings(allow_raw=True, policy="none"), gov=hub.gov)
    assert hub.store.query_one("SELECT status FROM mercia_fed_task WHERE query_id = ? AND round = 1 AND org = ?",
                               [query_id, agent.org]) == "superseded"


def test_only_members_of_an_approved_permitted_project_may_ask(network, hub_factory):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    assert ask(client, "mrc_not-a-token", project_id).status_code == 401
    assert client.post(f"{PREFIX}/queries", json={}).status_code == 401
    gov = hub.gov
    outsider = gov.create_user("outsider", "Outsider", "a-long-password-1", [(Role.RESEARCHER, "")])
    _, outsider_token = gov.create_token(outsider, "t")
    refused = ask(client, outsider_token, project_id)
    assert refused.status_code == 404        # governance does not even confirm the project exists to outsiders
    draft = gov.create_project(outsider, title="Draft", pillar="chronic", purpose="p")
    assert "draft" in ask(client, outsider_token, draft.id).json()["detail"]
    other_id, other_token, _ = approved_project_without_permission(hub)
    assert "federated-query permission" in ask(client, other_token, other_id).json()["detail"]
    assert len(gov.audit.search(action="federation.refuse")) == 3
    assert client.get(f"{PREFIX}/nodes", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    assert client.post(f"{PREFIX}/nodes", headers={"Authorization": f"Bearer {token}"},
                       json={"org": "X1", "name": "x", "public_key": "x"}).status_code == 403
    assert gov.audit.verify().ok
    query_id = ask(client, token, project_id).json()["query_id"]
    looked = client.get(f"{PREFIX}/queries/{query_id}", headers={"Authorization": f"Bearer {outsider_token}"})
    assert looked.status_code == 404 and not hub.result_news._waiting   # its long poll left nothing waiting


def approved_project_without_permission(hub):
    from mercia.federation.demo import approved_project

    project_id, token, user = approved_project(hub, "Another project")
    hub.store.execute("DELETE FROM mercia_fed_permission WHERE project_id = ?", [project_id])
    return project_id, token, user


def test_budget_refuses_the_next_differencing_question(network, hub_factory):
    hub, app, project_id, token = hub_factory(differencing_limit=2)
    client = TestClient(app)
    base = reference_cohort()
    plus_one = {**base, "InclusionRules": [{"name": "female", "expression": {
        "Type": "ALL", "CriteriaList": [], "Groups": [],
        "DemographicCriteriaList": [{"Gender": [{"CONCEPT_ID": 8532}]}]}}]}
    assert ask(client, token, project_id, base).status_code == 202
    assert ask(client, token, project_id, plus_one).status_code == 202        # differencing 1
    assert ask(client, token, project_id, base).status_code == 202            # differencing 2 (a repeat)
    refused = ask(client, token, project_id, plus_one)
    assert refused.status_code == 429 and "limit is 2" in refused.json()["detail"]
    unrelated = {**base, "ConceptSets": base["ConceptSets"][:1],
                 "PrimaryCriteria": {**base["PrimaryCriteria"], "CriteriaList": base["PrimaryCriteria"]["CriteriaList"][:1]}}
    assert ask(client, token, project_id, unrelated).status_code == 202        # a new question is not differencing


def test_node_local_approval_blocks_until_the_data_manager_approves(network, hub_factory):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    gated = network.nodes[0]
    nodes = agents(network, client, {gated.org: NodePolicy(auto=set(), approve={"feasibility"}, allow_raw=True)})
    query_id = ask(client, token, project_id).json()["query_id"]
    for org, agent in nodes.items():
        assert agent.step() == (0 if org == gated.org else 1)
    assert nodes[gated.org].step() == 0
    assert answer(client, token, query_id)["status"] == "running"
    store = open_node_store(gated.url)
    try:
        waiting = pending(store)
        assert [w["query_id"] for w in waiting] == [query_id]
        decide(store, waiting[0]["task_id"], True, "dm")
    finally:
        store.close()
    assert nodes[gated.org].step() == 1
    result = answer(client, token, query_id)
    assert result["status"] == "complete"


def test_an_approval_holds_only_for_the_question_approved(network, hub_factory):
    """A rebuilt hub numbers its tasks from 1 again: a data manager's yes to the old task 1 must not
    answer the new hub's task 1, a different question."""
    gated = network.nodes[0]
    policy = {gated.org: NodePolicy(auto=set(), approve={"feasibility"}, allow_raw=True)}
    first_hub, first_app, first_project, first_token = hub_factory()
    first = TestClient(first_app)
    ask(first, first_token, first_project)
    assert agents(network, first, policy, [gated])[gated.org].step() == 0
    store = open_node_store(gated.url)
    try:
        task_id = pending(store)[-1]["task_id"]
        decide(store, task_id, True, "dm")
    finally:
        store.close()
    _, second_app, second_project, second_token = hub_factory()
    second = TestClient(second_app)
    other = reference_cohort()
    other = {**other, "ConceptSets": other["ConceptSets"][:1],
             "PrimaryCriteria": {**other["PrimaryCriteria"], "CriteriaList": other["PrimaryCriteria"]["CriteriaList"][:1]}}
    ask(second, second_token, second_project, other)
    assert agents(network, second, policy, [gated])[gated.org].step() == 0
    store = open_node_store(gated.url)
    try:
        assert task_id in [w["task_id"] for w in pending(store)]
    finally:
        store.close()


def test_refused_and_paused_nodes_give_an_explicit_partial_answer(network, hub_factory):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    refusing, paused = network.nodes[0], network.nodes[1]
    nodes = agents(network, client, {refusing.org: NodePolicy(auto=set(), refuse={"feasibility"}, allow_raw=True)})
    store = open_node_store(paused.url)
    set_paused(store, True, "dm")
    store.close()
    try:
        query_id = ask(client, token, project_id).json()["query_id"]
        for agent in nodes.values():
            agent.step()
        result = answer(client, token, query_id)
    finally:
        store = open_node_store(paused.url)
        set_paused(store, False, "dm")
        store.close()
    status = {n["org"]: n["status"] for n in result["nodes"]}
    assert status[refusing.org] == "refused" and status[paused.org] == "paused"
    assert result["status"] == "partial" and sorted(result["missing"]) == sorted([refusing.org, paused.org])


@pytest.mark.parametrize("policy", ["opensafely", "shrine"])
def test_published_counts_pass_the_policy_and_repeats_return_the_same_answer(network, hub_factory, policy):
    hub, app, project_id, token = hub_factory(policy=policy)
    client = TestClient(app)
    nodes = agents(network, client)
    results = []
    for _ in range(2):
        query_id = ask(client, token, project_id).json()["query_id"]
        for agent in nodes.values():
            agent.step()
        results.append(answer(client, token, query_id))
    first, second = results
    published = [first["deduplicated_total"], first["naive_sum"]] + [n["count"] for n in first["nodes"]]
    if policy == "opensafely":
        assert all(c is None or c % 5 == 0 for c in published)
        assert all(c is None or c == 0 or c > 7 for c in published)
    else:
        assert all(c is None or c > 10 for c in published)
    assert first["deduplicated_total"] == second["deduplicated_total"]       # seeded: no averaging away
    assert first["policy"] == policy


def test_raw_counts_need_an_explicit_test_setting(network, hub_factory):
    hub, app, project_id, token = hub_factory(policy="opensafely", allow_raw=False)
    response = ask(TestClient(app), token, project_id, policy="none")
    assert response.status_code == 400 and "ground-truth tests only" in response.json()["detail"]


def test_a_result_for_another_nodes_task_is_refused(network, hub_factory):
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    nodes = agents(network, client)
    ask(client, token, project_id)
    first, second = network.nodes[0].org, network.nodes[1].org
    task = nodes[second].fetch()[0]
    spoof = NodeResult(task_id=task.task_id, org=second, nonce=task.nonce, status="answered", count=1)
    response = nodes[first].post(spoof)
    assert response.status_code == 403 and "signed for" in response.json()["detail"]
    assert public_key(network, first) != public_key(network, second)


def test_a_compressed_result_is_refused_before_it_is_unpacked(network, hub_factory):
    """Compressed buffers could unpack to any size past the body's bound: a signed compressed stream gets 422
    and the task stays open for the node's real result."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    agent = agents(network, client)[network.nodes[0].org]
    ask(client, token, project_id)
    result = agent.handle(agent.fetch()[0])
    sink = pa.BufferOutputStream()
    schema = MEMBERS.with_metadata({b"mercia.node_result": result.model_dump_json().encode()})
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(result.members.replace_schema_metadata(schema.metadata))
    body, path = sink.getvalue().to_pybytes(), f"{PREFIX}/node/results"
    refused = client.post(path, content=body, headers=agent._headers("POST", path, body, RESULT_MEDIA_TYPE))
    assert refused.status_code == 422 and "compressed Arrow IPC" in refused.json()["detail"]
    assert agent.post(result).status_code == 200


def test_a_node_refuses_a_salt_it_answered_another_question_with(network, hub_factory):
    """A hub sending two questions one salt could link their members' salted tokens: the node answers the
    first and refuses the second (it keeps sha256 of each answered question's salt); the same question sent
    again with its salt (re-issued after a hub restart) is answered, and so is the other with a fresh salt."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    node = network.nodes[0]
    agent = agents(network, client, nodes=[node])[node.org]
    ask(client, token, project_id)
    task = agent.fetch()[0]
    assert agent.handle(task).status == "answered"
    assert agent.handle(task.model_copy(update={"nonce": "re-issued"})).status == "answered"
    other = task.model_copy(update={"task_id": task.task_id + 100, "query_id": task.query_id + 100})
    stratified = task.model_copy(update={"query": FeasibilityQuery(cohort=reference_cohort(), strata=["sex"])})
    for reused in (other, stratified):
        refused = agent.handle(reused)
        assert refused.status == "refused" and refused.members.num_rows == 0 and refused.count is None
        assert f"salt of question {task.query_id} again" in refused.reason
    assert agent.handle(other.model_copy(update={"salt": new_salt()})).status == "answered"
    with open_node_store(node.url, node.schema) as store:
        runs = node_audit(store).search(action="node.run", limit=4)
    assert [r["detail"]["status"] for r in runs] == ["answered", "refused", "refused", "answered"]
    assert "cannot be linked" in runs[1]["detail"]["reason"]


def test_a_nodes_key_is_read_once_and_a_new_enrolment_applies_at_once(network, hub_factory, tmp_path, monkeypatch):
    """Every node request is checked against the enrolled key, kept between requests instead of read each
    time; re-enrolling the node with another key refuses the old one from the next request."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    node = network.nodes[0]
    agent = agents(network, client, nodes=[node])[node.org]
    path = f"{PREFIX}/node/work"
    reads = []
    store_class = type(hub.store)
    original = store_class.query_one
    monkeypatch.setattr(store_class, "query_one", lambda self, sql, *rest: (
        reads.append(sql) if "public_key" in sql else None, original(self, sql, *rest))[1])
    for _ in range(3):
        assert client.get(path, params={"wait": 0}, headers=agent._headers("GET", path, b"")).status_code == 200
    assert len(reads) == 1
    rekeyed, public = generate_keypair(tmp_path / "rekeyed.node")
    hub.enrol(node.org, "Re-keyed organisation", public.read_text(), actor="test")
    refused = client.get(path, params={"wait": 0}, headers=agent._headers("GET", path, b""))
    assert refused.status_code == 403 and "enrolled key" in refused.json()["detail"]
    successor = NodeAgent(node.url, node.org, "http://testserver", rekeyed, wait=0, client=client)
    assert client.get(path, params={"wait": 0}, headers=successor._headers("GET", path, b"")).status_code == 200


def hub_statements(hub, monkeypatch) -> list[str]:
    """Every statement the hub's store runs from now on (DuckDB: execute and query)."""
    seen: list[str] = []
    store_class = type(hub.store)
    for name in ("execute", "query", "query_arrow"):
        original = getattr(store_class, name)
        monkeypatch.setattr(store_class, name, lambda self, sql, *rest, original=original: (
            seen.append(sql), original(self, sql, *rest))[1])
    return seen


def test_waiting_nodes_and_researchers_are_spared_the_store_between_rounds_this_hub_issued(
        network, hub_factory, monkeypatch):
    """A node's look for work right after its answer, and a researcher's wait woken by each result, look at
    what this hub issued (in memory) instead of the store; a new round still reaches a waiting node at once."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    nodes = agents(network, client)
    query_id = ask(client, token, project_id).json()["query_id"]
    statements = hub_statements(hub, monkeypatch)
    for agent in nodes.values():
        assert agent.step() == 1
        before = len(statements)
        assert agent.fetch() == []                              # nothing more for it: no statement
        assert statements[before:] == []
    result = client.get(f"{PREFIX}/queries/{query_id}", params={"wait": 5},
                        headers={"Authorization": f"Bearer {token}"}).json()
    assert result["status"] == "complete"
    assert not [s for s in statements if "count(t.id)" in s]    # no look at the store for the round's state
    second = ask(client, token, project_id).json()["query_id"]  # a new round: every node looks again
    assert all(agent.step() == 1 for agent in nodes.values())
    assert answer(client, token, second)["status"] == "complete"


def test_work_another_hub_process_issued_reaches_a_node_within_the_look_again_time(network, hub_factory, monkeypatch):
    """Hubs sharing one store (PostgreSQL) issue rounds the others do not hear of: a node's look spared by
    memory waits at most WORK_LOOK_AGAIN seconds for the store to be looked at again."""
    import mercia.federation.hub as hub_module
    from mercia.federation.hub import Hub, HubSettings

    monkeypatch.setattr(hub_module, "WORK_LOOK_AGAIN", 1.0)   # room for the submit below on a busy machine
    hub, app, project_id, token = hub_factory()
    other = Hub(hub.store, HubSettings(allow_raw=True, policy="none"), gov=hub.gov)   # another process, same store
    client = TestClient(app)
    agent = agents(network, client)[network.nodes[0].org]
    assert agent.fetch() == []                                   # looked at the store: nothing yet
    other.submit(hub.gov.token_user(token), project_id, FeasibilityQuery(cohort=reference_cohort()))
    assert agent.fetch() == []                                   # this hub issued nothing since its look
    time.sleep(1.05)
    assert [t.query_id for t in agent.fetch()] == [1]           # the store is looked at again


def test_a_researcher_is_refused_at_the_next_look_after_their_access_ends(network, hub_factory):
    """Who is asking is checked at every request, also while this hub knows the round is still open."""
    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    bearer = {"Authorization": f"Bearer {token}"}
    query_id = ask(client, token, project_id).json()["query_id"]
    look = client.get(f"{PREFIX}/queries/{query_id}", params={"wait": 0.1}, headers=bearer)
    assert look.status_code == 200 and look.json()["status"] == "running"
    researcher = hub.gov.token_user(token)
    hub.gov.withdraw(researcher, project_id, "the study will not go ahead")
    started = time.monotonic()   # refused at the wait's first look, not when a long wait ends
    refused = client.get(f"{PREFIX}/queries/{query_id}", params={"wait": 20}, headers=bearer)
    assert refused.status_code == 403 and "withdrawn" in refused.json()["detail"]
    assert time.monotonic() - started < 5
    token_id = hub.gov.tokens(researcher)[0]["id"]
    hub.gov.revoke_token(researcher, token_id)
    assert client.get(f"{PREFIX}/queries/{query_id}", params={"wait": 0.1}, headers=bearer).status_code == 401


def test_every_way_access_ends_is_refused_when_asking_and_when_looking(network, hub_factory):
    """The hub reads who is asking in one statement and the project's verdict in another: each refusal
    (token expired, account off, research role gone, another pillar's lead, project expired) reaches both
    the question and the answer, with its status and reason, and lifting it lets the researcher back in."""
    from datetime import date

    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    gov = hub.gov
    researcher = gov.token_user(token)
    admin = gov.create_user("hub-admin", "Admin", "a-long-password-1", [(Role.ADMIN, "")])
    query_id = ask(client, token, project_id).json()["query_id"]

    def refused(secret):
        asked = ask(client, secret, project_id)
        looked = client.get(f"{PREFIX}/queries/{query_id}", headers={"Authorization": f"Bearer {secret}"})
        assert asked.status_code == looked.status_code and asked.json() == looked.json()
        return asked.status_code, asked.json()["detail"]

    expiring_id, expiring = gov.create_token(researcher, "expiring")
    gov.db.execute("UPDATE mercia_token SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?", [expiring_id])
    assert refused(expiring)[0] == 401
    gov.db.execute("UPDATE mercia_user SET active = FALSE WHERE id = ?", [researcher.id])   # the token stays live
    assert refused(token)[0] == 401
    gov.db.execute("UPDATE mercia_user SET active = TRUE WHERE id = ?", [researcher.id])
    gov.revoke_role(admin, researcher.id, Role.RESEARCHER)
    assert refused(token) == (403, "working with project data needs the researcher, trial coordinator or clinician "
                                   "role")
    gov.grant_role(admin, researcher.id, Role.RESEARCHER)
    cancer_lead = gov.create_user("cancer-lead", "Cancer lead", "a-long-password-1", [(Role.PILLAR_LEAD, "cancer")])
    assert refused(gov.create_token(cancer_lead, "t")[1]) == (404, f"no project {project_id}")   # another pillar
    gov.db.execute("UPDATE mercia_project SET expires_on = ? WHERE id = ?",
                   [(date.today() - timedelta(days=1)).isoformat(), project_id])
    status, reason = refused(token)
    assert status == 403 and f"project {project_id} is expired" in reason
    gov.db.execute("UPDATE mercia_project SET expires_on = ? WHERE id = ?",
                   [(date.today() + timedelta(days=1)).isoformat(), project_id])
    assert client.get(f"{PREFIX}/queries/{query_id}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert len(gov.audit.search(action="federation.refuse")) == 3   # the questions refused past the token check


def test_a_node_sends_its_members_in_the_order_of_their_salted_tokens(network, hub_factory):
    """Not in its own person order, which is the same for every question: rows in it would let the hub line
    up two answers' members."""
    from mercia.federation.hub import token_integers

    hub, app, project_id, token = hub_factory()
    client = TestClient(app)
    agent = agents(network, client)[network.nodes[0].org]
    ask(client, token, project_id)
    members = agent.handle(agent.fetch()[0]).members
    nhs = token_integers(members.column("nhs").combine_chunks()).fill_null(0).to_pylist()
    demographic = token_integers(members.column("demographic").combine_chunks()).fill_null(0).to_pylist()
    assert members.num_rows > 5 and list(zip(nhs, demographic)) == sorted(zip(nhs, demographic))
