"""What survives the door: date-of-birth precision, and the normalisations behind linkage tokens."""

from __future__ import annotations

import datetime as dt
import os
import re
import unicodedata
from enum import Enum


class DobPolicy(str, Enum):
    """How much of a date of birth reaches the CDM (default: year and month)."""

    YEAR = "year"
    YEAR_MONTH = "year_month"
    FULL = "full"


def dob_policy() -> DobPolicy:
    return DobPolicy(os.environ.get("MERCIA_DOB_POLICY", DobPolicy.YEAR_MONTH.value))


def reduced_birth_columns_sql(column: str, policy: DobPolicy) -> str:
    """SQL for year/month/day_of_birth and birth_datetime from an ISO date string that may be
    partial (``YYYY``, ``YYYY-MM``), reduced to ``policy`` (DuckDB and PostgreSQL)."""
    month = (f"CASE WHEN length({column}) >= 7 THEN CAST(substr({column}, 6, 2) AS BIGINT) END"
             if policy != DobPolicy.YEAR else "CAST(NULL AS BIGINT)")
    day = (f"CASE WHEN length({column}) = 10 THEN CAST(substr({column}, 9, 2) AS BIGINT) END"
           if policy == DobPolicy.FULL else "CAST(NULL AS BIGINT)")
    birth_datetime = (f"CASE WHEN length({column}) = 10 THEN CAST({column} AS TIMESTAMP) END"
                      if policy == DobPolicy.FULL else "CAST(NULL AS TIMESTAMP)")
    return (f"CAST(left({column}, 4) AS BIGINT) AS year_of_birth, {month} AS month_of_birth, "
            f"{day} AS day_of_birth, {birth_datetime} AS birth_datetime")


def valid_partial_date(value: str | None) -> str | None:
    """The value if it is a real ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` date, else None."""
    if not value:
        return None
    value = value[:10]
    padded = {4: value + "-01-01", 7: value + "-01", 10: value}.get(len(value))
    try:
        return value if padded and dt.date.fromisoformat(padded) else None
    except ValueError:
        return None


_NOT_LETTER = re.compile(r"[^A-Z]")


def normalise_name(name: str | None) -> str | None:
    """Upper-case ASCII letters only: ``O'Brien-Smith`` and ``obrien smith`` agree; accents folded."""
    if not name:
        return None
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().upper()
    return _NOT_LETTER.sub("", folded) or None


_SOUNDEX_CODES = {**dict.fromkeys("BFPV", "1"), **dict.fromkeys("CGJKQSXZ", "2"), **dict.fromkeys("DT", "3"),
                  "L": "4", **dict.fromkeys("MN", "5"), "R": "6"}


def soundex(name: str | None) -> str | None:
    """American Soundex (Knuth, TAOCP vol. 3): first letter and three digits; H and W do not
    separate equal codes, vowels do."""
    letters = normalise_name(name)
    if not letters:
        return None
    digits, previous = [], _SOUNDEX_CODES.get(letters[0], "")
    for ch in letters[1:]:
        code = _SOUNDEX_CODES.get(ch, "")
        if code and code != previous:
            digits.append(code)
        if ch not in "HW":
            previous = code
    return (letters[0] + "".join(digits) + "000")[:4]


def postcode_district(postcode: str | None) -> str | None:
    """The outward code (``LS8 3DR`` -> ``LS8``), which survives moves within a town."""
    if not postcode:
        return None
    compact = re.sub(r"\s", "", postcode.upper())
    return compact[:-3] if len(compact) > 4 else compact or None


def normalise_postcode(postcode: str | None) -> str | None:
    """Postcodes compared as ONSPD's ``pcds`` form: outward code, one space, inward code."""
    if not postcode:
        return None
    compact = re.sub(r"\s", "", postcode.upper())
    return f"{compact[:-3]} {compact[-3:]}" if len(compact) > 4 else compact or None
