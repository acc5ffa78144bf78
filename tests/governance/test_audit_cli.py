"""``mercia audit verify``: exit 0 on an intact chain, 1 naming the entry when one was altered."""

from __future__ import annotations

import orjson
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
