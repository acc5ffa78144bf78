"""Randomisation algorithms: balance properties by simulation, exactness of blocks, reproducibility."""

from __future__ import annotations

import statistics

import pytest
from scipy.stats import binom

from mercia.trials.randomise import (
    Allocator, Arm, Factor, KeyedStream, RandomisationError, Settings, load_randomisation_key, marginal_imbalance,
    simulate,
)

STREAM = KeyedStream(b"unit-test-key-unit-test-key-0123")


def _names(rows):
    return [k for k in rows[0] if k.startswith("factor_")]


def test_simple_ratio_within_binomial_limits():
    settings = Settings(method="simple", arms=(Arm("A", 2), Arm("B", 1)))
    allocator = Allocator(settings, STREAM, ("t",))
    n = 3000
    count_a = sum(allocator.allocate()[0] == "A" for _ in range(n))
    low, high = binom.ppf(0.0005, n, 2 / 3), binom.ppf(0.9995, n, 2 / 3)
    assert low <= count_a <= high


def test_permuted_blocks_balance_exactly_at_every_block_end():
    settings = Settings(method="block", arms=(Arm("A", 1), Arm("B", 2)), block_multiples=(1, 2, 3))
    allocator = Allocator(settings, STREAM, ("blocks",))
    arms, sizes = [], []
    for _ in range(600):
        arm, detail = allocator.allocate()
        arms.append(arm)
        if not sizes or detail["block"] >= len(sizes):
            sizes.append(detail["block_size"])
    assert set(sizes) == {3, 6, 9}                      # random block sizes, all multiples of 1+2
    end = 0
    for size in sizes[:-1]:
        end += size
        prefix = arms[:end]
        assert prefix.count("B") == 2 * prefix.count("A")   # exact 1:2 at each completed block
        within = arms[end - size:end]
        assert within.count("B") == 2 * within.count("A")


def test_stratified_blocks_balance_within_each_stratum():
    rows = simulate("stratified", 400, 2, seed=7, levels_per_factor=[2, 2])
    for f1 in ("L1", "L2"):
        for f2 in ("L1", "L2"):
            arms = [r["arm"] for r in rows if r["factor_1"] == f1 and r["factor_2"] == f2]
            assert abs(arms.count("A") - arms.count("B")) <= 2   # at most half of a block of 4 open


def _mean_imbalance(method: str, trials: int) -> float:
    values = []
    for seed in range(trials):
        rows = simulate(method, 200, 3, seed)
        values.append(marginal_imbalance(rows, _names(rows)))
    return statistics.mean(values)


def test_minimisation_imbalance_far_below_simple_randomisation():
    simple, minimised = _mean_imbalance("simple", 100), _mean_imbalance("minimisation", 100)
    assert minimised < simple / 3, (simple, minimised)


@pytest.mark.slow
def test_minimisation_over_1000_simulated_trials():
    """The issue's figure: 1,000 trials of 200 participants, 3 factors (2-3 levels), two arms 1:1."""
    simple, minimised = _mean_imbalance("simple", 1000), _mean_imbalance("minimisation", 1000)
    # measured: simple ≈ 54, minimisation ≈ 10 (sum over levels of |n_A - n_B|)
    assert minimised < simple / 4, (simple, minimised)
    assert minimised < 15


def test_minimisation_overall_split_stays_near_one_to_one():
    totals = [sum(r["arm"] == "A" for r in simulate("minimisation", 200, 3, s)) for s in range(50)]
    assert all(90 <= t <= 110 for t in totals)


def test_han_probabilities_keep_an_unequal_ratio():
    settings = Settings(method="minimisation", arms=(Arm("A", 2), Arm("B", 1)),
                        factors=(Factor("sex", ("F", "M")), Factor("site", ("1", "2", "3"))), probability=0.8)
    allocator = Allocator(settings, STREAM, ("han",))
    probs = allocator._han_probabilities(1)        # B (the smallest ratio) preferred: its p is the coin's
    assert probs[1] == pytest.approx(0.8)
    probs_a = allocator._han_probabilities(0)      # A preferred: 1 - (1 / 2) * 0.2
    assert probs_a[0] == pytest.approx(0.9) and sum(probs_a) == pytest.approx(1)
    n = 3000
    arms = [allocator.allocate({"sex": "FM"[i % 2], "site": "123"[i % 3]})[0] for i in range(n)]
    share = arms.count("A") / n
    assert abs(share - 2 / 3) < 0.02


