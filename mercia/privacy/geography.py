"""Postcode -> LSOA -> IMD decile, so that deprivation survives while the postcode is dropped.

Loaders read the published layouts as they come:
- ONS Postcode Directory (ONSPD) CSV: ``pcds`` (postcode with one space) and ``lsoa11`` / ``lsoa21``.
- English Indices of Deprivation 2019 (File 1/7) and 2025: a column whose header starts
  ``LSOA code (2011)`` or ``LSOA code (2021)`` and one starting ``Index of Multiple Deprivation (IMD) Decile``.
The LSOA vintage of the IMD file picks the ONSPD column (IMD 2019 uses 2011 LSOAs, IMD 2025 uses 2021).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

POSTCODE_LOOKUP_ENV = "MERCIA_POSTCODE_LOOKUP"
IMD_FILE_ENV = "MERCIA_IMD_FILE"


class GeographyError(Exception):
    """A lookup file whose layout is not recognised; the message names file and missing column."""


def _header(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    return [d[0] for d in con.execute(
        "SELECT * FROM read_csv(?, header=true, all_varchar=true) LIMIT 0", [str(path)]).description]


def _find(columns: list[str], pattern: str, path: Path, what: str) -> str:
    for col in columns:
        if re.match(pattern, col, flags=re.IGNORECASE):
            return col
    raise GeographyError(f"{path}: no {what} column (looked for /{pattern}/ in {len(columns)} columns)")


@dataclass(frozen=True)
class GeographyLookup:
    """Postcode (pcds form) -> LSOA code and IMD decile, held as an Arrow table."""

    table: pa.Table
    lsoa_vintage: str

    @classmethod
    def from_files(cls, onspd: Path | str, imd: Path | str) -> GeographyLookup:
        onspd, imd = Path(onspd), Path(imd)
        con = duckdb.connect()
        imd_cols = _header(con, imd)
        lsoa_col = _find(imd_cols, r"^LSOA code \((2011|2021)\)", imd, "LSOA code")
        decile_col = _find(imd_cols, r"^Index of Multiple Deprivation \(IMD\) Decile", imd, "IMD decile")
        vintage = re.search(r"(2011|2021)", lsoa_col).group(1)
        onspd_cols = _header(con, onspd)
        onspd_lsoa = _find(onspd_cols, rf"^lsoa{vintage[2:]}(cd)?$", onspd, f"lsoa{vintage[2:]}")
        pcds = _find(onspd_cols, r"^pcds$", onspd, "pcds")
        table = con.sql(f"""
            SELECT upper(o."{pcds}") AS postcode, o."{onspd_lsoa}" AS lsoa,
                   CAST(i."{decile_col}" AS INTEGER) AS imd_decile
            FROM read_csv(?, header=true, all_varchar=true) o
            LEFT JOIN read_csv(?, header=true, all_varchar=true) i ON i."{lsoa_col}" = o."{onspd_lsoa}"
        """, params=[str(onspd), str(imd)]).to_arrow_table()
        con.close()
        return cls(table, vintage)

    @classmethod
    def from_environment(cls) -> GeographyLookup | None:
        onspd, imd = os.environ.get(POSTCODE_LOOKUP_ENV), os.environ.get(IMD_FILE_ENV)
        return cls.from_files(onspd, imd) if onspd and imd else None
