"""The FHIR Bulk Data client (``mercia ingest fhir-export``) against a small spec-following Bulk Data server
started here on 127.0.0.1: kick-off, 202 + Content-Location, 429/Retry-After, X-Progress, manifest, an error
file, SMART Backend Services tokens (the server verifies the JWT assertion with the public key), downloads
needing the bearer token, dropped and expiring download URLs; then the load into the store."""

from __future__ import annotations

import base64
import gzip
import secrets
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from typer.testing import CliRunner

from mercia.cli import app
from mercia.ingest import bulk
from mercia.ingest.bulk import (
    STATE_FILE,
    BulkExportError,
    ExportRequest,
    SmartAuth,
    SmartCredentials,
    retry_after,
    run_export,
)

CLIENT_ID = "mercia-test-client"
ERROR_LINE = orjson.dumps({"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "processing", "diagnostics": "Patient/x: could not be read"}]}) + b"\n"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_assertion(assertion: str, public_key, audience: str, seen_jti: set[str]) -> str | None:
    """What is wrong with a SMART client assertion (None when it is valid), checked with the public key
    directly (cryptography), not with the library that signed it."""
    try:
        header_b64, payload_b64, signature_b64 = assertion.split(".")
        header, claims = orjson.loads(_b64decode(header_b64)), orjson.loads(_b64decode(payload_b64))
    except ValueError:
        return "not a compact JWS"
    signed, signature = f"{header_b64}.{payload_b64}".encode(), _b64decode(signature_b64)
    try:
        if header.get("alg") == "RS384" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
        elif header.get("alg") == "ES384" and isinstance(public_key, ec.EllipticCurvePublicKey):
            r, s = int.from_bytes(signature[:48]), int.from_bytes(signature[48:])
            public_key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
        else:
            return f"algorithm {header.get('alg')} not allowed for this key"
    except InvalidSignature:
        return "bad signature"
    now = time.time()
    if not header.get("kid") or header.get("typ") != "JWT":
        return "header needs kid and typ JWT"
    if claims.get("iss") != CLIENT_ID or claims.get("sub") != CLIENT_ID:
        return "iss and sub must be the client id"
    if claims.get("aud") != audience:
        return f"aud must be {audience}"
    if not isinstance(claims.get("exp"), int) or not now - 5 < claims["exp"] <= now + 300 + 5:
        return "exp must be in the next five minutes"
    if not claims.get("jti") or claims["jti"] in seen_jti:
        return "jti missing or replayed"
    seen_jti.add(claims["jti"])
    return None


class BulkServer:
    """A Bulk Data server (FHIR Bulk Data Access IG v2) with switches for its failure modes."""

    def __init__(self, files: dict[str, bytes], public_key=None, requires_token: bool = True):
        self.files = files
        self.public_key = public_key  # None: an open server, no authorisation at all
        self.requires_token = requires_token and public_key is not None
        self.status_script: list[tuple[int, dict]] = []  # answers to polls before the manifest
        self.kickoff_error: dict | None = None
        self.kickoff_busy = 0  # kick-offs answered 429 before one is accepted
        self.drop_once: set[str] = set()  # files whose first download is cut off midway
        self.expired: set[str] = set()  # files whose URL has expired (410)
        self.revoke_tokens_with_manifest = False  # tokens die early: downloads must get a new one
        self.deleted: dict[str, bytes] = {}  # bulk "deleted" files (Bundles of DELETE requests)
        self.kickoffs: list[dict] = []
        self.polls: list[float] = []
        self.downloads: Counter[str] = Counter()
        self.token_requests: list[str | None] = []  # None: token issued, else why refused
        self.tokens: set[str] = set()
        self.seen_jti: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.bulk = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def base(self) -> str:
        return self.origin + "/fhir"

    def manifest(self) -> dict:
        outputs = [n for n in self.files if n != "errors.ndjson"]
        return {"transactionTime": "2026-12-04T06:00:00Z", "request": self.kickoffs[-1]["url"],
                "requiresAccessToken": self.requires_token,
                "output": [{"type": n.split("-")[0].split(".")[0], "url": f"{self.origin}/files/{n}"}
                           for n in outputs],
                "error": [{"type": "OperationOutcome", "url": f"{self.origin}/files/errors.ndjson"}]
                if "errors.ndjson" in self.files else [],
                "deleted": [{"type": "Bundle", "url": f"{self.origin}/files/{n}"} for n in self.deleted]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    @property
    def bulk(self) -> BulkServer:
        return self.server.bulk

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _outcome(self, status: int, code: str, diagnostics: str, headers: dict | None = None):
        self._send(status, orjson.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": code, "diagnostics": diagnostics}]}),
            {"Content-Type": "application/fhir+json", **(headers or {})})

    def _authorised(self) -> bool:
        if self.bulk.public_key is None:
            return True
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in self.bulk.tokens:
            return True
        self._outcome(401, "login", "a valid bearer token is required")
        return False

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/fhir/.well-known/smart-configuration":
            self._send(200, orjson.dumps({"token_endpoint": self.bulk.origin + "/token",
                                          "grant_types_supported": ["client_credentials"]}))
        elif url.path.endswith("/$export"):
            self._kick_off(url)
        elif url.path == "/status/1":
            self._status()
        elif url.path.startswith("/files/"):
            self._file(url.path.removeprefix("/files/"))
        else:
            self._outcome(404, "not-found", f"no such path {url.path}")

    def _kick_off(self, url):
        if not self._authorised():
            return
        if self.headers.get("Accept") != "application/fhir+json" or self.headers.get("Prefer") != "respond-async":
            self._outcome(400, "invalid", "kick-off needs Accept: application/fhir+json and Prefer: respond-async")
            return
        if self.bulk.kickoff_busy:
            self.bulk.kickoff_busy -= 1
            self._outcome(429, "throttled", "busy", {"Retry-After": "0"})
            return
        if self.bulk.kickoff_error:
            self._send(400, orjson.dumps(self.bulk.kickoff_error), {"Content-Type": "application/fhir+json"})
            return
        self.bulk.kickoffs.append({"path": url.path, "params": parse_qs(url.query), "url": self.path})
        self._send(202, headers={"Content-Location": "/status/1"})

    def _status(self):
        if not self._authorised():
            return
        with self.bulk.lock:
            self.bulk.polls.append(time.monotonic())
            step = self.bulk.status_script.pop(0) if self.bulk.status_script else None
        if step is None:
            if self.bulk.revoke_tokens_with_manifest:
                self.bulk.tokens.clear()
            self._send(200, orjson.dumps(self.bulk.manifest()), {"Content-Type": "application/json"})
        elif step[0] == 429:
            self._outcome(429, "throttled", "too many requests", step[1])
        elif step[0] >= 500:
            self._outcome(step[0], "transient", "database restarting", step[1])
        else:
            self._send(step[0], headers=step[1])

    def _file(self, name: str):
        if self.bulk.requires_token and not self._authorised():
            return
        with self.bulk.lock:
            self.bulk.downloads[name] += 1
            drop = name in self.bulk.drop_once and self.bulk.downloads[name] == 1
        if name in self.bulk.expired:
            self._outcome(410, "expired", "this file has expired")
            return
        body = self.bulk.files.get(name, self.bulk.deleted.get(name))
        if body is None:
            self._outcome(404, "not-found", name)
            return
        if drop:  # headers promise the whole file; half of it arrives, then the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+ndjson")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, body, {"Content-Type": "application/fhir+ndjson"})

    def do_POST(self):
        if urlsplit(self.path).path != "/token":
            self._outcome(404, "not-found", self.path)
            return
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
        problem = None
        if form.get("grant_type") != "client_credentials":
            problem = "grant_type must be client_credentials"
        elif form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            problem = "wrong client_assertion_type"
        elif not form.get("scope", "").startswith("system/"):
            problem = "system scopes only"
        else:
            with self.bulk.lock:
                problem = verify_assertion(form.get("client_assertion", ""), self.bulk.public_key,
                                           self.bulk.origin + "/token", self.bulk.seen_jti)
        self.bulk.token_requests.append(problem)
        if problem:
            self._send(401, orjson.dumps({"error": "invalid_client", "error_description": problem}),
                       {"Content-Type": "application/json"})
            return
        token = secrets.token_urlsafe(16)
        self.bulk.tokens.add(token)
        self._send(200, orjson.dumps({"access_token": token, "token_type": "bearer", "expires_in": 300,
                                      "scope": form["scope"]}), {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def export_files(shared_data) -> dict[str, bytes]:
    """Patients and their conditions from Synthea (read from the shared data), conditions in two files."""
    ndjson = shared_data / "fhir/synthea_small/ndjson"
    patients = gzip.decompress((ndjson / "Patient.ndjson.gz").read_bytes())
    conditions = gzip.decompress((ndjson / "Condition.ndjson.gz").read_bytes()).splitlines(keepends=True)
    half = len(conditions) // 2
    return {"Patient.ndjson": patients, "Condition-a.ndjson": b"".join(conditions[:half]),
            "Condition-b.ndjson": b"".join(conditions[half:]), "errors.ndjson": ERROR_LINE}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def server(export_files, rsa_key):
    s = BulkServer(export_files, public_key=rsa_key.public_key())
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def credentials(rsa_key):
    return SmartCredentials(CLIENT_ID, pem(rsa_key))


def test_export_downloads_every_file_with_one_token_and_loads_like_a_directory(
        server, credentials, export_files, tmp_path, engine, store, store_factory, load):
    out = tmp_path / "export"
    request = ExportRequest(server.base, since="2020-01-01T00:00:00Z", types=("Patient", "Condition"))
    result = run_export(request, out, credentials)

    assert server.kickoffs[0]["path"] == "/fhir/$export"
    assert server.kickoffs[0]["params"]["_since"] == ["2020-01-01T00:00:00Z"]
    assert server.kickoffs[0]["params"]["_type"] == ["Patient,Condition"]
    assert server.token_requests == [None]  # one token, reused for kick-off, polls and four downloads
    assert not result.resumed and result.transaction_time == "2026-12-04T06:00:00Z"
    assert sorted(f.local for f in result.output) == ["Condition-1.ndjson", "Condition-2.ndjson", "Patient-1.ndjson"]
    assert [(f.local, f.lines) for f in result.errors] == [("error/OperationOutcome-1.ndjson", 1)]
    for f in result.files:  # byte for byte what the server sent, line counts right
        sent = export_files[f.url.rsplit("/", 1)[1]]
        assert (out / f.local).read_bytes() == sent and f.lines == sent.count(b"\n")
    assert not list(out.rglob("*.part"))

    summary = load(store, "fhir", out, "RX1")
    direct = tmp_path / "direct"
    direct.mkdir()
    for name, body in export_files.items():
        if name != "errors.ndjson":
            (direct / name).write_bytes(body)
    reference_store = store_factory(engine)
    reference = load(reference_store, "fhir", direct, "RX1")
    assert (summary.read, summary.records, summary.loaded, summary.rejected) == \
           (reference.read, reference.records, reference.loaded, reference.rejected)
    assert summary.loaded > 50
    for table in ("person", "condition_occurrence", "mercia_provenance", "mercia_reject"):
        assert store.query_one(f"SELECT count(*) FROM {table}") == reference_store.query_one(
            f"SELECT count(*) FROM {table}"), table


def test_cli_group_export_prints_files_and_loads_and_a_rerun_changes_nothing(server, rsa_key, tmp_path):
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(pem(rsa_key))
    db, out = str(tmp_path / "cli.duckdb"), tmp_path / "export"
    args = ["ingest", "fhir-export", server.base, "--org", "RX1", "--group", "diabetes-2026", "--since",
            "2026-12-01", "--types", "Patient,Condition", "--out", str(out), "--db", db, "--json",
            "--client-id", CLIENT_ID, "--private-key", str(key_file)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert server.kickoffs[0]["path"] == "/fhir/Group/diabetes-2026/$export"
    assert server.kickoffs[0]["params"]["_since"] == ["2026-12-01T00:00:00Z"]
    assert len(report["files"]) == 4 and report["load"]["loaded"] > 50 and report["load"]["org"] == "RX1"

    again = CliRunner().invoke(app, args)  # same --out: the same export, already downloaded; load idempotent
    assert again.exit_code == 0, again.output
    rerun = orjson.loads(again.stdout)
    assert len(server.kickoffs) == 1 and sum(server.downloads.values()) == 4
    assert rerun["resumed"] and rerun["load"]["unchanged"] == rerun["load"]["loaded"] == report["load"]["loaded"]

    text = CliRunner().invoke(app, args[:-5] + ["--client-id", CLIENT_ID, "--private-key", str(key_file)])
    assert text.exit_code == 0, text.output
    assert "Condition-2.ndjson" in text.stdout and "Loads" in text.stdout
    assert "error/OperationOutcome-1.ndjson: 1 OperationOutcome(s), first: Patient/x: could not be read" in text.stderr


def test_retry_after_and_429_are_honoured_and_progress_reported(server, credentials, tmp_path):
    server.status_script = [(429, {"Retry-After": "1"}), (202, {"Retry-After": "1", "X-Progress": "50% done"})]
    messages = []
    run_export(ExportRequest(server.base), tmp_path / "out", credentials, on_progress=messages.append)
    assert len(server.polls) == 3
    gaps = [b - a for a, b in zip(server.polls, server.polls[1:])]
    assert all(0.95 <= gap < 2.5 for gap in gaps), gaps
    assert "in progress: 50% done" in messages


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after("7", 1.0) == 7.0
    assert retry_after(None, 4.0) == 4.0
    assert retry_after("soon", 4.0) == 4.0
    in_30_s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= retry_after(in_30_s, 1.0) <= 30
    assert retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True), 1.0) == 0.0


def test_poll_timeout_keeps_the_job_and_a_rerun_waits_for_the_same_export(server, credentials, tmp_path):
    server.status_script = [(202, {"Retry-After": "1"})]
    out = tmp_path / "out"
    with pytest.raises(BulkExportError, match=r"not ready after 0.5 s .*run the same command again"):
        run_export(ExportRequest(server.base), out, credentials, poll_timeout=0.5)
    assert orjson.loads((out / STATE_FILE).read_bytes())["status_url"].endswith("/status/1")
    result = run_export(ExportRequest(server.base), out, credentials)
    assert result.resumed and len(server.kickoffs) == 1 and len(result.output) == 3


def test_a_dropped_download_is_resumed_without_a_new_kick_off_or_downloading_complete_files_again(
        server, credentials, tmp_path):
    server.drop_once = {"Condition-b.ndjson"}
    out = tmp_path / "out"
    with pytest.raises(BulkExportError, match=r"1 of 4 files not downloaded \(3 complete, kept.*broken off"):
        run_export(ExportRequest(server.base), out, credentials)
    assert not (out / "Condition-2.ndjson").exists() and not list(out.rglob("*.part"))
    assert not (out / "manifest.json").exists()  # nothing to load until the export is whole

    result = run_export(ExportRequest(server.base), out, credentials)
    assert result.resumed and len(server.kickoffs) == 1
    assert server.downloads == {"Patient.ndjson": 1, "Condition-a.ndjson": 1, "errors.ndjson": 1,
                                "Condition-b.ndjson": 2}
    assert (out / "Condition-2.ndjson").read_bytes() == server.files["Condition-b.ndjson"]


def test_a_client_stopped_after_its_first_file_downloads_only_the_rest_when_run_again(
        server, credentials, tmp_path):
    class Stopped(Exception):
        pass

    def stop_after_first_file(message):
        if message.startswith("downloaded"):
            raise Stopped

    out = tmp_path / "out"
    with pytest.raises(Stopped):
        run_export(ExportRequest(server.base), out, credentials, concurrency=1, on_progress=stop_after_first_file)
    first_run = sum(server.downloads.values())  # the first file, and the second if it had already started
    complete = [f for f in orjson.loads((out / STATE_FILE).read_bytes())["files"] if f["complete"]]
    assert first_run < 4 and len(complete) == first_run
    run_export(ExportRequest(server.base), out, credentials)
    assert len(server.kickoffs) == 1 and set(server.downloads.values()) == {1} and len(server.downloads) == 4


def test_an_expired_download_url_is_a_clear_error_and_restart_kicks_off_again(server, credentials, tmp_path):
    server.expired = {"Condition-a.ndjson"}
    out = tmp_path / "out"
    with pytest.raises(BulkExportError, match=r"Condition-a.ndjson: HTTP 410 — the file is gone.*--restart"):
        run_export(ExportRequest(server.base), out, credentials)
    with pytest.raises(BulkExportError, match="different request"):  # another request cannot reuse this state
        run_export(ExportRequest(server.base, types=("Patient",)), out, credentials)

    server.expired = set()
    result = run_export(ExportRequest(server.base), out, credentials, restart=True)
    assert len(server.kickoffs) == 2 and not result.resumed and len(result.output) == 3


def test_a_bad_signature_is_refused_by_the_token_endpoint_with_a_clear_error(server, tmp_path):
    impostor = SmartCredentials(CLIENT_ID, pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(BulkExportError, match=r"token endpoint .*/token refused client 'mercia-test-client': "
                                              r"HTTP 401: invalid_client: bad signature"):
        run_export(ExportRequest(server.base), tmp_path / "out", impostor)
    assert server.token_requests == ["bad signature"] and not server.kickoffs


def test_without_credentials_a_protected_server_says_authorisation_is_needed(server, tmp_path):
    with pytest.raises(BulkExportError, match=r"HTTP 401: error login: a valid bearer token is required; "
                                              r"the server wants authorisation"):
        run_export(ExportRequest(server.base), tmp_path / "out")


def test_kick_off_error_reports_the_operation_outcome(server, credentials, tmp_path):
    server.kickoff_error = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "not-supported", "diagnostics": "_type=Foo is not supported"}]}
    with pytest.raises(BulkExportError, match=r"kick-off .*\$export: HTTP 400: error not-supported: "
                                              r"_type=Foo is not supported"):
        run_export(ExportRequest(server.base, types=("Foo",)), tmp_path / "out", credentials)


def test_an_open_server_exports_without_tokens(export_files, tmp_path):
    open_server = BulkServer(export_files)
    open_server.thread.start()
    try:
        result = run_export(ExportRequest(open_server.base), tmp_path / "out")
    finally:
        open_server.httpd.shutdown()
        open_server.httpd.server_close()
    assert len(result.output) == 3 and open_server.token_requests == []


def test_token_is_reused_until_near_expiry_then_renewed_and_es384_keys_sign(server, monkeypatch):
    import httpx

    ec_key = ec.generate_private_key(ec.SECP384R1())
    server.public_key = ec_key.public_key()
    with httpx.Client() as client:
        auth = SmartAuth(SmartCredentials(CLIENT_ID, pem(ec_key)), server.base, client)
        assert auth.algorithm == "ES384"
        first = auth.bearer()
        assert auth.bearer() == first and server.token_requests == [None]
        later = time.monotonic() + 300 - bulk.TOKEN_MARGIN_S + 1  # the token expires within the margin
        monkeypatch.setattr(bulk.time, "monotonic", lambda: later)
        assert auth.bearer() != first and server.token_requests == [None, None]


def test_bad_arguments_are_refused_before_any_request(tmp_path):
    with pytest.raises(BulkExportError, match="--group 'a/b'"):
        ExportRequest("https://fhir.example.nhs.uk/R4", group="a/b")
    with pytest.raises(BulkExportError, match="--types: 'patient'"):
        ExportRequest("https://fhir.example.nhs.uk/R4", types=("patient",))
    with pytest.raises(BulkExportError, match="--since '2026-13-01'"):
        bulk.since_instant("2026-13-01")
    with pytest.raises(BulkExportError, match="needs a time zone"):
        bulk.since_instant("2026-12-01T06:00:00")
    with pytest.raises(BulkExportError, match="only sent over https"):
        run_export(ExportRequest("http://fhir.example.nhs.uk/R4"), tmp_path / "out",
                   SmartCredentials(CLIENT_ID, b"unused"))
    with pytest.raises(BulkExportError, match="RS384 .* or ES384"):
        bulk.signing_key(pem(ec.generate_private_key(ec.SECP256R1())))


def test_a_token_refused_midway_is_renewed_once_and_downloads_go_on(server, credentials, tmp_path):
    server.revoke_tokens_with_manifest = True
    result = run_export(ExportRequest(server.base), tmp_path / "out", credentials, concurrency=1)
    assert len(result.output) == 3 and server.token_requests == [None, None]


def test_deleted_files_of_a_daily_feed_remove_what_earlier_exports_loaded(rsa_key, credentials, tmp_path,
                                                                           store_factory, load):
    # What this checks is the download layout (deleted/ and the local manifest); removal itself runs on
    # both engines in test_fhir_incremental.py, and the load equality on both engines above.
    store = store_factory("duckdb")
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-01"}
    conditions = [{"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": "Patient/p1"},
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                   "onsetDateTime": f"2020-01-0{i}"} for i in (1, 2)]
    feed = BulkServer({"Patient.ndjson": orjson.dumps(patient) + b"\n",
                       "Condition.ndjson": b"".join(orjson.dumps(c) + b"\n" for c in conditions)},
                      public_key=rsa_key.public_key())
    feed.thread.start()
    try:
        first = run_export(ExportRequest(feed.base), tmp_path / "day1", credentials)
        assert load(store, "fhir", first.directory, "RX1").loaded == 3
        feed.files = {}  # the next day: nothing new, one condition deleted at the source
        feed.deleted = {"deleted-conditions.ndjson": orjson.dumps({"resourceType": "Bundle", "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": "Condition/c1"}}]}) + b"\n"}
        second = run_export(ExportRequest(feed.base, since="2026-12-04T06:00:00Z"), tmp_path / "day2", credentials)
    finally:
        feed.httpd.shutdown()
        feed.httpd.server_close()
    assert [f.local for f in second.output] == ["deleted/deleted-Bundle-1.ndjson"]
    assert load(store, "fhir", second.directory, "RX1").removed == 1
    assert store.query_one("SELECT count(*) FROM condition_occurrence") == 1


