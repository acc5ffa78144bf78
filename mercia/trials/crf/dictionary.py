"""The REDCap data dictionary: its 18-column CSV read and written without loss, and diffs between versions.

REDCap's dictionary is the lingua franca of academic eCRFs, so a study designed there (or here)
moves both ways.  Every cell is kept as text exactly as read, so writing reproduces the file; the
parsed views (choices, validation limits, branching AST) are derived and checked on reading, and
any problem is a ``DictionaryError`` naming the line and field.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, fields
from datetime import date, datetime
from functools import cached_property

from mercia.trials.crf.logic import LogicError, parse

# REDCap's column headers, in its order.
HEADERS = (
    "Variable / Field Name", "Form Name", "Section Header", "Field Type", "Field Label",
    "Choices, Calculations, OR Slider Labels", "Field Note", "Text Validation Type OR Show Slider Number",
    "Text Validation Min", "Text Validation Max", "Identifier?", "Branching Logic (Show field only if...)",
    "Required Field?", "Custom Alignment", "Question Number (surveys only)", "Matrix Group Name",
    "Matrix Ranking?", "Field Annotation",
)
FIELD_TYPES = ("text", "notes", "dropdown", "radio", "checkbox", "yesno", "truefalse", "calc", "slider",
               "descriptive", "file")
CHOICE_TYPES = ("dropdown", "radio", "checkbox")
VALIDATIONS = ("date_ymd", "datetime_ymd", "datetime_seconds_ymd", "integer", "number", "email", "time",
               "phone", "zipcode", "alpha_only")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE = re.compile(r"^-?[A-Za-z0-9_.]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_TAG = re.compile(r"@([A-Z][A-Z0-9-]*)(?:=(\S+))?")
# Tags that map a field into OMOP and mark PROM items (docs/trials-crf.md, "Into OMOP").
OMOP_TABLES = ("measurement", "observation")
PROM_ITEMS = {"eq5d5l": ("MO", "SC", "UA", "PD", "AD", "VAS"), "eq5d3l": ("MO", "SC", "UA", "PD", "AD", "VAS"),
              "ohs": tuple(f"q{i}" for i in range(1, 13)), "oks": tuple(f"q{i}" for i in range(1, 13))}
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # not allowed in XML 1.0


class DictionaryError(ValueError):
    """A data dictionary that cannot be used; the message names the line and the field."""


@dataclass(frozen=True)
class Field:
    """One dictionary row; attribute order is REDCap's column order."""
    name: str
    form: str
    section_header: str = ""
    field_type: str = "text"
    label: str = ""
    choices_or_calc: str = ""
    note: str = ""
    validation: str = ""
    validation_min: str = ""
    validation_max: str = ""
    identifier: str = ""
    branching_logic: str = ""
    required: str = ""
    alignment: str = ""
    question_number: str = ""
    matrix_group: str = ""
    matrix_ranking: str = ""
    annotation: str = ""

    def cells(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]

    @cached_property
    def choices(self) -> dict[str, str]:
        """Codes to labels of a dropdown, radio or checkbox (yesno and truefalse have fixed ones)."""
        if self.field_type == "yesno":
            return {"1": "Yes", "0": "No"}
        if self.field_type == "truefalse":
            return {"1": "True", "0": "False"}
        if self.field_type not in CHOICE_TYPES:
            return {}
        return parse_choices(self.choices_or_calc)

    @property
    def is_required(self) -> bool:
        return self.required.strip().lower() == "y"

    @property
    def is_identifier(self) -> bool:
        return self.identifier.strip().lower() == "y"

    @cached_property
    def tags(self) -> dict[str, str]:
        """Action tags of the annotation (``@OMOP=3038553 @PROM=eq5d5l:MO``): name -> value ('' if none)."""
        return {m.group(1): (m.group(2) or "").strip("'\"") for m in _TAG.finditer(self.annotation)}

    def mapping_target(self, tag: str, choice: str | None = None) -> str | None:
        """The concept id (``@OMOP``) or LOINC code (``@LOINC``) a value maps to.  On a checkbox the tag
        may name one per choice, ``@OMOP=1:2000000101,2:2000000103``: ticked choices not listed map to nothing."""
        value = self.tags.get(tag)
        targets = choice_targets(value) if value else None
        return value if targets is None else targets.get(choice or "")

    def export_columns(self) -> list[str]:
        """Columns in a REDCap record export: checkboxes become one column per code."""
        if self.field_type == "descriptive":
            return []
        if self.field_type == "checkbox":
            return [f"{self.name}___{checkbox_code_column(code)}" for code in self.choices]
        return [self.name]


