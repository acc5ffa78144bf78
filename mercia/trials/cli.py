"""``mercia trials``: register trials, check feasibility, pre-screen, record recruitment, randomise, CONSORT.

Every command acts as a registered Mercia user (``--as``) and goes through the same rules and audit as
the API; ``simulate`` needs no store and writes one row per simulated participant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mercia.cdm.cli import DbOption
from mercia.trials.crf.cli import app as crf_app
from mercia.trials.crf.cli import password_for

app = typer.Typer(help="Clinical trials: register, feasibility, worklists, recruitment, randomisation, CONSORT.",
                  no_args_is_help=True)
app.add_typer(crf_app, name="crf")

AS = typer.Option(..., "--as", help="the Mercia username you act as")
TRIAL = typer.Option(..., "--trial", help="trial id (ISRCTN/EudraCT/IRAS)")
JSON = typer.Option(False, "--json", help="print JSON")


def _context(db: str | None, username: str):
    from mercia.cdm import Store
    from mercia.governance import Governance
    from mercia.trials.register import TrialRegister

    store = Store.open(db)
    gov = Governance(store)
    user = gov.user_by_name(username)
    if user is None:
        typer.echo(f"no Mercia user {username!r}", err=True)
        raise typer.Exit(2)
    return TrialRegister(store, gov), user


def _run(action):
    """Run ``action``; a refusal is printed as one line and exits 1 (no traceback)."""
    from mercia.governance import GovernanceError
    from mercia.trials.randomise import RandomisationError

    try:
        return action()
    except (GovernanceError, RandomisationError) as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from None


def _print(rows: list[dict], as_json: bool) -> None:
    import orjson
    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table()
    for col in rows[0] if rows else []:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    Console().print(table)


@app.command()
def create(trial_id: str = typer.Option(..., "--id", help="ISRCTN, EudraCT or IRAS number"),
           title: str = typer.Option(..., "--title"), project: int = typer.Option(..., "--project"),
           sponsor: str = typer.Option(..., "--sponsor"), chief: str = typer.Option(..., "--chief-investigator"),
           sites: list[str] = typer.Option(..., "--site", help="an ODS code; repeat per site"),
           target: int = typer.Option(..., "--target"), opens: str = typer.Option(..., "--opens"),
           closes: str = typer.Option(..., "--closes"),
           eligibility: Path | None = typer.Option(None, "--eligibility", help="ATLAS/Circe cohort JSON"),
           saved_cohort: int | None = typer.Option(None, "--saved-cohort", help="a cohort saved in the project"),
           settings: Path = typer.Option(..., "--settings", help="randomisation settings JSON"),
           manual: list[str] = typer.Option([], "--manual", help="a criterion confirmed at screening; repeat"),
           blinded: bool = typer.Option(False, "--blinded"), db: DbOption = None, username: str = AS) -> None:
    """Register a trial (its eligibility is a cohort definition; you become its trial manager)."""
    import orjson

    register, user = _context(db, username)
    if (eligibility is None) == (saved_cohort is None):
        raise typer.BadParameter("give exactly one of --eligibility FILE or --saved-cohort ID")
    if eligibility is not None:
        expression = eligibility.read_text()
    else:
        row = register.db.row("SELECT expression FROM mercia_cohort WHERE id = ? AND project_id = ?",
                              [saved_cohort, project])
        if row is None:
            raise typer.BadParameter(f"project {project} has no saved cohort {saved_cohort}")
        expression = row["expression"]
    trial = _run(lambda: register.create(
        user, trial_id=trial_id, title=title, project_id=project, sponsor=sponsor, chief_investigator=chief,
        sites=sites, target=target, opens_on=opens, closes_on=closes, eligibility=expression,
        settings=orjson.loads(settings.read_bytes()), manual_criteria=manual, blinded=blinded))
    typer.echo(f"created trial {trial.trial_id} (eligibility cohort {trial.cohort_id}, settings v{trial.version})")


@app.command()
def grant(trial: str = TRIAL, member: str = typer.Option(..., "--user"), role: str = typer.Option(..., "--role"),
          site: str = typer.Option("", "--site"), db: DbOption = None, username: str = AS) -> None:
    """Give a user a role on the trial (trial managers only)."""
    register, user = _context(db, username)
    target = register.gov.user_by_name(member)
    if target is None:
        raise typer.BadParameter(f"no Mercia user {member!r}")
    _run(lambda: register.grant(user, trial, target.id, role, site))
    typer.echo(f"{member} is now {role}{' at ' + site if site else ''} on {trial}")


@app.command()
def revoke(trial: str = TRIAL, member: str = typer.Option(..., "--user"), role: str = typer.Option(..., "--role"),
           site: str = typer.Option("", "--site"), reason: str = typer.Option(..., "--reason"),
           db: DbOption = None, username: str = AS) -> None:
    """End a user's role on the trial from now, with a reason (trial managers; never the last manager)."""
    register, user = _context(db, username)
    target = register.gov.user_by_name(member)
    if target is None:
        raise typer.BadParameter(f"no Mercia user {member!r}")
    _run(lambda: register.revoke(user, trial, target.id, role, site, reason))
    typer.echo(f"{member} is no longer {role}{' at ' + site if site else ''} on {trial}")


