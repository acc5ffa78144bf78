"""Question kinds beyond a plain count: stratified feasibility, trial feasibility by month and
characterisation — each cell's de-duplicated count checked against the region's ground truth."""

from __future__ import annotations

from collections import defaultdict

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from mercia.analytics.base import index_table_sql, temp_table
from mercia.cohorts.registry import scratch_cohort
from mercia.cohorts.runner import run_cohort
from mercia.federation.hubapp import PREFIX
from mercia.federation.messages import QUERY, FeasibilityQuery, cell_partition
from mercia.federation.node import NodePolicy, _cells_sql, decide, open_node_store, pending
from mercia.federation.region import reference_cohort
from mercia.linkage.evaluate import region_person_truth
from mercia.privacy.pseudonym import Pseudonymiser

from .test_federation_hub import agents, answer


def ask(client, token, project_id, query):
    return client.post(f"{PREFIX}/queries", headers={"Authorization": f"Bearer {token}"},
                       json={"project_id": project_id, "query": {"cohort": reference_cohort(), **query}})


def run(network, hub_factory, query, policies=None):
    hub, app, project_id, token = hub_factory(differencing_limit=100)
    client = TestClient(app)
    response = ask(client, token, project_id, query)
    assert response.status_code == 202, response.text
    for agent in agents(network, client, policies).values():
        agent.step()
    return answer(client, token, response.json()["query_id"])


def truth(network, query: dict) -> dict[str, int]:
    """Distinct true persons per cell, from each node's cohort members mapped through the region's
    crosswalk (independent of the network tokens): one cell per person and partition (the smallest)."""
    parsed = QUERY.validate_python({"cohort": reference_cohort(), **query})
    cells_of = defaultdict(set)
    for node in network.nodes:
        store = open_node_store(node.url)
        try:
            mapping = region_person_truth(store, network.directory / "region",
                                          Pseudonymiser(node.key_file.read_text().strip().encode()))
            true_id = dict(zip(mapping.column("person_id").to_pylist(), mapping.column("true_person_id").to_pylist()))
            with scratch_cohort(store) as cohort_id:
                run_cohort(store, parsed.expression(), cohort_id)
                with temp_table(store, index_table_sql(store, cohort_id), "truth_idx") as idx:
                    for person_id, cell in store.query(_cells_sql(store, parsed, idx)):
                        cells_of[true_id[person_id]].add(cell)
        finally:
            store.close()
    counts: dict[str, int] = defaultdict(int)
    part = cell_partition(parsed)
    for cells in cells_of.values():
        smallest = {}    # a person's smallest cell in each partition; every cell in none
        for cell in sorted(cells, reverse=True):
            smallest[part(cell) if part(cell) is not None else cell] = cell
        for cell in smallest.values():
            counts[cell] += 1
    return dict(counts)


def published(result) -> dict[str, int]:
    return {row["cell"]: row["deduplicated"] for row in result["cells"] if row["deduplicated"]}


def test_stratified_counts_equal_the_truth_and_add_up_to_the_total(network, hub_factory):
    query = {"kind": "feasibility", "strata": ["sex", "age_band"]}
    result = run(network, hub_factory, query)
    assert result["status"] == "complete" and result["kind"] == "feasibility"
    assert published(result) == truth(network, query)
    assert sum(published(result).values()) == result["deduplicated_total"]
    assert all(row["cell"].startswith("sex=") and "|age_band=" in row["cell"] for row in result["cells"])
    assert all(set(row["sites"]) == {n.org for n in network.nodes} for row in result["cells"])
    site_sum = sum(v for row in result["cells"] for v in row["sites"].values())
    assert site_sum == result["naive_sum"] > result["deduplicated_total"]    # every site's own count is there


@pytest.mark.parametrize("stratum", ["imd_quintile", "year"])
def test_each_stratum_kind_is_exact(network, hub_factory, stratum):
    query = {"kind": "feasibility", "strata": [stratum]}
    result = run(network, hub_factory, query)
    assert published(result) == truth(network, query) and len(result["cells"]) > 1


