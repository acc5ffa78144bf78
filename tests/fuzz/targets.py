"""Fuzz targets: one function per reader, fed arbitrary bytes.

A target passes an input when the reader either reads it (rejects included) or raises the reader's
own documented error (``ALLOWED``); any other exception is a finding.  The targets go through the
readers' public entry points on a file in a scratch directory, as ``mercia ingest`` does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus")
_SCRATCH = Path(tempfile.mkdtemp(prefix="mercia-fuzz-"))

# The mapped-CSV target reads two files: the input is split on the first form feed (persons, events).
CSV_MAPPING = {
    "date_format": "%d/%m/%Y",
    "persons": [{"source": "patients.csv", "record": "id", "person_ref": "id", "nhs_number": "nhs",
                 "birth_date": "dob", "sex": {"column": "sex", "map": {"M": "male", "F": "female"}}}],
    "events": [{"source": "events.csv", "kind": "Measurement", "record": {"columns": ["id", "code"]},
                "person_ref": "id", "code": {"column": "code", "vocabulary": "LOINC"}, "start": "date",
                "value_number": "value", "unit": "unit"}],
}


def _write(name: str, data: bytes) -> Path:
    path = _SCRATCH / name
    path.write_bytes(data)
    return path


def fhir_ndjson(data: bytes) -> None:
    from mercia.ingest.fhir import read_fhir
    read_fhir(_write("Fuzz.ndjson", data))


def fhir_bundle(data: bytes) -> None:
    from mercia.ingest.fhir import read_fhir
    read_fhir(_write("bundle.json", data))


def hl7v2(data: bytes) -> None:
    from mercia.ingest.hl7v2 import read_hl7v2
    read_hl7v2(_write("fuzz.hl7", data))


def mapped_csv(data: bytes) -> None:
    from mercia.ingest.csv import CsvReader
    folder = _SCRATCH / "csv"
    folder.mkdir(exist_ok=True)
    persons, _, events = data.partition(b"\f")
    (folder / "patients.csv").write_bytes(persons)
    (folder / "events.csv").write_bytes(events)
    CsvReader(CSV_MAPPING, "fuzz").read(folder)


def phenopacket(data: bytes) -> None:
    from mercia.ingest.genomics import read_phenopackets
    read_phenopackets(_write("case.json", data))


def circe(data: bytes) -> None:
    from mercia.cohorts import CohortExpression
    from mercia.cohorts.compiler import compile_cohort
    compile_cohort(CohortExpression.from_json(data), 1, "duckdb")


TARGETS: dict[str, Callable[[bytes], None]] = {f.__name__: f for f in (
    fhir_ndjson, fhir_bundle, hl7v2, mapped_csv, phenopacket, circe)}


def allowed(target: str) -> tuple[type[BaseException], ...]:
    """The documented errors of each reader (a whole input it cannot read at all)."""
    from mercia.cohorts import CohortDefinitionError
    from mercia.ingest.csv import MappingError
    from mercia.ingest.fhir import FhirError
    return {"fhir_ndjson": (FhirError,), "fhir_bundle": (FhirError,), "hl7v2": (), "mapped_csv": (MappingError,),
            "phenopacket": (), "circe": (CohortDefinitionError,)}[target]


def checked(target: str) -> Callable[[bytes], None]:
    """The target with its documented errors swallowed: what is left propagating is a finding."""
    function, ok = TARGETS[target], allowed(target)

    def run(data: bytes) -> None:
        try:
            function(data)
        except ok:
            pass
    return run


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / target).iterdir()) if p.is_file()]
