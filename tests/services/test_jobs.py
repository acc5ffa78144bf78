"""Cancelling a job: a queued one never starts, a running one stops at its next progress step with
its transaction rolled back, and only the person who started it may cancel it."""

from __future__ import annotations

import threading

import pytest

from mercia.services.errors import Conflict, NotFound
from mercia.services.jobs import cancel_job


def _blocking_job(db, entered: threading.Event, release: threading.Event, ran: list[str], name: str):
    def work(progress):
        ran.append(name)
        entered.set()
        release.wait(30)
        with db.transaction():
            db.execute("INSERT INTO mercia_theme (code, name) VALUES (?, ?)", [name, "written by a job"])
            progress(0.5, "half way")   # the cancel takes effect here, inside the transaction
        return {"done": name}
    return work


def test_a_running_job_stops_at_its_next_step_and_a_queued_one_never_starts(world):
    state = world.client.app.state.mercia
    user = world.people["res"]
    entered, release, ran = threading.Event(), threading.Event(), []
    running = state.jobs.submit("test.block", user.id, None, _blocking_job(state.gov.db, entered, release, ran, "j1"))
    queued = state.jobs.submit("test.block", user.id, None, _blocking_job(state.gov.db, threading.Event(),
                                                                         threading.Event(), ran, "j2"))
    assert entered.wait(30)
    assert cancel_job(state, user, queued) == "cancelled"
    assert cancel_job(state, user, running) == "running"     # stops at its next step
    release.set()
    assert state.jobs.wait(running, 30)["status"] == "cancelled"
    assert state.jobs.wait(queued, 30)["status"] == "cancelled"
    assert ran == ["j1"]                                       # the queued job's work never ran
    assert state.gov.db.scalar("SELECT count(*) FROM mercia_theme WHERE code = 'j1'") == 0   # rolled back
    assert [a["target"] for a in state.gov.audit.search(action="job.cancel")] == [f"job:{running}", f"job:{queued}"]
    with pytest.raises(Conflict, match="only a queued or running job"):
        cancel_job(state, user, running)


def test_only_the_owner_may_cancel_and_the_api_says_so(world):
    state = world.client.app.state.mercia
    owner = world.people["res"]
    entered, release = threading.Event(), threading.Event()
    job = state.jobs.submit("test.block", owner.id, None, _blocking_job(state.gov.db, entered, release, [], "j3"))
    try:
        assert entered.wait(30)
        with pytest.raises(NotFound):
            cancel_job(state, world.people["res2"], job)
        url = f"/api/v1/jobs/{job}/cancel"
        assert world.client.post(url).status_code == 401
        assert world.client.post(url, headers=world.login("admin")).status_code == 404
        r = world.client.post(url, headers=world.login("res"))
        assert r.status_code == 202 and r.json() == {"job_id": job, "status": "running"}
    finally:
        release.set()
    assert state.jobs.wait(job, 30)["status"] == "cancelled"
    assert world.client.post(f"/api/v1/jobs/{job}/cancel", headers=world.login("res")).status_code == 409
