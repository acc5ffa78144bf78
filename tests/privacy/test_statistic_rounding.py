"""Released statistics cannot undo count rounding: the attacks that recovered N from a mean now fail.

The attacker knows the policy, the published (rounded) count and the released statistics, and that
the values summarised are whole numbers (ages in years, comorbidity scores).  A group size N is
*consistent* with a release if some whole-number data of N people would give exactly that release.
"""

from __future__ import annotations

import math

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from mercia.analytics.base import QUANTILES, distribution_columns, distribution_row, quantiles_sql
from mercia.cdm import Store
from mercia.privacy.disclosure import ColumnSpec, DisclosurePolicy, StatTable, get_policy
from tests.conftest import DISCLOSURE_PROFILE

OPENSAFELY = get_policy("opensafely")
ROUNDING_POLICIES = [get_policy("opensafely"), get_policy("nhse-hes")]
DUCKDB = Store(":memory:")  # the dialect quantiles_sql is rendered in (the test runs it on its own connection)


def mean_table(groups: dict[str, tuple[int, float]]) -> StatTable:
    return StatTable(name="t", title="t", columns=[
        ColumnSpec(name="cohort", kind="label"), ColumnSpec(name="count_persons", kind="count"),
        ColumnSpec(name="mean", kind="statistic", basis=["count_persons"])],
        rows=[{"cohort": k, "count_persons": n, "mean": m} for k, (n, m) in groups.items()])


def sizes_for_count(policy: DisclosurePolicy, published: int) -> range:
    span = policy.rounding_base or 1
    return range(max(policy.threshold + 1, published - span), published + span + 1)


def sums_for_mean(policy: DisclosurePolicy, published: int, mean: float, n: int) -> list[int]:
    """Whole-number sums S for N people whose mean S/N the policy would release as ``mean``."""
    step = policy.statistic_step(1.0, published)
    low, high = math.floor((mean - step) * n), math.ceil((mean + step) * n)
    return [s for s in range(low, high + 1) if policy.publish_statistic(s / n, 1.0, [published]) == mean]


def consistent_sizes(policy: DisclosurePolicy, published: int, mean: float) -> list[int]:
    return [n for n in sizes_for_count(policy, published)
            if policy.publish_count(n) == published and sums_for_mean(policy, published, mean, n)]


def test_raw_means_gave_away_the_exact_size():
    # The attack as found: 255 and 245 published, means at full precision.  Only N = 253 and 246
    # fit, so exactly 7 people were aged 92 or over.  (Checks the attack itself works.)
    def fits(n: int, mean: float) -> bool:
        return abs(round(mean * n) - mean * n) < 1e-6
    assert [n for n in range(253, 258) if fits(n, 15214 / 253)] == [253]
    assert [n for n in range(243, 248) if fits(n, 14544 / 246)] == [246]


def test_two_export_age_mean_differencing_no_longer_recovers_n():
    released = OPENSAFELY.apply(mean_table({"all": (253, 15214 / 253), "under 92": (246, 14544 / 246)}))
    (all_, under) = released.rows
    assert (all_["count_persons"], under["count_persons"]) == (255, 245)
    assert (all_["mean"], under["mean"]) == (60.1, 59.1)  # 0.1 years: the power of ten >= 8/255
    sizes_all = consistent_sizes(OPENSAFELY, 255, all_["mean"])
    sizes_under = consistent_sizes(OPENSAFELY, 245, under["mean"])
    assert sizes_all == [253, 254, 255, 256, 257] and sizes_under == [243, 244, 245, 246, 247]
    differences = {a - b for a in sizes_all for b in sizes_under}
    assert len(differences) > 1 and min(differences) <= 7 < max(differences)


def test_quan_mean_no_longer_recovers_a_suppressed_cell():
    # 60 people, one with a Quan score of 1: the mean 1/60 said exactly one person had any score.
    released = OPENSAFELY.apply(mean_table({"quan": (60, 1 / 60)})).rows[0]
    assert released["count_persons"] == 60 and released["mean"] == 0.0
    for n in consistent_sizes(OPENSAFELY, 60, released["mean"]):
        sums = sums_for_mean(OPENSAFELY, 60, released["mean"], n)
        assert 0 in sums and max(sums) > OPENSAFELY.threshold  # anything from nobody to more than 7


def test_model_estimates_are_released_to_two_significant_figures():
    table = StatTable(name="cox", title="cox", columns=[
        ColumnSpec(name="count_persons", kind="count"),
        ColumnSpec(name="hazard_ratio", kind="statistic", basis=["count_persons"], resolution=None)],
        rows=[{"count_persons": 300, "hazard_ratio": 1.23456}])
    assert OPENSAFELY.apply(table).rows[0]["hazard_ratio"] == 1.2


def sd_fits(policy: DisclosurePolicy, published: int, sd: float, n: int, total: int) -> bool:
    """Is there a whole-number sum of squares Q (same parity as the sum) giving the released SD?"""
    step = policy.statistic_step(1.0, published)
    low = max(0.0, sd - step / 2) ** 2 * (n - 1) + total * total / n
    first = math.ceil(low - 1e-9)
    first += (first - total) % 2
    return any(policy.publish_statistic(math.sqrt(max(0.0, (q - total * total / n) / (n - 1))), 1.0, [published])
               == sd for q in range(first, first + 8, 2))


@given(values=st.lists(st.integers(0, 100), min_size=8, max_size=400), policy=st.sampled_from(ROUNDING_POLICIES))
@settings(settings.get_profile(DISCLOSURE_PROFILE))
def test_no_released_distribution_identifies_its_size(values, policy):
    """Property: for random whole-number data, the released count, mean and SD together fit more than
    one group size, and the quantiles are observed values (no interpolation fraction), never the
    smallest or largest (withheld where they could be, for any size the published count allows)."""
    con = duckdb.connect()
    con.execute("CREATE TABLE v (x INTEGER)")
    con.executemany("INSERT INTO v VALUES (?)", [[v] for v in values])
    row = distribution_row(con.execute(f"SELECT {quantiles_sql(DUCKDB, 'x')} FROM v").fetchone())
    table = StatTable(name="d", title="d", columns=[ColumnSpec(name="variable", kind="label"),
                                                    ColumnSpec(name="count_persons", kind="count"),
                                                    *distribution_columns()],
                      rows=[{"variable": "age", **row}])
    released = policy.apply(table).rows[0]
    published = released["count_persons"]
    for q, fraction in QUANTILES.items():
        if policy.extreme_quantile(fraction, [published]):
            assert released[q] is None
        else:
            assert float(released[q]).is_integer() and 1 < math.ceil(fraction * len(values)) < len(values)
    fitting = [n for n in sizes_for_count(policy, published) if policy.publish_count(n) == published
               and any(sd_fits(policy, published, released["sd"], n, s)
                       for s in sums_for_mean(policy, published, released["mean"], n))]
    assert len(values) in fitting and len(fitting) > 1
