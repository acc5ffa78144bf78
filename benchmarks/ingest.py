"""Benchmark ingestion and linkage.

    .venv/bin/python benchmarks/ingest.py --skip-linkage          # FHIR parts only
    .venv/bin/python benchmarks/ingest.py --linkage-persons 100000 --skip-naive

Every run writes a fresh ``benchmarks/results/ingest-<UTC time>.json`` holding only what that run
measured, with the load average (``os.getloadavg``) around each part: the 2 CPUs are shared.

1. FHIR NDJSON -> CDM end to end (read, pseudonymise, map, load into a fresh DuckDB file) on
   ../shared/data/fhir/synthea_medium (191,093 resources), in this process (wall and CPU seconds)
   and through ``python -m mercia.cli ingest fhir`` from a cold start (a new interpreter: imports,
   key, store creation included; CPU seconds of the child).  CPU seconds always include the reading
   worker processes (``mercia.ingest.fhir_worker``, waited for, so counted in RUSAGE_CHILDREN); the load's
   own process and the workers are also given apart (the former is the critical path).  ``mapped`` counts distinct source
   records that reached the CDM (the load summary's ``loaded``); ``rejected`` are kept in
   mercia_reject with their reason; both rates are reported, over mapped and over all resources.
   The in-process run is repeated with the files read in one process (``MERCIA_INGEST_PROCESSES=1``).
   An incremental resend in which 10% of the resources changed (a newer meta) is timed on the loaded
   store, then the same 10% with an older meta arriving late (all superseded, nothing written).
2. The same pipeline with a naive reader: every resource parsed into a fhir.resources R4B pydantic
   model and dumped back to a dict before staging (on synthea_small, to keep the run short; the
   ratio is taken against the fast pipeline on the same folder).
3. Linkage of N simulated persons held by two organisations (N records against N), streamed in
   chunks: wall and CPU seconds and peak resident memory of loading, linking and scoring each,
   comparisons scored, precision and recall against the simulated truth.
4. Linkage quality on a synthetic region from mercia.synth (--region-persons, error rate 0.02).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("MERCIA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
if not SHARED.exists():
    SHARED = Path("/work/shared/data")
RESULTS = Path(__file__).resolve().parent / "results"


def options():
    from mercia.ingest.load import LoadOptions
    from mercia.privacy.pseudonym import Pseudonymiser, load_key
    return LoadOptions(Pseudonymiser(load_key()), allow_synthetic_nhs_numbers=True)


def _rates(summary, wall: float, cpu: float) -> dict:
    return {"resources": summary["read"], "records": summary["records"], "mapped": summary["loaded"],
            "unchanged": summary["unchanged"], "changed": summary["changed"], "superseded": summary["superseded"],
            "rejected": summary["rejected"], "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2), "mapped_per_second": round(summary["loaded"] / wall),
            "resources_per_second": round(summary["read"] / wall),
            "mapped_per_cpu_second": round(summary["loaded"] / cpu) if cpu else None,
            "rows": summary["rows"], "rejects_by_reason": dict(sorted(summary["reject_reasons"].items(),
                                                                      key=lambda kv: -kv[1])[:12])}


def _reading_processes(folder: Path) -> int:
    """How many processes read the folder's files (the load's own and its reading workers)."""
    from mercia.ingest.fhir import FhirReader, reading_processes

    reader = FhirReader(folder.name)
    return reading_processes(reader.files(folder) + reader.deleted_files)


def fhir_end_to_end(folder: Path, workdir: Path) -> tuple[dict, Path]:
    from dataclasses import asdict

    from mercia.cdm import Store
    from mercia.ingest.service import ingest

    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / f"fhir-{folder.parent.name}.duckdb"
    store = Store(str(db))
    load_before = os.getloadavg()
    wall, cpu, own = time.perf_counter(), cpu_seconds(), _own_cpu_seconds()
    summary = ingest(store, "fhir", folder, "RX1", options=options())
    wall, cpu, own = time.perf_counter() - wall, cpu_seconds() - cpu, _own_cpu_seconds() - own
    store.close()
    result = {"folder": str(folder.relative_to(SHARED)), "reading_processes": _reading_processes(folder),
              **_rates(asdict(summary), wall, cpu),
              # the load's own process (its share of the reading, then the load) is the critical path
              "cpu_seconds_load_process": round(own, 2),
              "cpu_seconds_reading_workers": max(0.0, round(cpu - own, 2)),
              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    return result, db


def fhir_one_process(folder: Path, workdir: Path) -> dict:
    """The same end-to-end run with the files read in the load's own process (MERCIA_INGEST_PROCESSES=1)."""
    from mercia.ingest.fhir import PROCESSES_ENV

    os.environ[PROCESSES_ENV] = "1"
    try:
        return fhir_end_to_end(folder, workdir)[0]
    finally:
        del os.environ[PROCESSES_ENV]


