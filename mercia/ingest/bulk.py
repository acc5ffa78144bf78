"""FHIR Bulk Data client (``$export``, Bulk Data Access IG v2): kick-off, status polling, parallel NDJSON
download and SMART Backend Services authorisation, resumable from a state file in the output directory.

The downloaded directory is an ordinary FHIR extract (``manifest.json`` naming the local files), loaded by
the same reader and transactional load as ``mercia ingest fhir DIR``. Nothing here touches the store.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

STATE_FILE = "bulk-export-state.json"
LOCK_FILE = ".bulk-export.lock"  # held while a run works in the directory (two cron runs must not overlap)
FHIR_JSON = "application/fhir+json"
TOKEN_MARGIN_S = 60  # a token is renewed this long before it expires
ASSERTION_LIFETIME_S = 300  # SMART Backend Services: exp no more than five minutes ahead
MAX_BACKOFF_S = 120.0  # polling without Retry-After doubles its wait from 1 s up to this
MIN_POLL_S = 0.1  # a server answering Retry-After: 0 again and again is not polled in a tight loop
MAX_RETRY_AFTER_S = 3600.0  # a server asking for longer is polled again after an hour anyway
BUSY_ATTEMPTS = 3  # a kick-off or a file download answered 429/503 (busy) is tried this often
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE_FILTER = re.compile(r"([A-Z][A-Za-z]{1,63})\?[^?#\s]+")  # Type?search-parameters (Bulk Data v2 _typeFilter)


class BulkExportError(Exception):
    """The export cannot go on now; what was done is kept in the state file so a re-run continues."""


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the whole server (system level), one Group or every patient (Patient level), since
    an instant, some types, narrowed by search queries per type (``_typeFilter``)."""

    base_url: str
    group: str | None = None
    since: str | None = None
    types: tuple[str, ...] = ()
    patients: bool = False
    type_filters: tuple[str, ...] = ()

    def __post_init__(self):
        if urlsplit(self.base_url).scheme not in ("http", "https") or not urlsplit(self.base_url).netloc:
            raise BulkExportError(f"base URL {self.base_url!r}: must be an http(s) URL of a FHIR server")
        if self.group is not None and not _FHIR_ID.fullmatch(self.group):
            raise BulkExportError(f"--group {self.group!r}: not a FHIR id (letters, digits, '-', '.'; up to 64)")
        if self.patients and self.group is not None:
            raise BulkExportError("--patients and --group: an export is Patient level or one Group, not both")
        for kind in self.types:
            if not _RESOURCE_TYPE.fullmatch(kind):
                raise BulkExportError(f"--types: {kind!r} is not a FHIR resource type name")
        for query in self.type_filters:
            match = _TYPE_FILTER.fullmatch(query)
            if not match:
                raise BulkExportError(f"--type-filter {query!r}: not Type?search-parameters, "
                                      "e.g. Observation?category=laboratory")
            if self.types and match.group(1) not in self.types:  # the server would return none of them
                raise BulkExportError(f"--type-filter {query!r}: {match.group(1)} is not among --types")

    def as_dict(self) -> dict:
        """As kept in the state file (JSON: the types as a list), to tell a re-run from a new request."""
        return {**asdict(self), "types": list(self.types), "type_filters": list(self.type_filters)}

    @property
    def kickoff_url(self) -> str:
        base = self.base_url.rstrip("/") + "/"
        level = f"Group/{self.group}/" if self.group else "Patient/" if self.patients else ""
        return urljoin(base, f"{level}$export")

    @property
    def params(self) -> dict[str, str | list[str]]:
        """Kick-off parameters; each type filter is its own ``_typeFilter`` (the IG allows repeating it)."""
        params: dict[str, str | list[str]] = {"_outputFormat": "application/fhir+ndjson"}
        if self.since:
            params["_since"] = self.since
        if self.types:
            params["_type"] = ",".join(self.types)
        if self.type_filters:
            params["_typeFilter"] = list(self.type_filters)
        return params


def since_instant(value: str) -> str:
    """``--since`` as a FHIR instant: a date means its midnight UTC; a date-time needs its time zone."""
    try:
        if len(value) == 10:
            return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%dT00:00:00Z")
        parsed = datetime.fromisoformat(value)  # Python 3.11 reads a trailing Z
    except ValueError:
        raise BulkExportError(f"--since {value!r}: not a date (YYYY-MM-DD) or an instant "
                              "(YYYY-MM-DDThh:mm:ssZ)") from None
    if parsed.tzinfo is None:
        raise BulkExportError(f"--since {value!r}: an instant needs a time zone (Z or +hh:mm)")
    return value


