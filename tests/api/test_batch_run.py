"""``POST /api/v1/projects/{id}/cohorts/run``: a project's cohorts generated as one batch job give
the rows and counts of running each on its own, and every way it refuses."""

from __future__ import annotations

from tests.api.api_world import circe
from tests.api.test_api import make_cohort, run


def rows(world, cohort_id: int) -> list[tuple]:
    store = world.client.app.state.mercia.root_store
    return store.query("SELECT subject_id, cohort_start_date, cohort_end_date FROM cohort "
                       "WHERE cohort_definition_id = ? ORDER BY 1, 2, 3", [cohort_id])


def run_together(world, headers, project_id, cohort_ids=None):
    r = world.client.post(f"/api/v1/projects/{project_id}/cohorts/run", headers=headers,
                          json={"cohort_ids": cohort_ids or []})
    assert r.status_code == 202, r.text
    job = world.client.app.state.mercia.jobs.wait(r.json()["job_id"], 60)
    assert job["status"] == "succeeded", job
    return job


def test_a_batch_gives_each_cohorts_own_rows_and_counts(world):
    h = world.login("res")
    ids = [make_cohort(world, h), make_cohort(world, h, expression=circe(rule_drug=None))]
    alone = {}
    for cohort_id in ids:
        job = run(world, h, cohort_id)
        alone[cohort_id] = (rows(world, cohort_id), job["result"])
    store = world.client.app.state.mercia.root_store
    store.execute("DELETE FROM cohort WHERE cohort_definition_id IN (?, ?)", ids)
    together = run_together(world, h, world.approved)
    assert [c["cohort_id"] for c in together["result"]["cohorts"]] == ids
    for shown in together["result"]["cohorts"]:
        cohort_rows, result = alone[shown["cohort_id"]]
        assert rows(world, shown["cohort_id"]) == cohort_rows and len(cohort_rows) > 0
        assert {k: shown[k] for k in ("persons", "entries", "steps")} == {k: result[k] for k in ("persons", "entries",
                                                                                              "steps")}
    one = run_together(world, h, world.approved, [ids[1]])   # a chosen subset
    assert [c["cohort_id"] for c in one["result"]["cohorts"]] == [ids[1]]
    audited = store.query_one("SELECT count(*) FROM mercia_audit WHERE action = 'cohort.run'")
    assert audited == 2 + 2 + 1   # each cohort of each run, batch or not


def test_batch_runs_refuse(world):
    h = world.login("res")
    mine = make_cohort(world, h)
    theirs = make_cohort(world, world.login("res2"), project=world.other)
    url = f"/api/v1/projects/{world.approved}/cohorts/run"
    assert world.client.post(url, json={}).status_code == 401
    assert world.client.post(url, headers=world.login("res2"), json={}).status_code == 404   # not a member
    refused = world.client.post(url, headers=h, json={"cohort_ids": [mine, theirs]})   # another project's cohort
    assert refused.status_code == 404 and f"no cohort {theirs}" in refused.text
    assert world.client.post(f"/api/v1/projects/{world.draft}/cohorts/run", headers=h, json={}).status_code in (
        403, 404)   # not approved
    assert world.client.post(url, headers=h, json={"cohort_ids": ["x"]}).status_code in (400, 422)
    store = world.client.app.state.mercia.root_store
    assert store.query_one("SELECT count(*) FROM mercia_job WHERE kind = 'cohort.run_batch'") == 0
