"""The federated network's commands: ``mercia hub`` (the hub), ``mercia node`` (a node inside an organisation) and
``mercia federation demo`` (a whole network on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mercia.cdm.cli import RequiredDbOption

if TYPE_CHECKING:
    from mercia.cdm import Store
    from mercia.ingest.load import LoadOptions, LoadSummary

app = typer.Typer(help="Federated network: a demo of a hub and a node per organisation (see `mercia hub`, "
                       "`mercia node`).", no_args_is_help=True)
hub_app = typer.Typer(help="The hub: takes questions from approved projects and combines nodes' answers.",
                      no_args_is_help=True)
node_app = typer.Typer(help="A node: answers the hub's questions from its organisation's own store.",
                       no_args_is_help=True)

SCHEMA = typer.Option(None, "--schema", help="schema of the store (PostgreSQL)")


def ingest_with_tokens(store: Store, kind: str, path: Path | str, org: str, options: LoadOptions,
                       network_key: bytes, mapping: str | Path | None = None) -> LoadSummary:
    """A node's load: the platform's own ingest, then its persons' network tokens (mercia.federation.tokens).
    Composed here, in the command layer, so that neither ingest nor federation imports the other."""
    from mercia.federation.tokens import record_network_tokens
    from mercia.ingest.load import load_staged
    from mercia.ingest.service import read_source

    staged = read_source(kind, path, mapping)
    persons = staged.persons.table()
    summary = load_staged(store, staged, org, kind, options)
    record_network_tokens(store, org, persons, summary.load_id, options.pseudonymiser, network_key,
                          options.allow_synthetic_nhs_numbers)
    return summary


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@hub_app.command("serve")
def hub_serve(db: RequiredDbOption, host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8700),
              schema: str | None = SCHEMA, policy: str = typer.Option("opensafely", help="disclosure policy"),
              deadline: float = typer.Option(60.0, help="seconds nodes have to answer"),
              differencing_limit: int = typer.Option(7, help="repeated/near-complementary questions per project"),
              allow_raw: bool = typer.Option(False, "--allow-raw-counts", hidden=True,
                                             help="allow the 'none' policy: ground-truth tests only")) -> None:
    """Serve the hub's API (``/api/v1/federation``)."""
    import uvicorn

    from mercia.cdm import Store
    from mercia.federation.hub import Hub, HubSettings
    from mercia.federation.hubapp import create_hub_app

    hub = Hub(Store(db, schema=schema), HubSettings(deadline_seconds=deadline, differencing_limit=differencing_limit,
                                                    policy=policy, allow_raw=allow_raw))
    uvicorn.run(create_hub_app(hub), host=host, port=port, log_level="warning")


@hub_app.command("enrol")
def hub_enrol(db: RequiredDbOption, org: str = typer.Option(..., help="the node's ODS code"),
              public_key: Path = typer.Option(..., "--public-key", exists=True, dir_okay=False),
              name: str = typer.Option(..., help="the organisation's name"), schema: str | None = SCHEMA) -> None:
    """Register a node and its Ed25519 public key."""
    from mercia.cdm import Store
    from mercia.federation.hub import Hub

    with Store(db, schema=schema) as store:
        Hub(store).enrol(org, name, public_key.read_text(), actor="cli")
    typer.echo(f"enrolled {org} ({name})")


@hub_app.command("permit")
def hub_permit(db: RequiredDbOption, project: int = typer.Option(..., help="project id"),
               schema: str | None = SCHEMA) -> None:
    """Give a project the federated-query permission (it must also be approved to ask)."""
    from mercia.cdm import Store
    from mercia.federation.hub import Hub

    with Store(db, schema=schema) as store:
        Hub(store).allow_project(project, actor="cli")
    typer.echo(f"project {project} may ask federated questions")


@node_app.command("keygen")
def node_keygen(out: Path = typer.Option(..., "--out", help="private key file (the public key is OUT.pub)")) -> None:
    """Write the node's Ed25519 key pair."""
    from mercia.federation.signing import generate_keypair

    private, public = generate_keypair(out)
    typer.echo(f"private key {private} (keep it on the node), public key {public} (give it to the hub)")