@dataclass(frozen=True)
class SmartCredentials:
    """A registered SMART Backend Services client: its id and private signing key (PEM, RSA or P-384 EC)."""

    client_id: str
    private_key_pem: bytes
    key_id: str | None = None  # the JWT ``kid``; default: the key's RFC 7638 thumbprint
    token_url: str | None = None  # default: token_endpoint of [base]/.well-known/smart-configuration
    scope: str = "system/*.read"


def signing_key(pem: bytes):
    """The joserfc key and JWS algorithm for a PEM private key: RSA -> RS384, EC P-384 -> ES384."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from joserfc.jwk import ECKey, RSAKey

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BulkExportError(f"private key: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(pem), "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return ECKey.import_key(pem), "ES384"
    raise BulkExportError("private key: SMART Backend Services signs with RS384 (an RSA key) or ES384 "
                          "(an EC key on curve P-384)")


class SmartAuth:
    """Bearer tokens from the SMART token endpoint for a signed JWT client assertion (``client_credentials``),
    reused until shortly before they expire; one lock so parallel downloads share one token."""

    def __init__(self, credentials: SmartCredentials, base_url: str, client: httpx.Client):
        self.credentials = credentials
        self.base_url = base_url
        self.client = client
        self.key, self.algorithm = signing_key(credentials.private_key_pem)
        self.key_id = credentials.key_id or self.key.thumbprint()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._token_url = credentials.token_url

    def token_url(self) -> str:
        if self._token_url is None:
            url = self.base_url.rstrip("/") + "/.well-known/smart-configuration"
            response = _send(self.client, "GET", url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise BulkExportError(f"SMART configuration {url}: HTTP {response.status_code}; "
                                      "give the token endpoint with --token-url")
            endpoint = _json(response, url).get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint:
                raise BulkExportError(f"SMART configuration {url}: no token_endpoint; give it with --token-url")
            self._token_url = endpoint
        return self._token_url

    def client_assertion(self, token_url: str) -> str:
        from authlib.oauth2.rfc7523 import private_key_jwt_sign

        return private_key_jwt_sign(self.key, self.credentials.client_id, token_url, alg=self.algorithm,
                                    header={"alg": self.algorithm, "typ": "JWT", "kid": self.key_id},
                                    expires_in=ASSERTION_LIFETIME_S)

    def bearer(self, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or time.monotonic() >= self._expires - TOKEN_MARGIN_S:
                self._token, self._expires = self._fetch()
            return self._token

    def _fetch(self) -> tuple[str, float]:
        from authlib.oauth2.rfc7523.client import ASSERTION_TYPE

        url = self.token_url()
        _require_tls(url)
        response = _send(self.client, "POST", url, headers={"Accept": "application/json"}, data={
            "grant_type": "client_credentials", "scope": self.credentials.scope,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.client_assertion(url)})
        if response.status_code != 200:
            body = _json(response, url, strict=False)
            detail = ": ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
            raise BulkExportError(f"token endpoint {url} refused client {self.credentials.client_id!r}: "
                                  f"HTTP {response.status_code}{': ' + detail if detail else ''}")
        body = _json(response, url)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise BulkExportError(f"token endpoint {url}: the answer has no access_token")
        lifetime = body.get("expires_in") if isinstance(body.get("expires_in"), int | float) else 300
        return token, time.monotonic() + lifetime


@dataclass
class DownloadedFile:
    """One file of the manifest and where it is (``local`` relative to the output directory)."""

    kind: str  # output, error or deleted
    type: str
    url: str
    local: str
    bytes: int = 0
    lines: int = 0
    complete: bool = False


@dataclass
class ExportState:
    """What a re-run needs to continue: the request, the job's status URL, its manifest, finished files."""

    request: dict
    status_url: str | None = None
    kicked_off_at: str | None = None
    manifest: dict | None = None
    files: list[DownloadedFile] = field(default_factory=list)

    @classmethod
    def read(cls, directory: Path) -> ExportState | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        try:
            data = orjson.loads(path.read_bytes())
            return cls(request=data["request"], status_url=data.get("status_url"),
                       kicked_off_at=data.get("kicked_off_at"), manifest=data.get("manifest"),
                       files=[DownloadedFile(**f) for f in data.get("files", [])])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BulkExportError(f"{path}: unreadable export state ({exc}); use --restart to begin again") from None

    def write(self, directory: Path) -> None:
        _write_atomically(directory / STATE_FILE, orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))


