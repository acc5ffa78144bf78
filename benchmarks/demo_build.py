"""How long `mercia demo` takes to build its region, users, projects, trial and eCRF study (``build_demo``).

    python benchmarks/demo_build.py --before /path/to/old/checkout [--persons 10000] [--pairs 2]

Runs ``build_demo`` in a fresh Python process per run, alternating the checkout given as ``--before`` with
this one (before, after, before, after, ...), each with ``PYTHONPATH`` set to its checkout and a fresh
demo folder. Counts the CPU seconds of that process (user + system), its wall time and the 1-minute load
average at its start. Writes benchmarks/results/demo-build-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
RESULTS = CHECKOUT / "benchmarks" / "results"
BUILD = "import sys; from pathlib import Path; from mercia.demo import build_demo; " \
        "build_demo(Path(sys.argv[1]), int(sys.argv[2]), 42).store.close()"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(checkout: Path, persons: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="mercia-demo-build-"))
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load = os.getloadavg()[0]
    cpu, wall = children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD, str(folder / "demo"), str(persons)], check=True, env=env,
                   cwd=checkout)
    cpu, wall = children_cpu() - cpu, time.perf_counter() - wall
    shutil.rmtree(folder, ignore_errors=True)
    return {"cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2), "load_1min": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--persons", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": CHECKOUT}
    runs = [{"kind": kind, "pair": pair, "checkout": str(path), **build(path, args.persons)}
            for pair in range(1, args.pairs + 1) for kind, path in checkouts.items()]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    commits = {kind: subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() for kind, path in checkouts.items()}
    result = {"benchmark": "demo_build", "utc": stamp, "python": sys.version.split()[0], "persons": args.persons,
              "commits": commits,
              "counted": "CPU seconds (user+system) of one Python process running build_demo(persons, seed 42) "
                         "into a fresh folder, import time included; alternating before/after",
              "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"demo-build-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)
    for run in runs:
        print(run)


if __name__ == "__main__":
    main()
