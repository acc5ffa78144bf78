"""The embedded job runner: long work (cohort runs, analyses) on a small thread pool, with status
and progress kept in ``mercia_job`` so any page or script can poll it.

A job can be cancelled by the person who started it: a queued one never starts; a running one stops
at its next progress step (work in a store transaction, such as a load, is rolled back)."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from mercia.analytics.base import AnalyticsError
from mercia.cdm import Store, StoreError
from mercia.cdm.sessions import bound_sessions
from mercia.governance import GovernanceError
from mercia.governance.db import GovernanceDB, now
from mercia.ingest.load import LoadError
from mercia.privacy.pseudonym import KeyError_
from mercia.services.errors import Conflict, NotFound

Progress = Callable[[float, str], None]
JobFunction = Callable[[Progress], dict[str, Any]]
# Failures whose message is written for the person who started the job; anything else is a fault,
# reported in plain words (its details go to the server log, never to the page).
EXPLAINED = (GovernanceError, ValueError, LoadError, KeyError_, StoreError, FileNotFoundError, AnalyticsError)


class JobCancelled(Exception):
    """Raised inside a running job at its next progress step once its owner has cancelled it."""


def failure_words(exc: Exception) -> str:
    if isinstance(exc, EXPLAINED) and str(exc):
        return str(exc)
    return "an unexpected problem stopped this job; the administrator can find the details in the server log"


class JobRunner:
    def __init__(self, db: GovernanceDB, workers: int = 2, roots: Sequence[Store] = ()):
        """``roots``: the stores each job binds a session on (default: governance's alone)."""
        self.db = db
        self.roots = tuple(roots) or (db.root,)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mercia-job")
        self._futures: dict[int, Future] = {}
        self._cancelled: set[int] = set()
        # Work that was running when the server last stopped will never finish: say so.
        self.db.execute("UPDATE mercia_job SET status = 'failed', error = 'the server stopped while this ran', "
                        "finished_at = ? WHERE status IN ('queued', 'running')", [now()])

    def submit(self, kind: str, user_id: int, project_id: int | None, work: JobFunction,
               on_done: Callable[[dict[str, Any]], None] | None = None, about: dict[str, Any] | None = None) -> int:
        """Queue ``work``.  ``about`` (what the job works on, e.g. ``{"org": "RRK"}``) is kept as its
        result until it succeeds, so a queued, running or failed job can link back to its subject."""
        with self.db.transaction():
            job_id = self.db.next_id("mercia_job")
            self.db.insert("mercia_job", {"id": job_id, "kind": kind, "project_id": project_id, "user_id": user_id,
                                          "status": "queued", "progress": 0.0, "message": "waiting to start",
                                          "created_at": now(),
                                          "result": orjson.dumps(about).decode() if about else None})
        self._futures[job_id] = self._pool.submit(self._run, job_id, work, on_done)
        return job_id

    def _run(self, job_id: int, work: JobFunction, on_done) -> None:
        """Run one job in a store session of its own, so it never holds up requests or other jobs."""
        with bound_sessions(*self.roots):
            self._run_bound(job_id, work, on_done)
        self._cancelled.discard(job_id)

    def _run_bound(self, job_id: int, work: JobFunction, on_done) -> None:
        def progress(fraction: float, message: str) -> None:
            if job_id in self._cancelled:
                raise JobCancelled()
            self.db.execute("UPDATE mercia_job SET progress = ?, message = ? WHERE id = ?",
                            [max(0.0, min(1.0, fraction)), message, job_id])

        started = self.db.scalar("UPDATE mercia_job SET status = 'running', message = 'started' "
                                 "WHERE id = ? AND status = 'queued' RETURNING id", [job_id])
        if started is None:   # cancelled before it began
            return
        try:
            result = work(progress)   # a cancel that comes after the last step is too late: the work is done
            if on_done:
                on_done(result)
            self.db.execute("UPDATE mercia_job SET status = 'succeeded', progress = 1.0, message = 'done', "
                            "result = ?, finished_at = ? WHERE id = ?",
                            [orjson.dumps(result, default=str).decode(), now(), job_id])
        except JobCancelled:
            self.db.execute("UPDATE mercia_job SET status = 'cancelled', message = 'cancelled', finished_at = ? "
                            "WHERE id = ?", [now(), job_id])
        except Exception as exc:  # noqa: BLE001 - a job's failure is reported, never raised into the pool
            detail = failure_words(exc)
            self.db.execute("UPDATE mercia_job SET status = 'failed', error = ?, message = ?, finished_at = ? "
                            "WHERE id = ?", [detail, "failed", now(), job_id])
            if not isinstance(exc, EXPLAINED):
                traceback.print_exc()

    def get(self, job_id: int) -> dict[str, Any] | None:
        row = self.db.row("SELECT * FROM mercia_job WHERE id = ?", [job_id])
        if row and row["result"]:
            row["result"] = orjson.loads(row["result"])
        return row

    def for_user(self, user_id: int, limit: int = 50) -> list[dict[str, Any]]:
        return self.db.rows("SELECT id, kind, project_id, status, progress, message, created_at, finished_at "
                            f"FROM mercia_job WHERE user_id = ? ORDER BY id DESC LIMIT {int(limit)}", [user_id])

    def cancel(self, job_id: int) -> str:
        """Stop a queued or running job; returns its status afterwards ('cancelled', or 'running' until
        its next progress step)."""
        with self.db.transaction():
            status = self.db.scalar("SELECT status FROM mercia_job WHERE id = ?", [job_id])
            if status not in ("queued", "running"):
                raise Conflict(f"job {job_id} is {status}: only a queued or running job can be cancelled")
            self._cancelled.add(job_id)
            # A queued job that starts meanwhile is not moved here; it meets the flag at its first step.
            stopped = self.db.scalar("UPDATE mercia_job SET status = 'cancelled', finished_at = ?, "
                                     "message = 'cancelled before it started' WHERE id = ? AND status = 'queued' "
                                     "RETURNING id", [now(), job_id])
        return "cancelled" if stopped is not None else "running"

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any] | None:
        future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout)
        return self.get(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def job_for(state, user, job_id: int) -> dict[str, Any]:
    """A job of ``user``'s own (status, progress and what may be shown of its result); anyone
    else's job, administrators' included, is not found.  Project work is shown only while the user may
    still reach the project's data, and every read is audited."""
    job = state.jobs.get(job_id)
    if job is None or job["user_id"] != user.id:
        raise NotFound(f"no job {job_id} of yours")
    if job["project_id"] is not None:
        state.gov.require_data_access(user, job["project_id"])
    state.gov.audit.record(user.username, "job.view", f"job:{job_id}", job["project_id"], kind=job["kind"])
    return job


def cancel_job(state, user, job_id: int) -> str:
    """Cancel a job of ``user``'s own (no one else's: not even an administrator's); audited."""
    job = state.jobs.get(job_id)
    if job is None or job["user_id"] != user.id:
        raise NotFound(f"no job {job_id} of yours")
    status = state.jobs.cancel(job_id)
    state.gov.audit.record(user.username, "job.cancel", f"job:{job_id}", job["project_id"], kind=job["kind"])
    return status
