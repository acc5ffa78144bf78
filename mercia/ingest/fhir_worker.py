"""A FHIR reading worker: ``python -m mercia.ingest.fhir_worker`` reads, on stdin, a JSON header line
(extract, extract date, number of resource files) and then one unit per line (file number, path, piece; see
``fhir.read_files``); it answers each with its ``FileRead``, pickled on stdout after ``fhir.WORKER_ANSWER``
and its length (8 bytes)."""

import pickle
import sys
from pathlib import Path


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
    extract, extract_date, resource_files = orjson.loads(sys.stdin.buffer.readline())
    for line in sys.stdin.buffer:
        index, file, piece = orjson.loads(line)
        [part] = read_files(extract, extract_date, [(index, Path(file), tuple(piece))], resource_files)
        data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        answer.write(WORKER_ANSWER + len(data).to_bytes(8, "little") + data)
        answer.flush()
