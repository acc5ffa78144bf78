"""FHIR R4 reader: bulk-export NDJSON (plain or gzip, with or without manifest), Bundles and single
resources, streamed with orjson into staged columns.

References are resolved the three ways real feeds use them: ``urn:uuid:`` (through the Bundle's
``fullUrl``; Synthea's NDJSON keeps them and uses the uuid as resource id), ``Type/id`` (also
absolute URLs) and conditional ``Patient?identifier=system|value``, which is resolved against the
Patients read in the same load, or later against the pseudonymised NHS number.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip

from mercia.ingest.staging import EVENT_SCHEMA, STAGED_TABLES, Columns, Staged, content_hash

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEMS = ("https://fhir.nhs.uk/Id/ods-organization-code", "https://fhir.nhs.uk/Id/ods-site-code")
ETHNIC_CATEGORY_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"

# FHIR code system URI -> OMOP vocabulary_id (OHDSI vocabulary table), in order of preference
# when a CodeableConcept carries several codings.
VOCABULARIES = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "https://dmd.nhs.uk": "dm+d",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-uk": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://unitsofmeasure.org": "UCUM",
    "http://purl.obolibrary.org/obo/hp.owl": "HPO",
    "http://dicom.nema.org/resources/ontology/DCM": "DICOM",  # imaging modalities (no OMOP mapping)
}
_PREFERENCE = {v: i for i, v in enumerate(VOCABULARIES.values())}


_ID = re.compile(rb'"id":"([^"]+)"')


_INVALID = object()  # a line that is not JSON (already rejected)


class FhirError(Exception):
    """A file that is not FHIR JSON at all (as opposed to one bad resource, which is a reject)."""


# -- shapes ------------------------------------------------------------------------------------
# The JSON shape of every FHIR R4 element this reader touches: "str", "num", "bool", a datatype
# below, or [shape] for a repeating element.  A resource is checked against its shape before it is
# mapped, so a wrongly typed element (``"identifier": "x"``) is a reject naming the element, never a
# crash half-way through the load.  Elements the reader does not touch are not checked.
_DATATYPES: dict[str, dict] = {
    "Coding": {"system": "str", "code": "str"},
    "CodeableConcept": {"coding": ["Coding"]},
    "Identifier": {"system": "str", "value": "str"},
    "Reference": {"reference": "str", "identifier": "Identifier"},
    "Period": {"start": "str", "end": "str"},
    "Quantity": {"value": "num", "unit": "str", "code": "str"},
    "ReferenceRange": {"low": "Quantity", "high": "Quantity"},
    "HumanName": {"use": "str", "family": "str", "given": ["str"]},
    "Address": {"use": "str", "postalCode": "str"},
    "Extension": {"url": "str", "valueCodeableConcept": "CodeableConcept", "valueCoding": "Coding",
                  "extension": ["Extension"]},
    "ObservationValue": {"code": "CodeableConcept", "valueQuantity": "Quantity",
                         "valueCodeableConcept": "CodeableConcept", "valueInteger": "num", "valueDecimal": "num",
                         "referenceRange": ["ReferenceRange"]},
    "Contained": {"resourceType": "str", "id": "str", "code": "CodeableConcept"},
    "Collection": {"collectedDateTime": "str", "collectedPeriod": "Period"},
    "ImagingSeries": {"modality": "Coding", "bodySite": "Coding", "started": "str"},
    "UdiCarrier": {"deviceIdentifier": "str"},
    "Money": {"value": "num", "currency": "str"},
    "Adjudication": {"category": "CodeableConcept", "amount": "Money"},
    "ClaimItem": {"encounter": ["Reference"], "adjudication": ["Adjudication"]},
    "Payment": {"amount": "Money"},
    "Attachment": {"title": "str"},
    "DocumentContent": {"attachment": "Attachment"},
    "DocumentContext": {"encounter": ["Reference"], "period": "Period"},
    "Item": {"linkId": "str", "code": ["Coding"], "item": ["Item"], "answer": ["Answer"]},
    "BundleEntry": {"fullUrl": "str", "resource": "Resource"},
    "Resource": {"resourceType": "str", "id": "str"},
    "Manifest": {"transactionTime": "str", "output": ["ManifestOutput"], "deleted": ["ManifestOutput"]},
    "ManifestOutput": {"url": "str"},
    "Meta": {"lastUpdated": "str", "versionId": "str"},
    "Answer": {"valueCoding": "Coding", "valueInteger": "num", "valueDecimal": "num", "valueBoolean": "bool",
               "item": ["Item"]},
}
_EVENT = {"subject": "Reference", "patient": "Reference", "encounter": "Reference", "context": "Reference"}
_MEDICATION = {**_EVENT, "medicationCodeableConcept": "CodeableConcept", "medicationReference": "Reference",
               "contained": ["Contained"]}
_RESOURCE_ELEMENTS: dict[str, dict] = {
    "Patient": {"identifier": ["Identifier"], "name": ["HumanName"], "address": ["Address"],
                "extension": ["Extension"], "birthDate": "str", "gender": "str", "deceasedDateTime": "str"},
    "Organization": {"identifier": ["Identifier"], "name": "str"},
    "Location": {"identifier": ["Identifier"], "name": "str"},
    "Practitioner": {},
    "Medication": {"code": "CodeableConcept"},
    "Encounter": {**_EVENT, "period": "Period", "class": "Coding", "serviceProvider": "Reference"},
    "EpisodeOfCare": {**_EVENT, "period": "Period"},
    "Condition": {**_EVENT, "code": "CodeableConcept", "onsetDateTime": "str", "onsetPeriod": "Period",
                  "recordedDate": "str", "abatementDateTime": "str", "abatementPeriod": "Period"},
    "Procedure": {**_EVENT, "code": "CodeableConcept", "performedDateTime": "str", "performedPeriod": "Period"},
    "Observation": {**_EVENT, **_DATATYPES["ObservationValue"], "effectiveDateTime": "str",
                    "effectivePeriod": "Period", "effectiveInstant": "str", "issued": "str",
                    "category": ["CodeableConcept"], "component": ["ObservationValue"]},
    "DiagnosticReport": {**_EVENT, "code": "CodeableConcept", "effectiveDateTime": "str",
                         "effectivePeriod": "Period", "issued": "str"},
    "MedicationRequest": {**_MEDICATION, "authoredOn": "str"},
    "MedicationStatement": {**_MEDICATION, "effectiveDateTime": "str", "effectivePeriod": "Period",
                            "dateAsserted": "str"},
    "MedicationDispense": {**_MEDICATION, "quantity": "Quantity", "daysSupply": "Quantity",
                           "whenHandedOver": "str", "whenPrepared": "str"},
    "MedicationAdministration": {**_MEDICATION, "effectiveDateTime": "str", "effectivePeriod": "Period"},
    "Immunization": {**_EVENT, "status": "str", "vaccineCode": "CodeableConcept", "occurrenceDateTime": "str",
                     "recorded": "str"},
    "AllergyIntolerance": {**_EVENT, "code": "CodeableConcept", "onsetDateTime": "str", "onsetPeriod": "Period",
                           "recordedDate": "str"},
    "Specimen": {**_EVENT, "type": "CodeableConcept", "collection": "Collection", "receivedTime": "str"},
    "QuestionnaireResponse": {**_EVENT, "authored": "str", "questionnaire": "str", "item": ["Item"]},
    "CarePlan": {**_EVENT, "category": ["CodeableConcept"], "period": "Period"},
    "Goal": {**_EVENT, "description": "CodeableConcept", "startDate": "str", "statusDate": "str"},
    "ImagingStudy": {**_EVENT, "started": "str", "procedureCode": ["CodeableConcept"], "series": ["ImagingSeries"]},
    "Device": {"type": "CodeableConcept", "udiCarrier": ["UdiCarrier"], "lotNumber": "str", "serialNumber": "str"},
    "DeviceUseStatement": {**_EVENT, "device": "Reference", "timingDateTime": "str", "timingPeriod": "Period",
                           "recordedOn": "str"},
    "DeviceRequest": {**_EVENT, "status": "str", "codeCodeableConcept": "CodeableConcept", "codeReference": "Reference",
                      "occurrenceDateTime": "str", "occurrencePeriod": "Period", "authoredOn": "str"},
    "Claim": {"patient": "Reference", "billablePeriod": "Period", "created": "str", "total": "Money",
              "item": ["ClaimItem"]},
    "ExplanationOfBenefit": {"patient": "Reference", "billablePeriod": "Period", "created": "str", "claim": "Reference",
                             "total": ["Adjudication"], "payment": "Payment", "item": ["ClaimItem"]},
    "DocumentReference": {**_EVENT, "type": "CodeableConcept", "category": ["CodeableConcept"], "date": "str",
                          "description": "str", "content": ["DocumentContent"], "context": "DocumentContext"},
}
# every resource carries meta (lastUpdated, versionId): which of two versions of a record is newer
_RESOURCES = {kind: {"meta": "Meta", **elements} for kind, elements in _RESOURCE_ELEMENTS.items()}
_SUPPORTED = set(_RESOURCES)
# adjudication categories that are the patient's share of a bill (Blue Button line variables, FHIR R4 codes)
_PATIENT_SHARE = {"line_coinsrnc_amt", "line_bene_ptb_ddctbl_amt", "copay", "deductible"}
_NOT_AN_OBJECT = "a FHIR resource is a JSON object, got {}"
_MAX_NUMBER = 1e15  # larger magnitudes are not clinical values and overflow integer columns
_PRIMITIVES = {"str": "a string", "num": "a number", "bool": "true or false"}  # what each is, in a reject
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def shape_problem(value, shape, path: str) -> tuple[str, str] | None:
    """(element path, reason) for the first element of ``value`` that does not have ``shape``."""
    problem = _checker(shape)(value)
    return (f"{path}{problem[0]}".removeprefix("."), problem[1]) if problem else None


# A shape is checked by a Python function written out from it once (the checks run on every element of every
# resource, and loops and type tests written out do them without a function call per element: over synthea's
# five largest types 0.77 -> 0.55 CPU s against one closure per datatype, ExplanationOfBenefit's nested
# adjudications 1.8x).  It returns None, or the failing element's path below the value checked
# and the reason.  Elements are checked in the shape's order (absent or null ones, which FHIR forbids but
# feeds send, are not), array items in theirs: the problem named is the first in the shape whatever order
# the JSON gives the members in.  A datatype nested in itself (Extension, Item) calls its own function.
Check = Callable[[object], "tuple[str, str] | None"]
_CHECKS: dict[str, Check] = {}


def _got(value) -> str:
    return _JSON_TYPES.get(type(value), "a value")


def _checker(shape, name: str | None = None) -> Check:
    """The check of ``shape``: "str", "num", "bool", a datatype's name, [shape], or a dict of a resource's
    elements (for a value already known to be an object; ``name`` names it in tracebacks and profiles)."""
    key = repr(shape)
    if key not in _CHECKS:
        written: dict[str, Check] = {}
        _write_check(shape, name, written)
        # all at once: another thread (a read-ahead, a second load) never finds a check before those it calls
        _CHECKS.update(written)
    return _CHECKS[key]


def _write_check(shape, name: str | None, written: dict[str, Check]) -> None:
    """The check of ``shape`` into ``written``, then those of the datatypes it calls that are not written yet."""
    key = repr(shape)
    writer = _CheckWriter()
    if isinstance(shape, dict):
        writer.fields(shape, "value", "", ())
    else:
        writer.element(shape, "value", "", (), optional=False)
    source = "def check(value):\n" + "\n".join(writer.lines) + "\n    return None\n"
    namespace = {"_got": _got, "_CHECKS": _CHECKS}
    # our own source, written from the shapes above (no input reaches it)
    exec(compile(source, f"<shape check {name or key}>", "exec"), namespace)
    written[key] = namespace["check"]
    for datatype in writer.called:  # after this one: a datatype may call itself
        if repr(datatype) not in _CHECKS and repr(datatype) not in written:
            _write_check(datatype, None, written)


class _CheckWriter:
    """Writes the statements of one shape check (``_checker``)."""

    def __init__(self):
        self.lines: list[str] = []
        self.called: set[str] = set()
        self.names = 0

    def _name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def _fail(self, indent: str, path: str, reason: str) -> None:
        self.lines.append(f"{indent}    return f{path!r}, {reason}")

    def fields(self, fields: dict, var: str, path: str, expanding: tuple, depth: int = 1) -> None:
        """``var`` is an object: each element of ``fields`` it has."""
        for name, shape in fields.items():
            element = self._name("v")
            self.lines.append(f"{'    ' * depth}{element} = {var}.get({name!r})")
            self.element(shape, element, f"{path}.{name}", expanding, optional=True, depth=depth)

    def element(self, shape, var: str, path: str, expanding: tuple, optional: bool, depth: int = 1) -> None:
        """``var`` has ``shape`` (or is None, when ``optional``); ``expanding``: the datatypes written out
        around it, which call their function instead of being written out again."""
        if optional:
            self.lines.append(f"{'    ' * depth}if {var} is not None:")
            depth += 1
        indent = "    " * depth
        if isinstance(shape, list):
            self.lines.append(f"{indent}if not isinstance({var}, list):")
            self._fail(indent, path, f'f"expected an array, got {{_got({var})}}"')
            index, item = self._name("i"), self._name("v")
            self.lines.append(f"{indent}for {index}, {item} in enumerate({var}):")
            self.element(shape[0], item, f"{path}[{{{index}}}]", expanding, optional=False, depth=depth + 1)
        elif shape in _PRIMITIVES:
            expected = _PRIMITIVES[shape]
            wrong = {"str": f"not isinstance({var}, str)", "bool": f"not isinstance({var}, bool)",
                     "num": f"not isinstance({var}, int | float) or isinstance({var}, bool)"}[shape]
            self.lines.append(f"{indent}if {wrong}:")
            self._fail(indent, path, f'f"expected {expected}, got {{_got({var})}}"')
            if shape == "num":
                self.lines.append(f"{indent}if not abs({var}) <= {_MAX_NUMBER!r}:")
                self._fail(indent, path, repr(f"number out of range (at most {_MAX_NUMBER:g} in magnitude)"))
        elif shape in expanding:
            self.called.add(shape)
            problem = self._name("p")
            self.lines.append(f"{indent}{problem} = _CHECKS[{repr(shape)!r}]({var})")
            self.lines.append(f"{indent}if {problem}:")
            self.lines.append(f"{indent}    return f{path!r} + {problem}[0], {problem}[1]")
        else:
            self.lines.append(f"{indent}if type({var}) is not dict:")
            self._fail(indent, path, f'f"expected a {shape} object, got {{_got({var})}}"')
            self.fields(_DATATYPES[shape], var, path, (*expanding, shape), depth)


_RESOURCE_CHECKS: dict[str, Check] = {}  # by resource type: a resource's shape is not repr'd for each resource


def resource_check(kind: str) -> Check:
    """The shape check of a resource type (an object), written out at its first use: a reading worker
    writes only those of the types it reads."""
    if kind not in _RESOURCE_CHECKS:
        _RESOURCE_CHECKS[kind] = _checker(_RESOURCES[kind], kind)
    return _RESOURCE_CHECKS[kind]


def best_coding(concept: dict | None) -> tuple[str | None, str | None]:
    """(vocabulary, code) of the preferred coding; unknown systems keep their URI as vocabulary."""
    if not concept:
        return None, None
    codings = concept.get("coding") or []
    best, rank = None, len(_PREFERENCE) + 1
    for coding in codings:
        vocab = VOCABULARIES.get(coding.get("system"), coding.get("system"))
        r = _PREFERENCE.get(vocab, len(_PREFERENCE))
        if coding.get("code") and r < rank:
            best, rank = (vocab, coding["code"]), r
    return best or (None, None)


def _reference_id(ref: dict | None, fullurls: dict[str, str]) -> str | None:
    """The local id a reference points at ('Type/id', absolute URL, urn:uuid:, conditional)."""
    if not ref:
        return None
    target = ref.get("reference")
    if not target:
        ident = ref.get("identifier")
        if ident and ident.get("system") == NHS_NUMBER_SYSTEM and ident.get("value"):
            return f"?{NHS_NUMBER_SYSTEM}|{ident['value']}"
        return None
    if target.startswith("urn:uuid:"):
        return fullurls.get(target, target[9:])
    if "?" in target:
        query = target.split("?", 1)[1]
        return "?" + query.split("identifier=", 1)[1] if "identifier=" in query else "?" + query
    if target in fullurls:
        return fullurls[target]
    return target.rstrip("/").rsplit("/", 1)[-1] if "/" in target else target


def _date(resource: dict, *names: str) -> str | None:
    for name in names:
        value = resource.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            start = value.get("start") or value.get("end")
            if start:
                return start
    return None


def _end(resource: dict, *names: str) -> str | None:
    for name in names:
        value = resource.get(name)
        if isinstance(value, dict) and value.get("end"):
            return value["end"]
        if isinstance(value, str):
            return value
    return None


# Reading order of resource versions (Staged.versions.seq): file number ``i`` (resource files in the order
# read, then deleted files) numbers its lines, or its resources when it is one resource or Bundle, from
# ``i * FILE_SEQ``, so a file's numbers do not depend on the files read before it (or in which process).
FILE_SEQ = 1 << 32
# An NDJSON resource file may be read in pieces by several processes: piece [lo, hi) of PIECE_UNITS is the
# lines starting in that fraction of its (decompressed) bytes, numbered as in the whole file.
PIECE_UNITS = 1 << 20
WHOLE = (0, PIECE_UNITS)
# A reading worker that has not answered a unit after WORKER_BASE_SECONDS plus WORKER_SECONDS_PER_MB per MB of
# its file on disk is stopped and the read fails (a hung worker must not hold the load forever).
WORKER_BASE_SECONDS = 60.0
WORKER_SECONDS_PER_MB = 30.0
# What starts each answer of a reading worker on its stdout, before the answer's length (8 bytes): anything
# else there (a stray write to the worker's stdout) fails the read at once instead of being taken for a length.
WORKER_ANSWER = b"MERCIA\x00A"
# Processes reading a load's files: ``MERCIA_INGEST_PROCESSES`` (1 reads in the load's own process), else one
# per CPU with at least MIN_BYTES_PER_PROCESS of files each (starting a worker costs ~0.2 CPU-s of imports).
PROCESSES_ENV = "MERCIA_INGEST_PROCESSES"
MIN_BYTES_PER_PROCESS = 4 * 2**20


def reading_processes(files: list[Path]) -> int:
    """How many processes read ``files`` (see PROCESSES_ENV)."""
    setting = os.environ.get(PROCESSES_ENV)
    if setting is None:
        size = sum(file.stat().st_size for file in files)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(cpus, size // MIN_BYTES_PER_PROCESS))
    if not setting.isdigit() or int(setting) < 1:
        raise ValueError(f"{PROCESSES_ENV} must be a whole number of processes (1 reads in the load's own "
                         f"process), got {setting!r}")
    return int(setting)


@dataclass
class FileRead:
    """What one file (or piece of one) staged, as Arrow tables, with the catalogue entries (Medication,
    Device, Patient identifiers) it defined: a worker sends it back whole, the reader merges them in order."""

    index: int
    piece: tuple[int, int]
    read: int
    tables: dict[str, pa.Table]
    medications: dict[str, tuple[str | None, str | None]]
    devices: dict[str, dict]
    patient_identifiers: dict[str, str]


class FhirReader:
    """Streams resources into a ``Staged``.  ``read_path`` reads each file with a reader of its own (in
    this process or a worker) and merges them in file order, then resolves what needed every file:
    Medication and Device references and conditional Patient references."""

    def __init__(self, extract: str, extract_date: str | None = None):
        self.staged = Staged(extract)
        self.medications: dict[str, tuple[str | None, str | None]] = {}
        self.devices: dict[str, dict] = {}  # Device id -> its type coding, UDI and production id
        self.patient_identifiers: dict[str, str] = {}
        self.extract_date = extract_date  # the bulk export's transactionTime: ends open registrations
        self.deleted_files: list[Path] = []  # a bulk export's deleted/ files, read after the resources
        # reading order (FILE_SEQ): an NDJSON file's lines are numbered from ``line_base``; a file that is
        # one resource or Bundle (or a resource handed to ``read_resource``) takes ``next_seq`` per resource
        self.line_base: int | None = None
        self.next_seq = 0

    # -- files -----------------------------------------------------------------------------
    def read_path(self, path: Path, processes: int | None = None) -> Staged:
        """Every file under ``path``, read by up to ``processes`` processes (default ``reading_processes``);
        the staged rows are the same, in the same order, however many read them."""
        files = self.files(Path(path))
        every_file = [*files, *self.deleted_files]
        for part in _read_in_processes(self.staged.extract, self.extract_date, list(enumerate(every_file)),
                                       len(files), processes or reading_processes(every_file)):
            self._merge(part)
        self._resolve_deferred()
        return self.staged

    def _merge(self, part: FileRead) -> None:
        self.staged.read += part.read
        for name, table in part.tables.items():
            getattr(self.staged, name).add_table(table)
        self.medications.update(part.medications)
        self.devices.update(part.devices)
        self.patient_identifiers.update(part.patient_identifiers)

    def file_read(self, index: int, piece: tuple[int, int] = WHOLE) -> FileRead:
        """This reader's staged rows as one file's (or piece's) ``FileRead``."""
        return FileRead(index, piece, self.staged.read,
                        {name: getattr(self.staged, name).table() for name in STAGED_TABLES},
                        self.medications, self.devices, self.patient_identifiers)

    def _json_line(self, line: bytes, line_no: int, file_name: str):
        """One NDJSON line parsed, or ``_INVALID`` after rejecting it as invalid JSON."""
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.staged.read += 1
            self.staged.reject(f"{file_name}:{line_no}", None, f"not valid JSON: {exc.msg}", line_no)
            return _INVALID

    def read_deleted(self, file: Path, index: int = 0) -> None:
        """A bulk export's ``deleted`` file: Bundles of DELETE requests (``Type/id``), one per line.
        Each names a record whose earlier rows the load removes."""
        data = self._file_bytes(file)
        if data is None:
            return
        for line_no, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            bundle = self._json_line(line, line_no, file.name)
            if bundle is _INVALID:
                continue
            entries = bundle.get("entry") if isinstance(bundle, dict) else None
            for entry in entries if isinstance(entries, list) else [None]:
                self.staged.read += 1
                request = entry.get("request") if isinstance(entry, dict) else None
                url = request.get("url") if isinstance(request, dict) else None
                if not isinstance(url, str) or request.get("method") != "DELETE" or url.count("/") < 1:
                    self.staged.reject(f"{file.name}:{line_no}", "entry.request",
                                       "a deleted-file entry must be a DELETE request for Type/id", line_no)
                    continue
                kind, rid = url.split("?", 1)[0].rstrip("/").rsplit("/", 2)[-2:]
                record, digest = f"{kind}/{rid}", content_hash(f"DELETE {url}".encode())
                self.staged.removals.add(record=record, line=line_no, field="request", record_hash=digest,
                                         reason="deleted at the source (bulk export deleted file)")
                self.staged.versions.add(record=record, record_hash=digest, seq=index * FILE_SEQ + line_no,
                                         line=line_no)

    def files(self, path: Path) -> list[Path]:
        """The resource files under ``path`` (a manifest's outputs, else every FHIR file); ``deleted_files``
        gets the deletions."""
        if path.is_file():
            return [path]
        manifest = path / "manifest.json"
        if manifest.exists():
            try:
                content = orjson.loads(manifest.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise FhirError(f"{manifest}: not valid JSON: {exc.msg}") from None
            problem = shape_problem(content, "Manifest", "")
            if problem:
                raise FhirError(f"{manifest}: field {problem[0] or '(document)'}: {problem[1]}")
            self.extract_date = (content.get("transactionTime") or "")[:10] or None

            def local(outputs):
                names = [Path(o.get("url") or "").name for o in outputs or []]
                return [p for name in names if name for p in (path / name, path / "deleted" / name) if p.is_file()]
            self.deleted_files = local(content.get("deleted"))
            return local(content.get("output"))
        suffixes = (".ndjson", ".ndjson.gz", ".json", ".json.gz")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)
                       and p.name not in ("log.ndjson", "log.ndjson.gz", "manifest.json"))
        self.deleted_files = [p for p in files if p.parent.name == "deleted"]
        return [p for p in files if p.parent.name != "deleted"]

    def read_file(self, file: Path, index: int = 0, piece: tuple[int, int] = WHOLE) -> None:
        """File number ``index``, or only its ``piece`` (see PIECE_UNITS) when it is NDJSON."""
        data = self._file_bytes(file, said=piece[0] == 0)  # a broken file is said once, by its first piece
        if data is not None:
            self.read_bytes(data, file.name, index, piece)

    def _file_bytes(self, file: Path, said: bool = True) -> bytes | None:
        """The file's content, un-gzipped when its name ends in .gz, or None once it is rejected (``said``)
        as not valid gzip.  Every gzip member is read: bgzip and appended exports are several members
        one after another, and a one-member decompress silently stopped after the first.  ISA-L's
        ``igzip`` reads Synthea's NDJSON in ~0.6 of zlib's CPU time, in one shot (faster than streaming)."""
        raw = file.read_bytes()
        if not file.name.endswith(".gz"):
            return raw
        try:
            if raw[:2] != b"\x1f\x8b":
                raise ValueError("it does not start with the gzip magic bytes")
            return igzip.decompress(raw)
        except (ValueError, EOFError, OSError) as exc:
            if said:
                self.staged.read += 1
                self.staged.reject(file.name, None, f"not a valid gzip file: {exc}", None)
            return None

    def read_bytes(self, data: bytes, name: str, index: int = 0, piece: tuple[int, int] = WHOLE) -> None:
        """One file's content (file number ``index``): NDJSON when ``name`` says so (only the lines of
        ``piece``), else one resource or Bundle."""
        file = Path(name)
        if ".ndjson" in file.name:
            self.line_base = index * FILE_SEQ
            self._read_ndjson(data, file.name, _line_start(data, piece[0]), _line_start(data, piece[1]))
            self.line_base = None
            return
        self.next_seq = index * FILE_SEQ
        try:
            resource = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self.staged.read += 1
            self.staged.reject(file.name, None, f"not valid JSON: {exc.msg}", None)
            return
        if not isinstance(resource, dict):
            self.staged.read += 1
            self.staged.reject(file.name, "resourceType", _NOT_AN_OBJECT.format(_JSON_TYPES[type(resource)]), None)
            return
        self.read_resource(resource, data if resource.get("resourceType") != "Bundle" else None)

    def _read_ndjson(self, data: bytes, file_name: str, start: int, end: int) -> None:
        """The lines of ``data[start:end]`` (numbered as in the whole file), taken one at a time: a list of
        every line (and a copy of a piece) held a second copy of the file in fresh memory, page faults
        and all."""
        line_no = data.count(b"\n", 0, start) + 1
        while start < end:
            stop = data.find(b"\n", start, end)
            stop = end if stop < 0 else stop
            line = data[start:stop].strip()
            if line:
                self._read_line(line, line_no, file_name)
            start, line_no = stop + 1, line_no + 1

    def _read_line(self, line: bytes, line_no: int, file_name: str) -> None:
        # Bulk exports put resourceType first: a resource type Mercia does not map (Claim, ExplanationOfBenefit
        # are most of Synthea's bytes) is rejected by name without parsing the whole resource.
        if line.startswith(b'{"resourceType":"'):
            end = line.find(b'"', 17)
            kind = line[17:end].decode(errors="replace")
            if kind not in _SUPPORTED and kind != "Bundle":
                found = _ID.search(line, 0, 400)
                rid = found.group(1).decode(errors="replace") if found else None
                self.staged.read += 1
                self.staged.reject(f"{kind}/{rid}" if rid else f"{file_name}:{line_no}", "resourceType",
                                   f"resource type {kind} is not mapped to OMOP by Mercia", line_no)
                return
        resource = self._json_line(line, line_no, file_name)
        if resource is _INVALID:
            return
        if not isinstance(resource, dict):
            self.staged.read += 1
            self.staged.reject(f"{file_name}:{line_no}", "resourceType",
                               _NOT_AN_OBJECT.format(_JSON_TYPES[type(resource)]), line_no)
            return
        self.read_resource(resource, line, line_no)

    # -- resources -------------------------------------------------------------------------
    def read_resource(self, resource: dict, raw: bytes | None = None, line: int | None = None) -> None:
        kind = resource.get("resourceType")
        if kind == "Bundle":
            self._read_bundle(resource, line)
            return
        self.staged.read += 1
        self._stage(resource, content_hash(raw if raw is not None else orjson.dumps(resource)), {}, line)

    def _read_bundle(self, bundle: dict, line: int | None = None) -> None:
        record = f"Bundle/{bundle.get('id') if isinstance(bundle.get('id'), str) else '?'}"
        if not isinstance(bundle.get("entry") or [], list):
            self.staged.read += 1
            self.staged.reject(record, "entry", f"expected an array, got {_JSON_TYPES[type(bundle['entry'])]}", line)
            return
        entries = []  # each entry is checked on its own: one bad entry is one reject
        for i, entry in enumerate(bundle.get("entry") or []):
            problem = shape_problem(entry, "BundleEntry", f"entry[{i}]")
            if problem:
                self.staged.read += 1
                self.staged.reject(record, *problem, line)
            else:
                entries.append(entry)
        fullurls: dict[str, str] = {}
        for entry in entries:
            res = entry.get("resource") or {}
            if entry.get("fullUrl") and res.get("id"):
                fullurls[entry["fullUrl"]] = res["id"]
        for entry in entries:
            res = entry.get("resource")
            if res is None:
                continue  # search/batch request entries carry no resource
            if not res.get("id"):  # transaction POST entries may leave id to the server
                full = entry.get("fullUrl") or ""
                res = {**res, "id": full.rsplit(":", 1)[-1].rsplit("/", 1)[-1] or None}
            if res.get("resourceType") == "Bundle":
                self._read_bundle(res, line)
                continue
            self.staged.read += 1
            self._stage(res, content_hash(orjson.dumps(res)), fullurls, line)

    def _stage(self, res: dict, digest: str, fullurls: dict[str, str], line: int | None) -> None:
        kind, rid = res.get("resourceType"), res.get("id")
        s = self.staged
        if not isinstance(kind, str):
            s.reject(f"?/{rid}" if isinstance(rid, str) else "?/?", "resourceType",
                     "resourceType missing or not a string", line)
            return
        if not rid or not isinstance(rid, str):
            s.reject(f"{kind}/?", "id", "resource has no id" if not rid else "id is not a string", line)
            return
        record = f"{kind}/{rid}"
        if kind not in _SUPPORTED:
            s.reject(record, "resourceType", f"resource type {kind} is not mapped to OMOP by Mercia", line)
            return
        self._version(res, record, digest, line)
        problem = resource_check(kind)(res)
        if problem:
            s.reject(record, problem[0][1:], problem[1], line, digest)
            return
        if _entered_in_error(res):
            s.removals.add(record=record, line=line, field="status", record_hash=digest,
                           reason="entered-in-error at the source: earlier rows of the record removed")
            return
        if kind == "Patient":
            self._patient(res, record, digest, line)
            return
        if kind in ("Organization", "Location"):
            ods = next((i.get("value") for i in res.get("identifier") or [] if i.get("system") in ODS_SYSTEMS), None)
            s.sites.add(record=record, record_hash=digest, kind=kind, name=res.get("name"), ods_code=ods, line=line)
            return
        if kind == "Practitioner":
            s.sites.add(record=record, record_hash=digest, kind=kind, name=None, ods_code=None, line=line)
            return
        if kind == "Medication":
            self.medications[rid] = best_coding(res.get("code"))
            return
        if kind == "Device":
            self._device(res, rid)
            return
        subject = _reference_id(res.get("subject") or res.get("patient"), fullurls)
        if not subject:
            s.reject(record, "subject", "no subject/patient reference", line, digest)
            return
        visit = _reference_id(_encounter(res), fullurls)
        base = dict(record=record, record_hash=digest, person_ref=subject,
                    visit_ref=f"Encounter/{visit}" if visit else None, line=line)
        getattr(self, f"_{kind}")(res, base)

    def _version(self, res: dict, record: str, digest: str, line: int | None) -> None:
        """This version of ``record``: its meta (taken as found; a wrongly typed meta is the shape check's
        reject) and its place in reading order."""
        meta = res.get("meta")
        updated = version = None
        if isinstance(meta, dict):
            updated, version = meta.get("lastUpdated"), meta.get("versionId")
        if self.line_base is not None and line is not None:
            seq = self.line_base + line
        else:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.staged.versions.add(record=record, record_hash=digest, seq=seq, line=line,
                                 last_updated=updated if isinstance(updated, str) else None,
                                 version_id=version if isinstance(version, str) else None)

    def _reject(self, base: dict, field_name: str, reason: str) -> None:
        self.staged.reject(base["record"], field_name, reason, base["line"], base["record_hash"])

    def _patient(self, res: dict, record: str, digest: str, line: int | None) -> None:
        nhs = None
        for ident in res.get("identifier") or []:
            if ident.get("system") == NHS_NUMBER_SYSTEM:
                nhs = ident.get("value")
        if nhs:
            self.patient_identifiers[f"{NHS_NUMBER_SYSTEM}|{nhs}"] = res["id"]
        names = res.get("name") or []
        official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
        addresses = res.get("address") or []
        address = next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {})
        ethnic_vocab = ethnic_code = None
        for ext in res.get("extension") or []:
            url = ext.get("url") or ""
            if url.endswith("Extension-UKCore-EthnicCategory"):
                coding = (ext.get("valueCodeableConcept") or {}).get("coding") or [{}]
                ethnic_vocab, ethnic_code = "UK Ethnic Category", coding[0].get("code")
            elif url.endswith("us-core-race"):
                for sub in ext.get("extension") or []:
                    if sub.get("url") == "ombCategory":
                        ethnic_vocab, ethnic_code = "Race", (sub.get("valueCoding") or {}).get("code")
        deceased = res.get("deceasedDateTime")
        self.staged.persons.add(
            record=record, record_hash=digest, person_ref=res["id"], nhs_number=nhs,
            family=official.get("family"), given=(official.get("given") or [None])[0],
            birth_date=res.get("birthDate"), sex=res.get("gender"), ethnicity_vocabulary=ethnic_vocab,
            ethnicity_code=ethnic_code, postcode=address.get("postalCode"), death_date=deceased, line=line)

    def _event(self, base: dict, kind: str, concept: dict | None, start: str | None, field: str, **extra) -> None:
        vocab, code = best_coding(concept)
        if code is None:
            self._reject(base, field, "no coded value")
            return
        if not start:
            self._reject(base, "date", f"{base['record'].split('/')[0]} has no date")
            return
        self.staged.events.add(**base, kind=kind, vocabulary=vocab, code=code, start=start, **extra)

    def _Encounter(self, res: dict, base: dict) -> None:
        period = res.get("period") or {}
        klass = res.get("class") or {}
        if not period.get("start"):
            self._reject(base, "period.start", "Encounter has no start")
            return
        provider = _reference_id(res.get("serviceProvider"), {})
        self.staged.events.add(**{**base, "visit_ref": base["record"]}, kind="Visit", vocabulary="Visit class",
                               code=klass.get("code") or "UNK", start=period["start"], end=period.get("end"),
                               site_ref=f"Organization/{provider}" if provider else None)

    def _EpisodeOfCare(self, res: dict, base: dict) -> None:
        """A GP registration: the span in which the practice's record is complete (observation period)."""
        period = res.get("period") or {}
        if not period.get("start"):
            self._reject(base, "period.start", "EpisodeOfCare has no start")
            return
        self.staged.events.add(**base, kind="Registration", vocabulary="Registration", code="registration",
                               start=period["start"], end=period.get("end") or self.extract_date)

    def _Condition(self, res: dict, base: dict) -> None:
        self._event(base, "Condition", res.get("code"), _date(res, "onsetDateTime", "onsetPeriod", "recordedDate"),
                    "code", end=_end(res, "abatementDateTime", "abatementPeriod"))

    def _Procedure(self, res: dict, base: dict) -> None:
        self._event(base, "Procedure", res.get("code"), _date(res, "performedDateTime", "performedPeriod"), "code",
                    end=_end(res, "performedPeriod"))

    def _Observation(self, res: dict, base: dict) -> None:
        start = _date(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
        categories = {c.get("code") for cat in res.get("category") or [] for c in cat.get("coding") or []}
        kind = "Measurement" if categories & {"laboratory", "vital-signs"} or not categories else "Observation"
        emitted = False
        for part in (res, *(res.get("component") or ())):
            if part is res and res.get("component") and not _has_value(res):
                continue  # a panel (e.g. blood pressure): the components carry the values
            self._event(base, kind, part.get("code"), start, "code", **_value(part))
            emitted = True
        if not emitted:
            self._reject(base, "value", "Observation has neither value nor components")

    def _DiagnosticReport(self, res: dict, base: dict) -> None:
        self._event(base, "Observation", res.get("code"), _date(res, "effectiveDateTime", "effectivePeriod", "issued"),
                    "code")

    def _medication(self, res: dict, base: dict, start: str | None, **extra) -> None:
        concept = res.get("medicationCodeableConcept")
        if concept is None and res.get("medicationReference"):
            med_id = _local_id(res["medicationReference"])
            for contained in res.get("contained") or []:
                if contained.get("id") == med_id and contained.get("resourceType") == "Medication":
                    concept = contained.get("code")
            if concept is None:  # resolved once every file has been read
                self.staged.events.add(**base, kind="Drug", vocabulary="?Medication", code=med_id, start=start,
                                       **extra)
                return
        self._event(base, "Drug", concept, start, "medication[x]", **extra)

    def _MedicationRequest(self, res: dict, base: dict) -> None:
        self._medication(res, base, res.get("authoredOn"))

    def _MedicationStatement(self, res: dict, base: dict) -> None:
        self._medication(res, base, _date(res, "effectiveDateTime", "effectivePeriod", "dateAsserted"),
                         end=_end(res, "effectivePeriod"))

    def _MedicationDispense(self, res: dict, base: dict) -> None:
        quantity = (res.get("quantity") or {}).get("value")
        days = (res.get("daysSupply") or {}).get("value")
        self._medication(res, base, res.get("whenHandedOver") or res.get("whenPrepared"),
                         quantity=float(quantity) if quantity is not None else None,
                         days_supply=int(days) if days is not None else None)

    def _MedicationAdministration(self, res: dict, base: dict) -> None:
        self._medication(res, base, _date(res, "effectiveDateTime", "effectivePeriod"), end=_end(res, "effectivePeriod"))

    def _Immunization(self, res: dict, base: dict) -> None:
        if res.get("status") == "not-done":
            self._reject(base, "status", "Immunization not done")
            return
        self._event(base, "Drug", res.get("vaccineCode"), _date(res, "occurrenceDateTime", "recorded"), "vaccineCode")

    def _AllergyIntolerance(self, res: dict, base: dict) -> None:
        self._event(base, "Observation", res.get("code"), _date(res, "onsetDateTime", "onsetPeriod", "recordedDate"),
                    "code", qualifier="allergy")

    def _Specimen(self, res: dict, base: dict) -> None:
        collection = res.get("collection") or {}
        self._event(base, "Specimen", res.get("type"),
                    collection.get("collectedDateTime") or (collection.get("collectedPeriod") or {}).get("start")
                    or res.get("receivedTime"), "type")

    def _CarePlan(self, res: dict, base: dict) -> None:
        """The plan's category (SNOMED care plan type) as an observation spanning the plan's period."""
        self._event(base, "Observation", _codings(res.get("category")), _date(res, "period"), "category",
                    end=_end(res, "period"), qualifier="care plan")

    def _Goal(self, res: dict, base: dict) -> None:
        self._event(base, "Observation", res.get("description"), _date(res, "startDate", "statusDate"), "description",
                    qualifier="goal")

    def _ImagingStudy(self, res: dict, base: dict) -> None:
        """One procedure per series: the study's procedure code, else the series' DICOM modality; the
        body site (SNOMED) is kept as the procedure's modifier source value."""
        procedure = _codings(res.get("procedureCode"))
        for series in res.get("series") or [{}]:
            concept = procedure if best_coding(procedure)[1] else {"coding": [series["modality"]]
                                                                    if series.get("modality") else []}
            self._event(base, "Procedure", concept, series.get("started") or res.get("started"), "procedureCode",
                        qualifier=(series.get("bodySite") or {}).get("code"))

    def _device(self, res: dict, rid: str) -> None:
        """A Device is a catalogue entry: its use (and so its date) comes from the DeviceUseStatements and
        DeviceRequests that reference it; R4 gives a Device no date of use (``manufactureDate`` is not one)."""
        udi = next((u.get("deviceIdentifier") for u in res.get("udiCarrier") or [] if u.get("deviceIdentifier")), None)
        vocab, code = best_coding(res.get("type"))
        self.devices[rid] = {"vocabulary": vocab, "code": code, "unique_device_id": udi,
                             "production_id": res.get("lotNumber") or res.get("serialNumber")}

    def _device_use(self, base: dict, device: dict | None, concept: dict | None, start: str | None, field: str,
                    **extra) -> None:
        """A device exposure: coded by the request/statement itself, else by the referenced Device once
        every file has been read (like ``medicationReference``)."""
        if best_coding(concept)[1] is None and device:
            self.staged.events.add(**base, kind="Device", vocabulary="?Device", code=_local_id(device), start=start,
                                   **extra)
            return
        self._event(base, "Device", concept, start, field, **extra)

    def _DeviceUseStatement(self, res: dict, base: dict) -> None:
        self._device_use(base, res.get("device"), None,
                         _date(res, "timingDateTime", "timingPeriod", "recordedOn"), "device",
                         end=_end(res, "timingPeriod"))

    def _DeviceRequest(self, res: dict, base: dict) -> None:
        if res.get("status") in ("revoked", "draft"):
            self._reject(base, "status", f"DeviceRequest {res['status']}: no device was used")
            return
        self._device_use(base, res.get("codeReference"), res.get("codeCodeableConcept"),
                         _date(res, "occurrenceDateTime", "occurrencePeriod", "authoredOn"), "code[x]",
                         end=_end(res, "occurrencePeriod"))

    def _DocumentReference(self, res: dict, base: dict) -> None:
        """Metadata only: the document's type (else category) and date, titled by its description (else the
        first attachment's title).  The text never reaches the CDM (docs/ingest.md says why)."""
        concept = res.get("type") if best_coding(res.get("type"))[1] else _codings(res.get("category"))
        title = res.get("description") or next(
            ((c.get("attachment") or {}).get("title") for c in res.get("content") or []
             if (c.get("attachment") or {}).get("title")), None)
        self._event(base, "Note", concept, res.get("date") or _date(res.get("context") or {}, "period"),
                    "type", title=title)

    def _cost(self, res: dict, base: dict, total: dict, **amounts) -> None:
        """A bill as a cost row of the visit it bills (cost_event_id); the amounts' currency is the
        event's coded value (OMOP vocabulary ``Currency``, ISO 4217 codes)."""
        if not base["visit_ref"]:
            self._reject(base, "item.encounter", "bill not linked to an Encounter: a cost row belongs to a visit")
            return
        self.staged.events.add(**base, kind="Cost", vocabulary="Cost", code=res["resourceType"],
                               start=_date(res, "created", "billablePeriod"), value_number=total.get("value"),
                               value_vocabulary="Currency" if total.get("currency") else None,
                               value_code=total.get("currency"), **amounts)

    def _Claim(self, res: dict, base: dict) -> None:
        """What was billed; an ExplanationOfBenefit of the same load adjudicating it supersedes it."""
        self._cost(res, base, res.get("total") or {})

    def _ExplanationOfBenefit(self, res: dict, base: dict) -> None:
        """The adjudicated bill: submitted total, the insurer's payment and the patient's share (Blue
        Button coinsurance and deductible line amounts, or the R4 ``copay``/``deductible`` adjudications)."""
        totals = {(best_coding(t.get("category"))[1] or ""): t.get("amount") or {} for t in res.get("total") or []}
        patient = [a["amount"]["value"] for item in res.get("item") or [] for a in item.get("adjudication") or []
                   if (a.get("amount") or {}).get("value") is not None
                   and (best_coding(a.get("category"))[1] or "").rsplit("/", 1)[-1] in _PATIENT_SHARE]
        claim = _local_id(res["claim"]) if res.get("claim") else None
        self._cost(res, base, totals.get("submitted") or {},
                   paid_by_payer=((res.get("payment") or {}).get("amount") or {}).get("value"),
                   paid_by_patient=sum(patient) if patient else None, also_record=f"Claim/{claim}" if claim else None)

    def _QuestionnaireResponse(self, res: dict, base: dict) -> None:
        """PROM answers that are coded or numeric; free-text answers never reach the CDM."""
        start = res.get("authored")
        questionnaire = (res.get("questionnaire") or "questionnaire").rsplit("/", 1)[-1]
        prom_items = _prom_item_codes(questionnaire)
        emitted = 0
        stack = list(res.get("item") or [])
        while stack:
            item = stack.pop(0)
            stack.extend(item.get("item") or [])
            for answer in item.get("answer") or []:
                stack.extend(answer.get("item") or [])
                value = _answer_value(answer)
                if value is None:
                    continue
                vocab, code = best_coding({"coding": item.get("code") or []})
                if str(item.get("linkId", "")).lower() in prom_items:  # scored and linked: mercia.ingest.proms
                    vocab, code = prom_items[str(item["linkId"]).lower()]
                elif code is None:
                    vocab, code = "Questionnaire", f"{questionnaire}#{item.get('linkId')}"
                if not start:
                    break
                self.staged.events.add(**base, kind="Observation", vocabulary=vocab, code=code, start=start, **value)
                emitted += 1
        if not emitted:
            self._reject(base, "item.answer", "no coded or numeric answers (free text is not loaded)" if start
                         else "QuestionnaireResponse has no authored date")

    # -- after all files -------------------------------------------------------------------
    def _resolve_deferred(self) -> None:
        """Medication and Device references and conditional Patient references, which needed every file:
        column work over the staged events, Python only for the (few) rows that refer to one."""
        events = self.staged.events.table()  # left in its chunks: only the columns that change are copied
        deferred = pc.fill_null(pc.starts_with(events.column("vocabulary"), "?"), False).combine_chunks()
        dropped = pa.repeat(False, events.num_rows)
        if pc.any(deferred).as_py():
            events, dropped = self._resolve_catalogue_references(events, deferred)
        conditional = pc.fill_null(pc.starts_with(events.column("person_ref").combine_chunks(), "?"), False)
        if pc.any(conditional).as_py():
            refs = events.column("person_ref").filter(conditional).to_pylist()
            events = _replaced(events, "person_ref", conditional,
                               [self.patient_identifiers.get(ref[1:], ref) for ref in refs])
        used = pc.unique(events.column("also_record").filter(pc.invert(dropped))).drop_null()
        # Claims adjudicated by a loaded ExplanationOfBenefit (its also_record) are billed by that one
        billed = pc.and_(pc.equal(events.column("kind"), "Cost"), pc.is_in(events.column("record"), value_set=used))
        self.staged.events = Columns(EVENT_SCHEMA)
        self.staged.events.add_table(events.filter(pc.invert(pc.or_(dropped, pc.fill_null(billed, False)))))
        used = set(used.to_pylist())
        for med_id in self.medications:
            if f"Medication/{med_id}" not in used:
                self.staged.reject(f"Medication/{med_id}", None,
                                   "Medication not referenced by any loaded medication event")
        for device_id in self.devices:
            if f"Device/{device_id}" not in used:
                self.staged.reject(f"Device/{device_id}", None, "Device not referenced by any loaded "
                                   "DeviceUseStatement or DeviceRequest (a Device carries no date of use)")

    def _resolve_catalogue_references(self, events: pa.Table, deferred: pa.Array) -> tuple[pa.Table, pa.Array]:
        """Events staged as ``?Medication``/``?Device`` take the referenced resource's coding (and a
        Device's UDI and production id) and name it in ``also_record``; unresolved ones are rejected.
        Returns the events and which rows were rejected."""
        names = ("vocabulary", "code", "also_record", "unique_device_id", "production_id")
        rows = events.filter(deferred).select([*names, "record", "line", "record_hash"]).to_pylist()
        values: dict[str, list] = {name: [] for name in names}
        rejected = []
        for row in rows:
            target = row["code"]
            if row["vocabulary"] == "?Medication":
                vocabulary, code = self.medications.get(target) or (None, None)
                found = {"vocabulary": vocabulary, "code": code, "also_record": f"Medication/{target}"}
                field_name, reason = "medicationReference", "medication reference not resolved to a coded Medication"
            else:
                device = self.devices.get(target) or {"code": None}
                found = {**device, "also_record": f"Device/{target}"}
                field_name, reason = "device", "device reference not resolved to a coded Device"
            if found["code"] is None:
                self.staged.reject(row["record"], field_name, reason, row["line"], row["record_hash"])
                found = {}
            rejected.append(not found)
            for name in names:
                values[name].append(found.get(name, row[name]))
        for name in names:
            events = _replaced(events, name, deferred, values[name])
        dropped = pc.replace_with_mask(pa.repeat(False, events.num_rows), deferred,
                                       pa.array(rejected, pa.bool_()))
        return events, dropped


def _replaced(table: pa.Table, name: str, mask: pa.Array, values: list) -> pa.Table:
    """``table`` with column ``name`` replaced by ``values`` (in order) where ``mask`` is true."""
    column = table.column(name).combine_chunks()
    return table.set_column(table.schema.get_field_index(name), name,
                            pc.replace_with_mask(column, mask, pa.array(values, column.type)))


def _line_start(data: bytes, fraction: int) -> int:
    """Where the first line starting at or after ``fraction`` (of PIECE_UNITS) of ``data`` begins."""
    position = len(data) * fraction // PIECE_UNITS
    if position == 0:
        return 0
    newline = data.find(b"\n", position - 1)
    return len(data) if newline < 0 else newline + 1


# A unit of reading work: (file number, path, piece).
Unit = tuple[int, Path, tuple[int, int]]


def read_files(extract: str, extract_date: str | None, units: list[Unit], resource_files: int) -> list[FileRead]:
    """Each file (or piece of one) read on its own; numbers from ``resource_files`` on are deleted files."""
    parts = []
    for index, file, piece in units:
        reader = FhirReader(extract, extract_date)
        if index < resource_files:
            reader.read_file(file, index, piece)
        else:
            reader.read_deleted(file, index)
        parts.append(reader.file_read(index, piece))
    return parts


def _units(files: list[tuple[int, Path]], resource_files: int, processes: int) -> list[Unit]:
    """The files as units of work, largest first; with several processes an NDJSON resource file of more than
    1 / (2 x processes) of the bytes is cut into pieces of about that size, so no unit holds the others up."""
    sizes = {index: max(1, file.stat().st_size) for index, file in files}
    most = sum(sizes.values()) / (2 * processes)
    units = []
    for index, file in files:
        pieces = -int(-sizes[index] // most) if processes > 1 and index < resource_files and ".ndjson" in file.name \
            else 1
        cuts = [PIECE_UNITS * k // pieces for k in range(pieces + 1)]
        units.extend((sizes[index] / pieces, (index, file, piece)) for piece in zip(cuts, cuts[1:]))
    return [unit for _, unit in sorted(units, key=lambda sized: -sized[0])]


class _Worker:
    """A reading worker process (``mercia.ingest.fhir_worker``) and the thread that hands it units one at a
    time from the load's queue: whichever process is free takes the next, so the processes end together."""

    def __init__(self, header: tuple, take: Callable[[], Unit | None]):
        self.process = _start_worker(header)
        self.parts: list[FileRead] = []
        self.sent: tuple[Unit, float, float] | None = None  # the unit being read, its timeout and deadline
        self.broken: str | None = None
        self.err = b""   # its stderr, read while it works (a full pipe would stop it)
        self.err_thread = threading.Thread(target=self._read_err, daemon=True)
        self.err_thread.start()
        self.thread = threading.Thread(target=self._feed, args=(take,), daemon=True)
        self.thread.start()

    def _read_err(self) -> None:
        self.err = self.process.stderr.read()

    def _feed(self, take: Callable[[], Unit | None]) -> None:
        stdin, stdout = self.process.stdin, self.process.stdout
        try:
            while (unit := take()) is not None:
                timeout = WORKER_BASE_SECONDS + WORKER_SECONDS_PER_MB * unit[1].stat().st_size / 2**20
                self.sent = (unit, timeout, time.monotonic() + timeout)
                stdin.write(orjson.dumps([unit[0], str(unit[1]), unit[2]]) + b"\n")
                stdin.flush()
                header = stdout.read(len(WORKER_ANSWER) + 8)
                if len(header) < len(WORKER_ANSWER) + 8:
                    raise EOFError("the worker ended without answering")
                if not header.startswith(WORKER_ANSWER):
                    raise EOFError(f"the worker wrote something other than an answer on its stdout: {header!r}")
                size = int.from_bytes(header[len(WORKER_ANSWER):], "little")
                answer = stdout.read(size)
                if len(answer) < size:
                    raise EOFError("the worker ended in the middle of an answer")
                self.parts.append(pickle.loads(answer))  # our own child's
                self.sent = None
            stdin.close()
        except Exception as exc:  # reported: ``result`` stops the worker and raises it with the worker's stderr
            self.broken = f"{type(exc).__name__}: {exc}"

    def result(self) -> list[FileRead]:
        """Its ``FileRead``s once the queue is empty; a unit unanswered after WORKER_BASE_SECONDS plus
        WORKER_SECONDS_PER_MB per MB of its file stops the worker and fails the read."""
        while self.thread.is_alive():
            self.thread.join(0.05)
            sent = self.sent
            if sent is not None:
                (_, file, _), timeout, deadline = sent
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError(f"a FHIR reading worker gave no answer within {timeout:.0f} s "
                                       f"(reading {file.name}); stopped")
        if self.broken:
            self.process.kill()
        self.process.wait()
        self.err_thread.join()
        if self.process.returncode != 0 or self.broken:
            raise RuntimeError(f"a FHIR reading worker failed (exit {self.process.returncode}): "
                               + "; ".join(filter(None, [self.broken, self.err.decode(errors="replace")[-2000:]])))
        return self.parts


def _read_in_processes(extract: str, extract_date: str | None, files: list[tuple[int, Path]], resource_files: int,
                       processes: int) -> list[FileRead]:
    """The files as units of work (``_units``) read by this process and ``processes - 1`` worker processes,
    each taking the next unit when free.  Workers are new interpreters rather than forks (the parent holds
    DuckDB's threads, which a forked child must not inherit) started as a module, so a caller's own script
    is never re-imported."""
    queue, lock = deque(_units(files, resource_files, max(1, processes))), threading.Lock()

    def take() -> Unit | None:
        with lock:
            return queue.popleft() if queue else None

    workers: list[_Worker] = []
    try:  # started inside: a worker that cannot start still ends those started before it
        for _ in range(min(processes, len(queue)) - 1):
            workers.append(_Worker((extract, extract_date, resource_files), take))
        parts = []
        while (unit := take()) is not None:
            parts.extend(read_files(extract, extract_date, [unit], resource_files))
        for worker in workers:
            parts.extend(worker.result())
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    return sorted(parts, key=lambda part: (part.index, part.piece))


def _start_worker(header: tuple) -> subprocess.Popen:
    """A reading worker told ``header`` (extract, extract date, number of resource files) on its first stdin
    line; it then reads one unit per line and answers each on stdout."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # -P: the working directory is not put first on sys.path, where a ``mercia`` folder in it (another
    # checkout) would be imported instead of this package
    worker = subprocess.Popen([sys.executable, "-P", "-m", "mercia.ingest.fhir_worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _widen_pipe(worker.stdout.fileno())
    worker.stdin.write(orjson.dumps(list(header)) + b"\n")
    return worker


def _widen_pipe(fd: int) -> None:
    """The answers pipe as large as the system allows (``/proc/sys/fs/pipe-max-size``, 1 MiB by default).
    An answer is up to ~22 MB (synthea_medium's Observation piece), taken by a thread of the load's process
    while its main thread reads a unit of its own: after every pipe's worth the thread waits for the GIL (up
    to the 5 ms switch interval) while the worker, its pipe full, waits for it.  With the default 64 KiB pipe
    the worker stood idle for up to ~0.4 s of a 2.4 s read; widened, synthea_medium reads in ~0.3 s less
    (5 alternating runs).  Where the size cannot be set (not Linux, a lower limit) the pipe stays as it is."""
    try:
        import fcntl
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, limit)
    except (ImportError, AttributeError, OSError, ValueError):
        pass


def _entered_in_error(res: dict) -> bool:
    """FHIR's withdrawal of a record: status (most event resources) or verificationStatus
    (Condition, AllergyIntolerance) ``entered-in-error``."""
    if res.get("status") == "entered-in-error":
        return True
    verification = res.get("verificationStatus")
    codings = verification.get("coding") if isinstance(verification, dict) else None
    return isinstance(codings, list) and any(isinstance(c, dict) and c.get("code") == "entered-in-error"
                                             for c in codings)


def _encounter(res: dict) -> dict | None:
    """The encounter Reference: ``encounter``, ``context`` (a Reference in R4 medication resources), the
    first of DocumentReference's ``context.encounter``, or the first a Claim's items bill."""
    kind = res.get("resourceType")
    ref = res.get("encounter") or res.get("context")
    if kind == "DocumentReference":   # context is a DocumentContext (shape-checked), elsewhere a Reference
        return next(iter(ref.get("encounter") or []), None) if isinstance(ref, dict) else None
    if ref is None and kind in ("Claim", "ExplanationOfBenefit"):
        return next((e for item in res.get("item") or [] for e in item.get("encounter") or []), None)
    return ref


def _local_id(ref: dict) -> str:
    """The id a catalogue reference (Medication, Device) points at: contained ``#id``, ``Type/id``, urn:uuid."""
    target = ref.get("reference") or ""
    return target[1:] if target.startswith("#") else target.rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _codings(concepts: list[dict] | None) -> dict:
    """Several CodeableConcepts as one, for ``best_coding``."""
    return {"coding": [c for concept in concepts or [] for c in concept.get("coding") or []]}


def _has_value(part: dict) -> bool:
    return any(k.startswith("value") for k in part)


def _value(part: dict) -> dict:
    quantity = part.get("valueQuantity")
    if quantity:
        ranges = (part.get("referenceRange") or [{}])[0]
        return {"value_number": _number(quantity.get("value")), "unit": quantity.get("code") or quantity.get("unit"),
                "range_low": _number((ranges.get("low") or {}).get("value")),
                "range_high": _number((ranges.get("high") or {}).get("value"))}
    concept = part.get("valueCodeableConcept")
    if concept:
        vocab, code = best_coding(concept)
        return {"value_vocabulary": vocab, "value_code": code}
    for key in ("valueInteger", "valueDecimal"):
        if key in part:
            return {"value_number": _number(part[key])}
    return {}


def _prom_item_codes(questionnaire: str) -> dict[str, tuple[str, str]]:
    """linkId (lower case) -> (vocabulary, PROM item code) for an EQ-5D questionnaire
    (``proms.store.FHIR_ITEMS``); empty for any other questionnaire."""
    # imported here: the PROMs modules bring DuckDB, which a reading worker process otherwise never needs
    from mercia.proms.omop import PROM_VOCABULARY, item_source_value
    from mercia.proms.store import FHIR_INSTRUMENTS, FHIR_ITEMS

    instrument = FHIR_INSTRUMENTS.get(questionnaire.split("|")[0].lower())
    if instrument is None:
        return {}
    return {alias: (PROM_VOCABULARY, item_source_value(instrument, column.upper()))
            for column, aliases in FHIR_ITEMS.items() for alias in aliases}


def _answer_value(answer: dict) -> dict | None:
    if answer.get("valueCoding"):
        coding = answer["valueCoding"]
        vocab = VOCABULARIES.get(coding.get("system"), coding.get("system"))
        return {"value_vocabulary": vocab, "value_code": coding.get("code")} if coding.get("code") else None
    for key in ("valueInteger", "valueDecimal"):
        if key in answer:
            return {"value_number": _number(answer[key])}
    if "valueBoolean" in answer:
        return {"value_number": 1.0 if answer["valueBoolean"] else 0.0}
    return None


def _number(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def iter_resources(path: Path) -> Iterator[dict]:
    """Every resource under ``path`` (used by the naive benchmark and tests)."""
    reader = FhirReader(Path(path).name)
    for file in reader.files(Path(path)):
        opener = gzip.open if file.name.endswith(".gz") else open
        with opener(file, "rb") as handle:
            for line in handle:
                if line.strip():
                    yield orjson.loads(line)


def read_fhir(path: Path | str, processes: int | None = None) -> Staged:
    """Every file under ``path`` staged; ``processes``: see ``FhirReader.read_path``."""
    return FhirReader(Path(path).name).read_path(Path(path), processes)
