"""Load test: concurrent researchers against ``mercia serve`` while an ingest job runs (issue 11).

    python benchmarks/load.py [--users 50] [--seconds 60] [--persons 3000]

Builds a demo store (synthetic OMOP region, demo users, an approved project; ``mercia.demo``),
serves it with ``python -m mercia.cli serve`` on a free port, starts a FHIR load through the API
(a synthetic region's extract, uploaded by the data manager), and runs locust headless with
``--users`` researchers that browse pages, search concepts, run the project's cohort and read its
results.  Writes ``benchmarks/results/load.json`` afresh: per request type the count, failures,
p50/p95 (ms) and throughput, plus what ran (users, seconds, persons, whether the ingest job was still
running at the end).  This file is also the locustfile (locust imports it for ``ResearcherUser``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "load.json"

try:  # the locustfile part: only when locust imports this module
    from locust import HttpUser, between, task

    class ResearcherUser(HttpUser):
        wait_time = between(0.5, 2)

        def on_start(self) -> None:
            self.client.headers["Authorization"] = f"Bearer {os.environ['MERCIA_BENCH_TOKEN']}"
            self.project = os.environ["MERCIA_BENCH_PROJECT"]
            self.cohort = os.environ["MERCIA_BENCH_COHORT"]

        @task(3)
        def browse_projects(self) -> None:
            self.client.get("/api/v1/projects", name="read: projects")

        @task(3)
        def search_concepts(self) -> None:
            self.client.get("/api/v1/concepts?q=diabetes", name="read: concept search")

        @task(2)
        def view_cohort(self) -> None:
            self.client.get(f"/api/v1/cohorts/{self.cohort}", name="read: cohort")
            self.client.get(f"/api/v1/cohorts/{self.cohort}/attrition", name="read: attrition")

        @task(1)
        def run_cohort(self) -> None:
            job = self.client.post(f"/api/v1/cohorts/{self.cohort}/run", name="write: run cohort")
            if job.ok:
                self.client.get(job.json()["status_url"], name="read: job")

        @task(2)
        def home_page(self) -> None:
            self.client.get("/", name="page: home")
except ImportError:  # running as the driver without locust installed fails in main() with a message
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float = 120) -> None:
    import urllib.request
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not answer in {seconds} s")


def _prepare(work: Path, persons: int) -> tuple[Path, dict[str, str]]:
    """The demo store, tokens for the researcher and the data manager, and the cohort to run."""
    from mercia.services.cohorts import create_cohort
    from mercia.services.state import MerciaState, ServerOptions
    from mercia.demo import build_demo, diabetes_cohort

    demo = build_demo(work, persons, seed=7)
    state = MerciaState(demo.store, ServerOptions(job_workers=1))
    gov = state.gov
    researcher, manager = gov.user_by_name("researcher"), gov.user_by_name("datamanager")
    project = next(p for p in gov.projects_for(researcher) if str(p.status).endswith("approved"))
    cohort = create_cohort(state, researcher, project.id, "load test", "benchmarks/load.py", diabetes_cohort())
    env = {"MERCIA_BENCH_TOKEN": gov.create_token(researcher, "load test", 1)[1],
           "MERCIA_BENCH_MANAGER_TOKEN": gov.create_token(manager, "load test", 1)[1],
           "MERCIA_BENCH_PROJECT": str(project.id), "MERCIA_BENCH_COHORT": str(cohort["id"])}
    path = Path(demo.store.url)
    demo.store.close()
    return path, env


def _extract(work: Path, persons: int) -> Path:
    from mercia.synth.region import generate_region
    generate_region(work / "region", persons=persons, seed=11)
    return max((work / "region").rglob("*.ndjson*"), key=lambda p: p.stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--persons", type=int, default=3000, help="people in the served demo region")
    parser.add_argument("--ingest-persons", type=int, default=1000, help="people in the extract loaded meanwhile")
    args = parser.parse_args()
    try:
        import locust  # noqa: F401
    except ImportError:
        raise SystemExit("locust is not installed: pip install -e '.[test]'") from None
    work = Path(tempfile.mkdtemp(prefix="mercia-load-"))
    key = work / "bench.key"
    key.write_text(os.urandom(32).hex())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MERCIA_PSEUDONYM_KEY_FILE": str(key),
           "MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS": "1"}
    os.environ.update({k: env[k] for k in ("MERCIA_PSEUDONYM_KEY_FILE", "MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS")})
    began = time.perf_counter()
    db, tokens = _prepare(work, args.persons)
    extract = _extract(work, args.ingest_persons)
    extract_bytes = extract.stat().st_size
    env.update(tokens)
    prepared = time.perf_counter() - began
    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mercia.cli", "serve", "--db", str(db), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(host + "/")
        import requests
        researcher = {"Authorization": f"Bearer {tokens['MERCIA_BENCH_TOKEN']}"}
        first = requests.post(f"{host}/api/v1/cohorts/{tokens['MERCIA_BENCH_COHORT']}/run", headers=researcher,
                              timeout=60).json()  # one finished run, so attrition exists before the users start
        while requests.get(host + first["status_url"], headers=researcher, timeout=60).json()["status"] in (
                "queued", "running"):
            time.sleep(0.5)
        with open(extract, "rb") as handle:
            upload = requests.post(f"{host}/api/v1/sources/RRK/loads", files={"file": (extract.name, handle)},
                                   data={"kind": "fhir"}, timeout=600,
                                   headers={"Authorization": f"Bearer {tokens['MERCIA_BENCH_MANAGER_TOKEN']}"})
        ingest_job = upload.json().get("status_url") if upload.ok else None
        prefix = work / "locust"
        subprocess.run([sys.executable, "-m", "locust", "-f", __file__, "--headless", "--users", str(args.users),
                        "--spawn-rate", str(max(1, args.users // 10)), "--run-time", f"{args.seconds}s",
                        "--host", host, "--csv", str(prefix), "--only-summary"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.seconds + 300)
        ingest_status = None
        if ingest_job:
            ingest_status = requests.get(host + ingest_job, timeout=60,
                                         headers={"Authorization": f"Bearer {tokens['MERCIA_BENCH_MANAGER_TOKEN']}"}
                                         ).json().get("status")
    finally:
        server.kill()
        server.wait()
    rows = _stats(Path(f"{prefix}_stats.csv"))
    failures = _failures(Path(f"{prefix}_failures.csv"))
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "load", "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "what": f"{args.users} concurrent researcher users (locust, wait 0.5-2 s) for {args.seconds} s against "
                f"`mercia serve` on a DuckDB demo region of {args.persons} persons, while a FHIR extract of "
                f"{args.ingest_persons} persons ({extract_bytes:,} bytes) loads through the API",
        "ingest_upload_status": upload.status_code, "ingest_job_status_at_end": ingest_status,
        "setup_seconds": round(prepared, 1), "requests": rows, "failures": failures,
    }
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def _failures(path: Path) -> list[dict]:
    import csv
    with open(path) as handle:
        return [{"request": r["Name"], "error": r["Error"], "count": int(r["Occurrences"])}
                for r in csv.DictReader(handle)]


def _stats(path: Path) -> dict[str, dict]:
    import csv
    out = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            out[row["Name"] if row["Name"] != "Aggregated" else "all"] = {
                "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "p50_ms": float(row["50%"]), "p95_ms": float(row["95%"]),
                "throughput_per_s": round(float(row["Requests/s"]), 2)}
    return out


if __name__ == "__main__":
    main()
