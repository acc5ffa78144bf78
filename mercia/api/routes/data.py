"""Data sources and exports (the airlock)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, UploadFile
from fastapi.responses import Response

from mercia.api import models as m
from mercia.api.auth import current_user
from mercia.api.limits import ParsedOffLoop
from mercia.governance import User
from mercia.services import exportable
from mercia.services.exportable import EXPORTABLE, view_export
from mercia.services.loads import start_load
from mercia.services.sources import view_source, visible_sources
from mercia.services.state import state_of

router = APIRouter(route_class=ParsedOffLoop)


@router.get("/sources", tags=["sources"], summary="Data sources; their load totals for their data managers "
                                                    "and governance")
def sources(request: Request, user: User = Depends(current_user)) -> list[dict[str, Any]]:
    return visible_sources(state_of(request), user)


@router.get("/sources/{name}", tags=["sources"],
            summary="A source's load history and data-quality findings (its data managers, governance)")
def source(name: str, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return view_source(state_of(request), user, name)


@router.post("/sources/{org}/loads", tags=["sources"], status_code=202,
             summary="Load an organisation's extract (FHIR, HL7 v2, Phenopackets, VCF) as a background job")
def load_extract(org: str, request: Request, file: UploadFile, kind: str = Form(...),
                 user: User = Depends(current_user)) -> dict[str, Any]:
    job_id = start_load(state_of(request), user, org, kind, file.filename or "", file.file)
    return {"job_id": job_id, "status_url": f"/api/v1/jobs/{job_id}"}


@router.get("/exports", tags=["exports"], summary="Export requests you made, or (output checkers) all of them")
def list_exports(request: Request, status: str | None = None, user: User = Depends(current_user)) -> list[dict]:
    return state_of(request).airlock.list_for(user, status)


@router.get("/exports/kinds", tags=["exports"], summary="What can be exported")
def export_kinds(user: User = Depends(current_user)) -> dict[str, str]:
    return {kind: spec.description for kind, spec in EXPORTABLE.items()}


@router.post("/exports", tags=["exports"], status_code=201,
             summary="Request an export: the server computes the result and applies disclosure control")
def request_export(body: m.ExportCreate, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return exportable.request_export(state_of(request), user, body.project_id, body.kind, body.ref, body.title,
                                     body.justification)


@router.get("/exports/{export_id}", tags=["exports"],
            summary="An export request and its disclosure report; its tables only once released")
def get_export(export_id: int, request: Request, user: User = Depends(current_user)) -> dict[str, Any]:
    return view_export(state_of(request), user, export_id)


@router.post("/exports/{export_id}/decision", tags=["exports"],
             summary="Output checker: release or refuse (never your own request)")
def decide_export(export_id: int, body: m.Decision, request: Request,
                  user: User = Depends(current_user)) -> dict[str, Any]:
    return state_of(request).airlock.decide(user, export_id, body.decision, body.reason)


@router.put("/exports/{export_id}/publish-numbers", tags=["exports"],
            summary="Project lead: show (or stop showing) a released output's numbers on the public register")
def publish_numbers(export_id: int, body: m.PublishNumbers, request: Request,
                    user: User = Depends(current_user)) -> dict[str, Any]:
    row = state_of(request).airlock.set_publish_numbers(user, export_id, body.publish)
    return {"id": export_id, "publish_numbers": bool(row["publish_numbers"])}


@router.get("/exports/{export_id}/download", tags=["exports"], summary="Download an approved export (JSON or CSV)")
def download_export(export_id: int, request: Request, format: str = "json",
                    user: User = Depends(current_user)) -> Response:
    import orjson

    row = state_of(request).airlock.release(user, export_id)
    if format == "csv":
        return Response(export_csv(row["content"]), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="mercia-export-{export_id}.csv"'})
    if format != "json":
        raise HTTPException(400, "format is 'json' or 'csv'")
    return Response(orjson.dumps(row["content"]), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="mercia-export-{export_id}.json"'})


def export_csv(content: dict[str, Any]) -> str:
    """Every table of a released result as CSV blocks, redacted cells as the policy's marker."""
    import csv
    import io

    from mercia.privacy.spreadsheet import inert_rows

    out = io.StringIO()
    writer = csv.writer(out)
    for table in content["tables"]:
        hidden = {(r, c) for r, c in table["redacted"]}
        names = [c["name"] for c in table["columns"]]
        writer.writerow([f"# {table['title']}"])
        writer.writerow(names)
        writer.writerows(inert_rows([table["redacted_marker"] if (i, n) in hidden else row.get(n) for n in names]
                                    for i, row in enumerate(table["rows"])))
        writer.writerow([])
    return out.getvalue()
