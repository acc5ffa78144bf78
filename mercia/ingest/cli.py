"""``mercia ingest``: load one extract (fhir, csv, hl7v2, phenopackets, vcf, nmr, mztab, mwtab), a FHIR Bulk Data
export fetched from a server, or a whole region."""

from __future__ import annotations

import atexit
import gc
from pathlib import Path

import typer

from mercia.cdm.cli import DbOption

app = typer.Typer(help="Load NHS extracts into the pseudonymised, linked CDM.", no_args_is_help=True)

OPT_OUT = typer.Option(None, "--opt-out", help="national data opt-out list (NHS numbers, one per line)")
JSON = typer.Option(False, "--json", help="print the load summary as JSON")


def ods_code(value: str | None) -> str | None:
    """An ``--org`` option's organisation as its ODS code in capitals (None when the option is not given): the
    code is the organisation's key in every row's provenance, so ``rr8`` and ``RR8`` must be one organisation
    (a resend is matched by it)."""
    import re

    from mercia.ingest.load import ODS_CODE, ODS_CODE_REASON

    if value is None:
        return None
    code = value.strip().upper()
    if not re.fullmatch(ODS_CODE, code):
        raise typer.BadParameter(f"{value!r}: {ODS_CODE_REASON} (e.g. RRK or M85001)")
    return code


def _org_option(help_text: str):
    return typer.Option(..., "--org", help=help_text, callback=ods_code)


def _report(summaries, as_json: bool) -> None:
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    if as_json:
        import orjson
        typer.echo(orjson.dumps([asdict(s) for s in summaries], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="Loads")
    counts = ("read", "records", "loaded", "unchanged", "changed", "rejected", "withheld", "flagged", "removed",
              "superseded")
    for column in ("org", "extract", *counts):
        table.add_column(column)
    for s in summaries:
        table.add_row(s.org, s.extract, *(str(getattr(s, name)) for name in counts))
    Console().print(table)


def _load(kind: str, path: Path, org: str, db: str | None, mapping: str | None, opt_out: Path | None,
          manifest: Path | None = None, reid_db: str | None = None, remove_technical_variation: bool = False):
    """One transactional load with a progress spinner, audited; exit 2 when the extract cannot be read."""
    from contextlib import nullcontext

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mercia.cdm import Store
    from mercia.governance.audit import record_cli_write
    from mercia.ingest.csv import MappingError
    from mercia.ingest.fhir import FhirError
    from mercia.ingest.fhir_worker import refusing
    from mercia.ingest.service import default_options, ingest

    options = default_options(kind, opt_out=opt_out)
    # a FHIR load needs no pandas, which pyarrow would import at its first table: ~0.1 s of a cold command's 3.75
    with refusing("pandas") if kind == "fhir" else nullcontext(), Store.open(db) as store, \
            (Store.open(reid_db) if reid_db else nullcontext()) as reid_store, \
            Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                     transient=True) as progress:
        task = progress.add_task(f"{kind} {path.name}", total=None)
        try:
            summary = ingest(store, kind, path, org, mapping=mapping, options=options,
                             on_step=lambda step: progress.update(task, description=step), manifest=manifest,
                             reid_store=reid_store, remove_technical_variation=remove_technical_variation)
        except (FhirError, MappingError) as exc:  # the whole extract is unreadable; nothing was written
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        record_cli_write(store, f"ingest.{kind}", f"org:{org}", extract=path.name, loaded=summary.loaded,
                         rejected=summary.rejected)
    # The stores are closed: nothing the load made needs the collector any more.  At exit the interpreter's
    # last collections would walk every object left, most of them the imports' (pandas, pyarrow, pydantic):
    # 0.1-0.2 s of a command-line load's wall time.  Frozen, they are skipped (refcounted ones are still freed).
    atexit.register(gc.freeze)
    return summary


def _refuse_if_nothing_valid(summary, path: Path) -> None:
    if summary.loaded + summary.unchanged + summary.withheld + summary.removed + summary.superseded == 0:
        typer.echo(f"error: nothing valid was read from {path} ({summary.rejected} records rejected; "
                   "reasons are in mercia_reject and `mercia dq`)", err=True)
        raise typer.Exit(1)


def _run(kind: str, path: Path, org: str, db: str | None, mapping: str | None, opt_out: Path | None,
         as_json: bool, manifest: Path | None = None, reid_db: str | None = None,
         remove_technical_variation: bool = False) -> None:
    summary = _load(kind, path, org, db, mapping, opt_out, manifest, reid_db, remove_technical_variation)
    _report([summary], as_json)
    _refuse_if_nothing_valid(summary, path)


