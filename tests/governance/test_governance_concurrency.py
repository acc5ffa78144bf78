"""Governance under real concurrency: each writer on a session of its own (as each HTTP request and
job is), on DuckDB and PostgreSQL.  Ids never collide, nothing is lost, the audit chain holds."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mercia.cdm.sessions import bound_session
from mercia.governance import Conflict, Role
from tests.governance.conftest import PW

WRITERS = 20


def _parallel_in_sessions(store, n: int, work) -> list:
    start = threading.Barrier(n)

    def run(i):
        with bound_session(store):
            start.wait()
            return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_parallel_project_creates_get_distinct_ids_and_a_whole_audit_chain(gov, store):
    researcher = gov.create_user("res", "Rhea Searcher", PW, [(Role.RESEARCHER, "")])

    def create(i):
        assert gov.db.store is not store  # this writer's own connection, not the shared one
        return gov.create_project(researcher, title=f"Study {i}", pillar="cancer", purpose="Concurrency")

    projects = _parallel_in_sessions(store, WRITERS, create)
    ids = [p.id for p in projects]
    assert len(set(ids)) == WRITERS
    assert {p.title for p in projects} == {f"Study {i}" for i in range(WRITERS)}
    assert gov.db.scalar("SELECT COUNT(*) FROM mercia_project") == WRITERS
    assert gov.db.scalar("SELECT COUNT(*) FROM mercia_project_member WHERE project_role = 'lead'") == WRITERS
    verified = gov.audit.verify()
    assert verified.ok, verified.problem
    assert gov.db.scalar("SELECT COUNT(*) FROM mercia_audit WHERE action = 'project.create'") == WRITERS


def test_parallel_users_and_jobs_get_distinct_ids(gov, store):
    from mercia.services.jobs import JobRunner

    users = _parallel_in_sessions(store, WRITERS, lambda i: gov.create_user(
        f"user{i}", f"User {i}", PW, [(Role.RESEARCHER, "")]))
    assert len({u.id for u in users}) == WRITERS
    runner = JobRunner(gov.db, workers=4)
    try:
        jobs = _parallel_in_sessions(store, WRITERS, lambda i: runner.submit(
            "test.echo", users[i].id, None, lambda progress, i=i: {"i": i}))
        assert len(set(jobs)) == WRITERS
        results = {runner.wait(j, timeout=60)["result"]["i"] for j in jobs}
        assert results == set(range(WRITERS))
    finally:
        runner.shutdown()



def _while_a_lead_leaves(gov, store, change) -> str:
    """Run ``change(officer, project_id, other_lead_id)`` in another session while the first of two leads'
    removal is uncommitted: it must wait for the removal to commit. Its outcome; the other lead must be the only one left."""
    officer = gov.create_user("officer", "Officer", PW, [(Role.GOVERNANCE_OFFICER, "")])
    leads = [gov.create_user(f"lead{i}", f"Lead {i}", PW, [(Role.RESEARCHER, "")]) for i in range(2)]
    project = gov.create_project(leads[0], title="Two leads", pillar="cancer", purpose="Concurrency")
    gov.add_member(leads[0], project.id, leads[1].id, "lead")
    outcome = []

    def second_change():
        with bound_session(store):
            try:
                change(officer, project.id, leads[1])
                outcome.append("done")
            except Conflict as refused:
                outcome.append(str(refused).replace(f"project {project.id}'s", "project P's"))

    second = threading.Thread(target=second_change)
    with gov.db.transaction():
        gov.remove_member(leads[0], project.id, leads[0].id, "leaving")
        second.start()
        second.join(timeout=1)
        assert second.is_alive()  # waiting for the first removal to commit
    second.join(timeout=30)
    assert [lead.id for lead in leads[1:]] == gov.project(project.id).lead_ids
    return outcome[0]


@pytest.mark.parametrize("engine", ["postgres"])  # DuckDB's governance writes take turns: no race to lose
def test_two_leads_leaving_at_once_leave_one(gov, store):
    """The second lead to leave while the first's removal is uncommitted waits for it, then counts the
    leads again and is refused, instead of both seeing another lead and leaving the project with none."""
    outcome = _while_a_lead_leaves(gov, store, lambda officer, project_id, lead: gov.remove_member(
        lead, project_id, lead.id, "leaving too"))
    assert outcome == "lead1 is project P's only lead and cannot be taken off: add another lead first"


@pytest.mark.parametrize("engine", ["postgres"])
def test_a_lead_made_member_while_the_other_leaves_leaves_one(gov, store):
    """Governance making the other lead a plain member meanwhile is refused likewise: without the
    project's row claimed, both changes would have seen another lead."""
    outcome = _while_a_lead_leaves(gov, store, lambda officer, project_id, lead: gov.add_member(
        officer, project_id, lead.id, "member"))
    assert outcome == "lead1 is project P's only lead and cannot be made a member: add another lead first"
