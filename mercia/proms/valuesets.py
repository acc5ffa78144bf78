"""EQ-5D value sets, loaded as data from the ``eq5d`` R package's tables (MIT), never re-typed.

Each value set is turned once into a lookup array holding the index of every health state
(3,125 for the 5L, 243 for the 3L), so scoring a million responses is one array gather.
Tables: ``VT.csv`` (5L value sets by country), ``TTO.csv`` (3L time trade-off sets), ``CW.csv``
(5L -> 3L crosswalk index per five-digit state) and ``references.csv`` (the DOI of each set).
The directory is ``$MERCIA_EQ5D_DIR``, else ``$MERCIA_SHARED_DATA/proms/eq5d``, else the region's
shared data folder beside the repository.
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DIMENSIONS = ("MO", "SC", "UA", "PD", "AD")


class ValueSetError(ValueError):
    """A value set that is unknown, missing from the tables or uses terms this scorer lacks."""


@dataclass(frozen=True)
class ValueSetSpec:
    id: str
    instrument: str          # the instrument whose answers it scores: eq5d5l or eq5d3l
    table: str               # VT, TTO or CW
    column: str              # the country column in that table
    version: str             # references.csv Version (the scale the index is on)
    reference_type: str      # references.csv Type
    title: str
    decimals: int = 3        # the published sets are stated to three decimals


SPECS: dict[str, ValueSetSpec] = {s.id: s for s in (
    ValueSetSpec("england_2018", "eq5d5l", "VT", "England", "EQ-5D-5L", "VT",
                 "EQ-5D-5L value set for England (Devlin et al. 2018)"),
    ValueSetSpec("uk_2026", "eq5d5l", "VT", "UK", "EQ-5D-5L", "VT",
                 "EQ-5D-5L value set for the UK (Rowen et al. 2026)"),
    ValueSetSpec("crosswalk_uk_2012", "eq5d5l", "CW", "UK", "EQ-5D-5L", "CW",
                 "EQ-5D-5L to 3L crosswalk, UK 3L index (van Hout et al. 2012)"),
    ValueSetSpec("uk_1997", "eq5d3l", "TTO", "UK", "EQ-5D-3L", "TTO",
                 "EQ-5D-3L UK time trade-off value set (Dolan 1997)"),
)}

# Terms of the additive models implemented here; any other non-empty coefficient is refused.
_VT_TERMS = {"StartValue", "Intercept"} | {f"{d}{n}" for d in DIMENSIONS for n in range(1, 6)}
_TTO_TERMS = {"FullHealth", "AtLeastOne2Or3", "AtLeastOne3"} | {f"{d}{n}" for d in DIMENSIONS for n in (2, 3)}


@dataclass(frozen=True)
class ValueSet:
    spec: ValueSetSpec
    doi: str
    levels: int
    lookup: np.ndarray       # index of every state, in state order 11111, 11112, ...

    @property
    def id(self) -> str:
        return self.spec.id


def tables_dir() -> Path:
    if os.environ.get("MERCIA_EQ5D_DIR"):
        return Path(os.environ["MERCIA_EQ5D_DIR"])
    shared = os.environ.get("MERCIA_SHARED_DATA")
    if shared:
        return Path(shared) / "proms" / "eq5d"
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "proms" / "eq5d"


def _read(name: str) -> tuple[list[str], dict[str, list[str]]]:
    path = tables_dir() / name
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise ValueSetError(f"EQ-5D table {path} not found; set MERCIA_EQ5D_DIR to the eq5d tables folder") from None
    header = rows[0]
    return header, {r[0]: r for r in rows[1:] if r}


def _coefficients(name: str, column: str, allowed: set[str]) -> dict[str, float]:
    header, rows = _read(name)
    if column not in header:
        raise ValueSetError(f"{name} has no column {column!r}")
    i = header.index(column)
    # NA and an empty cell both mean the term is not in the model (the tables use both).
    found = {term: float(row[i]) for term, row in rows.items() if row[i] not in ("", "NA")}
    extra = sorted(set(found) - allowed)
    if extra:
        raise ValueSetError(f"{name} column {column} uses terms this scorer does not implement: {extra}")
    return found


def all_states(levels: int) -> np.ndarray:
    """Every health state as a (levels**5, 5) array of levels, in lexicographic order."""
    return np.array(list(itertools.product(range(1, levels + 1), repeat=5)), dtype=np.int8)


def _vt_lookup(column: str) -> np.ndarray:
    c = _coefficients("VT.csv", column, _VT_TERMS)
    states = all_states(5)
    values = np.full(len(states), c.get("StartValue", 1.0))
    impaired = (states > 1).any(axis=1)
    values += np.where(impaired, c.get("Intercept", 0.0), 0.0)
    for d, dim in enumerate(DIMENSIONS):
        decrement = np.array([c.get(f"{dim}{n}", 0.0) for n in range(1, 6)])
        values += decrement[states[:, d] - 1]
    return values


def _tto_lookup(column: str) -> np.ndarray:
    c = _coefficients("TTO.csv", column, _TTO_TERMS)
    states = all_states(3)
    values = np.full(len(states), c.get("FullHealth", 1.0))
    values += np.where((states > 1).any(axis=1), c.get("AtLeastOne2Or3", 0.0), 0.0)
    values += np.where((states == 3).any(axis=1), c.get("AtLeastOne3", 0.0), 0.0)
    for d, dim in enumerate(DIMENSIONS):
        decrement = np.array([0.0, c.get(f"{dim}2", 0.0), c.get(f"{dim}3", 0.0)])
        values += decrement[states[:, d] - 1]
    return values


def _cw_lookup(column: str) -> np.ndarray:
    header, rows = _read("CW.csv")
    if column not in header:
        raise ValueSetError(f"CW.csv has no column {column!r}")
    i = header.index(column)
    states = all_states(5)
    keys = ["".join(map(str, s)) for s in states]
    missing = [k for k in keys if k not in rows]
    if missing:
        raise ValueSetError(f"CW.csv lacks {len(missing)} states, e.g. {missing[:3]}")
    return np.array([float(rows[k][i]) for k in keys])


def _doi(spec: ValueSetSpec) -> str:
    with (tables_dir() / "references.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if (row["Version"], row["Type"], row["Country"]) == (spec.version, spec.reference_type, spec.column):
                return row["DOI"]
    raise ValueSetError(f"references.csv has no DOI for {spec.version} {spec.reference_type} {spec.column}")


@cache
def value_set(value_set_id: str) -> ValueSet:
    spec = SPECS.get(value_set_id)
    if spec is None:
        raise ValueSetError(f"unknown value set {value_set_id!r}; known: {', '.join(SPECS)}")
    build = {"VT": _vt_lookup, "TTO": _tto_lookup, "CW": _cw_lookup}[spec.table]
    lookup = np.round(build(spec.column), spec.decimals)
    return ValueSet(spec, _doi(spec), 3 if spec.instrument == "eq5d3l" else 5, lookup)