def _command(kind: str, needs_mapping: bool = False):
    def command(path: Path = typer.Argument(..., exists=True, help=f"{kind} file or directory"),
                org: str = _org_option("ODS code of the sending organisation"),
                db: DbOption = None,
                mapping: str = typer.Option(None, "--mapping", help="YAML mapping file or shipped mapping name"),
                opt_out: Path = OPT_OUT, as_json: bool = JSON,
                manifest: Path = typer.Option(None, "--manifest", exists=True,
                                              help="sample manifest CSV (nmr, mztab, mwtab): sample_id -> person"),
                reid_db: str = typer.Option(None, "--reid-db", help="the organisation's own store for its "
                                            "re-identification key map (never the research store)"),
                remove_technical_variation: bool = typer.Option(
                    False, "--remove-technical-variation",
                    help="nmr: adjust for time, plate row/column and spectrometer drift (Ritchie et al. 2023), "
                         "then re-derive composites")) -> None:
        if needs_mapping and not mapping:
            raise typer.BadParameter("CSV extracts need --mapping (e.g. acute_trust, proms or a YAML file)")
        if kind in ("nmr", "mztab", "mwtab") and manifest is None:
            raise typer.BadParameter(f"{kind} files need --manifest (sample_id, nhs_number or local_id, "
                                     "collection_date)")
        if remove_technical_variation and kind != "nmr":
            raise typer.BadParameter("--remove-technical-variation applies to nmr panels only")
        _run(kind, path, org, db, mapping, opt_out, as_json, manifest, reid_db, remove_technical_variation)
    command.__doc__ = f"Load a {kind} extract for one organisation (one transaction; resends are idempotent)."
    return command


for _kind in ("fhir", "csv", "hl7v2", "phenopackets", "vcf", "nmr", "mztab", "mwtab"):
    app.command(name=_kind)(_command(_kind, needs_mapping=_kind == "csv"))


