"""Data managers load an organisation's extract (``mercia.ingest``) through the platform, as a job."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from mercia.cdm.extensions import ensure_extension_tables
from mercia.governance import Role, User
from mercia.services.errors import Forbidden, Invalid, TooLarge
from mercia.services.sources import ODS_CODE
from mercia.services.state import MerciaState

UPLOAD_KINDS = ("fhir", "hl7v2", "phenopackets", "vcf")  # single-file readers; CSV extracts are directories


def unpacked_size(path: Path, limit: int) -> int:
    """The bytes a gzip upload unpacks to, counted up to just past ``limit`` (the file's own size when it
    is not gzip).  Readers hold a file's content in memory, so a few hundred kilobytes of gzip could
    otherwise unpack to more memory than the server has; an upload that is not valid gzip is counted as
    far as it reads, and its reader rejects it with the reason."""
    from isal import igzip
    from isal.igzip_lib import IsalError

    with path.open("rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            return path.stat().st_size
    total = 0
    try:
        with igzip.open(path, "rb") as unpacking:
            while total <= limit and (block := unpacking.read(1 << 20)):
                total += len(block)
    except (OSError, EOFError, ValueError, IsalError):
        pass
    return total


def start_load(state: MerciaState, user: User, org: str, kind: str, filename: str, data: BinaryIO) -> int:
    if not (user.has(Role.DATA_MANAGER, org) or user.has(Role.ADMIN)):
        raise Forbidden(f"only {org}'s data managers can load its data")
    if not ODS_CODE.fullmatch(org):
        # The key of every row's provenance, as the ingest command's --org: 'rrk' beside 'RRK' loads all again.
        raise Invalid(f"{org[:40]!r} is not an ODS code (3 to 10 capital letters and digits, e.g. RRK or M85001)")
    if kind not in UPLOAD_KINDS:
        raise Invalid(f"kind must be one of {', '.join(UPLOAD_KINDS)}")
    state.require_row_transactions("Loading extracts (loads, provenance and rejects beside the CDM)")
    name = Path(filename or "extract").name
    if not name or name.startswith("."):
        raise Invalid("the upload needs a file name")
    folder = Path(tempfile.mkdtemp(prefix="mercia-load-"))
    path = folder / name
    with path.open("wb") as out:
        shutil.copyfileobj(data, out)
    size, limit = path.stat().st_size, state.options.max_upload_bytes
    if unpacked_size(path, limit) > limit:
        shutil.rmtree(folder, ignore_errors=True)
        state.gov.audit.record(user.username, "source.load.refused", f"source:{org}", kind=kind, extract=name,
                               bytes=size, unpacks_beyond=limit)
        raise TooLarge(f"{name} unpacks to more than {limit:,} bytes, the largest extract the server takes")
    state.gov.audit.record(user.username, "source.load", f"source:{org}", kind=kind, extract=name, bytes=size)

    def work(progress) -> dict[str, Any]:
        from mercia.ingest.service import default_options, ingest
        steps = iter([0.2, 0.5, 0.8])
        try:
            options = default_options(kind, key_file=state.options.pseudonym_key_file)
            with state.lock:
                ensure_extension_tables(state.store)
                summary = ingest(state.store, kind, path, org, options=options,
                                 on_step=lambda message: progress(next(steps, 0.9), message))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if summary.loaded + summary.unchanged + summary.withheld + summary.removed == 0:
            # A file of the wrong format: the job fails (as the CLI exits non-zero); its rejects stay recorded.
            with state.lock:
                reason = state.store.query_one("SELECT reason FROM mercia_reject WHERE load_id = ? GROUP BY reason "
                                               "ORDER BY COUNT(*) DESC, reason LIMIT 1", [summary.load_id])
            why = f" (most common problem: {reason})" if reason else ""
            raise ValueError(f"nothing in {name} could be read as {kind}{why}: check that the file is in "
                             f"the format chosen; {summary.rejected} records were rejected")
        return {"load_id": summary.load_id, "org": summary.org, "extract": summary.extract, "read": summary.read,
                "loaded": summary.loaded, "unchanged": summary.unchanged, "rejected": summary.rejected,
                "withheld": summary.withheld, "flagged": summary.flagged, "removed": summary.removed,
                "rows": summary.rows,
                "reject_reasons": summary.reject_reasons}

    return state.jobs.submit("source.load", user.id, None, work, about={"org": org, "extract": name})