def test_reproducible_for_a_seed_and_different_for_another():
    assert simulate("minimisation", 100, 3, 11) == simulate("minimisation", 100, 3, 11)
    assert simulate("minimisation", 100, 3, 11) != simulate("minimisation", 100, 3, 12)


def test_replay_continues_where_it_left_off():
    settings = Settings(method="minimisation", arms=(Arm("A"), Arm("B")), factors=(Factor("sex", ("F", "M")),))
    levels = [{"sex": "FM"[i % 3 == 0]} for i in range(50)]
    one = Allocator(settings, STREAM, ("r",))
    straight = [one.allocate(lv)[0] for lv in levels]
    two = Allocator(settings, STREAM, ("r",))
    first = [two.allocate(lv)[0] for lv in levels[:20]]
    resumed = Allocator(settings, STREAM, ("r",)).replay(list(zip(levels[:20], first, strict=True)))
    assert first + [resumed.allocate(lv)[0] for lv in levels[20:]] == straight


def test_a_randomisation_set_aside_spends_its_draw_but_counts_in_no_margin():
    settings = Settings(method="minimisation", arms=(Arm("A"), Arm("B")), factors=(Factor("sex", ("F", "M")),))
    history = [({"sex": "F"}, "A"), ({"sex": "M"}, "B")]
    counted = Allocator(settings, STREAM, ("d",)).replay(history)
    set_aside = Allocator(settings, STREAM, ("d",)).replay(history, set_aside=[{"sex": "F"}])
    assert set_aside.margins == counted.margins == [[[1, 0], [0, 1]]]
    assert set_aside.allocated == counted.allocated + 1
    _, detail = set_aside.allocate({"sex": "F"})
    assert detail["sequence"] == 4 and counted.imbalance_if({"sex": "F"}) == [2.0, 0.0]
    assert detail["imbalance"] == {"A": 2.0, "B": 0.0}   # as if the set-aside F had never been allocated


def test_variance_imbalance_and_audit_detail():
    settings = Settings(method="minimisation", arms=(Arm("A"), Arm("B"), Arm("C")),
                        factors=(Factor("sex", ("F", "M"), 2.0),), imbalance="variance")
    allocator = Allocator(settings, STREAM, ("v",))
    allocator.allocate({"sex": "F"})
    _, detail = allocator.allocate({"sex": "F"})
    assert detail["preferred"] is not None and set(detail["imbalance"]) == {"A", "B", "C"}
    assert sum(detail["probabilities"].values()) == pytest.approx(1)


@pytest.mark.parametrize("bad, message", [
    ({"method": "coin", "arms": [{"code": "A"}, {"code": "B"}]}, "not one of"),
    ({"method": "simple", "arms": [{"code": "A"}]}, "at least two arms"),
    ({"method": "minimisation", "arms": [{"code": "A"}, {"code": "B"}]}, "needs at least one factor"),
    ({"method": "minimisation", "arms": [{"code": "A"}, {"code": "B"}], "factors": [{"name": "x", "levels": ["1"]}]},
     "two distinct levels"),
    ({"method": "simple", "arms": [{"code": "A"}, {"code": "B"}], "probability": 0.3}, "between 0.5 and 1"),
    ({"arms": []}, "missing or bad field"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(RandomisationError, match=message):
        Settings.from_dict(bad)


def test_unknown_level_is_refused():
    settings = Settings(method="stratified", arms=(Arm("A"), Arm("B")), factors=(Factor("sex", ("F", "M")),))
    with pytest.raises(RandomisationError, match="level 'X'"):
        Allocator(settings, STREAM).allocate({"sex": "X"})


def test_key_comes_from_the_environment_or_a_file_outside_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("MERCIA_RANDOMISATION_KEY", raising=False)
    monkeypatch.delenv("MERCIA_RANDOMISATION_KEY_FILE", raising=False)
    with pytest.raises(RandomisationError, match="no randomisation key"):
        load_randomisation_key()
    key_file = tmp_path / "key"
    key_file.write_text("f" * 64)
    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY_FILE", str(key_file))
    assert load_randomisation_key() == b"f" * 64
    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "short")
    with pytest.raises(RandomisationError, match="too short"):
        load_randomisation_key()
    assert "key hidden" in repr(KeyedStream(b"x" * 32))
