"""``mercia audit verify``: exit 0 on an intact chain, 1 naming the entry when one was altered."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from mercia.cdm import Store
from mercia.cli import app
from mercia.governance import Governance, Role


def test_audit_verify_cli_detects_alteration(tmp_path):
    db = str(tmp_path / "audit.duckdb")
    runner = CliRunner()
    added = runner.invoke(app, ["audit", "add-user", "boss", "--name", "Boss", "--role", "admin", "--db", db])
    assert added.exit_code == 0, added.output
    with Store(db) as store:
        gov = Governance(store)
        gov.create_user("ann", "Ann", "a long password!", [(Role.RESEARCHER, "")])
    ok = runner.invoke(app, ["audit", "verify", "--db", db, "--json"])
    assert ok.exit_code == 0 and orjson.loads(ok.output)["entries"] == 2
    listed = runner.invoke(app, ["audit", "list", "--db", db, "--json"])
    assert [e["action"] for e in orjson.loads(listed.output)] == ["user.create", "user.create"]
    with Store(db) as store:
        store.execute("UPDATE mercia_audit SET detail = '{\"roles\":[\"admin:\"]}' WHERE seq = 2")
    bad = runner.invoke(app, ["audit", "verify", "--db", db])
    assert bad.exit_code == 1 and "entry 2 was altered" in bad.output


def _store_with_entries(tmp_path, n: int = 6) -> str:
    db = str(tmp_path / "chain.duckdb")
    with Store(db) as store:
        gov = Governance(store)
        for i in range(n):
            gov.audit.record("tester", "test.write", f"thing:{i}")
    return db


def _verify(db: str):
    return CliRunner().invoke(app, ["audit", "verify", "--db", db])


def test_audit_verify_detects_truncation(tmp_path):
    db = _store_with_entries(tmp_path)
    assert _verify(db).exit_code == 0
    with Store(db) as store:
        store.execute("DELETE FROM mercia_audit WHERE seq >= 5")  # cut off the newest two
    bad = _verify(db)
    assert bad.exit_code == 1 and "cut off" in bad.output


def _rewrite(db: str, key: bytes, forge) -> None:
    """Rebuild the whole chain under ``key`` with ``forge(row)`` applied to each row first."""
    from mercia.governance.audit import GENESIS, entry_hash

    with Store(db) as store:
        rows = store.query_dicts("SELECT * FROM mercia_audit ORDER BY seq")
        store.execute("DELETE FROM mercia_audit")
        prev = GENESIS
        for r in map(forge, rows):
            digest = entry_hash(key, prev, r["seq"], r["logged_at"], r["actor"], r["action"], r["target"],
                                r["project_id"], r["detail"])
            store.execute("INSERT INTO mercia_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [r["seq"], r["logged_at"], r["actor"], r["action"], r["target"], r["project_id"],
                           r["detail"], prev, digest])
            prev = digest


def test_audit_verify_detects_rewrite_without_the_key(tmp_path):
    """A forger with the database but not the key rebuilds a consistent chain under a key of their own."""
    db = _store_with_entries(tmp_path)
    _rewrite(db, b"x" * 32, lambda r: r | {"actor": "forger"} if r["seq"] == 2 else r)
    bad = _verify(db)
    assert bad.exit_code == 1 and "entry 1 was altered" in bad.output


def test_audit_verify_detects_rewrite_even_with_the_key(tmp_path):
    """Someone holding the key rewrites history consistently: the anchored heads still disagree."""
    from mercia.governance.audit import load_audit_key

    db = _store_with_entries(tmp_path)
    _rewrite(db, load_audit_key(), lambda r: r | {"target": "thing:forged"} if r["seq"] == 3 else r)
    bad = _verify(db)
    assert bad.exit_code == 1 and "entry 3 differs from its anchored hash" in bad.output


def test_anchor_only_after_commit(tmp_path):
    db = _store_with_entries(tmp_path, 2)
    with Store(db) as store:
        gov = Governance(store)
        try:
            with gov.db.transaction():
                gov.audit.record("tester", "test.write", "rolled back")
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        assert max(gov.audit.anchor.read()) == 2
        gov.audit.record("tester", "test.write", "kept")
        assert gov.audit.verify().ok and max(gov.audit.anchor.read()) == 3


def test_cli_writes_are_audited(tmp_path):
    from mercia.governance.audit import record_cli_write

    db = str(tmp_path / "cli.duckdb")
    with Store(db) as store:
        record_cli_write(store, "ingest.fhir", "org:RRK", extract="bundle.ndjson", loaded=3)
        entry = Governance(store).audit.search(action="ingest.fhir")[0]
    assert entry["actor"].startswith("cli:") and entry["detail"]["loaded"] == 3


def test_audit_key_never_inside_the_repository(monkeypatch):
    from mercia.config import load_settings
    from mercia.governance import GovernanceError
    from mercia.governance.audit import load_audit_key

    monkeypatch.delenv("MERCIA_AUDIT_KEY", raising=False)
    monkeypatch.setenv("MERCIA_AUDIT_KEY_FILE", "pyproject.toml")
    load_settings.cache_clear()
    try:
        with pytest.raises(GovernanceError, match="inside the repository"):
            load_audit_key()
    finally:
        monkeypatch.delenv("MERCIA_AUDIT_KEY_FILE")
        load_settings.cache_clear()


def test_reset_second_factor_cli(tmp_path):
    import pyotp

    db = str(tmp_path / "twofa.duckdb")
    with Store(db) as store:
        gov = Governance(store)
        user = gov.create_user("lead", "Lead", "tea kettle orbit lamp", [(Role.PILLAR_LEAD, "cancer")])
        secret, _ = gov.begin_enrolment(user)
        gov.confirm_enrolment(user, pyotp.TOTP(secret).now())
    assert CliRunner().invoke(app, ["audit", "reset-second-factor", "nobody", "--db", db]).exit_code == 1
    done = CliRunner().invoke(app, ["audit", "reset-second-factor", "lead", "--db", db])
    assert done.exit_code == 0, done.output
    with Store(db) as store:
        gov = Governance(store)
        assert not gov.second_factor_enrolled(gov.user_by_name("lead"))
        assert gov.audit.search(action="user.totp_reset")[0]["actor"].startswith("cli:")


def test_cli_ingest_and_link_are_audited(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "ef" * 32)
    db = str(tmp_path / "ingest.duckdb")
    runner = CliRunner()
    loaded = runner.invoke(app, ["ingest", "hl7v2", str(shared_data / "hl7v2/oru_lab"), "--org", "R9P", "--db", db])
    assert loaded.exit_code == 0, loaded.output
    assert runner.invoke(app, ["ingest", "link", "--db", db]).exit_code == 0
    with Store(db) as store:
        entries = Governance(store).audit.search()
    assert [e["action"] for e in entries] == ["ingest.link", "ingest.hl7v2"]
    assert entries[1]["target"] == "org:R9P" and entries[1]["detail"]["loaded"] > 0
    assert all(e["actor"].startswith("cli:") for e in entries)
    assert runner.invoke(app, ["audit", "verify", "--db", db]).exit_code == 0


def test_audit_verify_names_the_legacy_unkeyed_format(tmp_path):
    from mercia.governance.audit import GENESIS, legacy_entry_hash

    db = str(tmp_path / "legacy.duckdb")
    with Store(db) as store:
        Governance(store)  # the tables
        at, detail = "2026-01-02T03:04:05.000000Z", "{}"
        digest = legacy_entry_hash(GENESIS, 1, at, "admin", "user.create", "user:1", None, detail)
        store.execute("INSERT INTO mercia_audit VALUES (1, ?, 'admin', 'user.create', 'user:1', NULL, ?, ?, ?)",
                      [at, detail, GENESIS, digest])
        store.execute("UPDATE mercia_audit_head SET seq = 1, hash = ? WHERE id = 1", [digest])
    legacy = CliRunner().invoke(app, ["audit", "verify", "--db", db])
    assert legacy.exit_code == 1
    assert "legacy unkeyed format" in legacy.output and "entry 1" in legacy.output
    assert "altered" not in legacy.output
