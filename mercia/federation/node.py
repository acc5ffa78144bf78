"""The node: runs inside an organisation, pulls work from the hub, answers from its own store.

It opens only outbound connections (long-polls the hub) and listens on no port.  Its policy file
says which question kinds run automatically, which wait for the local data manager
(``mercia node pending|approve|deny``) and which are refused; a paused node answers
"paused".  It applies the disclosure policy to its own count, signs every request with its
Ed25519 key, keeps what it ran in its own hash-chained audit log, and reconnects by itself
whenever the hub or the network comes back.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from mercia.analytics.base import age_band_sql, concept_names, index_table_sql, temp_table
from mercia.cdm import Store, StoreError
from mercia.cdm.dialect import as_text
from mercia.cdm.extensions import ensure_extension_tables
from mercia.cohorts.runner import cohort_rows
from mercia.federation.disclosure import federated_policy
from mercia.federation.hub import _iso, _now, request_message, token_integers
from mercia.federation.hubapp import PREFIX
from mercia.federation.messages import (KINDS, MEMBERS, PROTOCOL_HEADER, PROTOCOL_VERSION, RESULT_MEDIA_TYPE,
                                        CharacterisationQuery, CohortQuery, FeasibilityQuery, NodeResult, Task,
                                        TrialFeasibilityQuery, cell_partition)
from mercia.federation.signing import load_private_key, sign
from mercia.federation.tokens import PersonTokens, cohort_tokens
from mercia.governance.audit import AuditLog
from mercia.governance.db import GovernanceDB
from mercia.privacy.differencing import fingerprint

log = logging.getLogger("mercia.federation.node")
NODE_DDL = [
    """CREATE TABLE IF NOT EXISTS mercia_fed_inbox (
        task_id BIGINT NOT NULL, query_id BIGINT NOT NULL, kind VARCHAR NOT NULL, body VARCHAR NOT NULL,
        status VARCHAR NOT NULL, received_at VARCHAR NOT NULL, decided_by VARCHAR, decided_at VARCHAR)""",
    # which issue of the task was decided on: a digest of the round's salt, never the salt itself
    "ALTER TABLE mercia_fed_inbox ADD COLUMN IF NOT EXISTS issue VARCHAR",
    "CREATE TABLE IF NOT EXISTS mercia_fed_state (paused BOOLEAN NOT NULL)",
    # sha256 of each answered question's salt, and the question: a salt met again for another question is
    # refused, so that a hub cannot link two questions' salted tokens
    """CREATE TABLE IF NOT EXISTS mercia_fed_salt (salt_digest VARCHAR PRIMARY KEY, query_id BIGINT NOT NULL,
        question VARCHAR NOT NULL, answered_at VARCHAR NOT NULL)""",
]


HOLD_SECONDS = 1.0   # the store stays open this long after an answer, waiting for the next question


class NodeError(Exception):
    """A node command that cannot be done (unknown task, bad policy file)."""


@dataclass
class NodePolicy:
    """Local control: what runs by itself, what waits for the data manager, what is refused."""
    auto: set[str] = field(default_factory=lambda: {"feasibility", "trial_feasibility"})
    approve: set[str] = field(default_factory=lambda: {"characterisation"})
    refuse: set[str] = field(default_factory=set)
    disclosure: str | None = None      # None: the policy the hub names for the question
    allow_raw: bool = False            # allow the "none" policy (ground-truth tests only)

    @classmethod
    def load(cls, path: Path | str | None) -> NodePolicy:
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - {"auto", "approve", "refuse", "disclosure", "allow_raw"}
        if unknown:
            raise NodeError(f"{path}: unknown policy keys {sorted(unknown)}")
        default = cls()
        unknown_kinds = {k for key in ("auto", "approve", "refuse") for k in data.get(key, [])} - set(KINDS)
        if unknown_kinds:
            raise NodeError(f"{path}: unknown question kinds {sorted(unknown_kinds)}; choose from {list(KINDS)}")
        return cls(auto=set(data.get("auto", default.auto)), approve=set(data.get("approve", default.approve)),
                   refuse=set(data.get("refuse", [])), disclosure=data.get("disclosure"),
                   allow_raw=bool(data.get("allow_raw", False)))

    def decide(self, kind: str) -> str:
        if kind in self.refuse:
            return "refuse"
        if kind in self.approve:
            return "approve"
        return "auto" if kind in self.auto else "refuse"


def open_node_store(url: str, schema: str | None = None, attempts: int = 200, prepare: bool = True) -> Store:
    """Open the node's store; a DuckDB file held by the other side (the node, for a second or two after
    its last answer, or a CLI command) is retried for up to 10 s.  With ``prepare`` the tables a node
    needs are made (98 statements on DuckDB: the node loop does it once per process, ``NodeAgent.hold``)."""
    for attempt in range(attempts):
        try:
            store = Store(url, schema=schema)
            break
        except StoreError as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05)
    if not prepare:
        return store
    ensure_extension_tables(store)   # a store from before a Mercia upgrade gets the tables added since
    for statement in NODE_DDL:
        store.execute(statement)
    if not store.query_one("SELECT count(*) FROM mercia_fed_state"):
        store.execute("INSERT INTO mercia_fed_state VALUES (FALSE)")
    return store


def node_audit(store: Store, prepare: bool = True) -> AuditLog:
    """The node's own audit log; with ``prepare`` its tables are made first."""
    db = GovernanceDB(store)
    if prepare:
        db.init()
    return AuditLog(db)


