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
