"""Text cells a spreadsheet would run as a formula, made inert (OWASP "CSV Injection").

A spreadsheet opening a CSV reads a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula (and some
skip a leading tab or carriage return first): ``=HYPERLINK("http://x","y")`` typed into a survey by a member
of the public becomes a live link, or worse, in the data manager's spreadsheet.  Every CSV Mercia writes for a
person to open passes its text cells through here; a leading ``'`` makes the cell plain text.  Numbers held as
numbers (``-1.5``) are not text and stay as they are.  CSVs written for machines (the OMOP CDM export and the
backup) are not for spreadsheets and stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_START_PATTERN = "^([" + re.escape("".join(FORMULA_STARTS)) + "])"
INERT_PREFIX = "'"


def inert_cell(value: Any) -> Any:
    """``value`` with an ``'`` before it when it is text beginning like a formula; anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return INERT_PREFIX + value
    return value


def inert_rows(rows: Iterable[Any]) -> Iterable[Any]:
    """Rows for ``csv.writer`` (sequences) or ``csv.DictWriter`` (mappings), their text cells made inert."""
    for row in rows:
        if isinstance(row, Mapping):
            yield {name: inert_cell(value) for name, value in row.items()}
        else:
            yield [inert_cell(value) for value in row]


def inert_text(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A string array with every value beginning like a formula prefixed by ``'`` (nulls stay null)."""
    return pc.replace_substring_regex(values, _FORMULA_START_PATTERN, INERT_PREFIX + r"\1", max_replacements=1)


def inert_table(table: pa.Table) -> pa.Table:
    """``table`` with its string columns made inert; numeric, date and other columns untouched."""
    for index, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            table = table.set_column(index, field, inert_text(table.column(index)))
    return table