# -- the data manager's commands (CLI) -----------------------------------------------------------
def pending(store: Store) -> list[dict[str, Any]]:
    return store.query_dicts("SELECT task_id, query_id, kind, status, received_at FROM mercia_fed_inbox "
                             "WHERE status = 'pending' ORDER BY task_id")


def decide(store: Store, task_id: int, approve: bool, actor: str) -> None:
    with store.transaction():
        if not store.query_one("SELECT count(*) FROM mercia_fed_inbox WHERE task_id = ? AND status = 'pending'",
                               [task_id]):
            raise NodeError(f"no task {task_id} waiting for a decision")
        store.execute("UPDATE mercia_fed_inbox SET status = ?, decided_by = ?, decided_at = ? "
                      "WHERE task_id = ? AND status = 'pending'",
                      ["approved" if approve else "denied", actor, _iso(_now()), task_id])
        node_audit(store).record(actor, "node.approve" if approve else "node.deny", f"task:{task_id}")


def set_paused(store: Store, paused: bool, actor: str) -> None:
    with store.transaction():
        store.execute("UPDATE mercia_fed_state SET paused = ?", [paused])
        node_audit(store).record(actor, "node.pause" if paused else "node.resume", "node")


# -- answering ---------------------------------------------------------------------------------
SEX_SQL = "CASE gender_concept_id WHEN 8507 THEN 'male' WHEN 8532 THEN 'female' ELSE 'unknown' END"


def stratum_sql(store: Store) -> dict[str, str]:
    """Each stratum's text value per person of the index table, in the store's dialect."""
    quintile = as_text(store, "CAST(FLOOR((imd_decile + 1) / 2.0) AS INTEGER)")
    return {"sex": SEX_SQL, "age_band": age_band_sql("age"),
            "imd_quintile": f"CASE WHEN imd_decile BETWEEN 1 AND 10 THEN {quintile} ELSE 'unknown' END",
            "year": as_text(store, "CAST(EXTRACT(YEAR FROM index_date) AS INTEGER)")}


BEFORE, AFTER = "0000-00", "9999-99"   # first entry before / after the asked window: sort first / last
FEATURE_TABLES = {"condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
                  "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date")}


def _cells_sql(store: Store, query: CohortQuery, idx: str) -> str:
    """(person_id, cell) for the cohort's members, from the index table (first entry per person)."""
    strata = stratum_sql(store)
    if isinstance(query, TrialFeasibilityQuery):
        month = (f"{strata['year']} || '-' || "
                 f"LPAD({as_text(store, 'CAST(EXTRACT(MONTH FROM index_date) AS INTEGER)')}, 2, '0')")
        return (f"SELECT person_id, CASE WHEN m < '{query.start_month}' THEN '{BEFORE}' "
                f"WHEN m > '{query.end_month}' THEN '{AFTER}' ELSE m END AS cell "
                f"FROM (SELECT person_id, {month} AS m FROM {idx}) months")
    if isinstance(query, CharacterisationQuery):
        parts = [f"SELECT person_id, '{name}=' || {strata[name]} AS cell FROM {idx}"
                 for name in ("sex", "age_band", "imd_quintile")]
        for domain in query.domains:
            table, concept, day = FEATURE_TABLES[domain]
            parts.append(f"SELECT DISTINCT i.person_id, '{domain}:' || {as_text(store, f'x.{concept}')} AS cell "
                         f"FROM {idx} i JOIN {table} x ON x.person_id = i.person_id "
                         f"WHERE x.{day} BETWEEN i.index_date - {int(query.window_days)} AND i.index_date "
                         f"AND x.{concept} <> 0")
        return " UNION ALL ".join(parts)
    if not query.strata:
        return f"SELECT person_id, '' AS cell FROM {idx}"
    cell = " || '|' || ".join(f"'{name}=' || {strata[name]}" for name in query.strata)
    return f"SELECT person_id, {cell} AS cell FROM {idx}"