def choice_targets(value: str) -> dict[str, str] | None:
    """``1:2000000101,2:2000000103`` -> {"1": "2000000101", "2": "2000000103"}; None for a single target (no ':')."""
    if ":" not in value:
        return None
    return {code: target for code, _, target in (pair.partition(":") for pair in value.split(","))}


def checkbox_code_column(code: str) -> str:
    """REDCap's column suffix for a checkbox code: lower case, '-' and '.' become '_'."""
    return code.lower().replace("-", "_").replace(".", "_")


def parse_choices(text: str) -> dict[str, str]:
    """``1, Yes | 2, No`` -> {"1": "Yes", "2": "No"}; raises ValueError on a malformed choice."""
    result: dict[str, str] = {}
    for part in text.split("|"):
        if not part.strip():
            raise ValueError("an empty choice between '|' separators")
        code, sep, label = part.partition(",")
        code = code.strip()
        if not sep or not _CODE.match(code):
            raise ValueError(f"choice {part.strip()!r} is not 'code, label'")
        if code in result:
            raise ValueError(f"choice code {code!r} appears twice")
        result[code] = label.strip()
    return result


@dataclass(frozen=True)
class Dictionary:
    fields: tuple[Field, ...]

    @property
    def record_id_field(self) -> str:
        return self.fields[0].name

    @cached_property
    def by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @property
    def forms(self) -> list[str]:
        return list(dict.fromkeys(f.form for f in self.fields))

    def form_fields(self, form: str) -> list[Field]:
        return [f for f in self.fields if f.form == form]


def read_dictionary(text: str) -> Dictionary:
    """Parse a REDCap data dictionary CSV; raises only ``DictionaryError``."""
    if not isinstance(text, str):
        raise DictionaryError("a data dictionary is CSV text")
    try:
        rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    except csv.Error as exc:
        raise DictionaryError(f"not a readable CSV: {exc}") from None
    if not rows:
        raise DictionaryError("the data dictionary is empty")
    header = [h.strip() for h in rows[0]]
    if len(header) != len(HEADERS) or [h.lower() for h in header] != [h.lower() for h in HEADERS]:
        raise DictionaryError(f"line 1: the header must be REDCap's {len(HEADERS)} columns starting "
                              f"{HEADERS[0]!r}; found {len(header)} columns starting {header[:1]}")
    parsed: list[Field] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(HEADERS):
            raise DictionaryError(f"line {line}: {len(row)} cells, expected {len(HEADERS)}")
        parsed.append(Field(*row))
    if not parsed:
        raise DictionaryError("the data dictionary has no fields")
    dictionary = Dictionary(tuple(parsed))
    _check(dictionary, {f.name: line for line, f in enumerate(parsed, start=2)})
    return dictionary