def test_trial_feasibility_counts_each_person_in_the_month_of_their_first_entry_anywhere(network, hub_factory):
    query = {"kind": "trial_feasibility", "start_month": "2015-01", "end_month": "2024-12"}
    result = run(network, hub_factory, query)
    expected = truth(network, query)
    assert published(result) == expected
    months = [row["cell"] for row in result["cells"] if row["cell"] not in ("0000-00", "9999-99")]
    assert months[0] == "2015-01" and months[-1] == "2024-12" and len(months) == 120   # zero months listed too
    labels = {row["cell"]: row["label"] for row in result["cells"]}
    assert labels.get("0000-00", "before 2015-01") == "before 2015-01"
    # a person seen first at one site and later at another is newly eligible once, in the earlier month
    assert sum(published(result).values()) == result["deduplicated_total"] < result["naive_sum"]


def test_characterisation_waits_for_the_data_manager_then_counts_each_feature_once(network, hub_factory):
    query = {"kind": "characterisation", "domains": ["condition", "drug"], "window_days": 365}
    hub, app, project_id, token = hub_factory(differencing_limit=100)
    client = TestClient(app)
    query_id = ask(client, token, project_id, query).json()["query_id"]
    nodes = agents(network, client, {n.org: NodePolicy(allow_raw=True) for n in network.nodes})  # default policy
    assert all(agent.step() == 0 for agent in nodes.values())      # characterisation needs local approval
    for node in network.nodes:
        store = open_node_store(node.url)
        try:
            for task in pending(store):
                if task["query_id"] == query_id:
                    decide(store, task["task_id"], True, "data-manager")
        finally:
            store.close()
    assert all(agent.step() == 1 for agent in nodes.values())
    result = answer(client, token, query_id)
    assert result["status"] == "complete" and result["kind"] == "characterisation"
    assert published(result) == truth(network, query)
    by_cell = {row["cell"]: row for row in result["cells"]}
    sexes = sum(row["deduplicated"] or 0 for cell, row in by_cell.items() if cell.startswith("sex="))
    assert sexes == result["deduplicated_total"]
    conditions = [row for cell, row in by_cell.items() if cell.startswith("condition:")]
    assert conditions and all(row["label"] != row["cell"] for row in conditions)   # named from the vocabulary


def test_published_cells_pass_the_policy(network, hub_factory):
    hub, app, project_id, token = hub_factory(policy="opensafely", differencing_limit=100)
    client = TestClient(app)
    query_id = ask(client, token, project_id, {"kind": "feasibility", "strata": ["sex", "age_band"]}).json()["query_id"]
    for agent in agents(network, client, {n.org: NodePolicy() for n in network.nodes}).values():
        agent.step()
    result = answer(client, token, query_id)
    values = [row["deduplicated"] for row in result["cells"]]
    values += [v for row in result["cells"] for v in row["sites"].values()]
    assert any(v is None for v in values)                    # small strata are hidden
    assert all(v is None or (v % 5 == 0 and (v == 0 or v > 7)) for v in values)


def test_bad_questions_are_refused_before_any_node_sees_them():
    with pytest.raises(ValidationError, match="each stratum may be named once"):
        FeasibilityQuery(cohort=reference_cohort(), strata=["sex", "sex"])
    with pytest.raises(ValidationError):
        QUERY.validate_python({"kind": "feasibility", "cohort": reference_cohort(), "strata": ["postcode"]})
    with pytest.raises(ValidationError, match="choose 1 to 240 months"):
        QUERY.validate_python({"kind": "trial_feasibility", "cohort": reference_cohort(),
                               "start_month": "2024-01", "end_month": "2023-01"})
    with pytest.raises(ValidationError):
        QUERY.validate_python({"kind": "characterisation", "cohort": reference_cohort(), "window_days": 0})
    with pytest.raises(ValidationError):
        QUERY.validate_python({"kind": "sql", "cohort": reference_cohort()})


def test_a_repeat_of_the_same_cohort_with_other_strata_uses_the_budget(network, hub_factory):
    hub, app, project_id, token = hub_factory(differencing_limit=1)
    client = TestClient(app)
    assert ask(client, token, project_id, {"kind": "feasibility"}).status_code == 202
    assert ask(client, token, project_id, {"kind": "feasibility", "strata": ["sex"]}).status_code == 202
    refused = ask(client, token, project_id, {"kind": "trial_feasibility", "start_month": "2020-01",
                                              "end_month": "2020-12"})
    assert refused.status_code == 429