@app.command("sign-delegation")
def sign_delegation(trial: str = TRIAL, member: str = typer.Option(..., "--member", help="whose role is signed off"),
                    role: str = typer.Option(..., "--role"), site: str = typer.Option("", "--site"),
                    meaning: str = typer.Option(..., "--meaning", help="what your signature means"),
                    signer: str = typer.Option(..., "--user", help="your Mercia username (password prompted or "
                                               "MERCIA_PASSWORD)"),
                    db: DbOption = None) -> None:
    """Sign off a member's held role in the delegation log with your password (the site's investigator for its
    staff; a trial manager for trial-wide roles and for site investigators' own)."""
    register, user = _context(db, signer)
    target = register.gov.user_by_name(member)
    if target is None:
        raise typer.BadParameter(f"no Mercia user {member!r}")
    password = password_for(signer)
    _run(lambda: register.sign_delegation(user, trial, target.id, role, site, signer, password, meaning))
    typer.echo(f"signed off {member}'s role {role}{' at ' + site if site else ''} on {trial}")


@app.command()
def team(trial: str = TRIAL, ended: bool = typer.Option(False, "--all", help="the whole delegation log, ended "
                                                         "roles too (trial managers)"),
         out: Path | None = typer.Option(None, "--out", help="write the log as CSV here (trial master file)"),
         db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """Who holds which role at which site, since when and granted by whom (any team member); with --all the
    delegation log's ended periods too."""
    from mercia.trials.register import delegation_log_csv

    register, user = _context(db, username)
    rows = _run(lambda: register.team(user, trial, ended=ended))
    if out is None:
        _print(rows, as_json)
        return
    out.write_text(delegation_log_csv(rows))
    typer.echo(f"wrote {len(rows)} rows to {out}")


def _rerun_eligibility(register, user, trial: str, site: str | None = None) -> None:
    """``--run``: the eligibility cohort run again (for the trial, or for ``site``'s worklist), said on stderr."""
    from mercia.trials.prescreen import rerun_eligibility

    done = _run(lambda: rerun_eligibility(register, user, trial, site))
    typer.echo(f"eligibility run again: {done['persons']} people meet the criteria", err=True)


@app.command()
def feasibility(trial: str = TRIAL, years: int = typer.Option(10, "--years"),
                as_of: str | None = typer.Option(None, "--as-of"), consent: float = typer.Option(0.5, "--consent"),
                screen_failure: float = typer.Option(0.3, "--screen-failure"),
                horizon: int = typer.Option(24, "--horizon", help="months to project"),
                rerun: bool = typer.Option(False, "--run", help="run the eligibility cohort again first, so that "
                                           "data loaded since its last run count"),
                db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """Newly eligible per site and month, the prevalent pool and projected recruitment (controlled), as the
    eligibility cohort's last run found them."""
    import orjson

    from mercia.trials.feasibility import feasibility as run

    register, user = _context(db, username)
    if rerun:
        _rerun_eligibility(register, user, trial)
    result = _run(lambda: run(register, user, trial, years=years, as_of=as_of, consent=consent,
                              screen_failure=screen_failure, horizon=horizon))
    if as_json:
        typer.echo(orjson.dumps(result.to_json_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    for name in ("pool", "projection"):
        table = result.table(name)
        typer.echo(table.title)
        _print(table.display_rows(), False)
        for note in table.notes:
            typer.echo(note)


@app.command()
def worklist(trial: str = TRIAL, site: str = typer.Option(..., "--site"),
             since: str | None = typer.Option(None, "--since", help="only first found eligible on/after this date"),
             org_db: str | None = typer.Option(None, "--org-db", help="your organisation's re-identification store: "
                                               "show NHS numbers and MRNs (care team only)"),
             run: bool = typer.Option(False, "--run", help="run the eligibility cohort again first, so that data "
                                      "loaded since its last run count"),
             db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """The site's pre-screening worklist as the eligibility cohort's last run found it (pseudonymous; identities
    with --org-db for its care team)."""
    from mercia.cdm import Store
    from mercia.trials.prescreen import ReidentificationService
    from mercia.trials.prescreen import worklist as build

    register, user = _context(db, username)
    if run:
        _rerun_eligibility(register, user, trial, site)
    if org_db:
        service = ReidentificationService(Store.open(org_db), site)
        rows = _run(lambda: service.worklist(register, user, trial, since=since))
    else:
        rows = _run(lambda: build(register, user, trial, site, since=since))
    _print(rows, as_json)


@app.command()
def status(trial: str = TRIAL, person: int = typer.Option(..., "--person"),
           new_status: str = typer.Option(..., "--status"), site: str = typer.Option(..., "--site"),
           reason: str = typer.Option("", "--reason"),
           confirmed: list[str] = typer.Option([], "--confirmed", help="a manual criterion confirmed; repeat"),
           on: str | None = typer.Option(None, "--on", help="date it happened (default today)"),
           db: DbOption = None, username: str = AS) -> None:
    """Record a recruitment status (identified ... consented, ineligible, declined, withdrawn)."""
    from mercia.trials.recruitment import Recruitment

    register, user = _context(db, username)
    _run(lambda: Recruitment(register).record(user, trial, person, new_status, site=site, reason=reason, on=on,
                                              confirmed=confirmed))
    typer.echo(f"person {person} on {trial}: {new_status}")


@app.command()
def randomise(trial: str = TRIAL, person: int = typer.Option(..., "--person"),
              level: list[str] = typer.Option([], "--level", help="factor=level; repeat per factor"),
              db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """Randomise a consented, eligible participant (the key comes from $MERCIA_RANDOMISATION_KEY[_FILE])."""
    from mercia.trials.recruitment import Recruitment

    levels = {}
    for item in level:
        if "=" not in item:
            raise typer.BadParameter(f"--level {item!r}: write factor=level")
        name, value = item.split("=", 1)
        levels[name.strip()] = value.strip()
    register, user = _context(db, username)
    shown = _run(lambda: Recruitment(register).randomise(user, trial, person, levels))
    _print([shown], as_json)


@app.command()
def unblind(trial: str = TRIAL, person: int = typer.Option(..., "--person"), reason: str = typer.Option(..., "--reason"),
            db: DbOption = None, username: str = AS) -> None:
    """Emergency unblinding (site investigator or trial manager): audited and notified."""
    from mercia.trials.recruitment import Recruitment

    register, user = _context(db, username)
    shown = _run(lambda: Recruitment(register).unblind(user, trial, person, reason))
    typer.echo(f"person {person} on {trial}: arm {shown['arm']} (pack {shown['pack_code']})")


@app.command()
def duplicates(trial: str = TRIAL, db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """Suspected duplicate enrolments linkage found (one human randomised twice): the open ones, one row per
    randomisation (trial managers and statisticians; arms as your role may see them)."""
    from mercia.trials.duplicates import DuplicateEnrolments

    register, user = _context(db, username)
    rows = _run(lambda: DuplicateEnrolments(register).open(user, trial))
    if rows or as_json:
        _print(rows, as_json)
    else:
        typer.echo(f"no open duplicate enrolments on {trial}")


@app.command("resolve-duplicate")
def resolve_duplicate(trial: str = TRIAL, keep: int = typer.Option(..., "--keep", help="the person whose "
                                                                    "randomisation stands (suggested: the first)"),
                      reason: str = typer.Option(..., "--reason"),
                      duplicate: int | None = typer.Option(None, "--duplicate", help="the duplicate_id, to check "
                                                           "the person is in it"),
                      db: DbOption = None, username: str = AS) -> None:
    """Resolve a duplicate enrolment (trial managers): keep one randomisation, set the others aside (audited)."""
    from mercia.trials.duplicates import DuplicateEnrolments

    register, user = _context(db, username)
    done = _run(lambda: DuplicateEnrolments(register).resolve(user, trial, keep, reason, duplicate))
    typer.echo(f"duplicate enrolment {done['duplicate_id']} on {trial}: kept person {keep}'s randomisation; set aside "
               f"{', '.join(map(str, done['set_aside']))}; the next link run merges them"
               + (f"; eCRF record {', '.join(done['crf_records_set_aside'])} set aside (kept, not exported)"
                  if done["crf_records_set_aside"] else ""))


@app.command()
def notifications(trial: str = TRIAL, mark_read: bool = typer.Option(False, "--mark-read", help="then mark those "
                                                                    "listed read (audited)"),
                  db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """Your notifications on the trial, newest first (unblindings, duplicate enrolments found and resolved);
    anyone with a role on it sees their own."""
    from mercia.trials.notifications import TrialNotifications

    register, user = _context(db, username)
    service = TrialNotifications(register)
    rows = _run(lambda: service.for_user(user, trial))
    if rows or as_json:
        _print(rows, as_json)
    else:
        typer.echo(f"no notifications on {trial}")
    if mark_read and rows:
        marked = _run(lambda: service.mark_read(user, trial, up_to=rows[0]["created_at"]))
        typer.echo(f"{marked} marked read", err=as_json)


@app.command("screening-log")
def screening_log(trial: str = TRIAL, out: Path | None = typer.Option(None, "--out", help="write CSV here"),
                  db: DbOption = None, username: str = AS, as_json: bool = JSON) -> None:
    """The screening log (every status recorded) for the trial team."""
    import csv

    from mercia.privacy.spreadsheet import inert_rows
    from mercia.trials.recruitment import Recruitment

    register, user = _context(db, username)
    rows = _run(lambda: Recruitment(register).screening_log(user, trial))
    if out is None:
        _print(rows, as_json)
        return
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["person_id", "site", "status", "reason", "recorded_on",
                                                    "recorded_by"])
        writer.writeheader()
        writer.writerows(inert_rows(rows))
    typer.echo(f"wrote {len(rows)} rows to {out}")


@app.command()
def consort(trial: str = TRIAL, out: Path = typer.Option(..., "--out", help="file name without suffix"),
            external: bool = typer.Option(False, "--external", help="for use beyond the trial team: "
                                          "counts pass disclosure control"),
            db: DbOption = None, username: str = AS) -> None:
    """Draw the CONSORT flow diagram from the screening log as SVG and PNG."""
    from mercia.trials.consort import consort as draw

    register, user = _context(db, username)
    result = _run(lambda: draw(register, user, trial, out, external=external))
    typer.echo("wrote " + ", ".join(result["files"]))


@app.command()
def simulate(method: str = typer.Option(..., "--method", help="simple|block|stratified|minimisation"),
             participants: int = typer.Option(200, "--participants", min=1),
             factors: int = typer.Option(3, "--factors", min=0), seed: int = typer.Option(..., "--seed"),
             probability: float = typer.Option(0.8, "--probability", help="minimisation's biased coin"),
             out: Path = typer.Option(..., "--out", help="CSV: participant,arm,factor_1..factor_K")) -> None:
    """Simulate one trial (two arms 1:1, 2-3 random levels per factor) so balance can be checked independently."""
    import csv

    from mercia.trials.randomise import marginal_imbalance
    from mercia.trials.randomise import simulate as run

    rows = _run(lambda: run(method, participants, factors, seed, probability))
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    names = [f"factor_{i + 1}" for i in range(factors)]
    arms = [r["arm"] for r in rows]
    typer.echo(f"wrote {len(rows)} participants to {out}: A={arms.count('A')} B={arms.count('B')}, "
               f"marginal imbalance (sum over levels of |A-B|) = {marginal_imbalance(rows, names)}")
