"""Benchmark the synthetic region generator.

    .venv/bin/python benchmarks/synth.py [--sizes 250000,500000,1000000,2000000] [--region 50000]
        [--format duckdb|parquet]

Each run happens in a fresh child process so that its peak memory (ru_maxrss from wait4) is its own:
the OMOP fast path at each size, into a new DuckDB file (``--format duckdb``) or as partitioned
Parquet (``--format parquet``, ``mercia synth omop --out``) (time, CPU, rows, rows/s, peak RSS, bytes
written, against the targets of 1M people < 5 min and < 4 GB on 2 cores), then a full region with
extracts (records and bytes written per second).  Writes a fresh benchmarks/results/synth-<UTC>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 42


def child(kind: str, persons: int, target: str) -> None:
    """Runs inside the child: one generation, timings printed as JSON on stdout."""
    started = time.perf_counter()
    if kind in ("duckdb", "parquet"):
        from mercia.synth import write_omop, write_omop_parquet

        counts = (write_omop if kind == "duckdb" else write_omop_parquet)(target, persons, SEED)
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "rows": sum(counts.values()), "tables": counts}))
    else:
        from mercia.synth import generate_region

        manifest = generate_region(target, persons, SEED, 0.02)
        seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(target).rglob("*") if p.is_file())
        extract_bytes = sum(p.stat().st_size for p in Path(target).rglob("*")
                            if p.is_file() and "truth" not in p.parts)
        print(json.dumps({"seconds": seconds, "records": sum(manifest["files"].values()),
                          "truth_rows": sum(manifest["truth_rows"].values()), "bytes": size,
                          "extract_bytes": extract_bytes, "files": len(manifest["files"])}))


def run_child(kind: str, persons: int, target: str) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(persons), target],
                            stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{kind} {persons} failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)   # kB on Linux
    # CPU seconds too: the machine is shared, so wall time depends on everyone else's load.
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="250000,500000,1000000,2000000")
    parser.add_argument("--region", type=int, default=50_000, help="people in the full-region (extracts) run")
    parser.add_argument("--format", choices=["duckdb", "parquet"], default="duckdb",
                        help="where the OMOP fast path writes: a DuckDB file or partitioned Parquet")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PERSONS", "TARGET"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return

    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()},
               "seed": SEED, "format": args.format, "omop": [], "region": None,
               "counted": "per size, one child process: wall and CPU seconds (user+system, wait4) of the OMOP "
                          "fast path, its peak RSS, rows written and bytes on disk; load average at the end"}
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        for persons in [int(s) for s in args.sizes.split(",") if s]:
            target = Path(tmp) / f"omop-{persons}.{args.format}"
            r = run_child(args.format, persons, str(target))
            written = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
            r.update(persons=persons, rows_per_second=round(r["rows"] / r["seconds"]),
                     persons_per_second=round(persons / r["seconds"]), files=len(written),
                     output_mb=round(sum(p.stat().st_size for p in written) / 2**20, 1))
            results["omop"].append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if args.region:
            r = run_child("region", args.region, str(Path(tmp) / "region"))
            r.update(persons=args.region, records_per_second=round(r["records"] / r["seconds"]),
                     extract_mb_per_second=round(r["extract_bytes"] / 2**20 / r["seconds"], 2))
            results["region"] = r
            print(json.dumps(r), flush=True)
    million = next((r for r in results["omop"] if r["persons"] == 1_000_000), None)
    if million:
        results["targets_1m"] = {"under_5_minutes": million["seconds"] < 300,
                                 "under_4_gb": million["peak_rss_mb"] < 4096}
    sizes = results["omop"]
    if len(sizes) >= 2:
        first, last = sizes[0], sizes[-1]
        results["scaling"] = {"persons_ratio": last["persons"] / first["persons"],
                              "time_ratio": round(last["seconds"] / first["seconds"], 2),
                              "rss_ratio": round(last["peak_rss_mb"] / first["peak_rss_mb"], 2)}
    out = RESULTS / f"synth-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