@node_app.command("run")
def node_run(db: RequiredDbOption, org: str = typer.Option(..., help="this organisation's ODS code"),
             hub: str = typer.Option(..., help="the hub's URL"), key: Path = typer.Option(..., exists=True),
             policy: Path | None = typer.Option(None, exists=True, help="local control (YAML)"),
             schema: str | None = SCHEMA, wait: float = typer.Option(5.0, help="long-poll seconds")) -> None:
    """Pull work from the hub and answer it; runs until stopped, reconnecting by itself."""
    import logging

    from mercia.federation.node import NodeAgent, NodePolicy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = NodeAgent(db, org, hub, key, NodePolicy.load(policy), schema=schema, wait=wait)
    try:
        agent.run()
    except KeyboardInterrupt:
        agent.stop.set()


@node_app.command("ingest")
def node_ingest(db: RequiredDbOption, kind: str = typer.Option(...), path: Path = typer.Option(..., exists=True),
                org: str = typer.Option(...), mapping: str | None = typer.Option(None),
                network_key: Path | None = typer.Option(None, help="network key file (else $MERCIA_NETWORK_KEY)"),
                schema: str | None = SCHEMA) -> None:
    """Load an extract into the node's store and record its persons' network linkage tokens."""
    from mercia.cdm import Store
    from mercia.federation.tokens import load_network_key
    from mercia.ingest.service import default_options

    with Store(db, schema=schema) as store:
        summary = ingest_with_tokens(store, kind, path, org, default_options(kind), load_network_key(network_key),
                                     mapping=mapping)
    typer.echo(f"loaded {summary.records_loaded} of {summary.records_read} records for {org}")


def _control(db: str, schema: str | None):
    from mercia.federation.node import open_node_store

    return open_node_store(db, schema)


@node_app.command("pending")
def node_pending(db: RequiredDbOption, schema: str | None = SCHEMA) -> None:
    """Questions waiting for this organisation's data manager."""
    from mercia.federation.node import pending

    store = _control(db, schema)
    try:
        typer.echo(json.dumps(pending(store), indent=2))
    finally:
        store.close()


def _decide(db: str, schema: str | None, task: int, approve: bool, actor: str) -> None:
    from mercia.federation.node import NodeError, decide

    store = _control(db, schema)
    try:
        decide(store, task, approve, actor)
    except NodeError as exc:
        _fail(str(exc))
    finally:
        store.close()
    typer.echo(f"task {task} {'approved' if approve else 'denied'}")


@node_app.command("approve")
def node_approve(task: int, db: RequiredDbOption, schema: str | None = SCHEMA,
                 actor: str = typer.Option("data-manager", help="who decides (audited)")) -> None:
    """Let a waiting question run on this organisation's data (it is answered at the node's next look)."""
    _decide(db, schema, task, True, actor)


@node_app.command("deny")
def node_deny(task: int, db: RequiredDbOption, schema: str | None = SCHEMA,
              actor: str = typer.Option("data-manager", help="who decides (audited)")) -> None:
    """Refuse a waiting question: the node answers the hub "refused" at its next look."""
    _decide(db, schema, task, False, actor)


@node_app.command("pause")
def node_pause(db: RequiredDbOption, schema: str | None = SCHEMA, resume: bool = typer.Option(False, "--resume"),
               actor: str = typer.Option("data-manager")) -> None:
    """Pause the node (it answers "paused"), or resume it."""
    from mercia.federation.node import set_paused

    store = _control(db, schema)
    try:
        set_paused(store, not resume, actor)
    finally:
        store.close()
    typer.echo("resumed" if resume else "paused")


@app.command("demo")
def demo(persons: int = typer.Option(3000, min=100), seed: int = typer.Option(42),
         directory: Path = typer.Option(..., "--dir", help="where the region, node stores and hub live"),
         cohort: Path | None = typer.Option(None, exists=True, help="ATLAS/Circe JSON (default: built-in)"),
         as_json: bool = typer.Option(False, "--json"),
         policy: str = typer.Option("opensafely", help="disclosure policy of the answer")) -> None:
    """Build a synthetic region, one node process per organisation and a hub; ask one question; stop."""
    from mercia.federation.demo import run_demo

    answer = run_demo(persons, seed, directory, cohort, policy, progress=None if as_json else typer.echo)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    typer.echo(f"\nPolicy: {answer['policy']}")
    for node in answer["nodes"]:
        typer.echo(f"  {node['org']:<8} {node['status']:<10} {node['count'] if node['count'] is not None else '[hidden]'}")
    typer.echo(f"Naive sum of site counts: {answer['naive_sum']}")
    typer.echo(f"De-duplicated total:      {answer['deduplicated_total']}")