def test_a_busy_kick_off_and_a_transient_server_error_are_waited_out(server, credentials, tmp_path):
    server.kickoff_busy = 1
    server.status_script = [(503, {"Retry-After": "0"})]
    result = run_export(ExportRequest(server.base), tmp_path / "out", credentials)
    assert len(server.kickoffs) == 1 and len(server.polls) == 2 and len(result.output) == 3


def test_a_job_the_server_no_longer_knows_asks_for_restart(server, credentials, tmp_path):
    server.status_script = [(404, {})]
    with pytest.raises(BulkExportError, match=r"HTTP 404 — the server no longer knows this export.*--restart"):
        run_export(ExportRequest(server.base), tmp_path / "out", credentials)


def test_cli_exits_3_with_the_reason_when_the_export_cannot_be_finished(server, tmp_path):
    key_file = tmp_path / "impostor.pem"
    key_file.write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    result = CliRunner().invoke(app, ["ingest", "fhir-export", server.base, "--org", "RX1", "--out",
                                      str(tmp_path / "out"), "--db", str(tmp_path / "cli.duckdb"),
                                      "--client-id", CLIENT_ID, "--private-key", str(key_file)])
    assert result.exit_code == 3
    assert "refused client 'mercia-test-client': HTTP 401: invalid_client: algorithm ES384 not allowed" in result.stderr


