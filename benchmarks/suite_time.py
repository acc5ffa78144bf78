"""Where `make test`'s time goes, per test: wall, the worker's own CPU, the CPU of the child processes
it waited for, and the CPU of its live descendants (a Spark JVM, Chromium, a server process).

    PYTHONPATH=. .venv/bin/python benchmarks/suite_time.py run --tag NAME [TEST PATHS]
    PYTHONPATH=. .venv/bin/python benchmarks/suite_time.py summarise --tag NAME --probe DIR/NAME-probe
    PYTHONPATH=. .venv/bin/python benchmarks/suite_time.py ab --tag NAME --base OTHER_TREE [--pairs 2]
        [--pytest-args "-n 2 --dist loadscope"] TEST PATHS

``run`` runs `make test`'s pytest command (``-n 2 --dist loadscope --no-loadscope-reorder``) with this
module loaded as a pytest plugin (``-p benchmarks.suite_time``), which appends one line per test to
``<probe>-<worker>.tsv``; ``summarise`` turns those files into
``benchmarks/results/suite-time-<tag>-<UTC time>.json``: each worker's totals and when it ended, the
Spark scope (every test whose id says ``spark``, one worker), the 30 longest tests and modules.  The
PostgreSQL server's CPU is no process of pytest's, so a test waiting on it shows wall without CPU.

``ab`` compares two source trees on the same tests on a shared machine: base, this tree, base, this tree
(``--pairs`` times), each run its own high-priority session and, where cgroup v1's cpuacct is writable, its own
cgroup, so the CPU counted is the whole process tree's (JVMs and Chromium included, never the PostgreSQL
server's); it writes ``suite-time-ab-<tag>-<UTC time>.json`` with each run's wall, CPU, test-seconds (JUnit)
and load.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROBE_ENV = "MERCIA_SUITE_PROBE"
PYTEST_ARGS = ["-n", "2", "--dist", "loadscope", "--no-loadscope-reorder"]
_probe_file = None


def _descendants_cpu() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # ended between listing and reading
            pass
    return total


def _own_and_waited_cpu() -> tuple[float, float]:
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, waited.ru_utime + waited.ru_stime


def _probe_hook():
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        global _probe_file
        if _probe_file is None:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            _probe_file = open(f"{os.environ[PROBE_ENV]}-{worker}.tsv", "a", buffering=1)
        start, (own0, waited0), live0 = time.time(), _own_and_waited_cpu(), _descendants_cpu()
        yield
        end, (own1, waited1), live1 = time.time(), _own_and_waited_cpu(), _descendants_cpu()
        _probe_file.write(f"{item.nodeid}\t{start:.3f}\t{end - start:.3f}\t{own1 - own0:.3f}\t"
                          f"{waited1 - waited0:.3f}\t{live1 - live0:.3f}\n")

    return pytest_runtest_protocol


if PROBE_ENV in os.environ:  # loaded by pytest as a plugin (``run``)
    pytest_runtest_protocol = _probe_hook()


def load_probe(probe: str) -> list[dict]:
    tests = []
    for path in sorted(Path(probe).parent.glob(Path(probe).name + "-*.tsv")):
        worker = path.stem.rsplit("-", 1)[1]
        for line in path.read_text().splitlines():
            nodeid, start, wall, own, waited, live = line.split("\t")
            # a live child that ends during a test moves its CPU from "live" (a negative step) to "waited"
            tests.append({"test": nodeid, "worker": worker, "start": float(start), "wall": float(wall),
                          "own_cpu": float(own), "waited_child_cpu": float(waited),
                          "live_child_cpu": float(live)})
    return tests


def summarise(tests: list[dict], meta: dict) -> dict:
    begin = min(t["start"] for t in tests)

    def cpu(t: dict) -> float:
        return t["own_cpu"] + t["waited_child_cpu"] + t["live_child_cpu"]

    workers = {}
    for worker in sorted({t["worker"] for t in tests}):
        mine = [t for t in tests if t["worker"] == worker]
        spark = [t for t in mine if "spark" in t["test"].lower()]
        workers[worker] = {
            "tests": len(mine), "test_seconds": round(sum(t["wall"] for t in mine), 1),
            "cpu_seconds": round(sum(cpu(t) for t in mine), 1),
            "ended_after_s": round(max(t["start"] + t["wall"] for t in mine) - begin, 1),
            "spark_scope": {"tests": len(spark), "test_seconds": round(sum(t["wall"] for t in spark), 1),
                            "cpu_seconds": round(sum(cpu(t) for t in spark), 1)}}
    modules: dict[str, dict] = collections.defaultdict(lambda: {"test_seconds": 0.0, "cpu_seconds": 0.0, "tests": 0})
    for t in tests:
        module = modules[t["test"].split("::")[0] + (" [spark]" if "spark" in t["test"].lower() else "")]
        module["test_seconds"] += t["wall"]
        module["cpu_seconds"] += cpu(t)
        module["tests"] += 1
    longest = sorted(tests, key=lambda t: -t["wall"])[:30]
    return {
        **meta,
        "counted": ("per test (setup, call, teardown): wall; the xdist worker's own CPU; CPU of child "
                    "processes it waited for; CPU of its live descendants (JVM, Chromium); not the "
                    "PostgreSQL server's CPU"),
        "tests": len(tests), "workers": workers,
        "longest_tests": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in t.items() if k != "start"}
                          for t in longest],
        "longest_modules": [{"module": name, **{k: round(v, 1) for k, v in figures.items()}}
                            for name, figures in sorted(modules.items(), key=lambda kv: -kv[1]["test_seconds"])[:30]],
    }


def write(tag: str, document: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"suite-time-{tag}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def _enter_priority_group(cgroup: Path | None):
    """For a run's process: a session of its own whose autogroup has the highest priority, in ``cgroup``."""
    def enter() -> None:
        os.setsid()
        try:
            Path("/proc/self/autogroup").write_text("-20")
            os.nice(-20)
        except OSError:  # not root: measured at normal priority
            pass
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    return enter


