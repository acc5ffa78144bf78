"""Spec tests: tiny hand-written CDM tables -> the exact cohort rows Circe semantics give, for each
feature, on DuckDB, PostgreSQL and Spark (the Spark rendering of the same plan)."""

from __future__ import annotations

import datetime as dt

import pytest

from mercia.cohorts import builder as cb
from mercia.cohorts import model as m

# -- a tiny vocabulary -----------------------------------------------------------------------------
COND_A, COND_A1, COND_A2, COND_B = 100, 101, 102, 103
DRUG_X, DRUG_X1, DRUG_X_SOURCE = 200, 201, 210
MEAS, PROC, VISIT_IP, VISIT_OP = 300, 301, 9201, 9202
MALE, FEMALE, MG_DL, MMOL_L = 8507, 8532, 8840, 8753

A = cb.concept_set(1, "condition A and descendants", cb.concept(COND_A, descendants=True))
B = cb.concept_set(2, "condition B", COND_B)
X = cb.concept_set(3, "drug X and descendants", cb.concept(DRUG_X, descendants=True))
M = cb.concept_set(4, "measurement", MEAS)
P = cb.concept_set(5, "procedure", PROC)
V = cb.concept_set(6, "visit", VISIT_IP, VISIT_OP)
ALL_SETS = [A, B, X, M, P, V]


def _concept(cid: int, domain: str) -> dict:
    return {
        "concept_id": cid,
        "concept_name": f"c{cid}",
        "domain_id": domain,
        "vocabulary_id": "test",
        "concept_class_id": "test",
        "concept_code": str(cid),
        "valid_start_date": "1970-01-01",
        "valid_end_date": "2099-12-31",
        "standard_concept": "S",
    }


VOCABULARY = {
    "concept": [_concept(c, "Condition") for c in (COND_A, COND_A1, COND_A2, COND_B)]
    + [_concept(c, "Drug") for c in (DRUG_X, DRUG_X1, DRUG_X_SOURCE)]
    + [
        _concept(MEAS, "Measurement"),
        _concept(PROC, "Procedure"),
        _concept(VISIT_IP, "Visit"),
        _concept(VISIT_OP, "Visit"),
    ],
    "concept_ancestor": [
        {"ancestor_concept_id": a, "descendant_concept_id": d}
        for a, d in [
            (COND_A, COND_A),
            (COND_A, COND_A1),
            (COND_A, COND_A2),
            (COND_A1, COND_A1),
            (COND_A2, COND_A2),
            (COND_B, COND_B),
            (DRUG_X, DRUG_X),
            (DRUG_X, DRUG_X1),
            (DRUG_X1, DRUG_X1),
        ]
    ],
    "concept_relationship": [
        {
            "concept_id_1": DRUG_X_SOURCE,
            "concept_id_2": DRUG_X,
            "relationship_id": "Maps to",
            "valid_start_date": "1970-01-01",
            "valid_end_date": "2099-12-31",
        }
    ],
}


def person(pid: int, born: int | None = 1970, gender: int = MALE) -> dict:
    return {"person_id": pid, "gender_concept_id": gender, "year_of_birth": born}


def op(pid: int, start: str = "2010-01-01", end: str = "2015-12-31") -> dict:
    return {"person_id": pid, "observation_period_start_date": start, "observation_period_end_date": end}


def cond(pid: int, start: str, end: str | None = None, concept: int = COND_A1, **kw) -> dict:
    return {
        "person_id": pid,
        "condition_concept_id": concept,
        "condition_start_date": start,
        "condition_end_date": end,
        **kw,
    }


def drug(pid: int, start: str, end: str | None = None, concept: int = DRUG_X1, **kw) -> dict:
    return {
        "person_id": pid,
        "drug_concept_id": concept,
        "drug_exposure_start_date": start,
        "drug_exposure_end_date": end,
        **kw,
    }


def world(persons: list[int], **tables: list[dict]) -> dict[str, list[dict]]:
    """The vocabulary, persons (born 1970, male unless given) each observed 2010-2015, plus ``tables``."""
    base = {"person": [person(p) for p in persons], "observation_period": [op(p) for p in persons]}
    base.update(VOCABULARY)
    base.update(tables)
    return base


