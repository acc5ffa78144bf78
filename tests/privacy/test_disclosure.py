"""Disclosure control on hand-built tables: each case is a table a reviewer would check by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercia.privacy.disclosure import (
    AnalysisResult, POLICIES, ColumnSpec, DisclosureError, PartitionSpec, StatTable, get_policy, midpoint_round,
    require_controlled,
)

OPENSAFELY = get_policy("opensafely")


def category_table(counts: dict[str, int], population: int | None = None) -> StatTable:
    """A frequency table whose rows partition ``population`` (sex, age band...)."""
    return StatTable(
        name="t", title="t", population=population if population is not None else sum(counts.values()),
        columns=[ColumnSpec(name="category", kind="label"),
                 ColumnSpec(name="count_persons", kind="count", denominator="population"),
                 ColumnSpec(name="percent", kind="derived", formula="percent",
                            args=["count_persons", "population"])],
        rows=[{"category": k, "count_persons": v} for k, v in counts.items()],
        partitions=[PartitionSpec(column="count_persons")])


def cells(table: StatTable, column: str = "count_persons") -> dict[str, object]:
    return {r["category"]: r[column] for r in table.rows}


def test_opensafely_example_table_redacts_then_rounds_and_recomputes_totals():
    # The worked example of the OpenSAFELY output-checking guidance: 3 redacted, others to nearest 5.
    table = StatTable(
        name="heart", title="heart disease by age band", population=116,
        columns=[ColumnSpec(name="category", kind="label"),
                 ColumnSpec(name="count_heart_disease", kind="count", denominator="count_population"),
                 ColumnSpec(name="count_population", kind="count")],
        rows=[{"category": "21-30", "count_heart_disease": 3, "count_population": 18},
              {"category": "31-40", "count_heart_disease": 8, "count_population": 23},
              {"category": "41-50", "count_heart_disease": 16, "count_population": 31},
              {"category": "51+", "count_heart_disease": 23, "count_population": 44}],
        partitions=[PartitionSpec(column="count_population")])
    out = OPENSAFELY.apply(table)
    assert cells(out, "count_heart_disease") == {"21-30": None, "31-40": 10, "41-50": 15, "51+": 25}
    assert cells(out, "count_population") == {"21-30": 20, "31-40": 25, "41-50": 30, "51+": 45}
    assert out.totals == [{"count_population": 120}]
    assert (0, "count_heart_disease") in out.redacted
    assert out.display_rows()[0]["count_heart_disease"] == "[REDACTED]"


def test_single_small_cell_cannot_be_recovered_from_the_total():
    # 40 + 30 + 3 = 73: hiding only the 3 would let anyone compute it from the population.
    out = OPENSAFELY.apply(category_table({"a": 40, "b": 30, "c": 3}))
    assert cells(out) == {"a": 40, "b": None, "c": None}
    assert out.totals == [{"count_persons": 40}]
    assert {(1, "count_persons"), (2, "count_persons")} <= set(out.redacted)


def test_secondary_suppression_skips_zero_cells_and_continues_until_the_hidden_sum_is_safe():
    # Hiding the zero would not help (hidden sum still 4): the next non-zero cell must go.
    out = OPENSAFELY.apply(category_table({"a": 0, "b": 4, "c": 2, "d": 50, "e": 60}))
    assert cells(out) == {"a": 0, "b": None, "c": None, "d": None, "e": 60}


def test_two_small_cells_whose_sum_is_still_small_force_a_third():
    out = OPENSAFELY.apply(category_table({"a": 2, "b": 3, "c": 9, "d": 100}))
    assert cells(out) == {"a": None, "b": None, "c": None, "d": 100}


def test_two_small_cells_whose_sum_is_large_enough_are_left_as_they_are():
    out = OPENSAFELY.apply(category_table({"a": 5, "b": 6, "c": 100}))
    assert cells(out) == {"a": None, "b": None, "c": 100}


def test_zero_cells_are_kept_and_a_hundred_percent_cell_stays_a_hundred_percent():
    out = OPENSAFELY.apply(category_table({"female": 0, "male": 42}))
    assert cells(out) == {"female": 0, "male": 40}
    assert cells(out, "percent") == {"female": 0.0, "male": 100.0}
    assert out.redacted == []


def test_near_hundred_percent_cell_is_redacted_because_its_complement_is_small():
    # 95 of 100 have it, so the 5 without it would be disclosed.
    table = StatTable(
        name="features", title="features", population=100,
        columns=[ColumnSpec(name="feature", kind="label"),
                 ColumnSpec(name="count_persons", kind="count", denominator="population"),
                 ColumnSpec(name="percent", kind="derived", formula="percent",
                            args=["count_persons", "population"])],
        rows=[{"feature": "x", "count_persons": 95}, {"feature": "y", "count_persons": 100},
              {"feature": "z", "count_persons": 50}])
    out = OPENSAFELY.apply(table)
    assert [r["count_persons"] for r in out.rows] == [None, 100, 50]
    assert [r["percent"] for r in out.rows] == [None, 100.0, 50.0]


def test_derived_statistics_follow_their_counts_and_use_published_values():
    table = StatTable(
        name="rates", title="rates",
        columns=[ColumnSpec(name="stratum", kind="label"),
                 ColumnSpec(name="count_persons", kind="count"),
                 ColumnSpec(name="count_events", kind="count", denominator="count_persons"),
                 ColumnSpec(name="person_years", kind="statistic", basis=["count_persons"]),
                 ColumnSpec(name="rate", kind="derived", formula="rate", args=["count_events", "person_years"],
                            scale=1000.0),
                 ColumnSpec(name="mean_age", kind="statistic", basis=["count_persons"])],
        rows=[{"stratum": "big", "count_persons": 200, "count_events": 12, "person_years": 400.0,
               "mean_age": 51.2},
              {"stratum": "small group", "count_persons": 6, "count_events": 0, "person_years": 11.0,
               "mean_age": 70.0},
              {"stratum": "few events", "count_persons": 100, "count_events": 2, "person_years": 90.0,
               "mean_age": 40.0}])
    out = OPENSAFELY.apply(table)
    big, small, few = out.rows
    assert big["count_events"] == 10 and big["rate"] == pytest.approx(10 / 400 * 1000)  # not 12/400
    assert big["mean_age"] == 51.2
    assert small["count_persons"] is None and small["mean_age"] is None and small["person_years"] is None
    assert small["rate"] is None  # a zero rate of a 6-person group still describes 6 people
    assert few["count_events"] is None and few["rate"] is None and few["mean_age"] == 40.0


def test_a_derived_value_never_uses_a_withheld_statistic_whatever_the_column_order():
    table = StatTable(
        name="rates", title="rates",
        columns=[ColumnSpec(name="rate", kind="derived", formula="rate", args=["count_events", "person_years"]),
                 ColumnSpec(name="count_persons", kind="count"),
                 ColumnSpec(name="count_events", kind="count"),
                 ColumnSpec(name="person_years", kind="statistic", basis=["count_persons"])],
        rows=[{"count_persons": 5, "count_events": 0, "person_years": 3.0}])
    out = OPENSAFELY.apply(table)
    assert out.rows[0]["rate"] is None and (0, "rate") in out.redacted


def test_statistic_of_a_small_population_is_redacted():
    table = StatTable(name="age", title="age", population=5,
                      columns=[ColumnSpec(name="statistic", kind="label"),
                               ColumnSpec(name="value", kind="statistic", basis=["population"])],
                      rows=[{"statistic": "mean", "value": 44.0}])
    out = OPENSAFELY.apply(table)
    assert out.rows[0]["value"] is None and out.population is None


def test_hes_policy_marks_with_star_and_threshold10_hides_up_to_nine_without_rounding():
    table = category_table({"a": 9, "b": 12, "c": 101})
    hes = get_policy("nhse-hes").apply(table)
    assert cells(hes) == {"a": 10, "b": 10, "c": 100}
    # HES rounds instead of suppressing a second cell; its total is the true total, rounded.
    small = get_policy("hes").apply(category_table({"a": 3, "b": 12, "c": 101}))
    assert [r["count_persons"] for r in small.display_rows()] == ["*", "10", "100"]
    assert small.totals == [{"count_persons": 115}]
    t10 = get_policy("threshold10").apply(table)
    assert cells(t10) == {"a": None, "b": None, "c": 101}
    assert t10.totals == [{"count_persons": 101}]


def test_midpoint_rounding_matches_the_published_mapping():
    assert [midpoint_round(x) for x in [0, 1, 6, 7, 12, 13, 18]] == [0, 3, 3, 9, 9, 15, 15]


def life_table(population: int, events: list[tuple[int, int, int]]) -> StatTable:
    return StatTable(
        name="km", title="km", kind="life_table", population=population,
        columns=[ColumnSpec(name="time", kind="label"),
                 ColumnSpec(name="count_at_risk", kind="count"),
                 ColumnSpec(name="count_events", kind="count"),
                 ColumnSpec(name="count_censored", kind="count"),
                 ColumnSpec(name="survival", kind="statistic", basis=["count_at_risk"])],
        rows=[{"time": t, "count_at_risk": None, "count_events": e, "count_censored": c} for t, e, c in events])


def test_life_table_midpoint6_rounds_cumulative_counts_and_recomputes_the_curve():
    out = OPENSAFELY.apply(life_table(41, [(10, 2, 0), (20, 5, 1), (30, 3, 2), (40, 3, 0)]))
    assert out.population == 40  # the count rule (nearest 5), as every other page shows 41 people
    risk, ev, cens = (out.find(c) for c in ("count_at_risk", "count_events", "count_censored"))
    assert ev == "count_events_midpoint6_derived"
    # cumulative events 2, 7, 10, 13 -> 3, 9, 9, 15; cumulative censored 0, 1, 3, 3 -> 0, 3, 3, 3
    assert [(r["time"], r[risk], r[ev], r[cens]) for r in out.rows] == [
        (10, 40, 3, 0), (20, 37, 6, 3), (40, 28, 6, 0)]
    expected = (1 - 3 / 40) * (1 - 6 / 37) * (1 - 6 / 28)
    assert out.rows[-1]["survival"] == pytest.approx(expected)
    assert out.rows[-1]["survival_lower"] < expected < out.rows[-1]["survival_upper"]


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("people", [8, 12, 69, 70, 72, 129, 130, 147, 1234])
def test_at_risk_at_time_zero_is_the_released_count(policy, people):
    """One true count, one released number: a life table starts where every count table does."""
    rule = get_policy(policy)
    events = [(5, 1, 0), (30, people - 1, 0)]
    counted = rule.apply(StatTable(name="n", title="n", columns=[ColumnSpec(name="count_persons", kind="count")],
                                   rows=[{"count_persons": people}])).rows[0]["count_persons"]
    km = rule.apply(life_table(people, events))
    assert km.population == counted
    assert (km.rows[0][km.find("count_at_risk")] if km.rows else None) == counted


def test_life_table_of_a_small_cohort_is_withheld_whole():
    out = OPENSAFELY.apply(life_table(6, [(10, 2, 0), (20, 4, 0)]))
    assert out.rows == [] and out.population is None


def test_csv_export_shows_the_marker_and_refuses_raw_tables():
    table = category_table({"a": 40, "b": 30, "c": 3})
    with pytest.raises(DisclosureError):
        table.to_csv()
    lines = get_policy("hes").apply(table).to_csv().splitlines()
    assert lines[0] == "category,count_persons,percent"
    assert lines[3] == "c,*,*"


def test_results_say_which_policy_was_applied_and_raw_results_cannot_be_rendered():
    raw = AnalysisResult(analysis="demo", title="demo", tables=[category_table({"a": 20, "b": 30})])
    with pytest.raises(DisclosureError):
        require_controlled(raw)
    safe = get_policy().apply(raw)
    require_controlled(safe)
    assert safe.disclosure.policy == "opensafely"
    assert safe.to_json_dict()["disclosure"]["policy"] == "opensafely"
    assert get_policy().apply(safe) is safe
    with pytest.raises(DisclosureError, match="already controlled"):
        get_policy("threshold10").apply(safe)


def test_bad_tables_are_rejected_with_table_row_and_column_named():
    with pytest.raises(DisclosureError, match="must be named count"):
        ColumnSpec(name="persons", kind="count")
    with pytest.raises(DisclosureError, match="unknown formula"):
        ColumnSpec(name="x", kind="derived", formula="nope")
    with pytest.raises(DisclosureError, match=r"table 't', row 0, column 'count_persons'"):
        OPENSAFELY.apply(category_table({"a": -3}))
    with pytest.raises(DisclosureError, match="unknown disclosure policy"):
        get_policy("lax")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=8),
       st.sampled_from(["opensafely", "nhse-hes", "threshold10"]))
def test_no_partition_ever_reveals_a_small_count_directly_or_through_its_total(counts, name):
    policy = get_policy(name)
    table = category_table({str(i): c for i, c in enumerate(counts)})
    out = policy.apply(table)
    published = [r["count_persons"] for r in out.rows]
    hidden_true = [c for c, p in zip(counts, published) if p is None]
    for value in published:
        assert value is None or value == 0 or value > policy.threshold
        if value is not None and policy.rounding_base:
            assert value % policy.rounding_base == 0
    if policy.secondary_suppression:  # the exact population tells an attacker the hidden cells' sum
        assert sum(hidden_true) == 0 or sum(hidden_true) > policy.threshold or out.population is None
    if policy.totals_from_published_cells:
        assert out.totals[0]["count_persons"] == sum(p or 0 for p in published)
    else:
        assert out.totals[0]["count_persons"] in (None, 0) or out.totals[0]["count_persons"] % 5 == 0
    for r in out.rows:
        if r["count_persons"] is None:
            assert r["percent"] is None
        elif out.population:
            assert math.isclose(r["percent"], 100 * r["count_persons"] / out.population)


def test_poisson_interval_is_garwoods_chi_squared_interval():
    """The exact interval from the incomplete gamma function equals the textbook chi-squared form (Garwood
    1936) for whole and fractional counts and other confidence levels; a count of 0 has lower limit 0."""
    from scipy.stats import chi2

    from mercia.privacy.disclosure import poisson_interval

    for events in [*range(0, 300), 0.5, 2.5, 17.25, 1e4, 1e6]:
        for alpha in (0.05, 0.01, 0.1):
            lower, upper = poisson_interval(events, alpha)
            expected_lower = 0.0 if events == 0 else chi2.ppf(alpha / 2, 2 * events) / 2
            assert lower == pytest.approx(expected_lower, rel=1e-12, abs=1e-300)
            assert upper == pytest.approx(chi2.ppf(1 - alpha / 2, 2 * events + 2) / 2, rel=1e-12)
    assert poisson_interval(10) == pytest.approx((4.795389, 18.390356), abs=1e-6)  # published 95% limits for 10


def test_nested_steps_shown_side_by_side_never_differ_by_a_small_count():
    """An attrition 100 -> 97 -> 50 -> 50: the first step would give the 3 the first rule removed, so it
    is hidden (walking back from the cohort, which every page shows); without secondary protection
    (nhse-hes) rounding alone answers for it."""
    table = StatTable(name="attrition", title="t", nested="count_persons",
                      columns=[ColumnSpec(name="step", kind="label"), ColumnSpec(name="count_persons", kind="count")],
                      rows=[{"step": s, "count_persons": n} for s, n in (("entry", 100), ("rule 1", 97),
                                                                           ("rule 2", 50), ("cohort", 50))])
    assert get_policy("threshold10").apply(table).values("count_persons") == [None, 97, 50, 50]
    assert get_policy("opensafely").apply(table).values("count_persons") == [None, 95, 50, 50]
    assert get_policy("nhse-hes").apply(table).values("count_persons") == [100, 95, 50, 50]


def tree_table(boxes: list[tuple[str, str, int]]) -> StatTable:
    """Boxes ``(box, part_of, count)``: each box divides into the boxes that name it as ``part_of``."""
    return StatTable(name="tree", title="t",
                     columns=[ColumnSpec(name="box", kind="label"), ColumnSpec(name="part_of", kind="label"),
                              ColumnSpec(name="count", kind="count")],
                     rows=[{"box": b, "part_of": p, "count": n} for b, p, n in boxes],
                     partitions=[PartitionSpec(column="count", within=["part_of"], total="box")])


def test_a_box_hidden_as_cover_is_not_rebuilt_from_its_own_parts():
    """assessed 27 = excluded 3 + randomised 24, randomised = arm a 12 + arm b 12: the 3 are hidden and
    randomised with them; shown, the arms would add up to randomised and 27 less that gives the 3.  So a
    hidden box keeps hidden parts (together more than 9), a level down too."""
    table = tree_table([("assessed", "root", 27), ("excluded", "assessed", 3), ("randomised", "assessed", 24),
                        ("a", "randomised", 12), ("b", "randomised", 12),
                        ("a_withdrawn", "a", 0), ("a_analysed", "a", 12),
                        ("b_withdrawn", "b", 2), ("b_analysed", "b", 10)])
    shown = dict(zip(table.values("box"), get_policy("threshold10").apply(table).values("count")))
    assert shown["assessed"] == 27 and shown["excluded"] is None and shown["randomised"] is None
    assert None in (shown["a"], shown["b"])                              # randomised is not a + b
    for arm in ("a", "b"):                                               # nor a hidden arm its parts' sum
        if shown[arm] is None:
            assert None in (shown[f"{arm}_withdrawn"], shown[f"{arm}_analysed"]), shown
    assert get_policy("nhse-hes").apply(table).values("count")[1:3] == [None, 25]   # rounding instead

