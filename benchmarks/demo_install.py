"""What `make demo` installs against what `make test` installs: CPU, disk and packages of each.

    python3 benchmarks/demo_install.py [--pairs 2] [--scratch /tmp/mercia-install]

Installs this checkout into a fresh virtual environment as `make demo` does (`pip install -e .`) and as
`make test` does (`pip install -e '.[test,bench,spark]'`), alternating (core, full, core, full, ...).
Counts the CPU seconds of pip and its children (user + system), the environment's size on disk and its
package count. pip's own download cache is left as it is (say in the result whether it was warm): a new
machine also downloads what the size says. Writes benchmarks/results/demo-install-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
RESULTS = CHECKOUT / "benchmarks" / "results"
SPECS = {"core (make demo)": ".", "full (make test)": ".[test,bench,spark]"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def install(venv: Path, spec: str) -> dict:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    load = os.getloadavg()[0]
    cpu, wall = children_cpu(), time.perf_counter()
    subprocess.run([*pip, "--upgrade", "pip"], check=True, capture_output=True)
    subprocess.run([*pip, "-e", spec], check=True, capture_output=True, cwd=CHECKOUT)
    cpu, wall = children_cpu() - cpu, time.perf_counter() - wall
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            check=True, capture_output=True, text=True).stdout
    return {"cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2), "load_1min": load,
            "size_mb": round(size / 1e6), "packages": len(json.loads(listed))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/mercia-install"))
    args = parser.parse_args()
    runs = [{"kind": kind, "pair": pair, **install(args.scratch / "venv", spec)}
            for pair in range(1, args.pairs + 1) for kind, spec in SPECS.items()]
    shutil.rmtree(args.scratch, ignore_errors=True)
    write_result("demo_install", {
        "counted": "CPU seconds of pip and its children (user+system), per fresh venv; size on disk of "
                   "the venv; pip's download cache as found (warm here: every wheel cached)", "runs": runs})


def write_result(benchmark: str, result: dict) -> Path:
    """benchmarks/results/<benchmark>-<UTC time>.json (underscores as dashes), and its runs on stdout."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark.replace('_', '-')}-{stamp}.json"
    path.write_text(json.dumps({"benchmark": benchmark, "utc": stamp, "python": sys.version.split()[0], **result},
                               indent=2) + "\n")
    print(path)
    for run in result["runs"]:
        print(run)
    return path


if __name__ == "__main__":
    main()