def cohort(entry, **kw) -> m.CohortExpression:
    return cb.cohort(entry=entry if isinstance(entry, list) else [entry], concept_sets=ALL_SETS, **kw)


def rows(*spec: tuple[int, str, str]) -> list[tuple]:
    return sorted((p, dt.date.fromisoformat(s), dt.date.fromisoformat(e)) for p, s, e in spec)


AT_START = cb.date_offset(0)  # exit on the index date
AT_END = cb.date_offset(0, "EndDate")  # exit on the index event's own end


# -- entry events and the observation window ------------------------------------------------------
def test_entry_ends_at_observation_period_end_by_default(run_spec):
    tables = world(
        [1, 2, 3],
        condition_occurrence=[cond(1, "2012-03-04"), cond(2, "2012-03-04", concept=COND_B), cond(3, "2009-05-05")],
    )
    got, _ = run_spec(tables, cohort(cb.condition(A)))
    assert got == rows((1, "2012-03-04", "2015-12-31"))


@pytest.mark.parametrize(
    ("first", "limit", "expected"),
    [
        (True, "All", []),  # the criterion's First picks 2010-02-01, which fails the window
        # the primary limit ranks after the window (Circe's primary-events row_number runs after its
        # observation-period join and WHERE), so the later event is the first
        (False, "First", [(1, "2012-01-01", "2015-12-31")]),
        (False, "All", [(1, "2012-01-01", "2015-12-31")]),  # with All the later event qualifies
    ],
)
def test_first_and_primary_limit_against_the_observation_window(run_spec, first, limit, expected):
    tables = world([1], condition_occurrence=[cond(1, "2010-02-01"), cond(1, "2012-01-01")])
    got, _ = run_spec(tables, cohort(cb.condition(A, first=first or None), prior_days=365, entry_limit=limit))
    assert got == rows(*expected)


def test_post_days_needs_observation_after_the_event(run_spec):
    tables = world([1, 2], condition_occurrence=[cond(1, "2015-06-01"), cond(2, "2015-12-01")])
    got, _ = run_spec(tables, cohort(cb.condition(A), post_days=60))
    assert got == rows((1, "2015-06-01", "2015-12-31"))


def test_primary_limit_last(run_spec):
    tables = world([1], condition_occurrence=[cond(1, "2011-01-01"), cond(1, "2012-01-01")])
    got, _ = run_spec(tables, cohort(cb.condition(A), entry_limit="Last", end=AT_END))
    assert got == rows((1, "2012-01-01", "2012-01-02"))  # condition without end: start + 1


# -- exits -------------------------------------------------------------------------------------------
def test_date_offset_is_capped_at_observation_period_end(run_spec):
    tables = world([1, 2], condition_occurrence=[cond(1, "2012-01-01"), cond(2, "2012-01-01")])
    tables["observation_period"] = [op(1, end="2012-01-10"), op(2)]
    got, _ = run_spec(tables, cohort(cb.condition(A), end=cb.date_offset(30)))
    assert got == rows((1, "2012-01-01", "2012-01-10"), (2, "2012-01-01", "2012-01-31"))


@pytest.mark.parametrize(
    ("pad", "expected"),
    [
        (0, [(1, "2011-01-01", "2011-01-20"), (1, "2011-02-01", "2011-02-05"), (1, "2011-02-06", "2011-02-08")]),
        (1, [(1, "2011-01-01", "2011-01-20"), (1, "2011-02-01", "2011-02-08")]),
    ],
)
def test_era_collapse_merges_touching_rows_even_with_pad_zero(run_spec, pad, expected):
    tables = world(
        [1],
        condition_occurrence=[
            cond(1, "2011-01-01", "2011-01-10"),
            cond(1, "2011-01-10", "2011-01-20"),
            cond(1, "2011-02-01", "2011-02-05"),
            cond(1, "2011-02-06", "2011-02-08"),
        ],
    )
    got, _ = run_spec(
        tables, cohort(cb.condition(A), entry_limit="All", expression_limit="All", end=AT_END, era_pad=pad)
    )
    assert got == rows(*expected)


