"""EQ-5D and Oxford scoring against the published tables, state by state, and refusal of bad answers."""

import csv
import itertools

import pyarrow as pa
import pytest

from mercia.proms.scoring import ScoringError, score_eq5d, score_oxford, score_vas
from mercia.proms.valuesets import ValueSetError, value_set

DIMS = ["MO", "SC", "UA", "PD", "AD"]


def _column(path, name):
    """{row label: value or None} for one country column, read independently of the scorer."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    i = rows[0].index(name)
    return {r[0]: (None if r[i] in ("", "NA") else float(r[i])) for r in rows[1:] if r}


def _states(levels):
    return ["".join(map(str, s)) for s in itertools.product(range(1, levels + 1), repeat=5)]


def _table(states):
    return pa.table({"id": [f"r{i}" for i in range(len(states))],
                     **{d: [s[k] for s in states] for k, d in enumerate(DIMS)}})


@pytest.mark.parametrize(("value_set_id", "country"), [("england_2018", "England"), ("uk_2026", "UK")])
def test_every_5l_state_matches_the_additive_model_of_the_table(eq5d_tables, value_set_id, country):
    c = _column(eq5d_tables / "VT.csv", country)
    states = _states(5)
    scored = score_eq5d(_table(states), value_set_id)
    assert scored.rejections == []
    got = scored.table.column("index").to_pylist()
    for state, index in zip(states, got, strict=True):
        expected = c["StartValue"] + (c["Intercept"] or 0) * (state != "11111")
        expected += sum(c[f"{d}{lvl}"] or 0 for d, lvl in zip(DIMS, state, strict=True))
        assert abs(index - round(expected, 3)) < 1e-9, state
    assert len(got) == 3125


def test_every_3l_state_matches_dolan_1997(eq5d_tables):
    c = _column(eq5d_tables / "TTO.csv", "UK")
    states = _states(3)
    got = score_eq5d(_table(states), "uk_1997", "eq5d3l").table.column("index").to_pylist()
    for state, index in zip(states, got, strict=True):
        expected = c["FullHealth"] + c["AtLeastOne2Or3"] * (state != "11111") + c["AtLeastOne3"] * ("3" in state)
        expected += sum(c[f"{d}{lvl}"] for d, lvl in zip(DIMS, state, strict=True) if lvl != "1")
        assert abs(index - round(expected, 3)) < 1e-9, state
    assert len(got) == 243


def test_crosswalk_is_the_published_lookup_for_every_state(eq5d_tables):
    table = _column(eq5d_tables / "CW.csv", "UK")
    states = _states(5)
    got = score_eq5d(_table(states), "crosswalk_uk_2012").table.column("index").to_pylist()
    assert got == [table[s] for s in states]


def test_published_anchor_values():
    """Worst and best states as stated in the papers: England 5L 55555 = -0.285 (Devlin 2018),
    UK 3L 33333 = -0.594 (Dolan 1997), and the crosswalk's 55555 on the 3L scale = -0.594."""
    five = _table(["11111", "55555"])
    assert score_eq5d(five, "england_2018").table.column("index").to_pylist() == [1.0, -0.285]
    assert score_eq5d(five, "crosswalk_uk_2012").table.column("index").to_pylist() == [1.0, -0.594]
    assert score_eq5d(_table(["11111", "33333", "11112"]), "uk_1997", "eq5d3l").table.column(
        "index").to_pylist() == [1.0, -0.594, 0.848]


def test_every_value_set_carries_its_doi():
    assert value_set("england_2018").doi == "10.1002/hec.3564"
    assert value_set("uk_2026").doi == "10.1016/j.jval.2026.03.008"
    assert value_set("crosswalk_uk_2012").doi == "10.1016/j.jval.2012.02.008"
    assert value_set("uk_1997").doi == "10.1097/00005650-199711000-00002"


def test_invalid_answers_are_rejected_per_row_and_never_scored():
    table = pa.table({"id": ["a", "b", "c", "d", "e", "f"],
                      "MO": ["1", "0", "6", None, "x", "2.5"], "SC": ["1"] * 6, "UA": ["1"] * 6,
                      "PD": ["1", "1", "1", "1", "1", ""], "AD": ["2"] * 6})
    scored = score_eq5d(table, "england_2018")
    assert scored.table.column("index").to_pylist() == [0.922, None, None, None, None, None]
    reasons = {(r.row, r.record, r.field): r.reason for r in scored.rejections}
    assert reasons[(2, "b", "MO")] == "must be a level from 1 to 5"
    assert reasons[(3, "c", "MO")] == "must be a level from 1 to 5"
    assert reasons[(4, "d", "MO")] == "missing answer"
    assert reasons[(5, "e", "MO")] == "must be a level from 1 to 5"
    assert reasons[(6, "f", "MO")] == "must be a level from 1 to 5"
    assert reasons[(6, "f", "PD")] == "missing answer"
    assert "row 3 (id c): MO = '6'" in str(next(r for r in scored.rejections if r.row == 3))


def test_3l_rejects_level_4_and_integer_columns_work():
    table = pa.table({"id": ["a", "b"], "MO": [1, 4], "SC": [1, 1], "UA": [1, 1], "PD": [1, 1], "AD": [3, 1]})
    scored = score_eq5d(table, "uk_1997", "eq5d3l")
    assert scored.table.column("index").to_pylist() == [round(1 - 0.081 - 0.269 - 0.236, 3), None]
    assert [(r.record, r.field) for r in scored.rejections] == [("b", "MO")]


def test_a_missing_dimension_or_wrong_value_set_is_refused():
    with pytest.raises(ScoringError, match="no column AD"):
        score_eq5d(pa.table({"id": ["a"], "MO": [1], "SC": [1], "UA": [1], "PD": [1]}), "england_2018")
    with pytest.raises(ValueSetError, match="scores eq5d5l, not eq5d3l"):
        score_eq5d(_table(["11111"]), "england_2018", "eq5d3l")
    with pytest.raises(ValueSetError, match="unknown value set"):
        value_set("atlantis_2030")


def test_vas_range():
    scored = score_vas(pa.table({"id": ["a", "b", "c"], "VAS": ["0", "100", "101"]}))
    assert scored.table.column("vas").to_pylist() == [0, 100, None]
    assert [r.record for r in scored.rejections] == ["c"]


def test_oxford_total_and_missing_item_rule():
    items = {f"q{i}": ["4", "2", "4", "4", "4"] for i in range(1, 13)}
    items["q5"] = ["4", "2", "4", "4", "5"]
    items["q1"] = ["4", "2", "", "", "4"]
    items["q2"] = ["4", "2", "", "", "4"]
    items["q3"] = ["4", "2", "0", "", "4"]
    items["q4"] = ["4", "2", "4", "", "4"]
    scored = score_oxford(pa.table({"id": ["full", "twos", "two_missing", "four_missing", "bad"], **items}))
    total = scored.table.column("score").to_pylist()
    assert total[0] == 48 and total[1] == 24
    assert total[2] == pytest.approx((0 + 4 * 9) * 12 / 10)   # two blanks take the mean of the ten answers
    assert total[3] is None and total[4] is None
    by_record = {r.record: r for r in scored.rejections}
    assert "4 items unanswered" in by_record["four_missing"].reason
    assert [(r.field, r.value) for r in scored.rejections if r.record == "bad"] == [("q5", "5")]