@dataclass
class ExportResult:
    directory: Path
    transaction_time: str
    files: list[DownloadedFile]  # every file of the manifest, all downloaded
    resumed: bool  # True when this run continued an earlier one instead of kicking off

    @property
    def output(self) -> list[DownloadedFile]:
        return [f for f in self.files if f.kind != "error"]

    @property
    def errors(self) -> list[DownloadedFile]:
        return [f for f in self.files if f.kind == "error"]


def run_export(request: ExportRequest, directory: Path, credentials: SmartCredentials | None = None, *,
               concurrency: int = 4, poll_timeout: float = 6 * 3600, restart: bool = False,
               on_progress: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Kick off (or resume) an export and download every file of its manifest into ``directory``.

    Re-running with the same request after an interruption polls the same job and downloads only the files
    not yet complete. ``restart`` forgets an earlier export in the directory (its files are removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    if credentials is not None:
        _require_tls(request.base_url)
    with (directory / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BulkExportError(f"another export is running in {directory}") from None
        return _run_locked(request, directory, credentials, concurrency, poll_timeout, restart, on_progress)


def _run_locked(request: ExportRequest, directory: Path, credentials: SmartCredentials | None, concurrency: int,
                poll_timeout: float, restart: bool, on_progress: Callable[[str], None]) -> ExportResult:
    state = ExportState.read(directory)
    if state is not None and restart:
        _forget(directory, state)
        state = None
    if state is not None and state.request != request.as_dict():
        raise BulkExportError(f"{directory} holds an export of a different request ({state.request}); "
                              "use another --out directory, or --restart to discard it")
    # Redirects are followed (file servers often redirect to storage); httpx drops the token for another origin.
    with httpx.Client(timeout=httpx.Timeout(60.0), follow_redirects=True) as client:
        auth = SmartAuth(credentials, request.base_url, client) if credentials else None
        session = _Session(client, auth)
        resumed = state is not None and state.status_url is not None
        if state is None or state.status_url is None:
            state = ExportState(request=request.as_dict())
            state.status_url = _kick_off(session, request)
            state.kicked_off_at = datetime.now(UTC).isoformat(timespec="seconds")
            state.write(directory)
            on_progress(f"export started: {state.status_url}")
        else:
            on_progress(f"resuming export {state.status_url}")
        if state.manifest is None:
            state.manifest = _poll(session, state.status_url, poll_timeout, on_progress)
            state.files = _plan_files(state.manifest)
            state.write(directory)
        _download_all(session, state, directory, concurrency, on_progress)
        _write_local_manifest(directory, state)
        return ExportResult(directory, state.manifest["transactionTime"], state.files, resumed)


class _Session:
    """Requests to the FHIR server, with the bearer token when there are credentials (renewed once on 401)."""

    def __init__(self, client: httpx.Client, auth: SmartAuth | None):
        self.client = client
        self.auth = auth

    def headers(self, accept: str, authorised: bool = True, renew: bool = False) -> dict[str, str]:
        headers = {"Accept": accept}
        if authorised and self.auth:
            headers["Authorization"] = f"Bearer {self.auth.bearer(renew)}"
        return headers

    def get(self, url: str, accept: str, params: dict | None = None, extra: dict | None = None) -> httpx.Response:
        response = _send(self.client, "GET", url, params=params, headers={**self.headers(accept), **(extra or {})})
        if response.status_code == 401 and self.auth:
            response = _send(self.client, "GET", url, params=params,
                             headers={**self.headers(accept, renew=True), **(extra or {})})
        return response


def _kick_off(session: _Session, request: ExportRequest) -> str:
    url = request.kickoff_url
    for _ in range(BUSY_ATTEMPTS):
        response = session.get(url, FHIR_JSON, params=request.params, extra={"Prefer": "respond-async"})
        if response.status_code != 429:
            break
        time.sleep(retry_after(response.headers.get("Retry-After"), 1.0))
    if response.status_code != 202:
        hint = ("; the server wants authorisation: give --client-id and --private-key"
                if response.status_code == 401 and session.auth is None else "")
        raise BulkExportError(f"kick-off {url}: HTTP {response.status_code}{_outcome(response)}{hint}")
    location = response.headers.get("Content-Location")
    if not location:
        raise BulkExportError(f"kick-off {url}: HTTP 202 without a Content-Location (status URL)")
    return urljoin(url, location)


def _poll(session: _Session, status_url: str, timeout: float, on_progress: Callable[[str], None]) -> dict:
    """Poll until the manifest is ready, waiting as Retry-After says (else 1, 2, 4 ... 120 s)."""
    deadline = time.monotonic() + timeout
    backoff = 1.0
    while True:
        response = session.get(status_url, "application/json")
        status = response.status_code
        if status == 200:
            manifest = _json(response, status_url)
            if not isinstance(manifest.get("output"), list) or not isinstance(manifest.get("transactionTime"), str):
                raise BulkExportError(f"status {status_url}: the manifest has no output list or transactionTime")
            return manifest
        transient = status >= 500 and _issue_codes(response) & {"transient", "throttled", "timeout"}
        if status not in (202, 429) and not transient:
            if status in (404, 410):
                raise BulkExportError(f"status {status_url}: HTTP {status} — the server no longer knows this "
                                      f"export{_outcome(response)}; use --restart to kick off a new one")
            raise BulkExportError(f"export failed: status {status_url}: HTTP {status}{_outcome(response)}")
        if status == 202 and response.headers.get("X-Progress"):
            on_progress(f"in progress: {response.headers['X-Progress']}")
        wait = max(retry_after(response.headers.get("Retry-After"), backoff), MIN_POLL_S)
        if "Retry-After" not in response.headers:
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        remaining = deadline - time.monotonic()
        if wait > remaining:
            raise BulkExportError(f"export not ready after {timeout:g} s (status {status_url}); run the same "
                                  "command again to keep waiting for the same export")
        time.sleep(wait)


def retry_after(value: str | None, default: float) -> float:
    """Seconds to wait for a Retry-After header: delay-seconds or an HTTP date; ``default`` when absent."""
    if value is None:
        return default
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def _plan_files(manifest: dict) -> list[DownloadedFile]:
    """Local names for every file: ``Type-N.ndjson``, ``error/Type-N.ndjson``, ``deleted/deleted-Type-N.ndjson``."""
    files = []
    counts: dict[tuple[str, str], int] = {}
    for kind, folder, prefix in (("output", "", ""), ("error", "error/", ""), ("deleted", "deleted/", "deleted-")):
        entries = manifest.get(kind) or []
        if not isinstance(entries, list):
            raise BulkExportError(f"manifest: {kind} is not a list")
        for i, entry in enumerate(entries):
            url = entry.get("url") if isinstance(entry, dict) else None
            kind_type = entry.get("type") if isinstance(entry, dict) else None
            if not isinstance(url, str) or not url:
                raise BulkExportError(f"manifest: {kind}[{i}] has no url")
            if not isinstance(kind_type, str) or not _RESOURCE_TYPE.fullmatch(kind_type):
                raise BulkExportError(f"manifest: {kind}[{i}].type {kind_type!r} is not a resource type")
            n = counts[(kind, kind_type)] = counts.get((kind, kind_type), 0) + 1
            files.append(DownloadedFile(kind, kind_type, url, f"{folder}{prefix}{kind_type}-{n}.ndjson"))
    return files


def _download_all(session: _Session, state: ExportState, directory: Path, concurrency: int,
                  on_progress: Callable[[str], None]) -> None:
    """Download the files not yet complete, ``concurrency`` at a time; each is recorded once it is whole."""
    needs_token = bool(state.manifest.get("requiresAccessToken"))
    pending = [f for f in state.files if not (f.complete and (directory / f.local).exists())]
    lock = threading.Lock()

    def fetch(entry: DownloadedFile) -> None:
        _download(session, entry, directory / entry.local, needs_token)
        with lock:
            state.write(directory)
        on_progress(f"downloaded {entry.local} ({entry.lines} lines)")

    failures = []
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        for entry, future in [(e, pool.submit(fetch, e)) for e in pending]:
            try:
                future.result()
            except (BulkExportError, httpx.HTTPError, OSError) as exc:
                failures.append(f"{entry.local}: {exc}")
    finally:  # stopped (Ctrl-C, any other error): files not yet started stay pending for the re-run
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        done = sum(1 for f in state.files if f.complete)
        raise BulkExportError(f"{len(failures)} of {len(state.files)} files not downloaded ({done} complete, kept; "
                              "run the same command again to fetch the rest): " + "; ".join(failures))


def _download(session: _Session, entry: DownloadedFile, target: Path, needs_token: bool) -> None:
    """Stream one file to ``target.part``, renamed to ``target`` only when whole; counts bytes and lines."""
    if needs_token and session.auth:
        _require_tls(entry.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    renew = False
    for _attempt in range(BUSY_ATTEMPTS):
        headers = session.headers("application/fhir+ndjson", needs_token, renew=renew)
        with session.client.stream("GET", entry.url, headers=headers) as response:
            status = response.status_code
            if status == 200:
                size = lines = 0
                last = b"\n"
                try:
                    with part.open("wb") as out:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                            size += len(chunk)
                            lines += chunk.count(b"\n")
                            last = chunk[-1:] or last
                        out.flush()
                        os.fsync(out.fileno())
                except httpx.HTTPError as exc:
                    part.unlink(missing_ok=True)
                    raise BulkExportError(f"{entry.url}: download broken off after {size} bytes "
                                          f"({exc.__class__.__name__})") from None
                expected = response.headers.get("Content-Length")
                if expected and "Content-Encoding" not in response.headers and int(expected) != size:
                    part.unlink(missing_ok=True)
                    raise BulkExportError(f"{entry.url}: connection ended after {size} of {expected} bytes")
                os.replace(part, target)
                entry.bytes, entry.lines, entry.complete = size, lines + (last != b"\n"), True
                return
            response.read()
        if status == 401 and needs_token and not renew:
            renew = True
            continue
        if status in (404, 410):
            raise BulkExportError(f"{entry.url}: HTTP {status} — the file is gone (download URLs expire); "
                                  "use --restart to kick off a new export")
        if status in (429, 503) and "Retry-After" in response.headers:
            time.sleep(retry_after(response.headers["Retry-After"], 1.0))
            continue
        raise BulkExportError(f"{entry.url}: HTTP {status}{_outcome(response)}")
    raise BulkExportError(f"{entry.url}: still refused after {BUSY_ATTEMPTS} attempts (HTTP {status})")


def first_diagnostics(path: Path) -> str:
    """The first issue of an error file (NDJSON OperationOutcomes), to show with the export's report."""
    with path.open("rb") as lines:
        first = next((line for line in lines if line.strip()), b"")
    try:
        outcome = orjson.loads(first)
    except orjson.JSONDecodeError:
        return "(not an OperationOutcome)"
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    issue = issues[0] if isinstance(issues, list) and issues and isinstance(issues[0], dict) else {}
    return issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code") or "(none)"


def _write_local_manifest(directory: Path, state: ExportState) -> None:
    """``manifest.json`` naming the local files, so the FHIR reader reads exactly this export's files."""
    local = {**state.manifest}
    for kind in ("output", "error", "deleted"):
        local[kind] = [{"type": f.type, "url": f.local, "count": f.lines}
                       for f in state.files if f.kind == kind]
    _write_atomically(directory / "manifest.json", orjson.dumps(local, option=orjson.OPT_INDENT_2))


def _forget(directory: Path, state: ExportState) -> None:
    for f in state.files:
        for path in (directory / f.local, directory / (f.local + ".part")):
            path.unlink(missing_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    (directory / STATE_FILE).unlink()


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _require_tls(url: str) -> None:
    """Assertions and tokens travel over https only (plain http to this machine is allowed, for tests)."""
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise BulkExportError(f"SMART credentials and tokens are only sent over https, not to {url}")


def _send(client: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise BulkExportError(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None


def _json(response: httpx.Response, url: str, strict: bool = True) -> dict:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        if strict:
            raise BulkExportError(f"{url}: HTTP {response.status_code}: the answer is not a JSON object")
        return {}
    return body


def _issue_codes(response: httpx.Response) -> set[str]:
    issues = _json(response, "", strict=False).get("issue")
    return {i.get("code") for i in issues if isinstance(i, dict)} if isinstance(issues, list) else set()


def _outcome(response: httpx.Response) -> str:
    """An OperationOutcome body as ``: severity code: diagnostics; ...`` (empty when there is none)."""
    body = _json(response, "", strict=False)
    issues = body.get("issue") if body.get("resourceType") == "OperationOutcome" else None
    if not isinstance(issues, list):
        return ""
    parts = []
    for issue in issues:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            parts.append(" ".join(str(p) for p in (issue.get("severity"), issue.get("code")) if p)
                         + (f": {text}" if text else ""))
    return (": " + "; ".join(parts)) if parts else ""
