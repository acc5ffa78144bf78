"""The hub's HTTP API under ``/api/v1/federation``: thin routes over ``mercia.federation.hub.Hub``.

Users authenticate with a personal API token (Bearer); nodes sign every request with their Ed25519
key (headers ``X-Mercia-Node``, ``X-Mercia-Time``, ``X-Mercia-Signature``).  Nodes only ever call
the hub: they fetch work by long-polling ``GET /node/work`` and post signed results.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from mercia.cohorts.model import CohortDefinitionError
from mercia.federation.hub import BudgetExceeded, Hub, Rejected
from mercia.federation.messages import NodeResult, Query
from mercia.governance import User
from mercia.governance.model import Conflict, Forbidden, GovernanceError, NotFound
from mercia.privacy.disclosure import DisclosureError

PREFIX = "/api/v1/federation"
MAX_WAIT = 25.0
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


def create_hub_app(hub: Hub) -> FastAPI:
    app = FastAPI(title="Mercia federation hub", version="1")

    @app.exception_handler(GovernanceError)
    async def governance_error(_: Request, exc: GovernanceError) -> JSONResponse:
        status = 429 if isinstance(exc, BudgetExceeded) else 403 if isinstance(exc, (Forbidden, Rejected)) \
            else 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(CohortDefinitionError)
    @app.exception_handler(DisclosureError)
    async def bad_request(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def user(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
        found = hub.user_for_token(credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(401, "sign in with a personal API token (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})
        return found

    async def node(request: Request) -> str:
        body = await request.body()
        h = request.headers
        return await run_in_threadpool(hub.authenticate_node, h.get("x-mercia-node"), request.method,
                                       request.url.path, h.get("x-mercia-time"), body, h.get("x-mercia-signature"))

    @app.post(f"{PREFIX}/queries", status_code=202, tags=["questions"])
    def ask(body: AskRequest, caller: User = Depends(user)) -> dict[str, Any]:
        """Ask every node a question (feasibility count, optionally stratified; trial feasibility by month;
        characterisation) for an approved project with the federated permission."""
        return hub.submit(caller, body.project_id, body.query, body.deadline_seconds, body.policy)

    @app.get(f"{PREFIX}/queries/{{query_id}}", tags=["questions"])
    def answer(query_id: int, caller: User = Depends(user)) -> dict[str, Any]:
        """The answer: per-site status, counts and freshness, the de-duplicated total (disclosure-controlled)."""
        return hub.answer(caller, query_id)

    @app.post(f"{PREFIX}/queries/{{query_id}}/refresh", tags=["questions"])
    def refresh(query_id: int, caller: User = Depends(user)) -> dict[str, Any]:
        return hub.refresh(caller, query_id)

    @app.get(f"{PREFIX}/nodes", tags=["administration"])
    def nodes(caller: User = Depends(user)) -> list[dict[str, Any]]:
        """Node health for hub administrators: enrolled nodes and when each last called in."""
        return hub.node_health(caller)

    @app.post(f"{PREFIX}/nodes", status_code=201, tags=["administration"])
    def enrol(body: EnrolRequest, caller: User = Depends(user)) -> dict[str, str]:
        hub.enrol_by(caller, body.org, body.name, body.public_key)
        return {"org": body.org}

    @app.post(f"{PREFIX}/projects/{{project_id}}/permission", status_code=201, tags=["administration"])
    def permit(project_id: int, caller: User = Depends(user)) -> dict[str, int]:
        hub.allow_project_by(caller, project_id)
        return {"project_id": project_id}

    @app.get(f"{PREFIX}/node/work", tags=["nodes"])
    async def work(wait: float = 0.0, org: str = Depends(node)) -> list[dict[str, Any]]:
        """Tasks for the calling node; waits up to ``wait`` seconds for one (long poll)."""
        end = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            tasks = await run_in_threadpool(hub.work_for, org)
            if tasks or time.monotonic() >= end:
                return [t.model_dump() for t in tasks]
            await asyncio.sleep(0.1)

    @app.post(f"{PREFIX}/node/results", tags=["nodes"])
    async def result(request: Request, org: str = Depends(node)) -> dict[str, str]:
        try:
            parsed = NodeResult.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, f"not a node result: {exc.errors()[0]['msg']}") from exc
        await run_in_threadpool(hub.accept, org, parsed)
        return {"status": "accepted"}

    return app