def fhir_cli_cold(folder: Path, workdir: Path) -> dict:
    """What a user waits for: a fresh interpreter running ``mercia ingest fhir`` on an empty store."""
    import subprocess
    import sys

    db = workdir / "cli-cold.duckdb"
    env = {**os.environ, "MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mercia.cli", "ingest", "fhir", str(folder), "--org", "RX1",
                           "--db", str(db), "--json"], env=env, capture_output=True, check=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(done.stdout)[0]
    return {"folder": str(folder.relative_to(SHARED)), **_rates(summary, wall, cpu),
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def changed_copy(folder: Path, out: Path, meta: bytes, every: int = 10) -> int:
    """``folder`` with one resource in ``every`` given ``meta`` (a daily feed's updates)."""
    import gzip

    import orjson

    out.mkdir(parents=True, exist_ok=True)
    changed = 0
    for file in sorted(folder.glob("*.ndjson.gz")):
        lines = gzip.decompress(file.read_bytes()).split(b"\n")
        for i in range(0, len(lines), every):
            if lines[i].startswith(b'{"resourceType":"'):  # Synthea's own meta (tags) is kept
                resource = orjson.loads(lines[i])
                resource["meta"] = {**resource.get("meta", {}), **orjson.loads(meta)}
                lines[i] = orjson.dumps(resource)
                changed += 1
        (out / file.name).write_bytes(gzip.compress(b"\n".join(lines), compresslevel=1))
    return changed


NEWER = b'{"versionId":"3","lastUpdated":"2026-01-03T00:00:00Z"}'
OLDER = b'{"versionId":"2","lastUpdated":"2026-01-02T00:00:00+00:00"}'


def fhir_incremental(folder: Path, db: Path, workdir: Path, meta: bytes) -> dict:
    """A 10% update (those resources with ``meta``) resent to the store the end-to-end run filled: first
    the newer versions (reloaded), then, on the same store, older ones arriving late (superseded)."""
    from dataclasses import asdict

    from mercia.cdm import Store
    from mercia.ingest.service import ingest

    update = workdir / f"update-{len(list(workdir.glob('update-*')))}" / "ndjson"
    changed = changed_copy(folder, update, meta=meta)
    store = Store(str(db))
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = ingest(store, "fhir", update, "RX1", options=options())
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    store.close()
    return {"resources_changed": changed, "meta": meta.decode(), "records_reloaded": summary.changed,
            **_rates(asdict(summary), wall, cpu),
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def fhir_naive(folder: Path, workdir: Path) -> dict:
    """Per-resource pydantic models (fhir.resources R4B), then the same staging and load."""
    import orjson
    from fhir.resources.R4B import get_fhir_model_class

    from mercia.cdm import Store
    from mercia.ingest.fhir import FhirReader, iter_resources
    from mercia.ingest.load import load_staged

    store = Store(str(workdir / "naive.duckdb"))
    start = time.perf_counter()
    reader = FhirReader(folder.name)
    invalid = 0
    for resource_json in iter_resources(folder):
        try:
            model = get_fhir_model_class(resource_json["resourceType"]).model_validate(resource_json)
            resource_json = orjson.loads(model.model_dump_json(by_alias=True, exclude_none=True))
        except Exception:  # R4 content the R4B models refuse: staged from the raw dict, counted
            invalid += 1
        reader.read_resource(resource_json)
    summary = load_staged(store, reader.staged, "RX1", "fhir", options())
    elapsed = time.perf_counter() - start
    store.close()
    return {"folder": str(folder.relative_to(SHARED)), "resources": summary.read, "seconds": round(elapsed, 2),
            "resources_per_second": round(summary.read / elapsed), "refused_by_r4b_models": invalid}


class Phase:
    """Wall and CPU seconds (this process and its children), peak resident memory and load average
    of one part of a run.  The peak is the phase's own: the kernel's high-water mark (VmHWM) is
    reset at the start (``/proc/self/clear_refs``)."""

    def __enter__(self) -> Phase:
        Path("/proc/self/clear_refs").write_text("5")
        self.load_before, self.wall, self.cpu = os.getloadavg(), time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.figures = {"seconds": round(time.perf_counter() - self.wall, 1),
                        "cpu_seconds": round(cpu_seconds() - self.cpu, 1), "peak_rss_mb": round(high_water_mb()),
                        "load_average_before": self.load_before, "load_average_after": os.getloadavg()}


def cpu_seconds() -> float:
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage,
                                                    (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def high_water_mb() -> float:
    """Peak resident memory of this process since the last reset, with the largest child's."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 1024 + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def linkage(persons: int, workdir: Path) -> dict:
    """N simulated persons held by two organisations: simulated, staged and loaded 50,000 persons
    at a time (one load per organisation, the store's cache capped as for any bulk load), linked,
    then scored against the simulated truth."""
    import pyarrow.compute as pc

    from mercia.cdm import Store
    from mercia.ingest.load import load_staged
    from mercia.ingest.staging import Staged
    from mercia.linkage.evaluate import simulated_demographics, simulated_quality
    from mercia.linkage.probabilistic import MEMORY_LIMIT, PAGE_ROWS, link_store

    orgs = ("M90001", "R9A")

    def batches():
        return simulated_demographics(persons, copies=2, error_rate=0.02, seed=2026)

    def chunks(copy: int, org: str):
        for batch in batches():
            chunk = Staged(f"simulated-{org}")
            chunk.persons.add_table(batch.filter(pc.equal(batch.column("copy"), copy)))
            chunk.read = len(chunk.persons)
            yield chunk

    store = Store(str(workdir / "linkage.duckdb"))
    opts = options()
    with Phase() as load, store.bulk_writes(MEMORY_LIMIT):
        for copy, org in enumerate(orgs):
            load_staged(store, chunks(copy, org), org, "fhir", opts)
    with Phase() as link:
        result = link_store(store)
    with Phase() as scoring:
        quality = simulated_quality(store, opts.pseudonymiser, orgs, batches())
    store.close()
    return {"persons_per_organisation": persons, "records": result.records, "error_rate": 0.02,
            "counted": "load = simulate + stage + load_staged of both organisations, 50,000 persons per chunk; "
                       "linkage = link_store (store read in pages, scoring, clustering, merging person_ids); "
                       "quality = pairwise precision/recall against the simulated truth; peak_rss_mb is each "
                       "phase's own peak (VmHWM reset at its start)",
            "page_rows": PAGE_ROWS, "duckdb_memory_limit": MEMORY_LIMIT,
            "load": load.figures, "linkage": link.figures, "quality_scoring": scoring.figures,
            "peak_rss_mb": max(p.figures["peak_rss_mb"] for p in (load, link, scoring)),
            "comparisons_scored": result.comparisons, "probabilistic_links": result.probabilistic_links,
            "persons_before": result.persons_before, "persons_after": result.persons_after,
            "precision": round(quality.precision, 5), "recall": round(quality.recall, 5),
            "true_pairs": quality.true_pairs, "predicted_pairs": quality.predicted_pairs,
            "correct_pairs": quality.correct_pairs}


def region_quality(persons: int, workdir: Path) -> dict:
    from mercia.cdm import Store
    from mercia.ingest.region import ingest_region
    from mercia.linkage.evaluate import region_linkage_quality
    from mercia.linkage.probabilistic import link_store
    from mercia.privacy.pseudonym import Pseudonymiser, load_key
    from mercia.synth import generate_region

    out = workdir / "region"
    generate_region(out, persons=persons, seed=42, error_rate=0.02)
    store = Store(str(workdir / "region.duckdb"))
    os.environ["MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS"] = "1"
    t0 = time.perf_counter()
    summaries = ingest_region(store, out)
    link_store(store)
    seconds = time.perf_counter() - t0
    quality = region_linkage_quality(store, out, Pseudonymiser(load_key()))
    result = {"persons": persons, "error_rate": 0.02, "records": sum(s.records for s in summaries),
              "seconds_ingest_and_link": round(seconds, 1), "persons_in_cdm": store.query_one("SELECT count(*) FROM person"),
              "precision": round(quality.precision, 5), "recall": round(quality.recall, 5),
              "true_pairs": quality.true_pairs, "predicted_pairs": quality.predicted_pairs}
    store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--linkage-persons", type=int, default=1_000_000)
    parser.add_argument("--region-persons", type=int, default=5_000)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-region", action="store_true")
    parser.add_argument("--skip-linkage", action="store_true")
    parser.add_argument("--only-linkage", action="store_true")
    args = parser.parse_args()
    if "MERCIA_PSEUDONYM_KEY" not in os.environ and "MERCIA_PSEUDONYM_KEY_FILE" not in os.environ:
        os.environ["MERCIA_PSEUDONYM_KEY"] = os.urandom(32).hex()  # a throwaway key for the run
    started = dt.datetime.now(dt.UTC)
    results: dict = {"started": started.isoformat(timespec="seconds"),
                     "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "load_average_at_start": os.getloadavg()},
                     "target_fhir_mapped_per_second": 50000}
    medium = SHARED / "fhir/synthea_medium/ndjson"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.only_linkage:
            small, _ = fhir_end_to_end(SHARED / "fhir/synthea_small/ndjson", work)  # also warms imports
            results["fhir_small"] = small
            results["fhir_medium"], db = fhir_end_to_end(medium, work)
            results["fhir_medium_one_process"] = fhir_one_process(medium, work / "one")
            results["fhir_medium_incremental_10pct"] = fhir_incremental(medium, db, work, NEWER)
            results["fhir_medium_older_10pct_late"] = fhir_incremental(medium, db, work, OLDER)
            results["fhir_medium_cli_cold"] = fhir_cli_cold(medium, work)
            if not args.skip_naive:
                naive = fhir_naive(SHARED / "fhir/synthea_small/ndjson", work)
                naive["slower_than_fast_reader"] = round(naive["seconds"] / small["seconds"], 1)
                results["fhir_small_naive_r4b_models"] = naive
            if not args.skip_region:
                results["region_linkage"] = region_quality(args.region_persons, work)
        if not args.skip_linkage:
            results["linkage"] = linkage(args.linkage_persons, work)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out = RESULTS / f"ingest-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