def test_custom_era_uses_source_concepts_and_caps_at_observation_end(run_spec):
    tables = world(
        [1, 2],
        drug_exposure=[
            drug(1, "2011-01-01", days_supply=10),  # ends 2011-01-11
            drug(1, "2011-02-01", "2011-02-10", concept=0, drug_source_concept_id=DRUG_X1),  # source match only
            drug(1, "2011-06-01", "2011-06-05"),  # a later, separate era
            drug(2, "2011-01-01", days_supply=10),
        ],
    )
    tables["observation_period"] = [op(1), op(2, end="2011-01-05")]
    got, _ = run_spec(tables, cohort(cb.drug(X), end=cb.drug_persistence(X, gap_days=30)))
    assert got == rows((1, "2011-01-01", "2011-02-10"), (2, "2011-01-01", "2011-01-05"))


def test_custom_era_counts_an_exposure_matching_both_concepts_once(run_spec):
    # each concept column is scanned on its own, so such an exposure is two rows before the eras are built
    tables = world(
        [1],
        drug_exposure=[
            drug(1, "2011-01-01", "2011-01-10", drug_source_concept_id=DRUG_X1),
            drug(1, "2011-01-20", "2011-01-25", drug_source_concept_id=DRUG_X1),  # 10 days later: the same era
            drug(1, "2011-03-30", "2011-04-02", drug_source_concept_id=DRUG_X1),  # 64 days later: a new era
        ],
    )
    got, _ = run_spec(tables, cohort(cb.drug(X), entry_limit="All", expression_limit="All",
                                     end=cb.drug_persistence(X, gap_days=30)))
    assert got == rows((1, "2011-01-01", "2011-01-25"), (1, "2011-03-30", "2011-04-02"))


def test_custom_era_offset_and_days_supply_override(run_spec):
    tables = world([1], drug_exposure=[drug(1, "2011-01-01", "2011-12-31")])
    got, _ = run_spec(tables, cohort(cb.drug(X), end=cb.drug_persistence(X, offset=5, days_supply=7)))
    assert got == rows((1, "2011-01-01", "2011-01-13"))


def test_censoring_before_start_is_ignored_and_same_day_censoring_counts(run_spec):
    tables = world(
        [1, 2],
        condition_occurrence=[cond(1, "2011-01-01"), cond(2, "2011-01-01")],
        procedure_occurrence=[
            {"person_id": 1, "procedure_concept_id": PROC, "procedure_date": "2010-06-01"},
            {"person_id": 1, "procedure_concept_id": PROC, "procedure_date": "2011-03-01"},
            {"person_id": 2, "procedure_concept_id": PROC, "procedure_date": "2011-01-01"},
        ],
    )
    got, _ = run_spec(tables, cohort(cb.condition(A), censor=[cb.procedure(P)]))
    assert got == rows((1, "2011-01-01", "2011-03-01"), (2, "2011-01-01", "2011-01-01"))


def test_censor_window_clips_and_drops_rows_outside(run_spec):
    tables = world([1, 2], condition_occurrence=[cond(1, "2011-01-01"), cond(2, "2014-01-01")])
    got, _ = run_spec(tables, cohort(cb.condition(A), censor_window=("2012-01-01", "2013-06-30")))
    assert got == rows((1, "2012-01-01", "2013-06-30"))


