"""Every command's ``--db`` is the one option defined in mercia.cdm.cli (same name, same help)."""

from __future__ import annotations

import typer.main

from mercia.cdm.cli import DB_HELP
from mercia.cli import app


def _commands(group, path=()):
    """Every leaf command, the root's lazily loaded groups included."""
    if not hasattr(group, "list_commands"):
        yield path, group
        return
    context = type(group).context_class(group)
    for name in group.list_commands(context):
        yield from _commands(group.get_command(context, name), (*path, name))


def test_every_db_option_is_the_shared_one():
    seen = 0
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if "--db" in param.opts:
                seen += 1
                assert param.help.startswith(DB_HELP), (" ".join(path), param.help)
                assert param.required == (param.help == DB_HELP), " ".join(path)
    assert seen >= 60  # 66 commands of every sub-app that opens a store take --db


def test_a_machine_not_set_up_gets_one_line_naming_what_to_set(monkeypatch, tmp_path):
    """No pseudonymisation key, or a configuration file that is not there: one line and exit 2 from any
    command that needs them, never a traceback."""
    from typer.testing import CliRunner

    from mercia.config import load_settings

    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY_FILE", raising=False)
    extract = tmp_path / "extract.hl7"
    extract.write_text("MSH|^~\\&|LAB|R9P|||20240101||ORU^R01|1|P|2.5\r")
    command = ["ingest", "hl7v2", str(extract), "--org", "R9P", "--db", str(tmp_path / "s.duckdb")]
    try:
        for config, said in [(tmp_path / "missing.toml", f"error: configuration file {tmp_path / 'missing.toml'} "
                              "(from MERCIA_CONFIG) does not exist"),
                             (tmp_path / "mercia.toml", "error: no pseudonymisation key: set MERCIA_PSEUDONYM_KEY")]:
            (tmp_path / "mercia.toml").write_text("")
            monkeypatch.setenv("MERCIA_CONFIG", str(config))
            load_settings.cache_clear()
            refused = CliRunner().invoke(app, command)
            assert refused.exit_code == 2 and isinstance(refused.exception, SystemExit)
            assert refused.output.startswith(said)
    finally:
        monkeypatch.undo()
        load_settings.cache_clear()