def _check(d: Dictionary, lines: dict[str, int]) -> None:
    seen: set[str] = set()
    columns: set[str] = set()
    for line, f in enumerate(d.fields, start=2):
        where = f"line {line}, field {f.name!r}"
        if not _NAME.match(f.name) or len(f.name) > 100:
            raise DictionaryError(f"{where}: a field name is lower-case letters, digits and '_', starting with a letter")
        if f.name in seen:
            raise DictionaryError(f"{where}: the field name is used twice")
        seen.add(f.name)
        if not _NAME.match(f.form):
            raise DictionaryError(f"{where}: form name {f.form!r} is not lower-case letters, digits and '_'")
        if f.field_type not in FIELD_TYPES:
            raise DictionaryError(f"{where}: field type {f.field_type!r} is not one of {', '.join(FIELD_TYPES)}")
        if f.field_type in CHOICE_TYPES:
            try:
                parse_choices(f.choices_or_calc)
            except ValueError as exc:
                raise DictionaryError(f"{where}: choices: {exc}") from None
        if f.field_type == "calc":
            try:
                parse(f.choices_or_calc)
            except LogicError as exc:
                raise DictionaryError(f"{where}: calculation: {exc}") from None
        if f.validation and f.field_type == "text":
            if f.validation not in VALIDATIONS:
                raise DictionaryError(f"{where}: validation {f.validation!r} is not one of {', '.join(VALIDATIONS)}")
            for label, limit in (("min", f.validation_min), ("max", f.validation_max)):
                if limit and limit not in ("today", "now") and validate_value(f, limit, check_range=False):
                    raise DictionaryError(f"{where}: validation {label} {limit!r} is not a valid {f.validation}")
        for flag, value in (("Identifier?", f.identifier), ("Required Field?", f.required)):
            if value.strip().lower() not in ("", "y"):
                raise DictionaryError(f"{where}: {flag} is 'y' or empty, not {value!r}")
        if f.branching_logic.strip():
            try:
                tree = parse(f.branching_logic)
            except LogicError as exc:
                raise DictionaryError(f"{where}: branching logic: {exc}") from None
            unknown = sorted(ref for ref in referenced_fields(tree) if ref not in lines)
            if unknown:
                raise DictionaryError(f"{where}: branching logic refers to unknown field(s) {', '.join(unknown)}")
        problem = _tag_problem(f)
        if problem:
            raise DictionaryError(f"{where}: field annotation: {problem}")
        for column in f.export_columns():
            if column in columns:
                raise DictionaryError(f"{where}: export column {column!r} collides with another field's")
            columns.add(column)


def _tag_problem(f: Field) -> str | None:
    tags = f.tags
    for name in ("OMOP-UNIT", "PROM-OMOP"):
        if name in tags and not re.fullmatch(r"\d{1,10}", tags[name]):
            return f"@{name} is a concept id (digits), not {tags[name]!r}"
    for name, pattern, kind in (("OMOP", r"\d{1,10}", "a concept id (digits)"),
                                ("LOINC", r"\d{1,7}-\d", "a LOINC code like 39156-5")):
        if name not in tags:
            continue
        targets = choice_targets(tags[name])
        if targets is None:
            if not re.fullmatch(pattern, tags[name]):
                return f"@{name} is {kind}, not {tags[name]!r}"
            continue
        if f.field_type != "checkbox":
            return f"@{name}=CODE:TARGET,... maps the choices of a checkbox; a {f.field_type} field takes one target"
        for code, target in targets.items():
            if code not in f.choices:
                return f"@{name} maps choice {code!r}, which is not one of the field's ({', '.join(f.choices)})"
            if not re.fullmatch(pattern, target):
                return f"@{name} for choice {code!r} is {kind}, not {target!r}"
    if "OMOP-TABLE" in tags and tags["OMOP-TABLE"] not in OMOP_TABLES:
        return f"@OMOP-TABLE is {' or '.join(OMOP_TABLES)}, not {tags['OMOP-TABLE']!r}"
    if "PROM" in tags:
        instrument, _, item = tags["PROM"].partition(":")
        if item not in PROM_ITEMS.get(instrument, ()):
            return (f"@PROM is INSTRUMENT:ITEM ({', '.join(PROM_ITEMS)}; items "
                    f"{', '.join(PROM_ITEMS.get(instrument, PROM_ITEMS['eq5d5l']))}), not {tags['PROM']!r}")
        if f.field_type == "checkbox":
            return "a PROM item is one answer, not a checkbox"
    if "PROM-VALUESET" in tags:
        from mercia.proms.valuesets import SPECS

        if tags["PROM-VALUESET"] not in SPECS:
            return f"@PROM-VALUESET is one of {', '.join(SPECS)}, not {tags['PROM-VALUESET']!r}"
    if ("OMOP" in tags or "LOINC" in tags) and f.field_type in ("descriptive", "file"):
        return f"a {f.field_type} field cannot be written into OMOP"
    return None