# -- inclusion rules, limits and attrition ----------------------------------------------------------
def test_inclusion_rules_and_circe_attrition(run_spec):
    tables = world(
        [1, 2, 3, 4],
        condition_occurrence=[
            cond(1, "2012-01-01"),
            cond(2, "2012-01-01"),
            cond(3, "2012-01-01"),
            cond(3, "2011-01-01", concept=COND_B),
            cond(4, "2012-01-01"),
            cond(4, "2011-01-01", concept=COND_B),
        ],
        drug_exposure=[drug(1, "2012-02-01"), drug(2, "2012-04-20"), drug(3, "2012-01-01")],
    )
    expr = cohort(
        cb.condition(A),
        rules=[
            cb.rule("drug X within 90 days", cb.at_least(1, cb.drug(X), within=cb.window(0, 90))),
            cb.rule("no earlier condition B", cb.exactly(0, cb.condition(B), within=cb.window(None, -1))),
        ],
    )
    got, result = run_spec(tables, expr)
    assert got == rows((1, "2012-01-01", "2015-12-31"))
    if result is not None:
        assert result.base_count == {0: 4, 1: 4} and result.final_count == {0: 1, 1: 1}
        by_rule = {
            (a.mode_id, a.rule_sequence): (a.person_count, a.gain_count, a.remaining, a.person_total)
            for a in result.attrition
        }
        assert by_rule[(0, 0)] == (2, 1, 2, 4)  # persons 1 and 3 pass; 2 fails only this rule
        assert by_rule[(0, 1)] == (2, 1, 1, 4)  # persons 1 and 2 pass; 3 fails only this one
        assert by_rule[(1, 0)] == by_rule[(0, 0)]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("First", [(1, "2012-01-01", "2012-01-01")]),
        ("All", [(1, "2012-01-01", "2012-01-01"), (1, "2013-01-01", "2013-01-01")]),
    ],
)
def test_additional_criteria_then_qualified_limit(run_spec, limit, expected):
    tables = world(
        [1],
        condition_occurrence=[cond(1, "2011-01-01"), cond(1, "2012-01-01"), cond(1, "2013-01-01")],
        drug_exposure=[drug(1, "2011-12-20"), drug(1, "2012-12-15")],
    )
    expr = cohort(
        cb.condition(A),
        entry_limit="All",
        qualified_limit=limit,
        expression_limit="All",
        end=AT_START,
        additional=cb.all_of(cb.at_least(1, cb.drug(X), within=cb.window(-30, 0))),
    )
    got, _ = run_spec(tables, expr)
    assert got == rows(*expected)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("Last", [(1, "2013-01-01", "2013-01-01")]),
        ("All", [(1, "2011-01-01", "2011-01-01"), (1, "2013-01-01", "2013-01-01")]),
    ],
)
def test_expression_limit_applies_after_inclusion_rules(run_spec, limit, expected):
    tables = world([1], condition_occurrence=[cond(1, "2009-06-01"), cond(1, "2011-01-01"), cond(1, "2013-01-01")])
    tables["observation_period"] = [op(1, start="2009-01-01")]
    expr = cohort(
        cb.condition(A),
        entry_limit="All",
        expression_limit=limit,
        end=AT_START,
        rules=[cb.rule("aged 40+", cb.demographic(age=cb.gte(40)))],
    )
    got, _ = run_spec(tables, expr)
    assert got == rows(*expected)


# -- criterion attributes ---------------------------------------------------------------------------
def test_age_and_gender_filter_before_the_primary_limit(run_spec):
    tables = world([1, 2], condition_occurrence=[cond(1, "2012-01-01"), cond(1, "2014-01-01"), cond(2, "2014-01-01")])
    tables["person"] = [person(1, born=1995, gender=FEMALE), person(2, born=1980, gender=MALE)]
    got, _ = run_spec(tables, cohort(cb.condition(A, age=cb.gte(18), gender=cb.concepts(FEMALE))))
    assert got == rows((1, "2014-01-01", "2015-12-31"))  # 2012 - 1995 = 17 fails


@pytest.mark.parametrize(
    ("age", "expected"),
    [(None, [1, 2]), (cb.gte(18), [2]), (cb.lt(18), []), (cb.not_between(40, 50), [2])],
)
def test_an_unknown_age_satisfies_no_age_criterion(run_spec, age, expected):
    """A person kept with the age unknown (year_of_birth NULL, docs/cdm.md) enters a cohort without an
    age criterion but meets none, not even 'not between' (Circe's SQL: the year difference is NULL)."""
    tables = world([1, 2], condition_occurrence=[cond(1, "2012-01-01"), cond(2, "2012-01-01")])
    tables["person"] = [person(1, born=None), person(2, born=1980)]  # person 2 is 32 in 2012
    got, _ = run_spec(tables, cohort(cb.condition(A) if age is None else cb.condition(A, age=age)))
    assert got == rows(*((p, "2012-01-01", "2015-12-31") for p in expected))
    rule = [cb.rule("of known age", cb.demographic(age=age))] if age is not None else []
    got, _ = run_spec(tables, cohort(cb.condition(A), rules=rule))
    assert got == rows(*((p, "2012-01-01", "2015-12-31") for p in expected))


