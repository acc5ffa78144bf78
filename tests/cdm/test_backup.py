"""`mercia db backup` / `mercia db restore` on every engine: a restore gives back the same rows."""

from __future__ import annotations

import hashlib

from typer.testing import CliRunner

from mercia.cli import app
from tests.cdm.test_cli import PERSON, db_url

runner = CliRunner()
TABLES = ("person", "observation_period", "mercia_note")


def _fingerprint(store) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of the sorted rows of a few tables."""
    out = {}
    for table in TABLES:
        rows = sorted(repr(r) for r in store.query(f'SELECT * FROM "{table}"'))
        out[table] = (len(rows), hashlib.sha256("\\n".join(rows).encode()).hexdigest())
    return out


def _fill(store) -> None:
    store.init_schema()
    store.execute("CREATE TABLE mercia_note (id INTEGER, body VARCHAR)")
    store.execute("INSERT INTO mercia_note VALUES (1, 'O''Brien ü'), (2, NULL)")
    store.execute("INSERT INTO observation_period VALUES (1, 1, DATE '2001-01-01', DATE '2020-12-31', 32817)")


def test_backup_then_restore_gives_back_the_same_rows(store, tmp_path):
    _fill(store)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "person.csv").write_text(PERSON)
    reopen = store.url if store.dialect == "duckdb" else None
    url = db_url(store)
    assert runner.invoke(app, ["db", "load-omop", str(tmp_path / "in"), "--db", url]).exit_code == 0
    backup_file = tmp_path / "store.backup"
    result = runner.invoke(app, ["db", "backup", str(backup_file), "--db", url])
    assert result.exit_code == 0, result.output

    from mercia.cdm import Store
    with (Store.open(reopen) if reopen else Store.open(url)) as live:
        before = _fingerprint(live)
        assert before["person"][0] == 2 and before["mercia_note"][0] == 2
        live.execute("DELETE FROM person WHERE person_id = 1")
        live.execute("DROP TABLE mercia_note")

    again = runner.invoke(app, ["db", "backup", str(backup_file), "--db", url])
    assert again.exit_code == 1 and "exists" in again.output  # a backup is never overwritten
    result = runner.invoke(app, ["db", "restore", str(backup_file), "--db", url, "--replace"])
    assert result.exit_code == 0, result.output
    with (Store.open(reopen) if reopen else Store.open(url)) as restored:
        assert _fingerprint(restored) == before


def test_restore_refuses_a_file_that_is_not_a_backup(tmp_path):
    bogus = tmp_path / "bogus.backup"
    bogus.write_bytes(b"not a database")
    target = tmp_path / "target.duckdb"
    result = runner.invoke(app, ["db", "restore", str(bogus), "--db", str(target)])
    assert result.exit_code == 1 and "error" in result.output
    assert not target.exists()
