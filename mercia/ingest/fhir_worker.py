"""A FHIR reading worker, and how a load starts one.

``python -m mercia.ingest.fhir_worker`` imports the reader, then reads on stdin a JSON header line (extract,
extract date, number of resource files) and one unit per line (file number, path, piece; see
``fhir.read_files``); it answers each with its ``FileRead``, pickled on stdout after ``fhir.WORKER_ANSWER``
and its length (8 bytes).  Stdin closed before the header ends it quietly: a worker started early
(``start_early``) that the load did not need.

This module imports only the standard library, so a command-line load can start its workers before its own
imports (DuckDB, Arrow, the mapping modules: ~0.4 s), and they import at the same time on the other CPU.
"""

import atexit
import os
import pickle
import subprocess
import sys
from pathlib import Path

# Processes reading a load's files: ``MERCIA_INGEST_PROCESSES`` (1 reads in the load's own process), else one
# per CPU with at least MIN_BYTES_PER_PROCESS of files each (starting a worker costs ~0.2 CPU-s of imports).
PROCESSES_ENV = "MERCIA_INGEST_PROCESSES"
MIN_BYTES_PER_PROCESS = 4 * 2**20

_started_early: list[subprocess.Popen] = []


def processes_for(size: int) -> int:
    """How many processes read ``size`` bytes of files (see PROCESSES_ENV)."""
    setting = os.environ.get(PROCESSES_ENV)
    if setting is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(cpus, size // MIN_BYTES_PER_PROCESS))
    if not setting.isdigit() or int(setting) < 1:
        raise ValueError(f"{PROCESSES_ENV} must be a whole number of processes (1 reads in the load's own "
                         f"process), got {setting!r}")
    return int(setting)


def launch() -> subprocess.Popen:
    """A new worker interpreter (not a fork: the parent may hold DuckDB's threads), started as a module so a
    caller's own script is never re-imported; it waits for its header once it has imported the reader."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # -P: the working directory is not put first on sys.path, where a ``mercia`` folder in it (another
    # checkout) would be imported instead of this package
    return subprocess.Popen([sys.executable, "-P", "-m", "mercia.ingest.fhir_worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def start_early(path: Path) -> None:
    """Start now the workers a read of ``path`` will want (by its files' bytes), for the next read to take
    (``take_early``) instead of starting its own once the caller has imported everything."""
    files = [path] if path.is_file() else [Path(root, name) for root, _, names in os.walk(path) for name in names]
    count = processes_for(sum(file.stat().st_size for file in files)) - 1
    if count > 0 and not _started_early:
        atexit.register(dismiss_early)
    _started_early.extend(launch() for _ in range(count))


def take_early() -> subprocess.Popen | None:
    """A worker ``start_early`` started, if one is left."""
    return _started_early.pop(0) if _started_early else None


def dismiss_early() -> None:
    """End the early workers no read took (their stdin closed before any header)."""
    while _started_early:
        worker = _started_early.pop()
        worker.communicate()


class _WithoutPandasOrNumpy:
    """Refuses to import pandas and numpy: pyarrow imports pandas on its first conversion only to ask whether a
    value is a DataFrame (~0.24 CPU-s per worker) and numpy when it is imported (~0.05 CPU-s), and works without
    either (numpy is optional since pyarrow 16); nothing a worker does needs them."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pandas", "numpy"):
            raise ImportError(f"a FHIR reading worker does not use pandas or numpy (asked for {name})")


if __name__ == "__main__":
    sys.meta_path.insert(0, _WithoutPandasOrNumpy())
    import orjson

    from mercia.ingest.fhir import WORKER_ANSWER, read_files

    answer = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed while reading goes to stderr, never into the pickled answers
    header = sys.stdin.buffer.readline()
    if not header:
        sys.exit(0)
    extract, extract_date, resource_files = orjson.loads(header)
    for line in sys.stdin.buffer:
        index, file, piece = orjson.loads(line)
        [part] = read_files(extract, extract_date, [(index, Path(file), tuple(piece))], resource_files)
        data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        answer.write(WORKER_ANSWER + len(data).to_bytes(8, "little") + data)
        answer.flush()