def test_measurement_value_and_unit(run_spec):
    def meas(pid, date, value, unit):
        return {
            "person_id": pid,
            "measurement_concept_id": MEAS,
            "measurement_date": date,
            "value_as_number": value,
            "unit_concept_id": unit,
        }

    tables = world(
        [1, 2],
        measurement=[
            meas(1, "2011-01-01", 4.99, MG_DL),
            meas(1, "2011-02-01", 10.0, MG_DL),
            meas(2, "2011-01-01", 7.0, MMOL_L),
        ],
    )
    expr = cohort(cb.measurement(M, value_as_number=cb.between(5, 10), unit=cb.concepts(MG_DL)), end=AT_END)
    got, _ = run_spec(tables, expr)
    assert got == rows((1, "2011-02-01", "2011-02-02"))


def test_concept_set_excluded_descendant(run_spec):
    without_a2 = cb.concept_set(
        9, "A but not A2", cb.concept(COND_A, descendants=True), cb.concept(COND_A2, exclude=True)
    )
    tables = world([1, 2], condition_occurrence=[cond(1, "2011-01-01"), cond(2, "2011-01-01", concept=COND_A2)])
    expr = cb.cohort(entry=[cb.condition(without_a2)], concept_sets=[without_a2])
    got, _ = run_spec(tables, expr)
    assert got == rows((1, "2011-01-01", "2015-12-31"))


def test_concept_set_include_mapped_without_descendants(run_spec):
    mapped = cb.concept_set(9, "X and what maps to it", cb.concept(DRUG_X, mapped=True))
    tables = world(
        [1, 2, 3],
        drug_exposure=[
            drug(1, "2011-01-01", concept=DRUG_X_SOURCE),
            drug(2, "2011-01-01", concept=DRUG_X1),
            drug(3, "2011-01-01", concept=DRUG_X),
        ],
    )
    got, _ = run_spec(tables, cb.cohort(entry=[cb.drug(mapped)], concept_sets=[mapped]))
    assert got == rows((1, "2011-01-01", "2015-12-31"), (3, "2011-01-01", "2015-12-31"))


def test_distinct_count_of_concepts(run_spec):
    tables = world(
        [1, 2],
        procedure_occurrence=[
            {"person_id": p, "procedure_concept_id": PROC, "procedure_date": "2012-01-01"} for p in (1, 2)
        ],
        condition_occurrence=[
            cond(1, "2011-01-01"),
            cond(1, "2011-02-01"),
            cond(2, "2011-01-01"),
            cond(2, "2011-02-01", concept=COND_A2),
        ],
    )
    expr = cohort(
        cb.procedure(P),
        rules=[
            cb.rule(
                "two different A conditions", cb.at_least(2, cb.condition(A), within=cb.window(None, 0), distinct=True)
            )
        ],
    )
    got, _ = run_spec(tables, expr)
    assert got == rows((2, "2012-01-01", "2015-12-31"))


def test_restrict_visit(run_spec):
    tables = world(
        [1, 2],
        condition_occurrence=[cond(p, "2012-01-01", visit_occurrence_id=10 + p) for p in (1, 2)],
        drug_exposure=[drug(1, "2012-01-01", visit_occurrence_id=11), drug(2, "2012-01-01", visit_occurrence_id=99)],
    )
    expr = cohort(
        cb.condition(A),
        rules=[
            cb.rule(
                "drug in the same visit", cb.at_least(1, cb.drug(X), within=cb.window(None, None), restrict_visit=True)
            )
        ],
    )
    got, _ = run_spec(tables, expr)
    assert got == rows((1, "2012-01-01", "2015-12-31"))


@pytest.mark.parametrize(("ignore", "expected"), [(True, [(1, "2012-01-01", "2015-12-31")]), (False, [])])
def test_ignore_observation_period(run_spec, ignore, expected):
    tables = world([1], condition_occurrence=[cond(1, "2012-01-01"), cond(1, "2009-01-01", concept=COND_B)])
    expr = cohort(
        cb.condition(A),
        rules=[
            cb.rule(
                "B ever before",
                cb.at_least(1, cb.condition(B), within=cb.window(-10000, -1), ignore_observation_period=ignore),
            )
        ],
    )
    got, _ = run_spec(tables, expr)
    assert got == rows(*expected)


