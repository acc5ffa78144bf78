"""Care sites on load: what naming sites by ODS code costs, and what the store holds after.

    PYTHONPATH=. .venv/bin/python benchmarks/care_sites.py --region DIR [--persons 6000 --practices 6] [--label after]

Loads every GP practice extract of a synthetic region (``mercia.synth.generate_region``, made in ``--region``
when that folder is empty; each practice sends its own Organization) into a fresh DuckDB file, then the same
extracts again (a resend: nothing changes).  Counted: process CPU seconds of each pass (reading workers
included, RUSAGE_CHILDREN), the 1-minute load average before and after, and what the store holds: care sites,
sites per ODS code at most, sites without a name.  Then, untimed, into a second store: each extract without its
Organization (the registrations add the practice's site, unnamed), then each Organization as a later load, with
what the store holds after each step.  Run it with ``PYTHONPATH`` at another checkout to
compare that code on the same files (A B A B: the 2 CPUs are shared).  Writes
``benchmarks/results/care_sites-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_seconds() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sites_held(store) -> dict:
    """Care sites in the store, the most sharing one ODS code, and those without a name."""
    return dict(zip(("care_sites", "most_sites_per_code", "unnamed_sites"), store.query(
        """SELECT count(*), max(n), sum(CASE WHEN care_site_name IS NULL THEN 1 ELSE 0 END) FROM (
               SELECT care_site_name, count(*) OVER (PARTITION BY care_site_source_value) AS n FROM care_site) s""")[0]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--region", type=Path, required=True)
    parser.add_argument("--persons", type=int, default=6000)
    parser.add_argument("--practices", type=int, default=6)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    import mercia
    from mercia.cdm import Store
    from mercia.ingest.region import plan_region
    from mercia.ingest.service import default_options, ingest
    from mercia.synth import generate_region

    if not (args.region / "manifest.json").exists():
        generate_region(args.region, persons=args.persons, seed=5, error_rate=0.02, practices=args.practices)
    plans = [plan for plan in plan_region(args.region) if plan.kind == "fhir"]
    os.environ.setdefault("MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS", "1")
    passes = {}
    with tempfile.TemporaryDirectory() as folder:
        store = Store(str(Path(folder) / "sites.duckdb"))
        for name in ("first", "resend"):
            load_before, start = os.getloadavg()[0], cpu_seconds()
            summaries = [ingest(store, "fhir", plan.path, plan.org, options=default_options("fhir")) for plan in plans]
            passes[name] = {"cpu_seconds": round(cpu_seconds() - start, 3), "load_before": load_before,
                            "load_after": os.getloadavg()[0],
                            "care_site_rows": sum(s.rows.get("care_site", 0) for s in summaries),
                            "records": sum(s.records for s in summaries),
                            "unchanged": sum(s.unchanged for s in summaries)}
        held = {"named_in_the_extract": sites_held(store)}
        store.close()
        # the practices' Organizations as a later load of each: their registrations' sites were added unnamed
        store = Store(str(Path(folder) / "later.duckdb"))
        for plan in plans:
            registrations = Path(folder) / "registrations" / plan.org
            registrations.mkdir(parents=True)
            for part in plan.path.glob("*.ndjson"):
                if part.name != "Organization.ndjson":
                    (registrations / part.name).symlink_to(part)
            ingest(store, "fhir", registrations, plan.org, options=default_options("fhir"))
        held["registrations_first"] = sites_held(store)
        for plan in plans:
            ingest(store, "fhir", plan.path / "Organization.ndjson", plan.org, options=default_options("fhir"))
        held["organizations_later"] = sites_held(store)
        store.close()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"benchmark": "care_sites", "label": args.label, "mercia": str(Path(mercia.__file__).parent),
              "utc": stamp, "region": str(args.region), "practices": len(plans),
              "counted": "process CPU seconds (self + children) of loading every GP extract of the region into a "
                         "fresh DuckDB file, then of loading them all again; 1-minute load average around each; "
                         "store: sites held after those passes, and in a second store after each extract without its "
                         "Organization, then after each Organization loaded later",
              "passes": passes, "store": held}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"care_sites-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=int) + "\n")
    print(path, json.dumps(result, default=int))


if __name__ == "__main__":
    main()
