"""Vectorised scoring of PROMs over Arrow tables: EQ-5D-5L/3L index, EQ VAS, Oxford Hip and Knee Scores.

Validation runs column by column with Arrow compute; only the rows that fail are then turned into
``Rejection`` records (row number, record id, field, value, reason), so a bad answer is never scored
and never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mercia.proms.valuesets import DIMENSIONS, SPECS, ValueSetError, value_set

INSTRUMENTS = {
    "eq5d5l": "EQ-5D-5L descriptive system (index from a value set) and EQ VAS",
    "eq5d3l": "EQ-5D-3L descriptive system (index from a value set) and EQ VAS",
    "ohs": "Oxford Hip Score, 12 items scored 0-4, total 0-48 (2007 scoring)",
    "oks": "Oxford Knee Score, 12 items scored 0-4, total 0-48 (2007 scoring)",
}
OXFORD_ITEMS = tuple(f"q{i}" for i in range(1, 13))
OXFORD_SCORING_VERSION = "2007 (items 0-4, total 0-48; up to two missing items take the mean of the rest)"


class ScoringError(ValueError):
    """The input cannot be scored at all (unknown instrument, a whole column missing)."""


@dataclass(frozen=True)
class Rejection:
    row: int                 # 1-based position in the input
    record: str              # the record id
    field: str
    value: str | None
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} (id {self.record}): {self.field} = {self.value!r}: {self.reason}"


@dataclass(frozen=True)
class Scored:
    table: pa.Table          # the input plus the score column (null where the row was rejected)
    rejections: list[Rejection]


def _to_numpy(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of a fixed-width or boolean Arrow array, read straight from its buffers:
    ``to_numpy`` and ``pa.array`` import pandas on first use, which costs more than scoring a million rows."""
    n, offset = len(array), array.offset
    validity, data = array.buffers()[:2]
    if pa.types.is_boolean(array.type):
        values = np.unpackbits(np.frombuffer(data, np.uint8), count=offset + n, bitorder="little")[offset:].view(bool)
    else:
        values = np.frombuffer(data, array.type.to_pandas_dtype(), count=offset + n)[offset:] if n else \
            np.empty(0, array.type.to_pandas_dtype())
    present = np.ones(n, bool) if validity is None or array.null_count == 0 else \
        np.unpackbits(np.frombuffer(validity, np.uint8), count=offset + n, bitorder="little")[offset:].view(bool)
    return values, present


def _float_array(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """A float64 Arrow array of ``values``, null where not ``valid`` (built from buffers, see ``_to_numpy``)."""
    data = pa.py_buffer(np.ascontiguousarray(values, np.float64))
    if valid.all():
        return pa.Array.from_buffers(pa.float64(), len(values), [None, data], null_count=0)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.float64(), len(values), [bitmap, data], null_count=int((~valid).sum()))