def test_occurrence_start_date_range(run_spec):
    tables = world([1], condition_occurrence=[cond(1, "2010-06-01"), cond(1, "2011-06-01"), cond(1, "2012-06-01")])
    expr = cohort(cb.condition(A, occurrence_start_date=cb.between("2011-01-01", "2011-12-31")), end=AT_START)
    got, _ = run_spec(tables, expr)
    assert got == rows((1, "2011-06-01", "2011-06-01"))


def test_correlated_criteria_nested_in_a_criterion(run_spec):
    nested = cb.condition(A, correlated_criteria=cb.all_of(cb.at_least(1, cb.drug(X), within=cb.window(0, 7))))
    tables = world(
        [1, 2],
        condition_occurrence=[cond(1, "2011-01-01"), cond(1, "2010-06-01"), cond(2, "2011-01-01")],
        drug_exposure=[drug(1, "2011-01-05"), drug(2, "2011-02-01")],
    )
    got, _ = run_spec(tables, cohort(nested, end=AT_START))
    assert got == rows((1, "2011-01-01", "2011-01-01"))


def test_at_most_group(run_spec):
    tables = world(
        [1, 2, 3],
        condition_occurrence=[cond(p, "2012-01-01") for p in (1, 2, 3)] + [cond(1, "2011-01-01", concept=COND_B)],
        drug_exposure=[drug(1, "2011-06-01"), drug(2, "2011-06-01")],
    )
    expr = cohort(
        cb.condition(A),
        rules=[
            cb.rule(
                "at most one history item",
                cb.at_most_of(
                    1,
                    cb.at_least(1, cb.drug(X), within=cb.window(None, -1)),
                    cb.at_least(1, cb.condition(B), within=cb.window(None, -1)),
                ),
            )
        ],
    )
    got, _ = run_spec(tables, expr)
    assert [r[0] for r in got] == [2, 3]


def test_any_group_with_demographics(run_spec):
    tables = world(
        [1, 2, 3],
        condition_occurrence=[cond(p, "2012-01-01") for p in (1, 2, 3)],
        drug_exposure=[drug(1, "2011-06-01")],
    )
    tables["person"] = [person(1), person(2, gender=FEMALE), person(3)]
    expr = cohort(
        cb.condition(A),
        rules=[
            cb.rule(
                "drug or female",
                cb.any_of(
                    cb.at_least(1, cb.drug(X), within=cb.window(None, 0)), cb.demographic(gender=cb.concepts(FEMALE))
                ),
            )
        ],
    )
    got, _ = run_spec(tables, expr)
    assert [r[0] for r in got] == [1, 2]


def test_visit_length_uses_day_difference(run_spec):
    def visit(pid, start, end):
        return {"person_id": pid, "visit_concept_id": VISIT_IP, "visit_start_date": start, "visit_end_date": end}

    tables = world([1], visit_occurrence=[visit(1, "2011-02-01", "2011-02-02"), visit(1, "2011-03-01", "2011-03-05")])
    got, _ = run_spec(tables, cohort(cb.visit(V, visit_length=cb.gte(3)), end=AT_END))
    assert got == rows((1, "2011-03-01", "2011-03-05"))


def test_drug_end_defaults_to_days_supply_then_one_day(run_spec):
    tables = world([1, 2], drug_exposure=[drug(1, "2011-01-01", days_supply=30), drug(2, "2011-01-01")])
    got, _ = run_spec(tables, cohort(cb.drug(X), end=AT_END))
    assert got == rows((1, "2011-01-01", "2011-01-31"), (2, "2011-01-01", "2011-01-02"))


def test_observation_period_first_and_death(run_spec):
    tables = world([1], death=[{"person_id": 1, "death_date": "2014-05-05"}])
    tables["observation_period"] = [op(1, "2010-01-01", "2011-12-31"), op(1, "2012-06-01", "2015-12-31")]
    got, _ = run_spec(tables, cohort(cb.observation_period(first=True), end=AT_END))
    assert got == rows((1, "2010-01-01", "2011-12-31"))
    got, _ = run_spec(tables, cohort(cb.death(), end=AT_END), cohort_id=2)
    assert got == rows((1, "2014-05-05", "2014-05-06"))


