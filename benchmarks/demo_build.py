"""How long `mercia demo` takes to build its region, users, projects, trial and eCRF study (``build_demo``).

    python -m benchmarks.demo_build --before /path/to/old/checkout [--persons 10000] [--pairs 2]

Runs ``build_demo`` in a fresh Python process per run, alternating the checkout given as ``--before`` with
this one (before, after, before, after, ...), each with ``PYTHONPATH`` set to its checkout and a fresh
demo folder, and both with the same public test data (``MERCIA_SHARED_DATA``, default the ``shared/data`` folder
beside this checkout: a checkout elsewhere would otherwise build without the metabolomics study or EQ-5D
scores). Counts the CPU seconds of that process (user + system), its wall time and the 1-minute load average
at its start. Writes benchmarks/results/demo-build-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.demo_install import CHECKOUT, children_cpu, write_result

BUILD = "import sys; from pathlib import Path; from mercia.demo import build_demo; " \
        "build_demo(Path(sys.argv[1]), int(sys.argv[2]), 42).store.close()"


def build(checkout: Path, persons: int, shared: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="mercia-demo-build-"))
    env = {**os.environ, "PYTHONPATH": str(checkout), "MERCIA_SHARED_DATA": str(shared)}
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
    shared = Path(os.environ.get("MERCIA_SHARED_DATA", CHECKOUT.parent / "shared" / "data"))
    runs = [{"kind": kind, "pair": pair, "checkout": str(path), **build(path, args.persons, shared)}
            for pair in range(1, args.pairs + 1) for kind, path in checkouts.items()]
    commits = {kind: subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() for kind, path in checkouts.items()}
    write_result("demo_build", {
        "persons": args.persons, "commits": commits, "shared_data": str(shared),
        "counted": "CPU seconds (user+system) of one Python process running build_demo(persons, seed 42) into a "
                   "fresh folder, import time included; alternating before/after", "runs": runs})


if __name__ == "__main__":
    main()