def timed_run(tree: Path, pytest_args: list[str], paths: list[str]) -> dict:
    """One pytest run of ``paths`` from ``tree`` (its own ``mercia`` and tests): wall, CPU, test-seconds."""
    cgroup = None
    if os.access(CPUACCT, os.W_OK):
        cgroup = CPUACCT / f"suite-time-{os.getpid()}-{time.monotonic_ns()}"
        cgroup.mkdir()
    junit = Path(tempfile.mkstemp(suffix=".xml")[1])
    load_before = os.getloadavg()[0]
    started, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", *pytest_args,
                              f"--junitxml={junit}", *paths], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                             capture_output=True, text=True, preexec_fn=_enter_priority_group(cgroup))
    wall, cpu1 = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    run = {"tree": str(tree), "wall_s": round(wall, 1), "load1_before": load_before, "load1_after": os.getloadavg()[0],
           "waited_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)}
    if cgroup is not None:
        run["tree_cpu_s"] = round(int((cgroup / "cpuacct.usage").read_text()) / 1e9, 1)
        for leftover in (cgroup / "cgroup.procs").read_text().split():  # a JVM that outlived its worker
            (CPUACCT / "cgroup.procs").write_text(leftover)
        cgroup.rmdir()
    cases = list(ET.parse(junit).getroot().iter("testcase")) if junit.stat().st_size else []
    junit.unlink()
    run.update(tests=len(cases), test_seconds=round(sum(float(c.get("time") or 0) for c in cases), 1),
               outcome=outcome.stdout.strip().splitlines()[-1] if outcome.stdout.strip() else outcome.returncode)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["run", "summarise", "ab"])
    parser.add_argument("--tag", required=True, help="a name for this run (say, the commit)")
    parser.add_argument("--probe", help="the TSV prefix (summarise); run writes /tmp/suite-time-<tag>-probe")
    parser.add_argument("--meta", default="{}", help="summarise: JSON of what the run's log says (wall, CPU, load)")
    parser.add_argument("--base", type=Path, help="ab: the other source tree (say, a worktree of the base commit)")
    parser.add_argument("--pairs", type=int, default=2, help="ab: how many base/this-tree pairs")
    parser.add_argument("--pytest-args", default="", help="ab: pytest options before the paths")
    parser.add_argument("paths", nargs="*", help="run: only these test paths (default: the whole suite)")
    args = parser.parse_intermixed_args()
    if args.mode == "ab":
        this_tree, options = Path(__file__).resolve().parents[1], shlex.split(args.pytest_args)
        runs = [{"variant": variant, **timed_run(tree, options, args.paths)}
                for _ in range(args.pairs) for variant, tree in (("base", args.base.resolve()), ("branch", this_tree))]
        print(write(f"ab-{args.tag}", {
            "tag": args.tag, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "command": " ".join(["python -m pytest -p no:randomly -q", args.pytest_args, *args.paths]),
            "counted": ("per run, alternating base and branch: wall; tree_cpu_s, the CPU of every process of the "
                        "run (cgroup cpuacct: JVMs, Chromium, servers it started; not the PostgreSQL server); "
                        "waited_cpu_s, pytest and the children it waited for; test_seconds, the JUnit times "
                        "(setup+call+teardown) summed; the 1-minute load before and after"),
            "runs": runs}))
        return
    meta = {"tag": args.tag, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "command": " ".join(["python -m pytest", *PYTEST_ARGS, "-p benchmarks.suite_time", *args.paths]),
            **json.loads(args.meta)}
    probe = args.probe or f"/tmp/suite-time-{args.tag}-probe"
    if args.mode == "run":
        meta["load_before"] = os.getloadavg()
        started, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        outcome = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_ARGS, "-p", "benchmarks.suite_time", *args.paths],
                                 env={**os.environ, PROBE_ENV: probe}, capture_output=True, text=True)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        meta.update(wall_s=round(time.monotonic() - started, 1), load_after=os.getloadavg(),
                    pytest_and_waited_cpu_s=round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
                    outcome=outcome.stdout.strip().splitlines()[-1] if outcome.stdout.strip() else outcome.returncode)
    print(write(args.tag, summarise(load_probe(probe), meta)))


if __name__ == "__main__":
    main()
