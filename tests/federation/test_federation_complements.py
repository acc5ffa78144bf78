"""Attacks on stratified federated answers by complement: the total is published, so a single hidden
cell is the total less the cells shown.  Secondary suppression (``mercia.privacy.disclosure``) must hide
enough cells that the hidden ones together describe nobody or more than the threshold people."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mercia.federation.hubapp import PREFIX
from mercia.federation.messages import KINDS
from mercia.federation.node import NodePolicy
from mercia.federation.region import reference_cohort
from mercia.privacy.disclosure import get_policy

from .test_federation_hub import agents, answer
from .test_federation_kinds import ask

STRATA = {"kind": "feasibility", "strata": ["sex"]}   # in the test region a site of 17 has 10 men


def aged_at_least(years: int) -> dict:
    """The reference cohort, people aged ``years`` or more only."""
    cohort = reference_cohort()
    cohort["InclusionRules"] = [{"name": f"Aged {years} or more", "expression": {
        "Type": "ALL", "CriteriaList": [], "Groups": [],
        "DemographicCriteriaList": [{"Age": {"Value": years, "Op": "gte"}}]}}]
    return cohort


def stratified_answer(network, hub_factory, policy: str) -> dict:
    hub, app, project_id, token = hub_factory(policy=policy, differencing_limit=100)
    client = TestClient(app)
    query_id = ask(client, token, project_id, STRATA).json()["query_id"]
    for agent in agents(network, client, {n.org: NodePolicy() for n in network.nodes}).values():
        agent.step()
    return answer(client, token, query_id)


def test_threshold10_total_less_the_shown_cells_never_gives_a_small_count(network, hub_factory):
    """Without rounding the total minus the shown cells is exactly the hidden cells' sum: it must be 0 or
    more than 9, for the network's de-duplicated cells and for each site's own cells."""
    result = stratified_answer(network, hub_factory, "threshold10")
    threshold = get_policy("threshold10").threshold
    cells = [row["deduplicated"] for row in result["cells"]]
    hidden_sum = result["deduplicated_total"] - sum(v for v in cells if v is not None)
    assert not 1 <= hidden_sum <= threshold, f"hidden cells hold exactly {hidden_sum} people"
    for node in (n for n in result["nodes"] if n["count"] is not None):
        site = [row["sites"][node["org"]] for row in result["cells"]]
        site_hidden = node["count"] - sum(v for v in site if v is not None)
        assert not 1 <= site_hidden <= threshold, f"{node['org']}: hidden cells hold exactly {site_hidden}"


@pytest.mark.parametrize("policy", ["opensafely", "threshold10"])
def test_a_hidden_stratum_never_stands_alone_beside_a_published_total(network, hub_factory, policy):
    """One hidden cell beside a published total is that total less the cells shown (give or take the
    rounding); under a policy with secondary suppression a hidden cell always has company."""
    result = stratified_answer(network, hub_factory, policy)
    columns = [(result["deduplicated_total"], [row["deduplicated"] for row in result["cells"]])]
    columns += [(node["count"], [row["sites"][node["org"]] for row in result["cells"]]) for node in result["nodes"]]
    published_totals = [cells for total, cells in columns if total is not None]
    assert any(None in cells for cells in published_totals)       # the attack has a hidden cell to look for
    assert all(cells.count(None) != 1 for cells in published_totals), columns


def test_the_naive_sum_less_the_sites_shown_never_gives_a_small_count(network, hub_factory):
    """The naive sum is the sites' counts added: with the small sites hidden and one large one shown, the
    naive sum less the shown site is what the hidden sites hold together (in the test region, people
    aged 80 or more: 15 in all, 11 at one site, 1 + 2 + 1 at three others)."""
    cohort = aged_at_least(80)
    hub, app, project_id, token = hub_factory(policy="threshold10", differencing_limit=100)
    client = TestClient(app)
    query_id = client.post(f"{PREFIX}/queries", headers={"Authorization": f"Bearer {token}"}, json={
        "project_id": project_id, "query": {"kind": "feasibility", "cohort": cohort}}).json()["query_id"]
    for agent in agents(network, client, {n.org: NodePolicy() for n in network.nodes}).values():
        agent.step()
    result = answer(client, token, query_id)
    shown_sites = [node["count"] for node in result["nodes"] if node["count"] is not None]
    hidden_sum = result["naive_sum"] - sum(shown_sites)
    assert not 1 <= hidden_sum <= get_policy("threshold10").threshold, (result["naive_sum"], result["nodes"])


def test_characterisation_partitions_never_leave_a_small_count_beside_the_total(network, hub_factory):
    """A characterisation's sex, age band and IMD quintile cells each divide the total between them (the
    features do not): each of those partitions, with its total, must hide 0 or more than 9 people under
    ``threshold10``, for the network's cells and for each site's own (people aged 60 or more: 43 in all,
    18 aged 60-69 and 17 aged 70-79 shown gave the 8 in the three hidden bands)."""
    hub, app, project_id, token = hub_factory(policy="threshold10", differencing_limit=100)
    client = TestClient(app)
    cohort = aged_at_least(60)
    query_id = client.post(f"{PREFIX}/queries", headers={"Authorization": f"Bearer {token}"}, json={
        "project_id": project_id, "query": {"kind": "characterisation", "cohort": cohort}}).json()["query_id"]
    approved = NodePolicy(auto=set(KINDS), approve=set())     # runs without the data manager (tested elsewhere)
    for agent in agents(network, client, {n.org: approved for n in network.nodes}).values():
        agent.step()
    result = answer(client, token, query_id)
    columns = {"network": (result["deduplicated_total"], {row["cell"]: row["deduplicated"] for row in result["cells"]})}
    columns |= {node["org"]: (node["count"], {row["cell"]: row["sites"][node["org"]] for row in result["cells"]})
                for node in result["nodes"]}
    leaks = []
    for where, (total, cells) in columns.items():
        for partition in ("sex", "age_band", "imd_quintile"):
            shown = [v for cell, v in cells.items() if cell.startswith(partition + "=")]
            if total is not None and None in shown and 1 <= total - sum(v for v in shown if v is not None) <= 9:
                leaks.append((where, partition, total, shown))
    assert not leaks, leaks
