"""Sessions per request/job (mercia.cdm.sessions) and atomic id allocation (Store.allocate_ids)
on every engine: parallel writers on their own connections never get the same id."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

from mercia.cdm.sessions import bound_session, current, session_for

WRITERS = 20


def _in_parallel(n: int, work) -> list:
    """Run ``work(i)`` on ``n`` threads released together."""
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_current_is_the_root_outside_a_session_and_the_session_inside(store):
    assert current(store) is store
    with bound_session(store) as session:
        assert not session.opened  # opened only when first used
        inside = current(store)
        assert inside is not store and inside is session.store and session.opened
        assert session_for(store) is session
    assert current(store) is store and not session.opened


def test_each_thread_binds_its_own_session(store):
    all_open = threading.Barrier(4)

    def which(_):
        with bound_session(store):
            mine = current(store)
            all_open.wait()  # every session is open at once, so none is a reused object
            return mine

    sessions = _in_parallel(4, which)
    assert len({id(s) for s in sessions}) == 4 and store not in sessions


def test_parallel_inserts_in_sessions_get_distinct_ids(store):
    store.execute("CREATE TABLE made (id BIGINT PRIMARY KEY, writer INTEGER NOT NULL)")

    def create(i):
        with store.session() as s, s.transaction():
            new_id = s.allocate_ids("made", "id")
            s.execute("INSERT INTO made (id, writer) VALUES (?, ?)", [new_id, i])
            return new_id

    ids = _in_parallel(WRITERS, create)
    assert sorted(ids) == list(range(1, WRITERS + 1))
    assert store.query_one("SELECT COUNT(DISTINCT id) FROM made") == WRITERS


def test_blocks_of_ids_do_not_overlap_and_step_over_rows_written_with_their_own_ids(store):
    store.execute("CREATE TABLE made (id BIGINT)")
    store.execute("INSERT INTO made VALUES (41)")  # written by something that chose its own id

    def reserve(_):
        with store.session() as s:
            return s.allocate_ids("made", "id", count=5)

    firsts = sorted(_in_parallel(8, reserve))
    assert firsts[0] == 42
    assert all(b - a >= 5 for a, b in itertools.pairwise(firsts))
    assert store.allocate_ids("made", "id", start=1000) == 1000  # a floor (trial cohort ids start high)
