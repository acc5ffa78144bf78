"""PostgreSQL restarted under a running server (issue 11, faults): requests fail cleanly with 503 and
Retry-After while it is away, and succeed again as soon as it is back, without restarting Mercia."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from mercia.cdm import Store, StoreUnavailable
from tests.conftest import drop_store, engine_missing, open_store


class ThrowawayPostgres:
    """A PostgreSQL cluster of this test's own on a free port, which the test may stop and start."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            engine_missing("PostgreSQL server binaries are not installed (apt-get install postgresql)")
        self.bin = bins[-1].parent
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        self.dir = Path(tempfile.mkdtemp(prefix="mercia-pg-restart-"))
        if self.run_as:
            shutil.chown(self.dir, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "mercia", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "mercia", "mercia_test")
        self.url = f"postgresql://mercia@127.0.0.1:{self.port}/mercia_test"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.run_as, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres():
    cluster = ThrowawayPostgres()
    yield cluster
    cluster.remove()


@pytest.mark.slow
def test_requests_answer_503_while_postgres_restarts_and_200_after(own_postgres, monkeypatch):
    from mercia.governance import Role
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app
    from tests.governance.conftest import PW

    monkeypatch.setattr("mercia.cdm.engines.postgres.PostgresStore.pool_timeout", 2.0)
    store = Store(own_postgres.url)
    try:
        app = create_app(store, ServerOptions(secure_cookies=False, job_workers=1))
        gov = app.state.mercia.gov
        researcher = gov.create_user("res", "Rhea Searcher", PW, [(Role.RESEARCHER, "")])
        bearer = {"Authorization": f"Bearer {gov.create_token(researcher, 'restart test', 1)[1]}"}
        client = TestClient(app, base_url="http://127.0.0.1")
        assert client.get("/api/v1/projects", headers=bearer).status_code == 200

        own_postgres.stop()
        away = client.get("/api/v1/projects", headers=bearer)
        assert away.status_code == 503
        assert away.headers["Retry-After"] == "5"
        assert "try again" in away.json()["detail"] and "postgres" not in away.text.lower()
        client.cookies.set("mercia_session", "a-session-to-look-up")  # the page must ask the store who this is
        page = client.get("/projects", follow_redirects=False)
        client.cookies.clear()
        assert page.status_code == 503 and "try again" in page.text.lower()

        own_postgres.start()
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses.append(client.get("/api/v1/projects", headers=bearer).status_code)
            if statuses[-1] == 200:
                break
            time.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}, statuses  # never a 500 on the way back
    finally:
        store.close()


def test_a_connection_lost_mid_session_is_unavailable_and_the_next_session_works(tmp_path):
    store = open_store("postgres", tmp_path)
    try:
        store.init_schema()
        with store.session() as session:
            pid = session.query_one("SELECT pg_backend_pid()")
            with psycopg.connect(store.url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            with pytest.raises(StoreUnavailable):
                session.query("SELECT count(*) FROM person")
        with store.session() as fresh:
            assert fresh.query_one("SELECT count(*) FROM person") == 0
    finally:
        drop_store(store)
