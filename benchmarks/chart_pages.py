"""What drawing charts costs the web app: the cohort page (attrition chart) and the analysis pages
(characterisation, survival, incidence) served in-process, and what the chart library costs at import.

Builds the demo region (``mercia.demo.build_demo``, DuckDB), runs the three analyses on its first
cohort, signs the researcher in through a ``TestClient`` and times each page's GET: best, median and
worst of several requests after two warm-ups (charts and page templates already imported/compiled).
Where pages keep drawn charts (``mercia.web.results``), the pages are timed again with that cache
cleared before every request, so the drawing itself is counted.  Import costs are wall times in fresh interpreters: the web pages module (what ``create_app`` loads,
charts included), and matplotlib's figure and SVG backend after the API (the chart stack's own cost).

    .venv/bin/python benchmarks/chart_pages.py [--persons 1500] [--requests 20]

Run from the repository root (it signs in with the tests' helper).  Writes a fresh
benchmarks/results/chart_pages-<UTC time>.json naming the commit measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from fastapi.testclient import TestClient

import mercia
from mercia.demo import build_demo
from mercia.services.analyses import start_analysis
from mercia.services.state import ServerOptions
from mercia.web.app import create_app
from tests.web.test_pages import sign_in

ANALYSES = {"characterise": {}, "survival": {}, "incidence": {"outcome_cohort_id": 1}}
IMPORT_RUNS = 5


def timed_gets(client: TestClient, url: str, requests: int, before_each=None) -> dict[str, float]:
    for _ in range(2):
        assert client.get(url).status_code == 200, url
    times = []
    for _ in range(requests):
        if before_each:
            before_each()
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, url
    return {"best_ms": round(min(times), 1), "median_ms": round(statistics.median(times), 1),
            "worst_ms": round(max(times), 1), "bytes": len(response.content)}


def import_seconds(statement: str) -> float:
    """Median wall time of ``statement`` in a fresh interpreter (the interpreter's own start excluded)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                 env=os.environ | {"PYTHONPATH": str(Path(mercia.__file__).parents[1])}).stdout.split()[-1])
            for _ in range(IMPORT_RUNS)]
    return round(statistics.median(runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=1500)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--commit", help="the commit of the code measured, when it is not a git checkout "
                                         "(an exported tree on PYTHONPATH, to time an older version)")
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                                           text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        demo = build_demo(Path(tmp), persons=args.persons, seed=7)
        app = create_app(demo.store, ServerOptions(secure_cookies=False, job_workers=1,
                                                   pseudonym_key_file=demo.key_file))
        client = TestClient(app, base_url="http://127.0.0.1")
        sign_in(client, demo, "researcher")
        state = app.state.mercia
        researcher = state.gov.user_by_name("researcher")
        pages = {"cohort": "/cohorts/1"}
        for kind, extra in ANALYSES.items():
            started = start_analysis(state, researcher, 1, kind, {"target_cohort_id": 1, **extra})
            job = state.jobs.wait(started["job_id"], 600)
            assert job["status"] == "succeeded", job
            pages[f"analysis_{kind}"] = f"/analyses/{job['result']['analysis_id']}"
        timings = {name: timed_gets(client, url, args.requests) for name, url in pages.items()}
        try:  # pages that keep drawn charts: also time them drawing on every request
            from mercia.web.results import attrition_svg, result_charts
        except ImportError:
            drawing = None
        else:
            def forget() -> None:
                attrition_svg.cache_clear()
                result_charts.cache_clear()

            drawing = {name: timed_gets(client, url, args.requests, forget) for name, url in pages.items()}
        demo.store.close()
    imports = {
        "web_pages_seconds": import_seconds("import mercia.web.pages"),
        "web_pages_load_matplotlib": subprocess.run(
            [sys.executable, "-c", "import sys, mercia.web.pages; print('matplotlib' in sys.modules)"],
            check=True, capture_output=True, text=True).stdout.strip() == "True",
        "matplotlib_after_web_api_seconds": import_seconds(
            "import mercia.api.app; t = time.perf_counter(); import matplotlib.figure, matplotlib.backends.backend_svg"),
    }
    out = {
        "what": "wall time of an in-process TestClient GET of each page (researcher signed in), after two "
                "warm-up requests; import times are medians of fresh interpreters (seconds)",
        "commit": commit, "persons": args.persons, "requests_per_page": args.requests, "pages": timings,
        "pages_drawing_charts_every_request": drawing,
        "imports": imports,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    target = Path(__file__).parent / "results" / f"chart_pages-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    target.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
