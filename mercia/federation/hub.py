"""The hub: takes questions from approved projects, hands them to nodes, returns one answer.

The hub holds nodes (with their Ed25519 public keys), questions, their per-node tasks and the
published answers — never a token, pseudonym or row.  Salted tokens received from nodes live only
in this process's memory until the answer is combined; a hub restart forgets them and re-issues the
affected tasks.  Every question, refusal, node result and answer is in the governance audit log.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mercia.cdm import Store
from mercia.cohorts.model import CohortDefinitionError
from mercia.federation.disclosure import FederatedPolicy, federated_policy
from mercia.federation.messages import (PROTOCOL_VERSION, QUERY, CohortQuery, NodeResult, Task, cell_partition,
                                        partitioned)
from mercia.federation.signing import SignatureError, load_public_key, verify
from mercia.federation.tokens import new_salt
from mercia.governance import Role, Throttled, User
from mercia.governance.model import Forbidden, GovernanceError, NotFound
from mercia.governance.service import Governance
from mercia.privacy.differencing import Asked, budget, canonical, fingerprint
from mercia.privacy.disclosure import DisclosureError

DDL = [
    """CREATE TABLE IF NOT EXISTS mercia_fed_node (
        org VARCHAR NOT NULL, name VARCHAR NOT NULL, public_key VARCHAR NOT NULL, enrolled_at VARCHAR NOT NULL,
        enrolled_by VARCHAR NOT NULL, last_seen VARCHAR, active BOOLEAN NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS mercia_fed_permission (
        project_id BIGINT NOT NULL, granted_by VARCHAR NOT NULL, granted_at VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS mercia_fed_query (
        id BIGINT NOT NULL, project_id BIGINT NOT NULL, username VARCHAR NOT NULL, kind VARCHAR NOT NULL,
        body VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, criteria VARCHAR NOT NULL, policy VARCHAR NOT NULL,
        differencing BOOLEAN NOT NULL, round BIGINT NOT NULL, created_at VARCHAR NOT NULL,
        deadline_at VARCHAR NOT NULL, status VARCHAR NOT NULL, answer VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS mercia_fed_task (
        id BIGINT NOT NULL, query_id BIGINT NOT NULL, round BIGINT NOT NULL, org VARCHAR NOT NULL,
        nonce VARCHAR NOT NULL, salt VARCHAR NOT NULL, expires_at VARCHAR NOT NULL, status VARCHAR NOT NULL,
        sent_at VARCHAR, answered_at VARCHAR, count BIGINT, unlinkable BIGINT, reason VARCHAR,
        last_load VARCHAR, data_version VARCHAR)""",
]
FINAL_TASK_STATUSES = ("answered", "refused", "paused", "error")
CLOCK_SKEW = timedelta(seconds=120)
LAST_SEEN_EVERY = 5.0   # seconds between writes of a node's last_seen (it is offline after node_offline_after)
# seconds a node's enrolled key is used without reading it again: an enrolment through this hub takes effect at
# once, one made by another process sharing a PostgreSQL hub store within this time
NODE_KEY_KEPT = 5.0
QUESTIONS_KEPT = 1024   # questions whose project, policy and message the hub remembers (they never change)
# seconds: how long a node's look at the store for its work stands in for the next look, when this process has
# issued it nothing since (work issued by another process of a shared store is seen within this time)
WORK_LOOK_AGAIN = 2.0
PROTOCOL_REFUSAL_EVERY = 600.0   # seconds between audit records of one node's refusals for its protocol version


class FederationError(GovernanceError):
    """A federated request that cannot be done (HTTP 4xx with this message)."""


class BudgetExceeded(Throttled):
    """The project has used its allowance of repeated or near-complementary questions."""


class Rejected(Forbidden):
    """A node message refused: unknown node, bad signature, replay, or late."""


@dataclass(frozen=True)
class HubSettings:
    deadline_seconds: float = 60.0
    differencing_limit: int = 7          # SHRINE locks a user out after ~7 repeats in 30 days
    budget_window_days: int = 30
    policy: str = "opensafely"
    allow_raw: bool = False              # the "none" policy: test and ground-truth runs only
    node_offline_after: float = 30.0


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _keep_newest(kept: dict, key: Any, value: Any) -> bool:
    """``kept[key] = value`` as its newest entry, the oldest forgotten first when QUESTIONS_KEPT are held;
    says whether one was."""
    kept.pop(key, None)
    full = len(kept) >= QUESTIONS_KEPT
    if full:
        del kept[next(iter(kept))]
    kept[key] = value
    return full


@dataclass(frozen=True)
class _Question:
    """What never changes about a question: its project, disclosure policy and message."""
    project_id: int
    policy: str
    query: CohortQuery


@dataclass
class _Round:
    """A round this process issued and has not answered yet: its deadline and the tasks still open (id ->
    node).  Long polls look here between the looks at the store that it spares them."""
    number: int
    deadline: datetime
    open: dict[int, str]


class Hub:
    """The hub's rules over one Store (DuckDB or PostgreSQL); thread-safe (governance's lock)."""

    def __init__(self, store: Store, settings: HubSettings | None = None, gov: Governance | None = None):
        self.settings = settings or HubSettings()
        self.policy: FederatedPolicy = federated_policy(self.settings.policy, self.settings.allow_raw)
        self.gov = gov or Governance(store)
        self._tokens: dict[int, pa.Table] = {}   # task id -> salted tokens per cell, in memory only
        self._site_extra: dict[int, dict[str, Any]] = {}    # task id -> per-cell published counts, labels
        self._seen_requests: dict[str, float] = {}  # node request signatures -> when (replay guard)
        self._seen_pruned_at = 0.0                  # when signatures too old to replay were last let go
        self._memory = threading.Lock()              # guards the three below (requests may run on sessions)
        self._questions: dict[int, _Question] = {}    # question id -> what never changes (the latest QUESTIONS_KEPT)
        self._rounds: dict[int, _Round] = {}          # question id -> its open round, if this process issued it
        self._work_looked: dict[str, float] = {}     # node -> when the store was last looked at for its work
        self._protocol_refusals: dict[str | None, tuple[float, int]] = {}   # enrolled node or None (any other
        # name) -> (last audited, refused since)
        self._seen_written: dict[str, float] = {}    # node -> when this process last wrote its last_seen
        self._node_keys: dict[str, tuple[float, Ed25519PublicKey]] = {}   # enrolled node -> (read at, its key)
        self.work_news = News()     # a round issued by this process: waiting nodes look for their work
        self.result_news = News()   # a result accepted by this process: waiting researchers look at the answer
        with self._lock, self.gov.db.transaction():
            for statement in DDL:
                self.store.execute(statement)
            self._supersede_open_tasks()
            self._reissue_forgotten()

    @property
    def store(self) -> Store:
        """The caller's connection: a server request's or job's own session, else the root store."""
        return self.gov.db.store

    @property
    def _lock(self):
        """Governance's lock for the current connection (threads sharing one connection take turns)."""
        return self.gov.db.lock

    def user_for_token(self, secret: str) -> User | None:
        with self._lock:
            return self.gov.token_user(secret)

    # -- administration --------------------------------------------------------------------
    def _require_admin(self, actor: User) -> None:
        if not actor.has(Role.ADMIN):
            raise Forbidden("only a hub administrator can do this")

    def enrol(self, org: str, name: str, public_key_pem: str, actor: str) -> None:
        """Register (or re-key) a node: its ODS code and the public half of its Ed25519 key."""
        if not org or not org.replace("-", "").isalnum():
            raise FederationError(f"a node is named by its ODS code (letters and digits), not {org!r}")
        try:
            load_public_key(public_key_pem)
        except SignatureError as exc:
            raise FederationError(f"node {org}: {exc}") from exc
        with self._lock, self.gov.db.transaction():
            self.store.execute("DELETE FROM mercia_fed_node WHERE org = ?", [org])
            self.store.execute("INSERT INTO mercia_fed_node VALUES (?, ?, ?, ?, ?, NULL, TRUE)",
                               [org, name, public_key_pem, _iso(_now()), actor])
            self.gov.audit.record(actor, "federation.enrol", f"node:{org}", name=name)
            self._node_keys.pop(org, None)   # under the lock: no request keeps the old key

    def enrol_by(self, actor: User, org: str, name: str, public_key_pem: str) -> None:
        self._require_admin(actor)
        self.enrol(org, name, public_key_pem, actor.username)

    def allow_project(self, project_id: int, actor: str) -> None:
        """Grant a project the federated-query permission (it must also be approved to ask)."""
        with self._lock, self.gov.db.transaction():
            self.gov.project(project_id)
            self.store.execute("DELETE FROM mercia_fed_permission WHERE project_id = ?", [project_id])
            self.store.execute("INSERT INTO mercia_fed_permission VALUES (?, ?, ?)",
                               [project_id, actor, _iso(_now())])
            self.gov.audit.record(actor, "federation.permit", f"project:{project_id}", project_id)

    def allow_project_by(self, actor: User, project_id: int) -> None:
        self._require_admin(actor)
        self.allow_project(project_id, actor.username)

    def node_health(self, actor: User) -> list[dict[str, Any]]:
        self._require_admin(actor)
        with self._lock:
            rows = self.store.query_dicts("SELECT org, name, enrolled_at, last_seen, active FROM mercia_fed_node "
                                          "ORDER BY org")
        cutoff = _now() - timedelta(seconds=self.settings.node_offline_after)
        for row in rows:
            row["online"] = bool(row["last_seen"]) and _parse(row["last_seen"]) >= cutoff
        return rows

    # -- questions -------------------------------------------------------------------------
    def submit(self, user: User, project_id: int, query: CohortQuery, deadline_seconds: float | None = None,
               policy: str | None = None) -> dict[str, Any]:
        """Check who is asking and the project's budget, then hand the question to every node."""
        try:
            query.expression()   # a definition that does not parse is refused here, not at every node
            chosen = federated_policy(policy, self.settings.allow_raw) if policy else self.policy
        except (CohortDefinitionError, DisclosureError) as exc:
            raise FederationError(str(exc)) from exc
        with self._lock:
            try:
                self.gov.check_data_access(user, project_id)
                differencing = self._check_permission_and_budget(project_id, query)
            except GovernanceError as exc:
                self.gov.audit.record(user.username, "federation.refuse", f"project:{project_id}", None,
                                      reason=str(exc))
                raise
            with self.gov.db.transaction():
                qid = self.store.allocate_ids("mercia_fed_query", "id")
                now, body = _now(), query.model_dump()
                deadline = now + timedelta(seconds=deadline_seconds or self.settings.deadline_seconds)
                self.store.execute(
                    "INSERT INTO mercia_fed_query VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, 'running', NULL)",
                    [qid, project_id, user.username, query.kind, canonical(body).decode(), fingerprint(body),
                     orjson.dumps(sorted(query.criteria())).decode(),
                     chosen.name, differencing, _iso(now), _iso(deadline)])
                orgs = self._issue(qid, 1, deadline)
                self.gov.db.after_commit(lambda: self._remember(qid, _Question(project_id, chosen.name, query)))
                self.gov.audit.record(user.username, "federation.ask", f"query:{qid}", project_id, kind=query.kind,
                                      fingerprint=fingerprint(body), nodes=orgs, policy=chosen.name,
                                      differencing=differencing)
        return {"query_id": qid, "nodes": orgs, "deadline_at": _iso(deadline)}

    def _check_permission_and_budget(self, project_id: int, query: CohortQuery) -> bool:
        """Has the project the federated-query permission, and is this a repeat (the same cohort, whatever
        the question kind or strata), or the same cohort plus or minus one criterion, of an earlier question
        of the project in the window?  Such questions are counted; past the limit they are refused.  One
        statement: the permission's row with the project's questions in the window, none without it."""
        moment, window = _now(), timedelta(days=self.settings.budget_window_days)
        found = self.store.query("SELECT q.criteria, q.differencing, q.created_at FROM mercia_fed_permission p "
                                 "LEFT JOIN mercia_fed_query q ON q.project_id = p.project_id AND q.created_at >= ? "
                                 "WHERE p.project_id = ?", [_iso(moment - window), project_id])
        if not found:
            raise Forbidden(f"project {project_id} does not have the federated-query permission")
        earlier = [Asked(frozenset(orjson.loads(c)), bool(d), datetime.fromisoformat(at))
                   for c, d, at in found if c is not None]
        verdict = budget(query.criteria(), earlier, self.settings.differencing_limit, window)
        if verdict.exceeded:
            raise BudgetExceeded(
                f"project {project_id} has asked {verdict.used} repeated or near-complementary questions (the same "
                f"cohort, or one criterion added or removed) in {self.settings.budget_window_days} days; the limit "
                f"is {verdict.limit}. Ask the hub's data governance team to review the need.",
                retry_after=verdict.seconds_until_free(moment))
        return verdict.differencing

    def _issue(self, qid: int, round_: int, deadline: datetime) -> list[str]:
        orgs = [r[0] for r in self.store.query("SELECT org FROM mercia_fed_node WHERE active ORDER BY org")]
        first = self.store.allocate_ids("mercia_fed_task", "id", max(1, len(orgs)))
        salt = new_salt()   # one salt per round: the same person gives the same salted token at every node
        if orgs:   # one statement for every node's task (a nonce of its own each)
            self.store.execute("INSERT INTO mercia_fed_task (id, query_id, round, org, nonce, salt, expires_at, status) "
                               "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, 'issued')"] * len(orgs)),
                               [value for i, org in enumerate(orgs)
                                for value in (first + i, qid, round_, org, secrets.token_hex(16), salt, _iso(deadline))])
        issued = _Round(round_, deadline, {first + i: org for i, org in enumerate(orgs)})
        self.gov.db.after_commit(lambda: self._open_round(qid, issued))   # a round rolled back was never issued
        return orgs

    def _remember(self, qid: int, question: _Question) -> None:
        with self._memory:
            _keep_newest(self._questions, qid, question)

    def _open_round(self, qid: int, issued: _Round) -> None:
        """Remember a round this process issued (committed), then wake the nodes waiting for work."""
        with self._memory:
            # a round forgotten (its question's answer never asked for) takes what spared nodes a look with it
            if _keep_newest(self._rounds, qid, issued):
                self._work_looked.clear()
        self.work_news.announce()

    def _supersede_open_tasks(self, query_id: int | None = None) -> None:
        """Mark the open tasks of a question's earlier rounds (of every question, without ``query_id``)
        'superseded', so that a task is open exactly while its status is 'issued' or 'sent': a node's
        look for work and its result are then checked by a predicate of the task's own row, without the
        question's current round (a join that cost a third of each of those statements)."""
        if query_id is not None:   # a refresh: every open task of the question is of the round before
            self.store.execute("UPDATE mercia_fed_task SET status = 'superseded' WHERE query_id = ? "
                               "AND status IN ('issued', 'sent')", [query_id])
        else:   # at start: a store from before superseded tasks were marked
            self.store.execute("UPDATE mercia_fed_task t SET status = 'superseded' FROM mercia_fed_query q "
                               "WHERE q.id = t.query_id AND t.round < q.round AND t.status IN ('issued', 'sent')")

    def _reissue_forgotten(self) -> None:
        """After a restart the salted tokens of unfinished questions are gone: ask those nodes again."""
        for (task_id,) in self.store.query(
                "SELECT t.id FROM mercia_fed_task t JOIN mercia_fed_query q ON q.id = t.query_id AND q.round = t.round "
                "WHERE q.status = 'running' AND t.status = 'answered'"):
            self.store.execute("UPDATE mercia_fed_task SET status = 'issued', nonce = ?, sent_at = NULL WHERE id = ?",
                               [secrets.token_hex(16), task_id])

    def _query_row(self, user: User, query_id: int) -> dict[str, Any]:
        row = self.store.query_dicts("SELECT * FROM mercia_fed_query WHERE id = ?", [query_id])
        if not row:
            raise NotFound(f"no federated query {query_id}")
        self.gov.check_data_access(user, row[0]["project_id"])
        return row[0]

    def questions_for(self, user: User) -> list[dict[str, Any]]:
        """The questions of the projects ``user`` may use (member of an approved, unexpired project),
        newest first: what was asked and its state, never an answer's tokens."""
        with self._lock:
            rows = self.store.query_dicts("SELECT id AS query_id, project_id, username, kind, created_at, status, "
                                          "round, policy FROM mercia_fed_query ORDER BY id DESC")
            allowed = {}
            for project_id in {r["project_id"] for r in rows}:
                try:
                    self.gov.check_data_access(user, project_id)
                    allowed[project_id] = True
                except GovernanceError:
                    allowed[project_id] = False
        return [r for r in rows if allowed[r["project_id"]]]

    def answer(self, user: User, query_id: int, running: bool = True) -> dict[str, Any] | None:
        """The question's state; once every node has answered (or the deadline passed), the one answer.
        Without ``running``, None while the question still runs (a long poll that waits on): then, when this
        process issued the round and some of its nodes have not answered, nothing past who is asking is read."""
        with self._lock:
            row = self._query_row(user, query_id)
            sites = None
            if row["status"] == "running":
                if not running and self._still_open(query_id, row["round"]):
                    return None
                row, sites = self._finish_if_due(row)
                if not running and row["status"] == "running":
                    return None
            result = {"query_id": query_id, "project_id": row["project_id"], "status": row["status"],
                      "round": row["round"], "deadline_at": row["deadline_at"], "policy": row["policy"]}
            if row["answer"]:
                result.update(orjson.loads(row["answer"]))
            else:
                result["nodes"] = sites
            return result

    def _still_open(self, query_id: int, round_: int) -> bool:
        """Does this process know the question's round to have a node still to answer, before its deadline?"""
        with self._memory:
            known = self._rounds.get(query_id)
            return known is not None and known.number == round_ and bool(known.open) and _now() < known.deadline

    def settled_as_known(self, query_id: int) -> bool | None:
        """``settled`` from memory, for a round this process issued (None: not known here).  What a waiting
        researcher's long poll looks at when this process accepted a result: no statement, no thread."""
        with self._memory:
            known = self._rounds.get(query_id)
            return None if known is None else not known.open or _now() >= known.deadline

    def settled(self, query_id: int) -> bool:
        """Can the question be answered now — answered already, every node of its round done, or its
        deadline passed?  One query, no governance reads: what a waiting researcher's long poll looks at
        between the answers it asks for (``answer`` checks who is asking)."""
        with self._lock:
            found = self.store.query(
                "SELECT q.status, q.deadline_at, count(t.id) FROM mercia_fed_query q LEFT JOIN mercia_fed_task t "
                "ON t.query_id = q.id AND t.round = q.round AND t.status NOT IN "
                f"({', '.join('?' for _ in FINAL_TASK_STATUSES)}) WHERE q.id = ? GROUP BY q.status, q.deadline_at",
                [*FINAL_TASK_STATUSES, query_id])
        if not found:
            return True   # let ``answer`` say so
        status, deadline, open_tasks = found[0]
        return status != "running" or not open_tasks or _now() >= _parse(deadline)

    def refresh(self, user: User, query_id: int, deadline_seconds: float | None = None) -> dict[str, Any]:
        """Ask every node again (a new round, a new salt): a node that missed the deadline can now count.
        A refresh is the same question, so it does not use the project's budget."""
        with self._lock, self.gov.db.transaction():
            row = self._query_row(user, query_id)
            deadline = _now() + timedelta(seconds=deadline_seconds or self.settings.deadline_seconds)
            round_ = row["round"] + 1
            for (task_id,) in self.store.query("SELECT id FROM mercia_fed_task WHERE query_id = ?", [query_id]):
                self._tokens.pop(task_id, None)   # a superseded round's tokens are never combined
                self._site_extra.pop(task_id, None)
            self.store.execute("UPDATE mercia_fed_query SET round = ?, status = 'running', answer = NULL, "
                               "deadline_at = ? WHERE id = ?", [round_, _iso(deadline), query_id])
            self._supersede_open_tasks(query_id)
            orgs = self._issue(query_id, round_, deadline)
            self.gov.audit.record(user.username, "federation.refresh", f"query:{query_id}", row["project_id"],
                                  round=round_)
        return {"query_id": query_id, "round": round_, "nodes": orgs, "deadline_at": _iso(deadline)}

    def _site_rows(self, query_id: int, round_: int) -> list[dict[str, Any]]:
        rows = self.store.query_dicts(
            "SELECT t.id AS task_id, t.org, n.name, t.status, t.count, t.unlinkable, t.reason, t.last_load, "
            "t.data_version FROM mercia_fed_task t JOIN mercia_fed_node n ON n.org = t.org "
            "WHERE t.query_id = ? AND t.round = ? ORDER BY t.org", [query_id, round_])
        return rows

    def _finish_if_due(self, row: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The question's row, answered and stored if every node has answered or the deadline passed, and
        its round's tasks."""
        sites = self._site_rows(row["id"], row["round"])
        everyone = all(s["status"] in FINAL_TASK_STATUSES for s in sites)
        if not everyone and _now() < _parse(row["deadline_at"]):
            return row, sites
        answer = self._combine(row, sites)
        finished = {**row, "status": "complete" if answer["complete"] else "partial",
                    "answer": orjson.dumps(answer).decode()}
        with self.gov.db.transaction():
            if not everyone:
                self.store.execute("UPDATE mercia_fed_task SET status = 'timed_out' WHERE query_id = ? AND round = ? "
                                   f"AND status NOT IN ({', '.join('?' for _ in FINAL_TASK_STATUSES)})",
                                   [row["id"], row["round"], *FINAL_TASK_STATUSES])
            self.store.execute("UPDATE mercia_fed_query SET status = ?, answer = ? WHERE id = ?",
                               [finished["status"], finished["answer"], row["id"]])
            self.gov.audit.record("hub", "federation.answer", f"query:{row['id']}", row["project_id"],
                                  round=row["round"], complete=answer["complete"],
                                  deduplicated_total=answer["deduplicated_total"], naive_sum=answer["naive_sum"],
                                  missing=answer["missing"])
        for site in sites:
            self._tokens.pop(site["task_id"], None)
            self._site_extra.pop(site["task_id"], None)
        with self._memory:
            self._rounds.pop(row["id"], None)
        return finished, sites

    def _combine(self, row: dict[str, Any], sites: list[dict[str, Any]]) -> dict[str, Any]:
        """De-duplicate the salted tokens (overall and per cell), then pass every published figure through
        the policy."""
        policy = federated_policy(row["policy"], self.settings.allow_raw)
        query = QUERY.validate_json(row["body"])
        answered = [s for s in sites if s["status"] == "answered" and s["task_id"] in self._tokens]
        received = pa.concat_tables([MEMBER_ROWS.empty_table()] + [self._tokens[s["task_id"]] for s in answered])
        extra = [self._site_extra[s["task_id"]] for s in answered]
        unlinkable = sum(int(s["unlinkable"] or 0) for s in answered)
        distinct, shared, per_cell = network_counts(received, partitioned(query))
        if not partitioned(query):   # a characterisation: each of its partitions counted as a partition
            part = cell_partition(query)
            per_cell = {c: n for c, n in per_cell.items() if part(c) is None} | partition_cells(received, part)
        naive = sum(e["linked"] for e in extra) + unlinkable
        seed = fingerprint([row["fingerprint"], sorted((s["org"], s["data_version"]) for s in answered)])
        # the naive sum is the sites' counts added: published with them, so that no site the policy hides
        # is the naive sum less the sites shown (a site's own count is shown unless this hides it)
        naive_sum, per_site = policy.publish_cells(
            naive, {s["org"]: e["linked"] + int(s["unlinkable"] or 0) for s, e in zip(answered, extra)},
            lambda site: "", seed + ":naive", f"{seed}:site:")
        nodes = [{"org": s["org"], "name": s["name"],
                  "status": "timed_out" if s["status"] not in FINAL_TASK_STATUSES else s["status"],
                  "count": s["count"] if per_site.get(s["org"], s["count"]) is not None else None,
                  "reason": s["reason"], "last_load": s["last_load"]} for s in sites]
        missing = [n["org"] for n in nodes if n["status"] != "answered"]
        total, cells = self._cells(query, distinct + unlinkable, per_cell, extra, answered, policy, seed)
        answer = {"kind": query.kind, "nodes": nodes, "complete": not missing, "missing": missing,
                  "deduplicated_total": total,
                  "naive_sum": naive_sum,
                  "seen_at_two_or_more_sites": policy.publish(shared, seed + ":shared"),
                  "redacted_marker": policy.redacted_marker, "policy_description": policy.description,
                  "answered_at": _iso(_now())}
        if query.kind != "feasibility" or query.strata:
            answer["cells"] = cells
        return answer

    @staticmethod
    def _cells(query: CohortQuery, total: int, per_cell: dict[str, int], extra: list[dict[str, Any]],
               answered: list[dict[str, Any]], policy: FederatedPolicy,
               seed: str) -> tuple[int | None, list[dict[str, Any]]]:
        """The published de-duplicated total, and one row per cell: its de-duplicated count and each
        site's published count; the total and the cells go through the policy together."""
        names = set(per_cell) | {c for e in extra for c in e["cells"]}
        labels = {c: label for e in extra for c, label in e["labels"].items()}
        if query.kind == "trial_feasibility":
            names |= set(months_between(query.start_month, query.end_month))
            labels |= {"0000-00": f"before {query.start_month}", "9999-99": f"after {query.end_month}"}
        deduplicated = {cell: per_cell.get(cell, 0) + sum(e["unlinkable"].get(cell, 0) for e in extra)
                        for cell in sorted(names)}
        shown_total, shown = policy.publish_cells(total, deduplicated, cell_partition(query),
                                                  f"{seed}:total", f"{seed}:cell:")
        return shown_total, [
            {"cell": cell, "label": labels.get(cell, cell), "deduplicated": shown[cell],
             "sites": {s["org"]: e["cells"].get(cell, policy.publish(0, f"{seed}:{s['org']}:{cell}"))
                       for s, e in zip(answered, extra)}} for cell in deduplicated]

    # -- nodes -----------------------------------------------------------------------------
    def authenticate_node(self, org: str | None, method: str, path: str, stamp: str | None, body: bytes,
                          signature: str | None) -> str:
        """Verify a node's signed request: enrolled node, its key, a fresh timestamp, never seen before."""
        if not org:
            raise Rejected("the request does not name its node (X-Mercia-Node)")
        key = self._node_key(org)
        if key is None:
            raise Rejected(f"unknown node {org!r}: enrol it first")
        try:
            moment = float(stamp or "")
        except ValueError as exc:
            raise Rejected("the request has no valid timestamp (X-Mercia-Time)") from exc
        if abs(time.time() - moment) > CLOCK_SKEW.total_seconds():
            raise Rejected("the request's timestamp is too old or in the future (replay or clock skew)")
        try:
            verify(key, request_message(org, method, path, stamp, body), signature)
        except SignatureError as exc:
            raise Rejected(str(exc)) from exc
        with self._lock:
            now = time.time()
            cutoff = now - 2 * CLOCK_SKEW.total_seconds()
            if now >= self._seen_pruned_at + CLOCK_SKEW.total_seconds():   # not at every request: O(requests kept)
                self._seen_requests = {s: t for s, t in self._seen_requests.items() if t >= cutoff}
                self._seen_pruned_at = now
            if signature in self._seen_requests:
                raise Rejected("this request was already received (replay)")
            self._seen_requests[signature] = moment
            if now - self._seen_written.get(org, 0.0) >= LAST_SEEN_EVERY:   # health needs no finer grain
                self.store.execute("UPDATE mercia_fed_node SET last_seen = ? WHERE org = ?", [_iso(_now()), org])
                self._seen_written[org] = now
        return org

    def _node_key(self, org: str) -> Ed25519PublicKey | None:
        """The node's enrolled key (None: not enrolled), read from the store at most every NODE_KEY_KEPT
        seconds per enrolled node: every request of every node is checked against it.  Names that are not
        enrolled are not kept (anyone can claim any name)."""
        with self._lock:
            read_at, key = self._node_keys.get(org, (-NODE_KEY_KEPT, None))
            if time.monotonic() - read_at < NODE_KEY_KEPT:
                return key
            pem = self.store.query_one("SELECT public_key FROM mercia_fed_node WHERE org = ? AND active", [org])
            if pem is None:
                self._node_keys.pop(org, None)
                return None
            key = load_public_key(pem)
            self._node_keys[org] = (time.monotonic(), key)
            return key

    def no_work_as_known(self, org: str) -> bool:
        """Can a node's look for work (a long poll's first, or one woken by a round this process issued) be
        spared the store?  Yes when the store was looked at for ``org`` less than WORK_LOOK_AGAIN seconds
        ago and no open round this process issued has a task open for it: no statement, no thread."""
        with self._memory:
            moment = _now()
            return (time.monotonic() - self._work_looked.get(org, -WORK_LOOK_AGAIN) < WORK_LOOK_AGAIN
                    and not any(org in r.open.values() and moment < r.deadline for r in self._rounds.values()))

    def work_for(self, org: str) -> list[Task]:
        """Tasks issued to ``org`` that are open (of their question's current round: ``_supersede_open_tasks``)
        and not yet answered or expired (sent again until answered), marked sent."""
        with self._memory:
            self._work_looked[org] = time.monotonic()
        with self._lock:
            now = _iso(_now())
            rows = sorted(self.store.query(
                "UPDATE mercia_fed_task SET status = 'sent', sent_at = ? WHERE org = ? AND status IN ('issued', 'sent') "
                "AND expires_at > ? RETURNING id, query_id, nonce, salt, expires_at", [now, org, now]))
            questions = {qid: self._question(qid) for qid in {r[1] for r in rows}}
        return [Task(task_id=task_id, query_id=qid, org=org, nonce=nonce, salt=salt, expires_at=expires,
                     policy=questions[qid].policy, query=questions[qid].query)
                for task_id, qid, nonce, salt, expires in rows]

    def accept(self, org: str, result: NodeResult) -> None:
        """Record a node's (already signature-checked) result; replays and late results are refused."""
        if result.org != org:
            raise Rejected(f"node {org} sent a result signed for {result.org}")
        rows = member_rows(org, result)
        with self._lock:
            now = _iso(_now())   # when the result is recorded, and the moment its deadline is checked at
            with self.gov.db.transaction():
                # One statement checks and records: the node's own task, this nonce (the request is
                # already signed by the node, so only the node itself could probe it), still open,
                # before its deadline (open: of the question's current round, ``_supersede_open_tasks``).
                taken = self.store.query(
                    "UPDATE mercia_fed_task SET status = ?, answered_at = ?, count = ?, unlinkable = ?, reason = ?, "
                    "last_load = ?, data_version = ? WHERE id = ? AND org = ? AND nonce = ? "
                    "AND status IN ('issued', 'sent') AND expires_at >= ? RETURNING query_id",
                    [result.status, now, result.count, result.unlinkable, result.reason, result.last_load,
                     result.data_version, result.task_id, org, result.nonce, now])
                if taken:
                    self.gov.audit.record(f"node:{org}", "federation.result", f"task:{result.task_id}",
                                          self._question(taken[0][0]).project_id, query=taken[0][0],
                                          status=result.status, count=result.count, reason=result.reason)
            if not taken:
                self._refuse_result(org, result)
            if result.status == "answered":
                self._tokens[result.task_id] = rows
                self._site_extra[result.task_id] = {"linked": result.linked, "cells": result.cells,
                                                    "labels": result.labels, "unlinkable": result.unlinkable_cells}
            with self._memory:   # after the tokens: a round with no task open can be combined
                if (issued := self._rounds.get(taken[0][0])) is not None:
                    issued.open.pop(result.task_id, None)
            self.result_news.announce()

    def _question(self, query_id: int) -> _Question:
        """What never changes about a question: remembered from its submission, else read once."""
        with self._memory:
            known = self._questions.get(query_id)
        if known is None:
            project_id, policy, body = self.store.query(
                "SELECT project_id, policy, body FROM mercia_fed_query WHERE id = ?", [query_id])[0]
            known = _Question(project_id, policy, QUERY.validate_json(body))
            self._remember(query_id, known)
        return known

    def refuse_protocol(self, org: str | None, spoken: str) -> str:
        """Audit a request in another protocol version (not verified: its signature is of another form) and
        say why it is refused.  An old node retries every few seconds, so each enrolled node's refusal is
        written at most once per PROTOCOL_REFUSAL_EVERY seconds, with the number of refusals since the last
        record; names that are not enrolled share one such allowance (anyone can send any name)."""
        reason = (f"this hub speaks federation protocol {PROTOCOL_VERSION} and node {org!r} speaks {spoken}: "
                  "upgrade the node's Mercia")
        with self._lock:
            enrolled = org is not None and self.store.query_one(
                "SELECT count(*) FROM mercia_fed_node WHERE org = ?", [org]) > 0
            key, now = org if enrolled else None, time.time()
            written, since = self._protocol_refusals.get(key, (0.0, 0))
            if now - written < PROTOCOL_REFUSAL_EVERY:
                self._protocol_refusals[key] = (written, since + 1)
            else:
                self._protocol_refusals[key] = (now, 0)
                # the request cannot be verified, so the name is only what the request claims
                self.gov.audit.record(f"node:{org} (claimed, unverified)" if enrolled else "unknown node",
                                      "federation.reject", f"node:{org}" if enrolled else "node", None, reason=reason,
                                      claimed_node=org, verified=False, protocol=spoken,
                                      refused_since_last_record=since)
        return reason

    def _refuse_result(self, org: str, result: NodeResult) -> None:
        """Why a result was not taken (in the audit log), raised as Rejected."""
        task = self.store.query_dicts("SELECT t.*, q.project_id, q.round AS current_round FROM mercia_fed_task t "
                                      "JOIN mercia_fed_query q ON q.id = t.query_id WHERE t.id = ? AND t.org = ?",
                                      [result.task_id, org])
        if not task:
            raise Rejected(f"node {org} has no task {result.task_id}")
        task = task[0]
        if not secrets.compare_digest(task["nonce"], result.nonce):
            problem = "the nonce does not match the task (replayed or forged)"
        elif task["status"] == "timed_out" or (task["status"] in ("issued", "sent")
                                               and _now() > _parse(task["expires_at"])):
            problem = "the result arrived after the deadline; the user can refresh the question"
        elif task["status"] not in ("issued", "sent") or task["round"] != task["current_round"]:
            problem = f"task {result.task_id} is already {task['status']} (replay or superseded round)"
        else:
            problem = "the task changed while its result was recorded"
        self.gov.audit.record(f"node:{org}", "federation.reject", f"task:{result.task_id}", task["project_id"],
                              reason=problem)
        raise Rejected(problem)


class News:
    """Wakes the hub's long polls (coroutines on an event loop) when this process issues a round or accepts a
    result; announced from any thread.  Waking beats looking at the counters every few milliseconds, which
    cost the hub CPU for every waiting node and researcher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def subscribe(self) -> asyncio.Future:
        """A future done at the next announcement (subscribe, then look, then wait: nothing is missed)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._waiting.append((loop, future))
        return future

    async def wait(self, future: asyncio.Future, seconds: float) -> bool:
        """Until ``future`` is done (True: there was news) or ``seconds`` pass (False)."""
        try:
            await asyncio.wait_for(future, max(seconds, 0.0))
        except TimeoutError:
            self.forget(future)
            return False
        return True

    def forget(self, future: asyncio.Future) -> None:
        """No longer waiting for ``future`` (a long poll that ends)."""
        with self._lock:
            self._waiting = [(loop, f) for loop, f in self._waiting if f is not future]

    def announce(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for loop, future in waiting:
            loop.call_soon_threadsafe(_settle, future)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


# site and cell as dictionaries: a result's site is one value and its cells few, so combining the sites
# ranks their names once instead of hashing a string per member row (a third of combining 220,000 rows)
MEMBER_ROWS = pa.schema([("site", pa.dictionary(pa.int32(), pa.string())), ("nhs", pa.uint64()),
                         ("demographic", pa.uint64()), ("cell", pa.dictionary(pa.int32(), pa.string()))])


def member_rows(org: str, result: NodeResult) -> pa.Table:
    """A result's members as rows (``MEMBER_ROWS``): each 8-byte token as an unsigned 64-bit integer."""
    members = result.members
    site = pa.DictionaryArray.from_arrays(pa.array(np.zeros(members.num_rows, np.int32)), pa.array([org]))
    return pa.table({"site": site,
                     "nhs": token_integers(members.column("nhs").combine_chunks()),
                     "demographic": token_integers(members.column("demographic").combine_chunks()),
                     "cell": members.column("cell")}, schema=MEMBER_ROWS)


def token_integers(tokens: pa.FixedSizeBinaryArray) -> pa.Array:
    """8-byte tokens as unsigned 64-bit integers (the bytes as they are: only equality and a fixed order
    matter), null where the token is."""
    data = tokens.buffers()[1]   # may be longer than the rows need (a received stream says its buffers' sizes)
    values = (np.zeros(len(tokens), np.uint64) if data is None else
              np.frombuffer(data, np.uint64, count=len(tokens), offset=tokens.offset * 8))
    return pa.array(values, pa.uint64(), mask=tokens.is_null().to_numpy(zero_copy_only=False))


def network_counts(rows: pa.Table, partition: bool) -> tuple[int, int, dict[str, int]]:
    """(distinct persons, persons seen at two or more sites, distinct persons per cell) over the sites'
    salted member rows (``member_rows``), with numpy sorts.

    A person is its NHS token; a person known at some site only by a demographic token is the person
    with an NHS token who has that demographic token too (the smallest such token, so two NHS numbers
    are never merged), else a person of its own.  With ``partition`` each person is counted in one cell
    (the smallest: the earliest month, or the first stratum in sort order when sites disagree), so the
    cells add up to the total; otherwise (features) a person counts once in every cell they have."""
    if rows.num_rows == 0:
        return 0, 0, {}
    site, _ = _codes(rows.column("site"))
    cell, cell_names = _codes(rows.column("cell"))
    person, by_nhs = _person_keys(*(rows.column(name).combine_chunks() for name in ("nhs", "demographic")))
    per_cell = np.zeros(len(cell_names), np.int64)
    distinct = shared = 0
    # persons by NHS token, then persons of their own by demographic token
    for part in [slice(None)] if by_nhs.all() else [by_nhs, ~by_nhs]:
        d, s = _persons(person[part], site[part], cell[part], partition, per_cell)
        distinct, shared = distinct + d, shared + s
    return distinct, shared, {name: int(n) for name, n in zip(cell_names, per_cell) if n}


def partition_cells(rows: pa.Table, part: Callable[[str], str | None]) -> dict[str, int]:
    """Distinct persons per cell of each partition ``part`` names among the cells (a characterisation's sex,
    age band, IMD quintile), a person in one cell of each (its smallest, as ``network_counts`` with
    ``partition``): two sites that disagree on a person's age band would otherwise count them twice, and
    the bands would no longer add up to the total that disclosure control publishes them with."""
    cells = rows.column("cell").unify_dictionaries()
    names = {part(name) for chunk in cells.chunks for name in chunk.dictionary.to_pylist()} - {None}
    out: dict[str, int] = {}
    for name in sorted(names):
        mask = pa.chunked_array([pc.take(pc.starts_with(chunk.dictionary, f"{name}="), chunk.indices)
                                 for chunk in cells.chunks], pa.bool_())
        out |= network_counts(rows.filter(mask), True)[2]
    return out


def _person_keys(nhs: pa.Array, demographic: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each row's person (``network_counts``) as a 64-bit key, and whether that key is an NHS token."""
    has_nhs = nhs.is_valid().to_numpy(zero_copy_only=False)
    nhs_values = nhs.fill_null(0).to_numpy()
    only = ~has_nhs
    if not only.any():   # every row has an NHS token: nothing to resolve
        return nhs_values, has_nhs
    demographic_values = demographic.fill_null(0).to_numpy()
    has_demographic = demographic.is_valid().to_numpy(zero_copy_only=False)
    # the smallest NHS token carried with each demographic token that some row has without an NHS token
    wanted = pc.is_in(demographic, value_set=demographic.filter(pa.array(only))).to_numpy(zero_copy_only=False)
    both = np.flatnonzero(has_nhs & has_demographic & wanted)
    order = np.lexsort((nhs_values[both], demographic_values[both]))
    alias_from, alias_to = demographic_values[both][order], nhs_values[both][order]
    first = np.concatenate([[True], alias_from[1:] != alias_from[:-1]]) if len(order) else np.zeros(0, bool)
    alias_from, alias_to = alias_from[first], alias_to[first]
    at = np.minimum(np.searchsorted(alias_from, demographic_values[only]), max(len(alias_from) - 1, 0))
    aliased = (alias_from[at] == demographic_values[only]) if len(alias_from) else np.zeros(only.sum(), bool)
    person = nhs_values.copy()
    person[only] = np.where(aliased, alias_to[at] if len(alias_from) else 0, demographic_values[only])
    by_nhs = has_nhs.copy()
    by_nhs[only] = aliased
    return person, by_nhs


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Each value's rank among the column's distinct values (so the smallest code is the smallest value),
    for a column of dictionaries (``MEMBER_ROWS``): the chunks' dictionaries unified, nothing hashed per row."""
    unified = column.unify_dictionaries()
    names = unified.chunk(0).dictionary.to_pylist() if unified.num_chunks else []
    indices = np.concatenate([np.zeros(0, np.int32)] + [c.indices.to_numpy(zero_copy_only=False)
                                                        for c in unified.chunks])
    rank = np.empty(len(names), np.int32)
    rank[np.argsort(np.array(names, dtype=object))] = np.arange(len(names), dtype=np.int32)
    return rank[indices], sorted(names)


def _persons(person: np.ndarray, site: np.ndarray, cell: np.ndarray, partition: bool,
             per_cell: np.ndarray) -> tuple[int, int]:
    """(persons, persons at two or more sites) among rows keyed by ``person``; adds each person's cells
    (its smallest with ``partition``, else every one) to ``per_cell``.  Linear passes over the sorted
    rows: ``reduceat`` per person cost as much as the sort."""
    if len(person) == 0:
        return 0, 0
    one_cell = len(per_cell) == 1
    # by person, and by cell within a person when a person counts in every cell they have.  numpy's default
    # sort: a stable one merges the sites' runs in token order (``node.in_token_order``) a little quicker
    # (0.13 vs 0.22 s at 5.4 million) but is 3x slower on rows in no order (1.10 vs 0.36 s)
    order = np.argsort(person) if partition or one_cell else np.lexsort((cell, person))
    person, site = person[order], site[order]
    new_person = np.empty(len(person), bool)
    new_person[0] = True
    np.not_equal(person[1:], person[:-1], out=new_person[1:])
    persons = int(np.count_nonzero(new_person))
    # a person is at two or more sites when two of their rows next to each other are at different sites
    moved = person[1:][~new_person[1:] & (site[1:] != site[:-1])]
    shared = int(np.count_nonzero(moved[1:] != moved[:-1])) + int(len(moved) > 0)
    if one_cell:
        per_cell[0] += persons
        return persons, shared
    cell = cell[order]
    if partition:   # the person's smallest cell
        per_cell += np.bincount(np.minimum.reduceat(cell, np.flatnonzero(new_person)), minlength=len(per_cell))
    else:           # each (person, cell) pair once
        new_pair = new_person.copy()
        new_pair[1:] |= cell[1:] != cell[:-1]
        per_cell += np.bincount(cell[new_pair], minlength=len(per_cell))
    return persons, shared


def months_between(start: str, end: str) -> list[str]:
    """Every month from ``start`` to ``end`` (YYYY-MM), inclusive."""
    (y, m), (y1, m1) = (map(int, x.split("-")) for x in (start, end))
    out = []
    while (y, m) <= (y1, m1):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def request_message(org: str, method: str, path: str, stamp: str | None, body: bytes) -> bytes:
    """What a node signs for each request: the protocol, who, what, when and a digest of the body."""
    import hashlib

    return "\n".join([f"mercia-federation/{PROTOCOL_VERSION}", org, method.upper(), path, stamp or "",
                      hashlib.sha256(body).hexdigest()]).encode()