def referenced_fields(tree: dict) -> set[str]:
    if tree.get("op") == "field":
        return {tree["name"]}
    found: set[str] = set()
    for arg in tree.get("args", ()):
        found |= referenced_fields(arg)
    return found


def write_dictionary(d: Dictionary) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADERS)
    for f in d.fields:
        writer.writerow(f.cells())
    return out.getvalue()


def validate_value(f: Field, value: str, check_range: bool = True) -> str | None:
    """Why ``value`` is not acceptable for field ``f`` (None when it is); blank is always acceptable here."""
    if value == "":
        return None
    if _CONTROL.search(value):
        return "contains a control character"
    if f.field_type in ("dropdown", "radio", "yesno", "truefalse"):
        return None if value in f.choices else f"{value!r} is not one of the codes {', '.join(f.choices)}"
    if f.field_type == "checkbox":
        return None if value in ("0", "1") else "a checkbox option is '1' (ticked) or '0'"
    if f.field_type in ("calc", "descriptive", "file"):
        return f"a {f.field_type} field is not entered"
    if f.field_type == "slider":
        return None if _INTEGER.match(value) and 0 <= int(value) <= 100 else "a slider value is a whole number 0-100"
    kind = f.validation
    parsed: object = value
    if kind == "integer":
        if not _INTEGER.match(value):
            return f"{value!r} is not a whole number"
        parsed = int(value)
    elif kind == "number":
        if not _NUMBER.match(value):
            return f"{value!r} is not a number"
        parsed = float(value)
    elif kind == "date_ymd":
        try:
            parsed = date.fromisoformat(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else None
        except ValueError:
            parsed = None
        if parsed is None:
            return f"{value!r} is not a date YYYY-MM-DD"
    elif kind in ("datetime_ymd", "datetime_seconds_ymd"):
        pattern = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}" + (":\\d{2}" if kind == "datetime_seconds_ymd" else "")
        try:
            parsed = datetime.fromisoformat(value) if re.fullmatch(pattern, value) else None
        except ValueError:
            parsed = None
        if parsed is None:
            return f"{value!r} is not a date and time YYYY-MM-DD HH:MM{':SS' if 'seconds' in kind else ''}"
    elif kind == "email" and not _EMAIL.match(value):
        return f"{value!r} is not an e-mail address"
    if check_range and kind in ("integer", "number", "date_ymd", "datetime_ymd", "datetime_seconds_ymd"):
        for bound, limit in (("min", f.validation_min), ("max", f.validation_max)):
            if not limit:
                continue
            if limit in ("today", "now"):
                limit = date.today().isoformat() if kind == "date_ymd" else datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            converted = (int(limit) if kind == "integer" else float(limit) if kind == "number"
                         else date.fromisoformat(limit) if kind == "date_ymd" else datetime.fromisoformat(limit))
            if (bound == "min" and parsed < converted) or (bound == "max" and parsed > converted):
                return f"{value!r} is {'below the minimum' if bound == 'min' else 'above the maximum'} {limit}"
    return None


@dataclass(frozen=True)
class Change:
    field: str
    kind: str                      # added, removed or changed
    columns: dict[str, tuple[str, str]]   # for changed: column -> (old, new)

    def to_dict(self) -> dict:
        return {"field": self.field, "kind": self.kind,
                "columns": {c: {"old": o, "new": n} for c, (o, n) in self.columns.items()}}


def diff(old: Dictionary, new: Dictionary) -> list[Change]:
    """Fields added, removed and changed (with each changed column's old and new text)."""
    names = [f.name for f in fields(Field)]
    changes = [Change(f.name, "removed", {}) for f in old.fields if f.name not in new.by_name]
    for f in new.fields:
        before = old.by_name.get(f.name)
        if before is None:
            changes.append(Change(f.name, "added", {}))
        elif before != f:
            changes.append(Change(f.name, "changed", {
                HEADERS[i]: (a, b) for i, (a, b) in enumerate(zip(before.cells(), f.cells(), strict=True))
                if a != b and names[i] != "name"}))
    return changes
