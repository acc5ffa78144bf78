"""Trials benchmark (issue 14 targets) on the synthetic region in DuckDB.

- Feasibility over time (10 years, monthly, 5 sites) for a reference eligibility cohort (first type 2
  diabetes diagnosis, in observation) must take at most 3x the time of generating that cohort once.
- The pre-screening worklist for one site of 200,000 persons must take under 2 s (the query over the
  already generated cohort; the time with a fresh cohort run is reported too).
- Minimisation must reach at least 1,000 allocations/s with 5 factors.

The region is written with ``--practices 5`` so each practice (a trial site) has persons/5 people:
the 1,000,000-person default gives 200,000 at the worklist's site.  Writes a fresh
``benchmarks/results/trials.json`` each run.

    .venv/bin/python benchmarks/trials.py [--persons 1000000] [--db /tmp/mercia-bench/trials.duckdb]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

from mercia.cdm import Store
from mercia.cohorts import CohortExpression, run_cohort
from mercia.governance import Governance, Role
from mercia.synth.omop import write_omop
from mercia.trials.feasibility import feasibility
from mercia.trials.prescreen import rerun_eligibility, worklist
from mercia.trials.randomise import Allocator, Arm, Factor, KeyedStream, Settings
from mercia.trials.register import TrialRegister, TrialRole

ROOT = Path(__file__).resolve().parents[1]
T2DM = 201826
REFERENCE = {"ConceptSets": [{"id": 0, "name": "Type 2 diabetes", "expression": {"items": [
    {"concept": {"CONCEPT_ID": T2DM}, "includeDescendants": True}]}}],
    "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0, "First": True}}],
                        "ObservationWindow": {"PriorDays": 0, "PostDays": 0}, "PrimaryCriteriaLimit": {"Type": "First"}},
    "InclusionRules": []}


def build(db: Path, persons: int) -> tuple[Store, dict]:
    began = time.perf_counter()
    store = Store(str(db))
    if store.table_exists("mercia_bench_trials") and store.query_one("SELECT persons FROM mercia_bench_trials") == persons:
        return store, {"reused": True, "seconds": 0.0}
    store.close()
    db.unlink(missing_ok=True)
    store = Store(str(db))
    write_omop(store, persons, seed=42, practices=5)
    store.execute(f"CREATE TABLE mercia_bench_trials AS SELECT {persons} AS persons")
    store.execute("CHECKPOINT")
    return store, {"reused": False, "seconds": round(time.perf_counter() - began, 1)}


def trial_world(store: Store) -> tuple[TrialRegister, dict, list[str]]:
    gov = Governance(store)
    sites = [r[0] for r in store.query("SELECT care_site_source_value FROM care_site "
                                       "WHERE place_of_service_source_value = 'gp' ORDER BY 1")][:5]
    stamp = datetime.now(UTC).strftime("%H%M%S%f")
    people = {n: gov.create_user(f"{n}{stamp}", n, None, roles, organisation=org) for n, roles, org in (
        ("manager", [(Role.TRIAL_COORDINATOR, "")], None), ("lead", [(Role.PILLAR_LEAD, "chronic")], None),
        ("govo", [(Role.GOVERNANCE_OFFICER, "")], None), ("nurse", [(Role.CLINICIAN, "")], sites[0]))}
    project = gov.create_project(people["manager"], title="Benchmark", pillar="chronic", purpose="benchmark",
                                 scope_domains=["person"], expires_on=(date.today() + timedelta(days=30)).isoformat(),
                                 lay_summary="A benchmark.", purpose_category="trial_feasibility",
                                 lead_organisation="Benchmark").id
    gov.submit(people["manager"], project)
    gov.decide(people["lead"], project, "approve")
    gov.decide(people["govo"], project, "approve")
    register = TrialRegister(store, gov)
    trial_id = f"BENCH{stamp}"
    register.create(people["manager"], trial_id=trial_id, title="Benchmark", project_id=project, sponsor="S",
                    chief_investigator="C", sites=sites, target=1000, opens_on=date.today().isoformat(),
                    closes_on=(date.today() + timedelta(days=30)).isoformat(), eligibility=REFERENCE,
                    settings={"method": "simple", "arms": [{"code": "A"}, {"code": "B"}]})
    register.grant(people["manager"], trial_id, people["nurse"].id, TrialRole.RESEARCH_NURSE, sites[0])
    return register, {"manager": people["manager"], "nurse": people["nurse"], "trial_id": trial_id}, sites


def minimisation_rate(allocations: int) -> dict:
    factors = tuple(Factor(f"f{i}", tuple(f"L{j}" for j in range(3 if i % 2 else 2))) for i in range(5))
    settings = Settings(method="minimisation", arms=(Arm("A"), Arm("B")), factors=factors)
    allocator = Allocator(settings, KeyedStream(b"benchmark-key-benchmark-key-0123"), ("bench",))
    rng = KeyedStream(b"levels").generator("levels")
    draws = [rng.integers(0, len(f.levels), size=allocations) for f in factors]
    levels = [{f.name: f.levels[int(draws[k][i])] for k, f in enumerate(factors)} for i in range(allocations)]
    began = time.perf_counter()
    for lv in levels:
        allocator.allocate(lv)
    seconds = time.perf_counter() - began
    return {"allocations": allocations, "factors": 5, "seconds": round(seconds, 3),
            "allocations_per_second": round(allocations / seconds), "target_per_second": 1000,
            "meets_target": allocations / seconds >= 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trials.json")
    args = parser.parse_args()
    db = args.db or Path(f"/tmp/mercia-bench/trials-{args.persons}.duckdb")
    db.parent.mkdir(parents=True, exist_ok=True)

    store, built = build(db, args.persons)
    store.execute(f"SET threads = {args.threads}")
    expr = CohortExpression.from_json(REFERENCE)
    cohort_runs = []
    for i in range(3):                     # compile + execute, as a user generating the cohort waits for
        began = time.perf_counter()
        run_cohort(store, expr, 999_000 + i)
        cohort_runs.append(time.perf_counter() - began)
    cohort_seconds = statistics.median(cohort_runs)
    register, who, sites = trial_world(store)
    trial_id = who["trial_id"]

    feasibility_runs, refreshed_runs = [], []
    for _ in range(3):
        began = time.perf_counter()
        rerun_eligibility(register, who["manager"], trial_id)
        result = feasibility(register, who["manager"], trial_id, years=10, horizon=24)
        refreshed_runs.append(time.perf_counter() - began)
        began = time.perf_counter()
        result = feasibility(register, who["manager"], trial_id, years=10, horizon=24)
        feasibility_runs.append(time.perf_counter() - began)
    feasibility_seconds, refreshed_seconds = statistics.median(feasibility_runs), statistics.median(refreshed_runs)
    pool = {r["site"]: r["count_pool"] for r in result.table("pool").rows}

    site_persons = int(store.query_one("SELECT COUNT(*) FROM person p JOIN care_site c ON c.care_site_id = "
                                       "p.care_site_id WHERE c.care_site_source_value = ?", [sites[0]]))
    began = time.perf_counter()
    rerun_eligibility(register, who["nurse"], trial_id, sites[0])
    rows = worklist(register, who["nurse"], trial_id, sites[0])
    with_refresh = time.perf_counter() - began
    query_runs = []
    for _ in range(3):
        began = time.perf_counter()
        rows = worklist(register, who["nurse"], trial_id, sites[0])
        query_runs.append(time.perf_counter() - began)
    worklist_seconds = statistics.median(query_runs)

    summary = {
        "benchmark": "trials", "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "store": {"engine": "duckdb", "persons": args.persons, "practices_as_sites": 5, "threads": args.threads,
                  "build": built},
        "feasibility": {
            "what": "monthly new-eligible counts over 10 years per site + prevalent pool + 24-month projection, "
                    "disclosure-controlled, over the eligibility cohort's last run (what asking costs); median of 3 "
                    "runs; with_cohort_refresh: the trial-wide rerun (POST .../eligibility/run) and then asking "
                    "(what every feasibility cost before 2026-12-07), compared with the target",
            "sites": len(sites), "months": 120, "seconds": round(feasibility_seconds, 3),
            "seconds_with_cohort_refresh": round(refreshed_seconds, 3),
            "cohort_generation_seconds": round(cohort_seconds, 3), "cohort_runs": [round(s, 3) for s in cohort_runs],
            "ratio_to_cohort": round(refreshed_seconds / cohort_seconds, 2), "target_ratio": 3.0,
            "meets_target": refreshed_seconds <= 3 * cohort_seconds, "published_pool": pool},
        "worklist": {
            "what": "one site's pseudonymous worklist (what a GET reads) over the generated eligibility cohort (dead, "
                    "dissenting and opted-out people excluded, status joined, view audited); median of 3 runs; "
                    "with_cohort_refresh: the explicit rerun (POST .../worklist/run) and a read",
            "site": sites[0], "site_persons": site_persons, "rows": len(rows), "seconds": round(worklist_seconds, 3),
            "seconds_with_cohort_refresh": round(with_refresh, 3), "target_seconds": 2.0,
            "meets_target": worklist_seconds < 2.0},
        "minimisation": minimisation_rate(10_000),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    store.close()


if __name__ == "__main__":
    main()