def _labels(store: Store, cells: list[str]) -> dict[str, str]:
    """Concept names for feature cells (``condition:201826``), from the node's vocabulary."""
    concepts = [c for c in cells if ":" in c]
    names = concept_names(store, [int(c.split(":", 1)[1]) for c in concepts])
    return {c: names.get(int(c.split(":", 1)[1]), c) for c in concepts}


COHORT_ROWS = "mercia_fed_cohort"   # the question's cohort rows: a temporary table of the question's transaction


def answer_query(store: Store, task: Task, policy: NodePolicy, org: str,
                 person_tokens: PersonTokens | None = None) -> NodeResult:
    """Run the cohort on the local store; return the published counts and the salted tokens per cell.
    Runs in one transaction (the caller's, when it has one) and writes nothing persisted: the cohort's
    rows go to a temporary table (``cohort_rows``: the rows ``run_cohort`` would write, without
    attrition) dropped at the end, or with the transaction when a step fails.  ``person_tokens``: the
    per-person tokens the node keeps between questions."""
    query = task.query
    with store.transaction():
        with cohort_rows(store, query.expression(), COHORT_ROWS) as cohort:
            tokens = cohort_tokens(store, cohort, 0, task.salt, person_tokens)
            if isinstance(query, FeasibilityQuery) and not query.strata:   # one cell: no index table needed
                rows = tokens.append_column("cell", pa.repeat(pa.scalar("", pa.string()), tokens.num_rows))
            elif tokens.num_rows:
                with temp_table(store, index_table_sql(store, 0, cohort), "mercia_fed_idx") as idx:
                    cells = store.query_arrow(_cells_sql(store, query, idx))
                rows = cells.select(["person_id", "cell"]).cast(
                    pa.schema([("person_id", pa.int64()), ("cell", pa.string())])).join(tokens, "person_id")
            else:
                rows = tokens.append_column("cell", pa.array([], pa.string()))
        last_load, version = store.query(f"SELECT {as_text(store, 'max(loaded_at)')}, count(*) || ':' || "
                                         "COALESCE(max(load_id), 0) FROM mercia_load")[0]
    published = federated_policy(policy.disclosure or task.policy, policy.allow_raw)
    seed = fingerprint([query.model_dump(), org, version])
    linkable = pc.invert(pc.and_(pc.is_null(rows.column("nhs")), pc.is_null(rows.column("demographic"))))
    per_cell = persons_per_cell(rows)
    linked = in_token_order(rows.filter(linkable))
    members = pa.table([linked.column("nhs"), linked.column("demographic"),
                        linked.column("cell").combine_chunks().dictionary_encode()], schema=MEMBERS)
    no_token = tokens.filter(pc.and_(pc.is_null(tokens.column("nhs")), pc.is_null(tokens.column("demographic"))))
    count, cells = published.publish_cells(tokens.num_rows, per_cell, cell_partition(query), seed, f"{seed}:")
    return NodeResult(
        task_id=task.task_id, org=org, nonce=task.nonce, status="answered", count=count, cells=cells,
        labels=_labels(store, list(per_cell)),
        members=members,
        linked=tokens.num_rows - no_token.num_rows, unlinkable=no_token.num_rows,
        unlinkable_cells=persons_per_cell(rows.filter(pc.invert(linkable))),
        last_load=last_load, data_version=version)


def in_token_order(rows: pa.Table) -> pa.Table:
    """Rows sorted by their salted tokens (NHS, then demographic): an order the hub could work out itself.
    The node's own order (by person id) is the same from one question to the next, so rows in it would let
    the hub line up two answers' members, which the salting keeps apart."""
    keys = pa.table({kind: token_integers(rows.column(kind).combine_chunks()).fill_null(0)
                     for kind in ("nhs", "demographic")})
    # Arrow's two-key sort: numpy's lexsort of two 64-bit keys took twice as long (40,605 rows: 7.7 vs 4.1 ms)
    return rows.take(pc.sort_indices(keys, sort_keys=[("nhs", "ascending"), ("demographic", "ascending")]))


