"""The network's commands are where the issue names them, ``mercia node …`` and ``mercia hub …``, and only there."""

from __future__ import annotations

from typer.testing import CliRunner

from mercia.cli import app

runner = CliRunner()


def test_a_node_key_made_and_enrolled_with_the_root_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("MERCIA_DATA_DIR", str(tmp_path / "data"))  # the hub's audit key stays in the test
    key = tmp_path / "node.key"
    made = runner.invoke(app, ["node", "keygen", "--out", str(key)])
    assert made.exit_code == 0, made.output
    public = tmp_path / "node.key.pub"
    assert key.exists() and public.exists()
    enrolled = runner.invoke(app, ["hub", "enrol", "--db", str(tmp_path / "hub.duckdb"), "--org", "M85001",
                                   "--public-key", str(public), "--name", "Example Practice"])
    assert enrolled.exit_code == 0, enrolled.output
    assert "enrolled M85001" in enrolled.output
    again = runner.invoke(app, ["hub", "enrol", "--db", str(tmp_path / "hub.duckdb"), "--org", "M85002",
                                "--public-key", str(tmp_path / "missing.pub"), "--name", "No Key"])
    assert again.exit_code != 0  # a public key file that is not there is refused before the hub is opened


def test_the_groups_are_not_also_under_federation():
    assert runner.invoke(app, ["federation", "hub", "--help"]).exit_code != 0
    assert runner.invoke(app, ["federation", "node", "--help"]).exit_code != 0
    assert runner.invoke(app, ["federation", "demo", "--help"]).exit_code == 0
