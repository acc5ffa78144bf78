"""CSV cells a spreadsheet would run as formulas are written as text; numbers and plain text are not touched."""

from __future__ import annotations

import csv
import io

import pyarrow as pa

from mercia.api.routes.data import export_csv
from mercia.privacy.disclosure import get_policy
from mercia.privacy.spreadsheet import inert_rows, inert_table

from .test_disclosure import category_table

FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1:A9)", "\t=1", "\r=1"]


def test_text_beginning_like_a_formula_gets_a_quote_and_numbers_do_not():
    rows = list(inert_rows([[text, -1.5, -3, None, "a=b", ""] for text in FORMULAS]))
    assert rows == [["'" + text, -1.5, -3, None, "a=b", ""] for text in FORMULAS]
    assert list(inert_rows([{"reason": "=1", "n": -2}])) == [{"reason": "'=1", "n": -2}]


def test_an_arrow_tables_text_columns_are_made_inert_and_its_numbers_kept():
    table = pa.table({"id": FORMULAS + ["p1", None], "score": [-1.5] * 6 + [0.5, None],
                      "answer": pa.array(["-1"] * 8, pa.large_string())})
    made = inert_table(table)
    assert made.column("id").to_pylist() == ["'" + text for text in FORMULAS] + ["p1", None]
    assert made.column("score").to_pylist() == table.column("score").to_pylist()
    assert made.column("answer").to_pylist() == ["'-1"] * 8 and made.schema == table.schema


def test_a_released_tables_csv_writes_a_formula_label_as_text():
    table = category_table({"=HYPERLINK(\"http://x\",\"y\")": 40, "-1.5": 30, "c": 3})
    lines = list(csv.reader(io.StringIO(get_policy("hes").apply(table).to_csv())))
    assert [line[0] for line in lines[1:]] == ["'=HYPERLINK(\"http://x\",\"y\")", "'-1.5", "c"]
    assert lines[3][1:] == ["*", "*"]


def test_an_airlock_csv_download_writes_a_formula_as_text_and_a_negative_number_as_it_is():
    content = {"tables": [{"title": "Rules", "redacted": [[1, "count_persons"]], "redacted_marker": "[REDACTED]",
                           "columns": [{"name": "rule"}, {"name": "count_persons"}, {"name": "change"}],
                           "rows": [{"rule": "@SUM(A1:A9)", "count_persons": 25, "change": -1.5},
                                    {"rule": "age 18+", "count_persons": 3, "change": -0.25}]}]}
    lines = list(csv.reader(io.StringIO(export_csv(content))))
    assert lines[2:4] == [["'@SUM(A1:A9)", "25", "-1.5"], ["age 18+", "[REDACTED]", "-0.25"]]