def persons_per_cell(rows: pa.Table) -> dict[str, int]:
    """Persons per cell of (person, cell) rows, each pair once (as ``_cells_sql`` and the token join give
    them): one hash count of the cell column."""
    counted = pc.value_counts(rows.column("cell"))
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


def _audit_run(audit: AuditLog, task: Task, result: NodeResult) -> None:
    audit.record("node", "node.run", f"task:{task.task_id}", query=task.query_id, kind=task.query.kind,
                 status=result.status, count=result.count, reason=result.reason,
                 fingerprint=fingerprint(task.query.model_dump()))


def _salt_digest(task: Task) -> str:
    return hashlib.sha256(task.salt.encode()).hexdigest()


def _salt_used_before(store: Store, task: Task) -> int | None:
    """The question an answered task already used this task's salt for, when it was another question
    (another id or another body; the same question sent again, e.g. after a hub restart, may reuse it)."""
    return store.query_one("SELECT query_id FROM mercia_fed_salt WHERE salt_digest = ? AND NOT (query_id = ? "
                           "AND question = ?)", [_salt_digest(task), task.query_id,
                                                 fingerprint(task.query.model_dump())])


class NodeAgent:
    """The node's loop: poll, decide, run, sign, post; back off and retry while the hub is away."""

    def __init__(self, db: str, org: str, hub_url: str, key_file: Path | str, policy: NodePolicy | None = None,
                 schema: str | None = None, wait: float = 5.0, client: httpx.Client | None = None):
        self.db, self.schema, self.org = db, schema, org
        self.hub_url = hub_url.rstrip("/")
        self.key = load_private_key(key_file)
        self.policy = policy or NodePolicy()
        self.wait = wait
        self.stop = threading.Event()
        self.client = client or httpx.Client(base_url=self.hub_url, timeout=wait + 30)
        self.connected = False
        self._store: Store | None = None    # kept open while questions keep coming (release())
        self._audit: AuditLog | None = None
        self._prepared = False              # the store's tables made by this process (hold())
        self._person_tokens = PersonTokens()  # kept between questions, read again when the store's change

    def _headers(self, method: str, path: str, body: bytes, media_type: str = "application/json") -> dict[str, str]:
        stamp = f"{time.time():.6f}"
        return {"X-Mercia-Node": self.org, "X-Mercia-Time": stamp, "Content-Type": media_type,
                PROTOCOL_HEADER: str(PROTOCOL_VERSION),
                "X-Mercia-Signature": sign(self.key, request_message(self.org, method, path, stamp, body))}

    def fetch(self) -> list[Task]:
        """The node's tasks; while its store is held open, waits at most HOLD_SECONDS for them."""
        path = f"{PREFIX}/node/work"
        wait = self.wait if self._store is None else min(self.wait, HOLD_SECONDS)
        response = self.client.get(path, params={"wait": wait}, headers=self._headers("GET", path, b""))
        response.raise_for_status()
        return [Task.model_validate(t) for t in response.json()]

    def post(self, result: NodeResult) -> httpx.Response:
        path = f"{PREFIX}/node/results"
        body = result.to_wire()
        return self.client.post(path, content=body, headers=self._headers("POST", path, body, RESULT_MEDIA_TYPE))

    def handle(self, task: Task) -> NodeResult | None:
        """Decide on one task against local control; None while it waits for the data manager.  Uses the
        store the node loop holds open, else opens it for this task only."""
        if self._store is not None:
            return self._decide(task, self._store, self._audit)
        store = open_node_store(self.db, self.schema)
        try:
            return self._decide(task, store, node_audit(store))
        finally:
            store.close()

    def _decide(self, task: Task, store: Store, audit: AuditLog) -> NodeResult | None:
        paused = bool(store.query_one("SELECT paused FROM mercia_fed_state"))
        decision = self.policy.decide(task.query.kind)
        if decision == "approve":
            # A decision holds for exactly the task decided on: a task id met again in another issue
            # (a hub rebuilt, a second hub) waits for a decision of its own.
            body = orjson.dumps(task.query.model_dump()).decode()
            issue = _salt_digest(task)[:32]
            status = store.query_one("SELECT status FROM mercia_fed_inbox WHERE task_id = ? AND query_id = ? "
                                     "AND body = ? AND issue = ?", [task.task_id, task.query_id, body, issue])
            if status is None:
                # an undecided earlier issue of this task id can no longer be answered: set it aside
                store.execute("UPDATE mercia_fed_inbox SET status = 'superseded' WHERE task_id = ? "
                              "AND status = 'pending'", [task.task_id])
                store.execute("INSERT INTO mercia_fed_inbox (task_id, query_id, kind, body, status, received_at, "
                              "issue) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                              [task.task_id, task.query_id, task.query.kind, body, _iso(_now()), issue])
                audit.record("node", "node.pending", f"task:{task.task_id}", kind=task.query.kind)
                return None
            if status == "pending":
                return None
            decision = "auto" if status == "approved" else "refuse"
        common = {"task_id": task.task_id, "org": self.org, "nonce": task.nonce}
        if paused:
            result = NodeResult(**common, status="paused", reason="the node is paused by its organisation")
        elif decision == "refuse":
            result = NodeResult(**common, status="refused",
                                reason=f"{task.query.kind} questions are refused by this organisation")
        else:
            try:
                # The salt's digest, the answer and its audit entry: one commit.  The digest is written first;
                # when it was there already (another agent of this node may have answered with it meanwhile),
                # the question it was answered for is looked up.
                with audit.db.transaction():
                    first_use = store.query("INSERT INTO mercia_fed_salt VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING "
                                            "RETURNING query_id", [_salt_digest(task), task.query_id,
                                                                   fingerprint(task.query.model_dump()), _iso(_now())])
                    if first_use or (reused := _salt_used_before(store, task)) is None:
                        result = answer_query(store, task, self.policy, self.org, self._person_tokens)
                        _audit_run(audit, task, result)
                        return result
                result = NodeResult(**common, status="refused",
                                    reason=f"the hub sent the salt of question {reused} again for another "
                                           "question: refused, so that the two answers' tokens cannot be linked")
            except Exception as exc:  # a failing question must not stop the node; the hub is told
                log.exception("task %s failed", task.task_id)
                result = NodeResult(**common, status="error", reason=f"{type(exc).__name__}: {exc}"[:500])
        _audit_run(audit, task, result)
        return result

    def hold(self) -> None:
        """Open the node's store and audit log and keep them while questions keep coming (``step``): opening
        them costs more than a small question.  Their tables are made at the first opening of this process
        only (0.03-0.05 CPU-s a time at 250,000 persons): a store replaced under a running node needs the
        node restarted."""
        if self._store is None:
            self._store = open_node_store(self.db, self.schema, prepare=not self._prepared)
            self._audit = node_audit(self._store, prepare=not self._prepared)
            self._prepared = True

    def release(self) -> None:
        """Close the store, so that the data manager's commands and loads can open a DuckDB file."""
        if self._store is not None:
            self._store.close()
            self._store = self._audit = None

    def step(self, keep_open: bool = False) -> int:
        """One poll: fetch work, answer what can be answered; returns how many results were posted.  With
        ``keep_open`` (the node's loop) the store stays open after an answer, for the next question."""
        posted = 0
        tasks = self.fetch()
        if tasks:
            self.hold()
        for task in tasks:
            result = self.handle(task)
            if result is not None:
                response = self.post(result)
                if response.status_code >= 400:
                    log.warning("hub refused task %s: %s", task.task_id, response.text)
                posted += 1
        if not (keep_open and posted):   # nothing answered: let the data manager's commands and loads in
            self.release()
        if tasks and not posted:   # everything waits for the data manager: do not spin
            self.stop.wait(0.5)
        return posted

    def run(self) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            try:
                self.step(keep_open=True)
                if not self.connected:
                    log.info("connected to %s", self.hub_url)
                self.connected, backoff = True, 0.2
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 426:
                    raise
                log.error("the hub refused this node: %s", exc.response.text)   # retried: the hub may be rolled back
                self.connected = False
                self.release()
                self.stop.wait(5.0)
            except (httpx.HTTPError, OSError) as exc:
                if self.connected:
                    log.warning("lost the hub (%s); retrying", exc)
                self.connected = False
                self.release()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.release()
        self.client.close()
