"""A FHIR reading worker: ``python -m mercia.ingest.fhir_worker`` reads, on stdin, a JSON header line
(extract, extract date, number of resource files) and then one unit per line (file number, path, piece; see
``fhir.read_files``); it answers each with its ``FileRead``, pickled on stdout after ``fhir.WORKER_ANSWER``
and its length (8 bytes).  ``Refusing``/``refusing`` keep pandas (and in a worker numpy) out of a FHIR load's
processes.  Standard library only, so that importing it costs a load nothing."""

import pickle
import sys
from contextlib import contextmanager
from pathlib import Path


class Refusing:
    """A meta-path finder refusing to import ``packages`` (and their modules).  pyarrow imports pandas on its
    first conversion only to ask whether a value is a DataFrame (~0.13-0.24 CPU-s), and numpy when it is
    imported (~0.05 CPU-s); it works without either (numpy is optional since pyarrow 16).  A reading worker
    needs neither, and a FHIR load's own process does not need pandas."""

    def __init__(self, *packages: str):
        self.packages = frozenset(packages)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.packages:
            raise ImportError(f"a FHIR load does not use {name.partition('.')[0]} (asked for {name})")


@contextmanager
def refusing(*packages: str):
    """``Refusing`` installed for the block, unless one of ``packages`` is already imported (a test process, a
    server): refusing only what nothing has imported, so no import that worked before fails."""
    if any(package in sys.modules for package in packages):
        yield
        return
    finder = Refusing(*packages)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


if __name__ == "__main__":
    sys.meta_path.insert(0, Refusing("pandas", "numpy"))
    import orjson

    from mercia.ingest.fhir import WORKER_ANSWER, read_files

    answer = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed while reading goes to stderr, never into the pickled answers
    extract, extract_date, resource_files = orjson.loads(sys.stdin.buffer.readline())
    for line in sys.stdin.buffer:
        index, file, piece = orjson.loads(line)
        [part] = read_files(extract, extract_date, [(index, Path(file), tuple(piece))], resource_files)
        data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        answer.write(WORKER_ANSWER + len(data).to_bytes(8, "little") + data)
        answer.flush()