def test_date_adjustment(run_spec):
    tables = world([1], condition_occurrence=[cond(1, "2011-01-10", "2011-01-20"), cond(1, "2011-03-01", "2011-03-03")])
    adjusted = cb.condition(A, date_adjustment=m.DateAdjustment(start_offset=5, end_offset=-2))
    got, _ = run_spec(tables, cohort(adjusted, entry_limit="All", end=AT_END))
    assert got == rows((1, "2011-01-15", "2011-01-18"))  # 2011-03-06 > 2011-03-01: dropped


def test_index_end_and_event_end_windows(run_spec):
    tables = world(
        [1, 2, 3, 4],
        condition_occurrence=[cond(p, "2011-01-01", "2011-01-10") for p in (1, 2, 3, 4)],
        drug_exposure=[
            drug(1, "2011-01-10"),
            drug(2, "2011-01-05"),
            drug(3, "2010-12-25", "2011-01-05"),
            drug(4, "2010-12-01", "2010-12-10"),
        ],
    )
    on_index_end = cb.at_least(1, cb.drug(X), within=cb.window(0, 0, index_end=True))
    spanning = cb.at_least(1, cb.drug(X), within=cb.window(None, 0), end_within=cb.window(0, None))
    got, _ = run_spec(tables, cohort(cb.condition(A), rules=[cb.rule("r", cb.any_of(on_index_end, spanning))]))
    assert [r[0] for r in got] == [1, 3]


def test_condition_era_occurrence_count(run_spec):
    def era(pid, count):
        return {
            "person_id": pid,
            "condition_concept_id": COND_A1,
            "condition_era_start_date": "2011-01-01",
            "condition_era_end_date": "2011-02-01",
            "condition_occurrence_count": count,
        }

    tables = world([1, 2], condition_era=[era(1, 3), era(2, 1)])
    got, _ = run_spec(tables, cohort(cb.condition_era(A, occurrence_count=cb.gte(2)), end=AT_END))
    assert got == rows((1, "2011-01-01", "2011-02-01"))


def test_visit_type_and_stop_reason_filters(run_spec):
    tables = world(
        [1, 2],
        condition_occurrence=[
            cond(1, "2011-01-01", visit_occurrence_id=1),
            cond(2, "2011-01-01", visit_occurrence_id=2),
        ],
        visit_occurrence=[
            {
                "visit_occurrence_id": 1,
                "person_id": 1,
                "visit_concept_id": VISIT_IP,
                "visit_start_date": "2011-01-01",
                "visit_end_date": "2011-01-02",
            },
            {
                "visit_occurrence_id": 2,
                "person_id": 2,
                "visit_concept_id": VISIT_OP,
                "visit_start_date": "2011-01-01",
                "visit_end_date": "2011-01-01",
            },
        ],
        drug_exposure=[drug(1, "2011-01-01", stop_reason="adverse event"), drug(2, "2011-01-01")],
    )
    got, _ = run_spec(tables, cohort(cb.condition(A, visit_type=cb.concepts(VISIT_IP))))
    assert [r[0] for r in got] == [1]
    stopped = cb.drug(X, stop_reason=m.TextFilter(text="adverse", op="startsWith"))
    got, _ = run_spec(tables, cohort(stopped), cohort_id=2)
    assert [r[0] for r in got] == [1]


def test_a_text_filter_reads_a_backslash_and_an_exclamation_mark_as_themselves(run_spec):
    """PostgreSQL and Spark take a backslash in LIKE as an escape by default; DuckDB (and OHDSI's SQL Server)
    as a character.  ``%`` stays a wildcard, as in Circe."""
    tables = world([1, 2, 3], drug_exposure=[drug(1, "2011-01-01", stop_reason="dose\\2 stopped!"),
                                             drug(2, "2011-01-01", stop_reason="dose2 stopped!"),
                                             drug(3, "2011-01-01", stop_reason="dose\\2 stopped")])
    for cohort_id, (wanted, op) in enumerate([("dose\\2", "startsWith"), ("ped!", "endsWith"),
                                              ("e\\2%!", "contains"), ("dose\\2", "!startsWith")], start=1):
        stopped = cb.drug(X, stop_reason=m.TextFilter(text=wanted, op=op))
        got, _ = run_spec(tables, cohort(stopped), cohort_id=cohort_id)
        expected = {1: [1, 3], 2: [1, 2], 3: [1], 4: [2]}[cohort_id]
        assert [r[0] for r in got] == expected, (wanted, op)
