"""Public register benchmark (issue 17 target): register pages render in under 200 ms with 1,000
projects listed.

Builds a DuckDB store with ``--projects`` projects taken through the real approval flow (create,
submit, pillar lead and governance officer approve; every step audited), a third of them with a
released output, then times each public page and feed through the whole web app in process
(routing, rate limit, service queries, template or feed rendering), ``--repeats`` times each in
rotation, and reports the median and 95th percentile.  Writes a fresh
``benchmarks/results/register.json`` each run.

    .venv/bin/python benchmarks/register.py [--projects 1000] [--repeats 30] [--dir /tmp/mercia-public]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 200.0
PILLARS = ["cancer", "chronic", "wellbeing", "womens_childrens"]
WORDS = ["diabetes", "asthma", "stroke", "kidney", "heart", "cancer", "pregnancy", "dementia", "sleep", "bones"]


def build(directory: Path, projects: int) -> tuple[object, dict]:
    from mercia.cdm import Store
    from mercia.governance import Governance, Role
    from mercia.governance.db import now

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    began = time.perf_counter()
    store = Store(str(directory / "register.duckdb"))
    store.init_schema()
    gov = Governance(store)
    leads = {p: gov.create_user(f"lead-{p}", f"Lead {p}", None, [(Role.PILLAR_LEAD, p)]) for p in PILLARS}
    officer = gov.create_user("officer", "Officer", None, [(Role.GOVERNANCE_OFFICER, "")])
    researchers = [gov.create_user(f"res{i}", f"Researcher {i}", None, [(Role.RESEARCHER, "")]) for i in range(50)]
    expires = (date.today() + timedelta(days=365)).isoformat()
    released = 0
    for i in range(projects):
        pillar, word = PILLARS[i % 4], WORDS[i % len(WORDS)]
        lead = researchers[i % len(researchers)]
        p = gov.create_project(
            lead, title=f"Project {i}: {word} outcomes", pillar=pillar, purpose="benchmark",
            scope_domains=["person", "condition_occurrence"], expires_on=expires,
            lay_summary=f"We want to learn how care for people with {word} could be better.",
            purpose_category="research", lead_organisation=f"Organisation {i % 20}", approval_refs=f"REC {i}")
        gov.submit(lead, p.id)
        gov.decide(leads[pillar], p.id, "approve")
        gov.decide(officer, p.id, "approve")
        if i % 3 == 0:
            with gov.db.transaction():
                gov.db.insert("mercia_export", {
                    "id": gov.db.next_id("mercia_export"), "project_id": p.id, "requester_id": lead.id,
                    "title": f"Tables for the {word} paper", "kind": "analysis", "source_ref": "1",
                    "justification": "paper", "content": '{"tables": []}', "disclosure": "{}", "status": "approved",
                    "checker_id": officer.id, "created_at": now(), "decided_at": now()})
            released += 1
    store.execute("CHECKPOINT")
    return store, {"projects": projects, "released_outputs": released, "build_seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mercia-public-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "register.json")
    args = parser.parse_args()
    os.environ.setdefault("MERCIA_AUDIT_KEY", secrets.token_hex(32))
    os.environ.setdefault("MERCIA_DATA_DIR", str(args.dir / "data"))

    from fastapi.testclient import TestClient

    from mercia.api.ratelimit import PublicRateLimit
    from mercia.services.state import ServerOptions
    from mercia.web.app import create_app

    store, built = build(args.dir, args.projects)
    app = create_app(store, ServerOptions(secure_cookies=False, job_workers=1))
    app.state.public_rate_limit = PublicRateLimit(per_minute=1_000_000)
    api = next(r.app for r in app.routes if getattr(r, "path", "") == "/api/v1")
    api.state.public_rate_limit = PublicRateLimit(per_minute=1_000_000)
    client = TestClient(app)
    year = date.today().year
    middle = args.projects // 2
    pages = {"index": "/register", "index_search": "/register?q=kidney",
             "index_filtered": f"/register?pillar=chronic&status=approved&year={year}",
             "index_last_page": f"/register?page={max(1, -(-args.projects // 50))}",
             "project": f"/register/projects/{middle}", "atom_feed": "/register/feed.atom",
             "json_feed": "/register/feed.json", "api_projects": "/api/v1/public/projects?q=asthma",
             "api_releases": "/api/v1/public/releases"}
    for path in pages.values():  # warm up, and check each answers
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    timings: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(args.repeats):
        for name, path in pages.items():
            began = time.perf_counter()
            client.get(path)
            timings[name].append((time.perf_counter() - began) * 1000)
    results = {name: {"path": pages[name], "median_ms": round(statistics.median(t), 1),
                      "p95_ms": round(sorted(t)[int(0.95 * (len(t) - 1))], 1)} for name, t in timings.items()}
    summary = {
        "benchmark": "register", "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "what": "GET of each public page and feed through the whole web app in process (no network), "
                f"{args.repeats} times each in rotation after one warm-up; DuckDB store",
        "store": built, "target_ms": TARGET_MS, "pages": results,
        "all_medians_under_target": all(r["median_ms"] < TARGET_MS for r in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    store.close()


if __name__ == "__main__":
    main()
