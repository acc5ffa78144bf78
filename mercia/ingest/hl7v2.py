"""HL7 v2 lab results (ORU^R01, OUL^R21-R24; v2.3-2.8) -> staged persons and measurements.

Real files are messy in three ways handled here: a UTF-8 byte-order mark, segments ended by
``\\n`` or ``\\r\\n`` instead of ``\\r``, and several messages per file.  Messages are split on their
``MSH`` segment and parsed one at a time with the ``hl7`` package, so one broken message becomes
one reject, not a failed file.  Only numeric and coded results load; text, embedded documents
and references (ST/TX/FT/ED/RP) can carry free-text identifiers and are rejected with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import hl7

from mercia.ingest.staging import Staged, content_hash

# HL7 table 0396 coding-system names -> OMOP vocabulary_id
CODING_SYSTEMS = {"LN": "LOINC", "SCT": "SNOMED", "SNM": "SNOMED", "UCUM": "UCUM", "I10": "ICD10"}
NUMERIC_TYPES = {"NM", "SN"}
CODED_TYPES = {"CE", "CWE", "CNE"}
# Segments that open a group of results: OBX-1 (set id) numbers the results within their group, so it
# repeats across groups of one message (the OUL^R22 examples number a patient-level and a specimen-level
# result 27); a result's record key names its group's ordinal in the message (0: before any of these).
GROUP_STARTS = {"OBR", "SPM"}
_MSH_START = re.compile(r"(?:^|\r)(?=MSH\|)")
_RANGE = re.compile(r"^\s*([-+]?\d*\.?\d+)\s*(?:-|_|to)\s*([-+]?\d*\.?\d+)\s*$")


def hl7_timestamp(value: str | None) -> str | None:
    """``YYYYMMDD[HHMM[SS[.S]]][+ZZZZ]`` -> ISO ``YYYY-MM-DD[THH:MM:SS]`` (time zone dropped)."""
    if not value:
        return None
    digits = re.match(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?", value)
    if not digits or not digits.group(3):
        return value  # left for the loader to reject as unparseable
    y, mo, d, h, mi, s = (g or "00" for g in digits.groups())
    return f"{y}-{mo}-{d}" + (f"T{h}:{mi}:{s}" if digits.group(4) else "")


def split_messages(data: bytes) -> list[str]:
    return [m for m in _chunks(data) if m.startswith("MSH|")]


def _chunks(data: bytes) -> list[str]:
    """The file cut before each MSH segment; a chunk not starting with MSH is not HL7."""
    text = data.decode("utf-8-sig", errors="replace").replace("\ufeff", "")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [m.strip("\r") for m in _MSH_START.split(text) if m.strip("\r \t\x00")]


def _field(segment, index: int, component: int = 1, repetition: int = 0) -> str | None:
    """1-based field/component access that returns None instead of raising on short segments."""
    try:
        value = segment(index)
    except (IndexError, KeyError):
        return None
    try:
        rep = value[repetition] if isinstance(value, hl7.Field) and len(value) > repetition else value
        if isinstance(rep, hl7.Repetition):
            comp = rep(component) if len(rep) >= component else None
            text = str(comp) if comp is not None else None
        else:
            text = str(rep) if component == 1 else None
    except (IndexError, KeyError):
        return None
    return text or None


def _repetitions(segment, index: int) -> list:
    try:
        value = segment(index)
    except (IndexError, KeyError):
        return []
    return list(value) if isinstance(value, hl7.Field) else [value]


class Hl7Reader:
    def __init__(self, extract: str):
        self.staged = Staged(extract)
        # each result is a version of its record, in reading order: the load keeps a record's last copy
        # whether that copy loads or is rejected (``load._Load.choose_versions``), so an earlier copy's rows
        # never stand for a record whose last copy was rejected
        self.seq = 0

    def read_path(self, path: Path) -> Staged:
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in (".hl7", ".txt"))
        for file in files:
            self.read_bytes(file.read_bytes(), file.name)
        self.staged.read += len(set(self.staged.persons.data["record"]))  # each patient once
        return self.staged

    def read_bytes(self, data: bytes, name: str) -> None:
        chunks = _chunks(data)
        if not chunks:
            self.staged.read += 1
            self.staged.reject(f"HL7/{name}", "MSH", "empty file: no HL7 v2 message", None)
        number = 0
        for chunk in chunks:
            if not chunk.startswith("MSH|"):  # text before the first MSH segment (or a file of garbage)
                self.staged.read += 1
                self.staged.reject(f"HL7/{name}#0", "MSH", "text that is not an HL7 v2 message "
                                   "(a message starts with an MSH segment)", None)
                continue
            number += 1
            self._message(chunk, f"{name}#{number}", number)

    def _message(self, text: str, fallback_id: str, number: int) -> None:
        s = self.staged
        try:
            msg = hl7.parse(text)
            msh = msg.segment("MSH")
        except Exception as exc:  # the hl7 package raises several types for malformed input
            s.read += 1
            s.reject(f"HL7/{fallback_id}", "MSH", f"message not parseable as HL7 v2: {type(exc).__name__}", number)
            return
        control = _field(msh, 10) or fallback_id
        message_time = hl7_timestamp(_field(msh, 7))
        pid = next((seg for seg in msg if str(seg[0]) == "PID"), None)
        obx_segments = [seg for seg in msg if str(seg[0]) == "OBX"]
        s.read += len(obx_segments)
        if pid is None:
            s.read += 1
            s.reject(f"HL7/{control}", "PID", "message has no PID segment", number)
            for i, _ in enumerate(obx_segments, start=1):
                s.reject(f"OBX/{control}/{i}", "PID", "result without a patient", number)
            return
        nhs, local = None, None
        for rep in _repetitions(pid, 3):
            ident = str(rep(1)) if isinstance(rep, hl7.Repetition) else str(rep)
            kind = str(rep(5)) if isinstance(rep, hl7.Repetition) and len(rep) >= 5 else ""
            authority = str(rep(4)) if isinstance(rep, hl7.Repetition) and len(rep) >= 4 else ""
            if kind == "NH" or authority.upper() == "NHS":
                nhs = ident or None
            elif ident and local is None:
                local = ident
        if not local and not nhs:
            s.read += 1
            s.reject(f"HL7/{control}", "PID-3", "no patient identifier", number)
            for i, _ in enumerate(obx_segments, start=1):
                s.reject(f"OBX/{control}/{i}", "PID-3", "result for a patient with no identifier", number)
            return
        person_ref = f"PID/{local or 'nhs-' + nhs}"
        dob = hl7_timestamp(_field(pid, 7))
        s.persons.add(record=person_ref, record_hash=content_hash(str(pid).encode()), person_ref=person_ref,
                      nhs_number=nhs, family=_field(pid, 5, 1), given=_field(pid, 5, 2),
                      birth_date=dob[:10] if dob else None, sex=_field(pid, 8), postcode=_field(pid, 11, 5),
                      line=number)
        current_obr_time = None  # a result's date: OBX-14, else its OBR-7 collection time, else MSH-7
        group, in_group = 0, 0  # the result's group in the message (GROUP_STARTS) and its place in it
        for seg in msg:
            kind = str(seg[0])
            if kind in GROUP_STARTS:
                group, in_group = group + 1, 0
            if kind == "OBR":
                current_obr_time = hl7_timestamp(_field(seg, 7))
            elif kind == "OBX":
                in_group += 1
                record = f"OBX/{control}/{group}/{_field(seg, 1) or in_group}/{_field(seg, 3) or ''}"
                self._obx(seg, record, person_ref, current_obr_time or message_time, number)

    def _obx(self, seg, record: str, person_ref: str, fallback_time: str | None, number: int) -> None:
        s = self.staged
        digest = content_hash(str(seg).encode() + (fallback_time or "").encode())
        s.versions.add(record=record, record_hash=digest, seq=self.seq, line=number)
        self.seq += 1

        def reject(field_name: str, reason: str) -> None:
            s.reject(record, field_name, reason, number, digest)

        value_type = (_field(seg, 2) or "").upper()
        code, system = _field(seg, 3, 1), _field(seg, 3, 3)
        if not code:
            reject("OBX-3", "result has no observation identifier")
            return
        raw_value = _field(seg, 5)
        event = dict(record=record, record_hash=digest,
                     person_ref=person_ref, kind="Measurement", vocabulary=CODING_SYSTEMS.get(system or "", system),
                     code=code, start=hl7_timestamp(_field(seg, 14)) or fallback_time, line=number,
                     unit=_field(seg, 6, 1))
        if value_type in NUMERIC_TYPES:
            number_text = raw_value
            if value_type == "SN":  # structured numeric: comparator^num1^separator^num2
                number_text = _field(seg, 5, 2)
            try:
                event["value_number"] = float(number_text) if number_text else None
            except ValueError:
                reject("OBX-5", f"numeric result is not a number ({value_type})")
                return
            if event["value_number"] is None:
                reject("OBX-5", "result has no value")
                return
        elif value_type in CODED_TYPES:
            value_code, value_system = _field(seg, 5, 1), _field(seg, 5, 3)
            if not value_code:
                reject("OBX-5", "result has no value")
                return
            event["value_code"] = value_code
            event["value_vocabulary"] = CODING_SYSTEMS.get(value_system or "", value_system)
        else:
            reject("OBX-2", f"value type {value_type or '(none)'} is text or a document, not loaded")
            return
        bounds = _RANGE.match(_field(seg, 7) or "")
        if bounds:
            event["range_low"], event["range_high"] = float(bounds.group(1)), float(bounds.group(2))
        s.events.add(**event)


def read_hl7v2(path: Path | str) -> Staged:
    return Hl7Reader(Path(path).name).read_path(Path(path))
