"""A FHIR reading worker: ``python -m mercia.ingest.fhir_worker < TASK`` reads the files a parent load gives
it (``fhir.read_files``' arguments as a JSON array on stdin) and answers with their ``FileRead``s, pickled on stdout."""

import pickle
import sys
from pathlib import Path

import orjson

from mercia.ingest.fhir import read_files

if __name__ == "__main__":
    answer = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed while reading goes to stderr, never into the pickled answer
    extract, extract_date, files, resource_files = orjson.loads(sys.stdin.buffer.read())
    parts = read_files(extract, extract_date, [(index, Path(file)) for index, file in files], resource_files)
    answer.write(pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL))
