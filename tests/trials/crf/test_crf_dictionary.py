"""REDCap data dictionaries: lossless round trip, checks naming line and field, diffs, garbage."""

import csv
import io
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercia.trials.crf.dictionary import (
    HEADERS, DictionaryError, Field, diff, read_dictionary, validate_value, write_dictionary,
)

HERE = Path(__file__).parent / "dictionaries"
SAMPLES = sorted(HERE.glob("*.csv"))


def _csv(*rows: list[str]) -> str:
    out = io.StringIO()
    rows = [r + ["", "text"][len(r) - 2:] if len(r) < 4 else r for r in rows]   # type text unless given
    csv.writer(out).writerows([list(HEADERS), *(r + [""] * (18 - len(r)) for r in rows)])
    return out.getvalue()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_round_trip_is_byte_for_byte(path):
    text = path.read_text()
    dictionary = read_dictionary(text)
    assert write_dictionary(dictionary) == text
    assert read_dictionary(write_dictionary(dictionary)) == dictionary


def test_parsed_views_of_a_dictionary():
    d = read_dictionary((HERE / "baseline.csv").read_text())
    assert d.record_id_field == "record_id"
    assert d.forms == ["enrolment", "demographics"]
    smoking = d.by_name["smoking"]
    assert smoking.choices == {"1": "Cigarettes", "2": "Cigars", "3": "Vaping", "98": "None"}
    assert smoking.export_columns() == ["smoking___1", "smoking___2", "smoking___3", "smoking___98"]
    assert d.by_name["ethnicity"].choices["D"] == "Black, African, Caribbean or Black British"
    assert d.by_name["initials"].is_identifier and not d.by_name["sex"].is_identifier
    assert d.by_name["consent_date"].is_required
    assert d.by_name["pregnant"].choices == {"1": "Yes", "0": "No"}
    assert "new lines" in d.by_name["notes"].note


def test_a_file_with_crlf_and_a_byte_order_mark_reads_the_same():
    text = (HERE / "outcomes.csv").read_text()
    assert read_dictionary("\ufeff" + text.replace("\n", "\r\n")) == read_dictionary(text)


@pytest.mark.parametrize(("rows", "message"), [
    ([["record_id", "f"], ["Age", "f"]], "line 3, field 'Age': a field name is lower-case"),
    ([["record_id", "f"], ["record_id", "f"]], "line 3, field 'record_id': the field name is used twice"),
    ([["record_id", "f", "", "color"]], "line 2, field 'record_id': field type 'color'"),
    ([["record_id", "f"], ["sex", "f", "", "radio", "Sex", "1 Female | 2, Male"]], "line 3, field 'sex': choices"),
    ([["record_id", "f"], ["bmi", "f", "", "calc", "BMI", "[w] / "]], "line 3, field 'bmi': calculation"),
    ([["record_id", "f"], ["d", "f", "", "text", "D", "", "", "date_dmy"]], "validation 'date_dmy'"),
    ([["record_id", "f"], ["d", "f", "", "text", "D", "", "", "integer", "one"]], "validation min 'one'"),
    ([["record_id", "f"], ["x", "f", "", "text", "X", "", "", "", "", "", "yes"]], "Identifier? is 'y' or empty"),
    ([["record_id", "f"], ["x", "f", "", "text", "X", "", "", "", "", "", "", "[nope] = '1'"]],
     "refers to unknown field(s) nope"),
    ([["record_id", "f"], ["x", "f", "", "text", "X", "", "", "", "", "", "", "[record_id] = = 1"]],
     "line 3, field 'x': branching logic: cannot read"),
    ([["record_id", "f"], ["a", "f", "", "checkbox", "A", "1, x"], ["a___1", "f"]], "collides"),
])
def test_bad_dictionaries_name_the_line_and_field(rows, message):
    with pytest.raises(DictionaryError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        read_dictionary(_csv(*rows))


def test_wrong_header_or_cell_count():
    with pytest.raises(DictionaryError, match="line 1: the header must be REDCap's 18 columns"):
        read_dictionary("field_name,form_name\nrecord_id,f\n")
    with pytest.raises(DictionaryError, match="line 2: 3 cells, expected 18"):
        read_dictionary(_csv() + "record_id,f,x\n")
    with pytest.raises(DictionaryError, match="no fields"):
        read_dictionary(_csv())


def test_value_validation():
    d = read_dictionary((HERE / "baseline.csv").read_text())
    f = d.by_name
    assert validate_value(f["height_cm"], "172.5") is None
    assert "above the maximum 250" in validate_value(f["height_cm"], "251")
    assert "not a number" in validate_value(f["height_cm"], "tall")
    assert "not a date" in validate_value(f["dob"], "2023-02-30")
    assert "below the minimum 2020-01-01" in validate_value(f["consent_date"], "2019-12-31")
    assert "above the maximum" in validate_value(f["consent_date"], "2999-01-01")
    assert "not one of the codes" in validate_value(f["sex"], "4")
    assert validate_value(f["cig_per_day"], "3") is None and "whole number" in validate_value(f["cig_per_day"], "3.5")
    assert "e-mail" in validate_value(f["email"], "not-an-address")
    assert "not entered" in validate_value(f["bmi"], "22")
    assert validate_value(f["notes"], "line\nbreak") is None and "control" in validate_value(f["notes"], "bell\x07")
    assert validate_value(f["sex"], "") is None


def test_diff_lists_added_removed_and_changed_columns():
    old = read_dictionary((HERE / "baseline.csv").read_text())
    fields = [f for f in old.fields if f.name != "notes"]
    fields[4] = replace(fields[4], choices_or_calc="1, Female | 2, Male")
    fields.append(Field("waist_cm", "demographics", field_type="text", label="Waist", validation="number"))
    new = read_dictionary(write_dictionary(type(old)(tuple(fields))))
    changes = {c.field: c for c in diff(old, new)}
    assert changes["notes"].kind == "removed" and changes["waist_cm"].kind == "added"
    assert changes["sex"].columns == {"Choices, Calculations, OR Slider Labels": (
        "1, Female | 2, Male | 3, Prefer not to say", "1, Female | 2, Male")}
    assert len(changes) == 3


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_garbage_text_raises_only_dictionary_error(text):
    try:
        read_dictionary(text)
    except DictionaryError:
        pass


_cell = st.one_of(st.sampled_from(["", "y", "record_id", "f", "text", "radio", "calc", "checkbox", "1, a | 2, b",
                                   "[record_id] = '1'", "integer", "date_ymd", "today", "((", "1,", "|"]), st.text(max_size=8))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_cell, min_size=18, max_size=18), min_size=1, max_size=5))
def test_well_formed_csv_with_garbage_cells_raises_only_dictionary_error(rows):
    out = io.StringIO()
    csv.writer(out).writerows([list(HEADERS), *rows])
    try:
        read_dictionary(out.getvalue())
    except DictionaryError:
        pass
