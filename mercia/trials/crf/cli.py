"""``mercia trials crf``: eCRF studies from the command line (dictionary versions, schedule, exports, audit trail).

Each command acts as a registered user, who signs in with their password (prompted, or from
``MERCIA_PASSWORD`` for scripts), so the audit trail names a person and the study roles apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mercia.cdm.cli import DbOption

app = typer.Typer(help="Electronic case report forms (REDCap dictionaries, data, ODM export).", no_args_is_help=True)

USER = typer.Option(..., "--user", help="your Mercia username (password prompted or MERCIA_PASSWORD)")


def password_for(username: str) -> str:
    """The signing-in user's password: ``MERCIA_PASSWORD`` for scripts, else prompted (never an option)."""
    return os.environ.get("MERCIA_PASSWORD") or typer.prompt(f"password for {username}", hide_input=True)


def _session(db: str | None, username: str):
    from mercia.cdm import Store
    from mercia.governance import Governance, GovernanceError
    from mercia.trials.crf.service import CrfService

    gov = Governance(Store.open(db))
    try:
        user = gov.authenticate(username, password_for(username))
    except GovernanceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    return CrfService(gov), user


def _run(action):
    """Run a service call; governance refusals become a one-line error and exit code 1."""
    from mercia.governance import GovernanceError
    from mercia.trials.crf.dictionary import DictionaryError

    try:
        return action()
    except (GovernanceError, DictionaryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("create-study")
def create_study(name: str, title: str = typer.Option(..., "--title"), user: str = USER, db: DbOption = None) -> None:
    """Create a study; you become its data manager."""
    crf, actor = _session(db, user)
    _run(lambda: crf.create_study(actor, name, title))
    typer.echo(f"created study {name}")


@app.command("add-member")
def add_member(study: str, username: str, role: str = typer.Option(..., "--role",
               help="data_entry, monitor, investigator or data_manager"), user: str = USER, db: DbOption = None) -> None:
    """Give someone a role in a study."""
    crf, actor = _session(db, user)
    _run(lambda: crf.add_member(actor, study, username, role))
    typer.echo(f"{username} is {role} in {study}")


@app.command("remove-member")
def remove_member(study: str, username: str, role: str = typer.Option(..., "--role",
                  help="data_entry, monitor, investigator or data_manager"),
                  reason: str = typer.Option(..., "--reason", help="why the role ends"),
                  user: str = USER, db: DbOption = None) -> None:
    """End someone's role in a study from now (data managers; never the last data manager)."""
    crf, actor = _session(db, user)
    _run(lambda: crf.remove_member(actor, study, username, role, reason))
    typer.echo(f"{username} is no longer {role} in {study}")


@app.command("team")
def team(study: str, as_json: bool = typer.Option(False, "--json", help="one JSON list instead of a table"),
         user: str = USER, db: DbOption = None) -> None:
    """Who holds which role in a study now (data managers and monitors; the read is audited)."""
    import orjson

    crf, actor = _session(db, user)
    holders = _run(lambda: crf.team(actor, study))
    if as_json:
        typer.echo(orjson.dumps(holders).decode())
        return
    for holder in holders:
        typer.echo(f"{holder['role']:<13} {holder['username']:<20} {holder['display_name'] or ''}".rstrip())


@app.command("invite")
def invite(study: str, record_id: str, event: str = typer.Option(..., "--event"), form: str = typer.Option(..., "--form"),
           days: int = typer.Option(14, "--days", help="how long the link stays valid (1 to 90 days)"),
           base_url: str | None = typer.Option(None, "--base-url", help="the server's address, to print the full link"),
           user: str = USER, db: DbOption = None) -> None:
    """Send one scheduled form to its participant as a survey: prints the single-use link (shown this once;
    send it yourself by text or e-mail).  A new link replaces the form's earlier open one."""
    from datetime import timedelta

    from mercia.trials.crf.surveys import SurveyService

    crf, actor = _session(db, user)
    sent = _run(lambda: SurveyService(crf).invite(actor, study, record_id, event, form, timedelta(days=days)))
    typer.echo(f"{base_url.rstrip('/')}{sent['path']}" if base_url else sent["path"])
    typer.echo(f"survey link {sent['id']} for {record_id} {event}/{form}, valid until {sent['expires_at']}", err=True)


@app.command("invitations")
def invitations(study: str, record_id: str | None = typer.Option(None, "--record"),
                user: str = USER, db: DbOption = None) -> None:
    """The study's survey links, newest first, with their status (open, used, expired, revoked)."""
    from mercia.trials.crf.surveys import SurveyService

    crf, actor = _session(db, user)
    for s in _run(lambda: SurveyService(crf).invitations(actor, study, record_id)):
        typer.echo(f"{s['id']:>5} {s['status']:<8} {s['record']:<12} {s['event']}/{s['form']}  sent by {s['created_by']} "
                   f"{s['created_at'][:16]}, expires {s['expires_at'][:16]}")


@app.command("import-dictionary")
def import_dictionary(study: str, path: Path = typer.Argument(..., exists=True, dir_okay=False),
                      reason: str = typer.Option("", "--reason", help="why the dictionary changes (needed after v1)"),
                      force: bool = typer.Option(False, "--force", help="apply even if collected data would be orphaned"),
                      dry_run: bool = typer.Option(False, "--dry-run", help="show the diff only"),
                      user: str = USER, db: DbOption = None) -> None:
    """Add a REDCap data dictionary as the study's next version, showing the diff; never a silent replacement."""
    from mercia.trials.crf.dictionary import read_dictionary

    crf, actor = _session(db, user)
    text = path.read_text(encoding="utf-8-sig")
    if dry_run:
        plan = _run(lambda: crf.plan_migration(crf.study(study), read_dictionary(text)))
    else:
        plan = _run(lambda: crf.import_dictionary(actor, study, text, reason=reason, force=force))
    for change in plan.changes:
        typer.echo(f"{change.kind:8} {change.field}" + "".join(
            f"\n         {column}: {old!r} -> {new!r}" for column, (old, new) in change.columns.items()))
    for orphan in plan.orphans:
        typer.echo(f"ORPHANS  {orphan}")
    state = "applied" if plan.applied else "not applied (dry run)" if dry_run else "no changes"
    typer.echo(f"version {plan.version}: {len(plan.changes)} changes, {state}")


@app.command("export-dictionary")
def export_dictionary(study: str, out: Path = typer.Option(..., "--out"), user: str = USER, db: DbOption = None) -> None:
    """Write the study's current data dictionary as REDCap CSV."""
    from mercia.trials.crf.dictionary import write_dictionary
    from mercia.trials.crf.service import StudyRole

    crf, actor = _session(db, user)
    found = _run(lambda: crf.study(study))
    _run(lambda: crf.require(actor, found, *StudyRole))
    out.write_text(write_dictionary(found.dictionary), encoding="utf-8")
    typer.echo(f"version {found.dictionary_version}: {len(found.dictionary.fields)} fields -> {out}")


@app.command("add-event")
def add_event(study: str, event: str, arm: str = typer.Option("arm_1", "--arm"),
              label: str = typer.Option("", "--label"), form: list[str] = typer.Option(..., "--form"),
              day: int = typer.Option(0, "--day", help="days after the participant's start date"),
              before: int = typer.Option(0, "--window-before"), after: int = typer.Option(0, "--window-after"),
              user: str = USER, db: DbOption = None) -> None:
    """Add a visit (event) with its window and forms to an arm of the schedule."""
    crf, actor = _session(db, user)
    _run(lambda: crf.add_event(actor, study, arm, event, label or event, form, day, before, after))
    typer.echo(f"event {event} ({arm}) with {', '.join(form)}")


@app.command("add-participant")
def add_participant(study: str, record_id: str, arm: str = typer.Option(..., "--arm"),
                    start: str = typer.Option(..., "--start", help="start date YYYY-MM-DD (e.g. randomisation)"),
                    person_id: int | None = typer.Option(None, "--person-id"), user: str = USER,
                    db: DbOption = None) -> None:
    """Enrol a randomised participant in the study's schedule."""
    crf, actor = _session(db, user)
    _run(lambda: crf.add_participant(actor, study, record_id, arm, start, person_id))
    typer.echo(f"record {record_id} in {arm}")


@app.command("link-trial")
def link_trial(study: str, trial: str = typer.Option(..., "--trial", help="trial id"),
               arm: list[str] = typer.Option(..., "--arm", help="TRIAL_ARM=SCHEDULE_ARM, once per trial arm"),
               user: str = USER, db: DbOption = None) -> None:
    """Take the study's participants from the trial's randomisation (trial manager and data manager)."""
    from mercia.trials.recruitment import Recruitment
    from mercia.trials.register import TrialRegister

    crf, actor = _session(db, user)
    pairs = [a.split("=", 1) for a in arm]
    if any(len(p) != 2 for p in pairs):
        raise typer.BadParameter("--arm is TRIAL_ARM=SCHEDULE_ARM")
    recruitment = Recruitment(TrialRegister(crf.db.store, crf.gov))
    _run(lambda: recruitment.link_study(actor, trial, study, dict(pairs)))
    typer.echo(f"study {study} takes its participants from trial {trial}")


@app.command()
def export(study: str, out: Path = typer.Option(..., "--out"),
           format: str = typer.Option("odm", "--format", help="odm, flat or redcap"),
           history: bool = typer.Option(False, "--history", help="ODM: every change with its audit record "
                                                                  "(a transactional file), not the current values"),
           set_aside: bool = typer.Option(False, "--set-aside", help="the records set aside as duplicate "
                                                                      "randomisations instead of the participants"),
           include_identifiers: bool = typer.Option(False, "--include-identifiers", help="the fields the dictionary "
                                                    "flags as identifiers too (data managers only)"),
           user: str = USER, db: DbOption = None) -> None:
    """Export the study's data (streamed): CDISC ODM 1.3.2, flat CSV or REDCap-compatible CSV; identifier fields
    only with --include-identifiers."""
    from mercia.trials.crf.export import write_csv, write_odm

    if format not in ("odm", "flat", "redcap"):
        raise typer.BadParameter("--format is odm, flat or redcap")
    crf, actor = _session(db, user)
    if format == "odm":
        with out.open("wb") as f:
            n = _run(lambda: write_odm(crf, actor, study, f, history=history, set_aside=set_aside,
                                       include_identifiers=include_identifiers))
        typer.echo(f"{n} item values -> {out}")
    else:
        with out.open("w", newline="", encoding="utf-8") as f:
            n = _run(lambda: write_csv(crf, actor, study, f, redcap=format == "redcap", set_aside=set_aside,
                                       include_identifiers=include_identifiers))
        typer.echo(f"{n} participant-event rows -> {out}")


@app.command("audit-trail")
def audit_trail(study: str, out: Path = typer.Option(..., "--out"), record: str | None = typer.Option(None, "--record"),
                user: str = USER, db: DbOption = None) -> None:
    """Write the study's audit trail (who, when, old and new values, reasons) as JSON; the export is audited."""
    import orjson

    crf, actor = _session(db, user)
    entries = _run(lambda: crf.audit_trail(actor, study, record))
    out.write_bytes(orjson.dumps(entries, option=orjson.OPT_INDENT_2))
    typer.echo(f"{len(entries)} audit entries -> {out}")