def test_cli_without_a_pseudonymisation_key_stops_before_kicking_off(server, tmp_path, monkeypatch, request):
    from mercia.config import load_settings

    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY_FILE", raising=False)
    load_settings.cache_clear()  # settings read under an earlier test's environment
    request.addfinalizer(load_settings.cache_clear)
    result = CliRunner().invoke(app, ["ingest", "fhir-export", server.base, "--org", "RX1", "--out",
                                      str(tmp_path / "out"), "--db", str(tmp_path / "cli.duckdb")])
    assert result.exit_code == 2, result.output
    assert "no pseudonymisation key" in result.stderr and not server.kickoffs


def test_two_runs_in_one_directory_do_not_overlap(server, credentials, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with (out / bulk.LOCK_FILE).open("w") as held:  # as an earlier run still working would hold it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BulkExportError, match="another export is running in"):
            run_export(ExportRequest(server.base), out, credentials)
    assert not server.kickoffs
    assert len(run_export(ExportRequest(server.base), out, credentials).output) == 3


def test_patient_level_export_sends_each_type_filter(server, credentials, tmp_path):
    filters = ("Condition?clinical-status=active", "Condition?code=http://snomed.info/sct|44054006")
    request = ExportRequest(server.base, patients=True, types=("Patient", "Condition"), type_filters=filters)
    result = run_export(request, tmp_path / "out", credentials)
    assert server.kickoffs[0]["path"] == "/fhir/Patient/$export"
    assert server.kickoffs[0]["params"]["_typeFilter"] == list(filters)  # repeated, each decoded as sent
    assert server.kickoffs[0]["params"]["_type"] == ["Patient,Condition"]
    assert len(result.output) == 3
    # the same directory with other filters is another export: refused, nothing kicked off
    with pytest.raises(BulkExportError, match="different"):
        run_export(ExportRequest(server.base, patients=True, types=("Patient", "Condition"),
                                 type_filters=filters[:1]), tmp_path / "out", credentials)
    assert len(server.kickoffs) == 1


@pytest.mark.parametrize(("request_args", "problem"), [
    ({"patients": True, "group": "g1"}, "Patient level or one Group"),
    ({"type_filters": ("category=laboratory",)}, "not Type\\?search-parameters"),
    ({"type_filters": ("Observation?",)}, "not Type\\?search-parameters"),
    ({"types": ("Patient",), "type_filters": ("Observation?category=laboratory",)}, "Observation is not among"),
])
def test_an_export_request_that_cannot_mean_anything_is_refused_before_kick_off(server, request_args, problem):
    with pytest.raises(BulkExportError, match=problem):
        ExportRequest(server.base, **request_args)
    assert server.kickoffs == []


def test_cli_passes_patients_and_type_filters(server, rsa_key, tmp_path):
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(pem(rsa_key))
    result = CliRunner().invoke(app, [
        "ingest", "fhir-export", server.base, "--org", "RX1", "--patients", "--out", str(tmp_path / "export"),
        "--type-filter", "Condition?clinical-status=active", "--type-filter", "Patient?active=true",
        "--db", str(tmp_path / "cli.duckdb"), "--client-id", CLIENT_ID, "--private-key", str(key_file)])
    assert result.exit_code == 0, result.output
    assert server.kickoffs[0]["path"] == "/fhir/Patient/$export"
    assert server.kickoffs[0]["params"]["_typeFilter"] == ["Condition?clinical-status=active", "Patient?active=true"]
