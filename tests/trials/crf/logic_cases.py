"""Hypothesis strategies for REDCap logic expressions and records (shared by the logic tests)."""

from hypothesis import strategies as st

VALUES = ["", "0", "1", "2", "2.5", "-3", "abc", "ABC", "2020-01-31", "2021-03-01 10:00", "2020-02-30", "1e3",
          " 7 ", "10", "9"]
FIELDS = ["a", "b", "c", "d"]

leaf = st.one_of(
    st.sampled_from([f"[{f}]" for f in FIELDS] + ["[ev_1][a]", "[ev_2][b]", "[chk(1)]", "[chk(2)]"]),
    st.integers(0, 20).map(str),
    st.sampled_from(["0.5", "2.25", "100", ".5"]),
    st.sampled_from(["'1'", "''", "'abc'", "'2020-01-01'", "\"2\"", "true", "false"]),
)


def _extend(inner):
    binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "^", "=", "<>", "<", ">", "<=", ">=", "and", "or"]),
                       inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    # Unbracketed, so precedence is exercised too (a bare comparison could chain into 'a = b = c').
    bare = st.tuples(inner, st.sampled_from(["+", "*", "-", "and", "or"]), inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}")
    return st.one_of(
        binary, bare,
        inner.map(lambda x: f"-{x}"),
        st.tuples(inner, inner, inner).map(lambda t: f"if({t[0]}, {t[1]}, {t[2]})"),
        st.tuples(st.sampled_from(["sum", "mean", "min", "max"]), st.lists(inner, min_size=1, max_size=4)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(st.sampled_from(["round", "roundup", "rounddown"]), inner, st.integers(0, 3)).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        inner.map(lambda x: f"abs({x})"),
        st.tuples(st.sampled_from(["[a]", "[b]", "'2020-01-31'", "'2024-02-29 23:59'"]),
                  st.sampled_from(["[c]", "[d]", "'2021-03-01 10:00'", "'today'"]),
                  st.sampled_from(["'y'", "'M'", "'d'", "'h'", "'m'", "'s'", "'x'"]),
                  st.sampled_from(["", ", 'ymd', true", ", 'ymd', false"])).map(
            lambda t: f"datediff({t[0]}, {t[1]}, {t[2]}{t[3]})"),
    )


expressions = st.recursive(leaf, _extend, max_leaves=10)
records = st.fixed_dictionaries({
    "values": st.fixed_dictionaries({**{f: st.sampled_from(VALUES) for f in FIELDS},
                                     "chk___1": st.sampled_from(["0", "1", ""])}),
    "events": st.fixed_dictionaries({"ev_1": st.fixed_dictionaries({"a": st.sampled_from(VALUES)}),
                                     "ev_2": st.fixed_dictionaries({"b": st.sampled_from(VALUES)})}),
})
