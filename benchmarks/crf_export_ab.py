"""The eCRF's streamed exports, the code of two trees side by side: CPU seconds of each export in its own
child process, runs alternating (A B A B ...), on one study built once.

    .venv/bin/python benchmarks/crf_export_ab.py --base /path/to/other/tree [--participants 20000] [--fields 50]
        [--pairs 2]

A is ``--base`` (the code before a change), B this tree.  The study is ``benchmarks/proms.py``'s (numbers in
forms of 50 fields, one event, bulk-loaded); each export is ``proms.py --child`` run with ``PYTHONPATH`` set to
the tree timed.  Writes benchmarks/results/crf_export_ab-<UTC time>.json: per run the tree, the export, its
CPU seconds (user + system of the child), wall seconds, the count it returned and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proms import build_study  # noqa: E402 - the study of the proms benchmark


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_export(tree: Path, kind: str, db: Path, out: Path) -> dict:
    cpu, wall, load = _child_cpu(), time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run([sys.executable, str(HERE / "proms.py"), "--child", kind, "--db", str(db), "--out", str(out)],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(tree)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"tree": str(tree), "export": kind, "cpu_seconds": round(_child_cpu() - cpu, 2),
            "wall_seconds": round(time.perf_counter() - wall, 2), "count": result["count"], "bytes": result["bytes"],
            "load_average_1min": load}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True, help="the tree of the code before the change (A)")
    parser.add_argument("--participants", type=int, default=20_000)
    parser.add_argument("--fields", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    trees = {"A": args.base.resolve(), "B": HERE.parent}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "study.duckdb"
        study = build_study(db, args.participants, args.fields)
        runs = [{"side": side, **timed_export(trees[side], kind, db, Path(tmp) / f"out.{kind}")}
                for _ in range(args.pairs) for kind in ("flat", "odm") for side in ("A", "B")]
    summary = {f"{side} {kind}": sorted(r["cpu_seconds"] for r in runs if r["side"] == side and r["export"] == kind)
               for side in ("A", "B") for kind in ("flat", "odm")}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"crf_export_ab-{stamp}.json"
    out.write_text(json.dumps({
        "benchmark": "crf_export_ab", "when": stamp, "study": study, "trees": {k: str(v) for k, v in trees.items()},
        "counted": "CPU seconds (user + system) of each export's child process; count = participant-event rows "
                   "(flat) or ItemData elements (odm)", "runs": runs, "cpu_seconds_by_side": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