def _integer_answers(column: pa.ChunkedArray, low: int, high: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, valid, answered) for a column of answers that must be whole numbers in [low, high];
    ``answered`` is False where the cell is empty."""
    array = column.combine_chunks()
    if not pa.types.is_integer(array.type):
        try:  # clean files cast in one step; anything odd takes the checked path below
            array = array.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if pa.types.is_integer(array.type):
        values, answered = _to_numpy(array)
        values = values.astype(np.int64)
    else:
        text = pc.utf8_trim_whitespace(array.cast(pa.string()))
        answered = _to_numpy(pc.fill_null(pc.not_equal(text, ""), False))[0]
        numeric = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?[0-9]{1,6}$"), False)
        values = _to_numpy(pc.if_else(numeric, text, pa.scalar(str(low - 1))).cast(pa.int64()))[0]
    valid = answered & (values >= low) & (values <= high)
    return values, valid, answered


def _rejections(table: pa.Table, id_column: str, field: str, bad: np.ndarray, reason: str) -> list[Rejection]:
    positions = np.flatnonzero(bad)
    if not len(positions):
        return []
    taken = table.take(pa.array(positions))
    ids = taken.column(id_column).cast(pa.string()).to_pylist() if id_column in table.column_names else [""] * len(positions)
    values = taken.column(field).cast(pa.string()).to_pylist()
    return [Rejection(int(p) + 1, str(i), field, v, reason if v not in (None, "") else "missing answer")
            for p, i, v in zip(positions, ids, values, strict=True)]


def _require_columns(table: pa.Table, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ScoringError(f"input has no column {', '.join(missing)} (needs {', '.join(columns)})")


def score_eq5d(table: pa.Table, value_set_id: str, instrument: str = "eq5d5l", id_column: str = "id") -> Scored:
    """Add ``index`` to rows of MO, SC, UA, PD, AD answers (levels 1..5 for the 5L, 1..3 for the 3L)."""
    vs = value_set(value_set_id)
    if vs.spec.instrument != instrument:
        raise ValueSetError(f"value set {value_set_id} scores {vs.spec.instrument}, not {instrument}; "
                            f"for {instrument} use {', '.join(s.id for s in SPECS.values() if s.instrument == instrument)}")
    _require_columns(table, DIMENSIONS)
    position = np.zeros(table.num_rows, dtype=np.int64)   # the state's row in all_states(levels)
    ok = np.ones(table.num_rows, dtype=bool)
    rejections: list[Rejection] = []
    for dim in DIMENSIONS:
        values, valid, _ = _integer_answers(table.column(dim), 1, vs.levels)
        position = position * vs.levels + np.where(valid, values - 1, 0)
        ok &= valid
        rejections += _rejections(table, id_column, dim, ~valid, f"must be a level from 1 to {vs.levels}")
    column = _float_array(vs.lookup[position], ok)
    rejections.sort(key=lambda r: (r.row, DIMENSIONS.index(r.field)))
    return Scored(table.append_column("index", column), rejections)


def score_vas(table: pa.Table, column: str = "VAS", id_column: str = "id") -> Scored:
    """Check EQ VAS answers (whole numbers 0..100); the score is the answer itself."""
    _require_columns(table, (column,))
    values, valid, _ = _integer_answers(table.column(column), 0, 100)
    return Scored(table.append_column("vas", pa.array(values, mask=~valid)),
                  _rejections(table, id_column, column, ~valid, "must be a whole number from 0 to 100"))


def score_oxford(table: pa.Table, id_column: str = "id") -> Scored:
    """Oxford Hip/Knee Score total over items q1..q12 (each 0..4, 4 = best).

    Following the 2007 scoring (Murray et al., J Bone Joint Surg Br 2007;89:1010-4), one or two
    unanswered items take the mean of the answered ones; with three or more missing there is no score.
    """
    _require_columns(table, OXFORD_ITEMS)
    answered = np.zeros(table.num_rows, dtype=np.int64)
    total = np.zeros(table.num_rows, dtype=np.float64)
    bad_any = np.zeros(table.num_rows, dtype=bool)
    rejections: list[Rejection] = []
    for item in OXFORD_ITEMS:
        values, valid, given = _integer_answers(table.column(item), 0, 4)
        invalid = ~valid & given
        bad_any |= invalid
        rejections += _rejections(table, id_column, item, invalid, "must be a whole number from 0 to 4")
        answered += valid
        total += np.where(valid, values, 0)
    too_few = (answered < 10) & ~bad_any
    for p in np.flatnonzero(too_few):
        record = table.column(id_column)[int(p)].as_py() if id_column in table.column_names else ""
        rejections.append(Rejection(int(p) + 1, str(record), "q1..q12", None,
                                    f"{12 - answered[p]} items unanswered; at most 2 may be missing"))
    score = np.where(answered > 0, total * 12 / np.maximum(answered, 1), 0.0)
    rejections.sort(key=lambda r: r.row)
    return Scored(table.append_column("score", _float_array(score, ~(bad_any | too_few))), rejections)
