"""The hub's HTTP API under ``/api/v1/federation``: thin routes over ``mercia.federation.hub.Hub``.

Users authenticate with a personal API token (Bearer); nodes sign every request with their Ed25519
key (headers ``X-Mercia-Node``, ``X-Mercia-Time``, ``X-Mercia-Signature``).  Nodes only ever call
the hub: they fetch work by long-polling ``GET /node/work`` and post signed results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi import Query as QueryParameter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from mercia.federation.hub import WORK_LOOK_AGAIN, Hub
from mercia.federation.messages import PROTOCOL_HEADER, PROTOCOL_VERSION, RESULT_MEDIA_TYPE, NodeResult, Query
from mercia.governance import User
from mercia.governance import Throttled
from mercia.governance.model import Conflict, Forbidden, GovernanceError, NotFound

PREFIX = "/api/v1/federation"
MAX_WAIT = 25.0
# Bytes a node request may carry.  A body is read before its signature can be checked, so without a bound
# anyone could make the hub hold any amount; a node's result for 2 million persons is about 35 MB.
MAX_NODE_BODY = 256 * 2**20
# seconds: how often a long poll looks at the store without news from this process (results taken, work
# issued by another process of a shared store — WORK_LOOK_AGAIN for a node's —; the deadline).  A look costs
# the hub a query, and every enrolled node is waiting all the time.
ANSWER_LOOK_AGAIN = 0.5
bearer = HTTPBearer(auto_error=False, description="personal API token")


class AskRequest(BaseModel):
    project_id: int
    query: Query
    deadline_seconds: float | None = Field(None, gt=0, le=3600)
    policy: str | None = None


class EnrolRequest(BaseModel):
    org: str = Field(min_length=1, max_length=20)
    name: str = Field(min_length=1, max_length=200)
    public_key: str = Field(min_length=1, max_length=2000)


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is longer than ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length", "")
    too_large = HTTPException(413, f"a node request may carry at most {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def federation_router(hub_of: Callable[[Request], Hub], user: Callable[..., User]) -> APIRouter:
    """The federation routes (paths under ``/federation``), for the hub's own app and for a Mercia
    server acting as hub: ``hub_of`` finds the hub for a request, ``user`` is the caller dependency."""
    router = APIRouter(prefix="/federation")

    async def node(request: Request) -> str:
        h = request.headers
        spoken = h.get(PROTOCOL_HEADER)
        if spoken != str(PROTOCOL_VERSION) and (spoken or h.get("x-mercia-signature")):   # version 1 did not say
            reason = await run_in_threadpool(hub_of(request).refuse_protocol, h.get("x-mercia-node"), spoken or "1")
            raise HTTPException(426, reason, headers={"Upgrade": f"mercia-federation/{PROTOCOL_VERSION}"})
        request.state.body = body = await bounded_body(request, MAX_NODE_BODY)
        return await run_in_threadpool(hub_of(request).authenticate_node, h.get("x-mercia-node"), request.method,
                                       request.url.path, h.get("x-mercia-time"), body, h.get("x-mercia-signature"))

    @router.post("/queries", status_code=202, tags=["federation"])
    def ask(body: AskRequest, request: Request, caller: User = Depends(user)) -> dict[str, Any]:
        """Ask every node a question (feasibility count, optionally stratified; trial feasibility by month;
        characterisation) for an approved project with the federated permission."""
        return hub_of(request).submit(caller, body.project_id, body.query, body.deadline_seconds, body.policy)

    @router.get("/queries", tags=["federation"])
    def questions(request: Request, caller: User = Depends(user)) -> list[dict[str, Any]]:
        """The questions of the projects the caller may use, newest first."""
        return hub_of(request).questions_for(caller)

    @router.get("/queries/{query_id}", tags=["federation"])
    async def answer(query_id: int, request: Request, wait: float = QueryParameter(0.0, ge=0, le=MAX_WAIT),
                     caller: User = Depends(user)) -> dict[str, Any]:
        """The answer: per-site status, counts and freshness, the de-duplicated total (disclosure-controlled).
        While the question runs, waits up to ``wait`` seconds for it to finish (long poll)."""
        hub = hub_of(request)
        end = time.monotonic() + wait
        news = hub.result_news.subscribe()
        try:   # forgotten also when the caller may not see the question (else kept until the next result)
            # every ``answer`` checks who is asking; before ``end`` it gives None while the question runs
            found = await run_in_threadpool(hub.answer, caller, query_id, wait == 0)
            while found is None:
                woken = await hub.result_news.wait(news, min(ANSWER_LOOK_AGAIN, end - time.monotonic()))
                news = hub.result_news.subscribe()
                last = time.monotonic() >= end
                # between answers, memory (news of a result here) or one query says whether it can be made
                known = hub.settled_as_known(query_id) if woken else None
                if last or (known if known is not None else await run_in_threadpool(hub.settled, query_id)):
                    # after the store said so, ``answer`` goes by the store too (results taken elsewhere)
                    found = await run_in_threadpool(hub.answer, caller, query_id, last or known is None)
        finally:
            hub.result_news.forget(news)
        return found

    @router.post("/queries/{query_id}/refresh", tags=["federation"])
    def refresh(query_id: int, request: Request, caller: User = Depends(user)) -> dict[str, Any]:
        """Ask every node again (a node that missed the deadline can now count)."""
        return hub_of(request).refresh(caller, query_id)

    @router.get("/nodes", tags=["federation administration"])
    def nodes(request: Request, caller: User = Depends(user)) -> list[dict[str, Any]]:
        """Node health for hub administrators: enrolled nodes and when each last called in."""
        return hub_of(request).node_health(caller)

    @router.post("/nodes", status_code=201, tags=["federation administration"])
    def enrol(body: EnrolRequest, request: Request, caller: User = Depends(user)) -> dict[str, str]:
        """Enrol (or re-key) a node: its ODS code, name and Ed25519 public key (PEM)."""
        hub_of(request).enrol_by(caller, body.org, body.name, body.public_key)
        return {"org": body.org}

    @router.post("/projects/{project_id}/permission", status_code=201, tags=["federation administration"])
    def permit(project_id: int, request: Request, caller: User = Depends(user)) -> dict[str, int]:
        """Grant a project the federated-query permission."""
        hub_of(request).allow_project_by(caller, project_id)
        return {"project_id": project_id}

    @router.get("/node/work", tags=["federation nodes"])
    async def work(request: Request, wait: float = 0.0, org: str = Depends(node)) -> list[dict[str, Any]]:
        """Tasks for the calling node; waits up to ``wait`` seconds for one (long poll)."""
        hub = hub_of(request)
        end = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        news_or_first = True   # the first look, and looks woken by news, may be spared the store
        while True:
            news = hub.work_news.subscribe()
            spared = news_or_first and hub.no_work_as_known(org)
            tasks = [] if spared else await run_in_threadpool(hub.work_for, org)
            if tasks or time.monotonic() >= end:
                hub.work_news.forget(news)
                return [t.model_dump() for t in tasks]
            news_or_first = await hub.work_news.wait(news, min(WORK_LOOK_AGAIN, end - time.monotonic()))

    @router.post("/node/results", tags=["federation nodes"], openapi_extra={"requestBody": {
        "required": True, "content": {RESULT_MEDIA_TYPE: {"schema": {
            "type": "string", "format": "binary",
            "description": "an Arrow IPC stream: one row per member (salted tokens, cell), the result's other "
                           "fields as JSON in the schema metadata; signed by the node over its SHA-256"}}}}})
    async def result(request: Request, org: str = Depends(node)) -> dict[str, str]:
        """A node's signed result for one of its tasks: an Arrow IPC stream of its members, the other
        fields as JSON in the stream's schema metadata (``NodeResult.to_wire``)."""
        try:
            parsed = NodeResult.from_wire(request.state.body)   # read, bounded and signature-checked by ``node``
        except ValidationError as exc:
            raise HTTPException(422, f"not a node result: {exc.errors()[0]['msg']}") from exc
        except ValueError as exc:
            raise HTTPException(422, f"not a node result: {exc}") from exc
        await run_in_threadpool(hub_of(request).accept, org, parsed)
        return {"status": "accepted"}

    return router


def create_hub_app(hub: Hub) -> FastAPI:
    """The hub as its own service: bearer-token users, signed nodes, the routes under ``/api/v1``."""
    app = FastAPI(title="Mercia federation hub", version="1")

    @app.exception_handler(GovernanceError)
    async def governance_error(_: Request, exc: GovernanceError) -> JSONResponse:
        status = 429 if isinstance(exc, Throttled) else 403 if isinstance(exc, Forbidden) \
            else 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def user(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
        found = hub.user_for_token(credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(401, "sign in with a personal API token (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})
        return found

    app.include_router(federation_router(lambda _: hub, user), prefix="/api/v1")
    return app