@app.command(name="fhir-export")
def fhir_export(
        base_url: str = typer.Argument(..., help="FHIR server base URL (https)"),
        org: str = _org_option("ODS code of the organisation the server belongs to"),
        out: Path = typer.Option(..., "--out", file_okay=False,
                                 help="directory for the NDJSON files and the export state; run the same "
                                      "command again with it to resume"),
        since: str = typer.Option(None, "--since", help="only resources changed since this date or instant "
                                  "(_since), e.g. 2026-12-01 or 2026-12-01T06:00:00Z"),
        group: str = typer.Option(None, "--group", help="export one Group (Group/ID/$export), not the system"),
        types: str = typer.Option(None, "--types", help="resource types (_type), e.g. Patient,Condition"),
        patients: bool = typer.Option(False, "--patients", help="export every patient's compartment "
                                      "(Patient/$export) rather than the whole system"),
        type_filter: list[str] = typer.Option(None, "--type-filter", help="a search narrowing one type "
                                              "(_typeFilter), e.g. 'Observation?category=laboratory'; repeatable"),
        db: DbOption = None,
        client_id: str = typer.Option(None, "--client-id", envvar="MERCIA_SMART_CLIENT_ID",
                                      help="SMART Backend Services client id (none: an open server)"),
        private_key: Path = typer.Option(None, "--private-key", envvar="MERCIA_SMART_PRIVATE_KEY_FILE",
                                         exists=True, dir_okay=False,
                                         help="PEM private key signing the client assertion (RSA: RS384, "
                                              "EC P-384: ES384); keep it outside the repository"),
        key_id: str = typer.Option(None, "--key-id", help="kid of the key registered with the server "
                                   "(default: its RFC 7638 thumbprint)"),
        token_url: str = typer.Option(None, "--token-url", help="token endpoint (default: from "
                                      "BASE_URL/.well-known/smart-configuration)"),
        scope: str = typer.Option("system/*.read", "--scope", help="scopes asked for, e.g. system/*.rs"),
        concurrency: int = typer.Option(4, "--concurrency", min=1, max=16, help="files downloaded at once"),
        timeout: float = typer.Option(6 * 3600, "--timeout", min=0, help="seconds to wait for the export "
                                      "to be ready (a re-run keeps waiting for the same export)"),
        restart: bool = typer.Option(False, "--restart", help="discard an earlier export in --out and its "
                                     "files, and kick off a new one"),
        opt_out: Path = OPT_OUT, as_json: bool = JSON) -> None:
    """Export from a FHIR server (Bulk Data $export), download the NDJSON and load it like `ingest fhir`.

    Resumable: an interrupted run continues the same export when run again with the same --out."""
    from dataclasses import asdict

    from mercia.ingest.bulk import (
        BulkExportError,
        ExportRequest,
        SmartCredentials,
        first_diagnostics,
        run_export,
        since_instant,
    )
    from mercia.privacy.pseudonym import KeyError_, load_key

    if (client_id is None) != (private_key is None):
        raise typer.BadParameter("SMART Backend Services needs both --client-id and --private-key")
    try:
        load_key()  # before a long export, not after it
    except KeyError_ as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        request = ExportRequest(base_url, group=group, since=since_instant(since) if since else None,
                                types=tuple(t.strip() for t in types.split(",") if t.strip()) if types else (),
                                patients=patients, type_filters=tuple(type_filter or ()))
        credentials = SmartCredentials(client_id, private_key.read_bytes(), key_id=key_id, token_url=token_url,
                                       scope=scope) if client_id else None
        result = run_export(request, out, credentials, concurrency=concurrency, poll_timeout=timeout,
                            restart=restart, on_progress=lambda message: typer.echo(message, err=True))
    except BulkExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    errors = [(f, first_diagnostics(out / f.local)) for f in result.errors if f.lines]
    summary = _load("fhir", out, org, db, None, opt_out) if result.output else None
    if as_json:
        import orjson
        typer.echo(orjson.dumps({
            "transactionTime": result.transaction_time, "resumed": result.resumed,
            "files": [asdict(f) for f in result.files], "load": asdict(summary) if summary else None},
            option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Export of {result.transaction_time}" + (" (resumed)" if result.resumed else ""))
        for column in ("kind", "type", "file", "lines", "bytes"):
            table.add_column(column)
        for f in result.files:
            table.add_row(f.kind, f.type, f.local, str(f.lines), str(f.bytes))
        Console().print(table)
        for f, diagnostics in errors:
            typer.echo(f"server errors: {f.local}: {f.lines} OperationOutcome(s), first: {diagnostics}", err=True)
        if summary:
            _report([summary], False)
    if summary is None:
        typer.echo("the export has no files: nothing to load", err=True)
        return
    _refuse_if_nothing_valid(summary, out)


@app.command()
def region(directory: Path = typer.Argument(..., exists=True, file_okay=False, help="synthetic region directory"),
           db: DbOption = None, opt_out: Path = OPT_OUT, link: bool = typer.Option(True, help="run linkage afterwards"),
           as_json: bool = JSON) -> None:
    """Load every extract of a region (docs/synth.md layout), then link persons across organisations."""
    from rich.progress import Progress

    from mercia.cdm import Store
    from mercia.governance.audit import record_cli_write
    from mercia.ingest.region import ingest_region, plan_region
    from mercia.linkage.probabilistic import link_store
    from mercia.trials.notifications import notify_found_duplicates

    plan = plan_region(directory)
    summaries = []
    with Store.open(db) as store, Progress(transient=True) as progress:
        task = progress.add_task("loading region", total=len(plan) + (1 if link else 0))

        def done(item, summary):
            summaries.append(summary)
            progress.update(task, advance=1, description=f"{item.kind} {item.org}")
            if not progress.console.is_terminal:  # a log (cron, CI) sees no progress bar: a line per extract
                where = item.path.relative_to(directory)
                typer.echo(f"{len(summaries)}/{len(plan)} {item.kind} {item.org} {where}: {summary.loaded} loaded, "
                           f"{summary.rejected} rejected", err=True)

        ingest_region(store, directory, opt_out=opt_out, on_extract=done)
        if summaries and link:
            for warning in link_store(store).left_unmerged:
                progress.console.print(f"[yellow]warning:[/] {warning}")
            notify_found_duplicates(store)
        record_cli_write(store, "ingest.region", f"region:{directory.name}", extracts=len(summaries),
                         loaded=sum(s.loaded for s in summaries), linked=link)
    _report(summaries, as_json)


@app.command()
def link(db: DbOption = None, threshold: float = typer.Option(None, help="match probability (default 0.99)"),
         as_json: bool = JSON) -> None:
    """Probabilistic linkage across every organisation loaded so far (after single-extract loads)."""
    from dataclasses import asdict

    from rich.console import Console

    from mercia.cdm import Store
    from mercia.governance.audit import record_cli_write
    from mercia.linkage.probabilistic import DEFAULT_THRESHOLD, link_store
    from mercia.trials.notifications import notify_found_duplicates

    with Store.open(db) as store:
        result = link_store(store, threshold or DEFAULT_THRESHOLD)
        notify_found_duplicates(store)
        record_cli_write(store, "ingest.link", "persons", records=result.records,
                         links=result.probabilistic_links)
    if as_json:
        import orjson
        typer.echo(orjson.dumps(asdict(result)).decode())
    else:
        Console().print(f"{result.records} organisation records: {result.persons_before} persons before, "
                        f"{result.persons_after} after ({result.probabilistic_links} probabilistic links)")
        for warning in ([result.warning] if result.warning else []) + result.left_unmerged:
            Console(stderr=True).print(f"[yellow]warning:[/] {warning}")
