"""Benchmark PROMs scoring and the eCRF's streamed exports.

    .venv/bin/python benchmarks/proms.py [--rows 1000000] [--participants 20000] [--fields 200]

1. EQ-5D-5L index (England 2018 value set) for ``--rows`` random responses: the scoring call on an
   Arrow table of text answers (as read from CSV), and ``mercia proms score`` end to end (read CSV,
   validate, score, write CSV: wall and CPU seconds, and the CPU of ``mercia version`` for the start-up
   share).  Target: 1,000,000 rows in < 2 s.
2. A study of ``--participants`` x ``--fields`` values (numbers, in forms of 50 fields, one event),
   bulk-loaded straight into ``mercia_crf_value`` (data entry is not what is timed), then exported
   as CDISC ODM 1.3.2 and as flat CSV, each in a child process so its peak memory (VmHWM) is its own;
   ``baseline_rss_mb`` is the same child's peak after imports and opening the store, before exporting.

Writes benchmarks/results/proms.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

RESULT = Path(__file__).resolve().parent / "results" / "proms.json"
SCORING_RESULT = RESULT.with_name("proms_scoring.json")
FORM_SIZE = 50
PASSWORD = "benchmark password"


def scoring(rows: int, workdir: Path) -> dict:
    from mercia.proms.scoring import score_eq5d
    from mercia.proms.valuesets import value_set

    rng = np.random.default_rng(42)
    levels = rng.integers(1, 6, (rows, 5)).astype(str)
    table = pa.table({"id": pa.array(np.arange(rows).astype(str)),
                      **{d: pa.array(levels[:, i]) for i, d in enumerate(("MO", "SC", "UA", "PD", "AD"))}})
    value_set("england_2018")                       # load the tables once, outside the timing
    runs = []
    for _ in range(3):                              # a shared machine: report every run and the best
        started = time.perf_counter()
        scored = score_eq5d(table, "england_2018")
        runs.append(time.perf_counter() - started)
        assert not scored.rejections
    in_memory = min(runs)
    source, target = workdir / "eq5d.csv", workdir / "eq5d_scored.csv"
    pa_csv.write_csv(table, source)
    end_to_end, cpu = _timed_cli("proms", "score", "--instrument", "eq5d5l", "--value-set", "england_2018",
                                 "--in", str(source), "--out", str(target))
    _, startup_cpu = _timed_cli("version")
    with target.open() as scored_file:
        assert sum(1 for _ in scored_file) == rows + 1, "the command did not write every row"
    started = time.perf_counter()                  # reading and writing the CSV alone, for comparison
    pa_csv.write_csv(pa_csv.read_csv(source), workdir / "copy.csv")
    io_only = time.perf_counter() - started
    return {"rows": rows, "value_set": "england_2018", "score_seconds": round(in_memory, 3),
            "score_seconds_each_run": [round(r, 3) for r in runs],
            "score_rows_per_second": round(rows / in_memory),
            "cli_end_to_end_seconds": round(end_to_end, 3), "cli_includes": "python start-up, CSV read, score, CSV write",
            "cli_cpu_seconds": round(cpu, 3), "cli_startup_cpu_seconds": round(startup_cpu, 3),
            "cpu_note": "user+sys CPU of the command; wall time on a shared, overloaded machine waits for a core",
            "load_average_1min": os.getloadavg()[0],
            "csv_read_write_only_seconds": round(io_only, 3), "target_seconds": 2.0,
            "target_met_by_scoring": in_memory < 2.0}


def _timed_cli(*args: str) -> tuple[float, float]:
    """Wall seconds and user+sys CPU seconds of one ``mercia`` command in a child process."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # ``python -m mercia.cli`` only imports the module (it has no __main__ guard); call the app itself.
    done = subprocess.run([sys.executable, "-c", "from mercia.cli import app; app(prog_name='mercia')", *args],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": os.getcwd()})
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def build_study(path: Path, participants: int, fields: int) -> dict:
    from mercia.cdm import Store
    from mercia.governance import Governance, Role
    from mercia.trials.crf.dictionary import HEADERS
    from mercia.trials.crf.service import CrfService

    started = time.perf_counter()
    store = Store(str(path))
    gov = Governance(store)
    manager = gov.create_user("bench_dm", "Bench Manager", PASSWORD, [(Role.TRIAL_COORDINATOR, "")])
    crf = CrfService(gov)
    crf.create_study(manager, "big", "Benchmark study")
    names = [f"f{i:03d}" for i in range(fields)]
    forms = [f"form_{i // FORM_SIZE}" for i in range(fields)]
    rows = [["record_id", forms[0], "", "text", "Record ID"] + [""] * 13]
    rows += [[n, f, "", "text", f"Measurement {n}", "", "", "number"] + [""] * 10 for n, f in zip(names[1:], forms[1:], strict=True)]
    with tempfile.SpooledTemporaryFile(mode="w+") as buffer:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([list(HEADERS), *rows])
        buffer.seek(0)
        crf.import_dictionary(manager, "big", buffer.read())
    crf.add_event(manager, "big", "arm_1", "visit_1", "Visit 1", sorted(set(forms)))
    record_ids = np.char.add("R", np.char.zfill(np.arange(participants).astype(str), 6))
    store.insert_arrow("mercia_crf_participant", pa.table({
        "study_id": pa.array(np.ones(participants, dtype=np.int64)), "record_id": pa.array(record_ids),
        "arm": pa.array(["arm_1"] * participants), "person_id": pa.nulls(participants, pa.int64()),
        "start_date": pa.array(["2024-01-01"] * participants), "created_at": pa.array(["2024-01-01T00:00:00Z"] * participants)}))
    seq = gov.audit.record("bench_dm", "crf.benchmark.load", "crf:big", rows=participants * fields)
    rng = np.random.default_rng(7)
    for start in range(0, participants, 2000):
        ids = record_ids[start:start + 2000]
        n = len(ids) * fields
        values = np.round(rng.normal(50, 10, n), 1).astype(str)
        values[np.arange(0, n, fields)] = ids
        store.insert_arrow("mercia_crf_value", pa.table({
            "study_id": pa.array(np.ones(n, dtype=np.int64)), "record_id": pa.array(np.repeat(ids, fields)),
            "event_name": pa.array(["visit_1"] * n), "form_name": pa.array(np.tile(forms, len(ids))),
            "field_name": pa.array(np.tile(names, len(ids))), "value": pa.array(values),
            "saved_by": pa.array(["bench_dm"] * n), "saved_at": pa.array(["2024-01-02T09:00:00.000000Z"] * n),
            "reason": pa.nulls(n, pa.string()), "audit_seq": pa.array(np.full(n, seq, dtype=np.int64))}))
    forms_per = sorted(set(forms))
    k = participants * len(forms_per)
    store.insert_arrow("mercia_crf_form", pa.table({
        "study_id": pa.array(np.ones(k, dtype=np.int64)), "record_id": pa.array(np.repeat(record_ids, len(forms_per))),
        "event_name": pa.array(["visit_1"] * k), "form_name": pa.array(np.tile(forms_per, participants)),
        "status": pa.array(["complete"] * k), "locked": pa.array(np.zeros(k, dtype=bool)),
        "deleted": pa.array(np.zeros(k, dtype=bool)), **{c: pa.nulls(k, pa.string()) for c in (
            "signed_by", "signed_name", "signed_at", "signature_meaning", "signature_voided_at",
            "signature_voided_by", "signature_void_reason")},
        "updated_at": pa.array(["2024-01-02T09:00:00Z"] * k)}))
    count = store.query_one("SELECT COUNT(*) FROM mercia_crf_value")
    store.close()
    return {"participants": participants, "fields": fields, "values": count,
            "build_seconds": round(time.perf_counter() - started, 1)}


def export_child(db: str, kind: str, out: str) -> None:
    """Run in a child process: one export, timed, printing JSON."""
    from mercia.cdm import Store
    from mercia.governance import Governance
    from mercia.trials.crf.export import write_csv, write_odm
    from mercia.trials.crf.service import CrfService

    gov = Governance(Store(db))
    crf = CrfService(gov)
    user = gov.user_by_name("bench_dm")
    baseline = _peak_rss_mb()
    started = time.perf_counter()
    if kind == "odm":
        with open(out, "wb") as f:
            n = write_odm(crf, user, "big", f)
    else:
        with open(out, "w", newline="") as f:
            n = write_csv(crf, user, "big", f)
    seconds = time.perf_counter() - started
    print(json.dumps({"count": n, "seconds": round(seconds, 1), "bytes": os.path.getsize(out),
                      "baseline_rss_mb": baseline, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> int:
    """This process's own peak resident memory (VmHWM): ``getrusage``'s ru_maxrss would report the
    parent's peak in a child started by fork and exec."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return round(kb / 1024)


def export(db: Path, kind: str, workdir: Path) -> dict:
    out = workdir / ("big.xml" if kind == "odm" else "big.csv")
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--db", str(db), "--out", str(out)],
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if kind == "odm":
        result["counted"] = "ItemData elements written (each with its AuditRecord)"
        result["values_per_second"] = round(result["count"] / result["seconds"])
    else:
        result["counted"] = "participant-event rows written"
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=20_000)
    parser.add_argument("--fields", type=int, default=200)
    parser.add_argument("--scoring-only", action="store_true",
                        help="time scoring and the score command only; writes results/proms_scoring.json")
    parser.add_argument("--child")
    parser.add_argument("--db")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        export_child(args.db, args.child, args.out)
        return
    import mercia.governance.service as governance_service
    from argon2 import PasswordHasher

    governance_service._hasher = PasswordHasher(time_cost=1, memory_cost=1024)   # one throwaway user
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "platform": platform.platform()},
                  "eq5d_scoring": scoring(args.rows, workdir)}
        print(json.dumps(report["eq5d_scoring"], indent=2), flush=True)
        if args.scoring_only:
            SCORING_RESULT.parent.mkdir(parents=True, exist_ok=True)
            SCORING_RESULT.write_text(json.dumps(report, indent=2) + "\n")
            return
        db = workdir / "crf.duckdb"
        report["study"] = build_study(db, args.participants, args.fields)
        print(json.dumps(report["study"]), flush=True)
        report["odm_export"] = export(db, "odm", workdir)
        print(json.dumps(report["odm_export"]), flush=True)
        report["flat_csv_export"] = export(db, "flat", workdir)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
