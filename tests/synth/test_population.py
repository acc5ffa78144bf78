"""The population matches its published targets: age/sex, ethnicity, deprivation, NHS numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mercia.synth import population as pop

N = 60_000


@pytest.fixture(scope="module")
def people():
    nhs = pop.nhs_numbers(N, 3)
    return pop.make_people(np.random.default_rng(3), 0, N, pop.geography(), nhs, 10, 3)


def test_nhs_numbers_are_valid_modulus_11_unique_and_never_issued():
    numbers = pop.nhs_numbers(50_000, 11)
    assert len(np.unique(numbers)) == len(numbers)
    text = numbers.astype(str)
    assert all(t.startswith("999") and len(t) == 10 for t in text)
    check = pop.nhs_check_digits(numbers // 10)
    assert np.array_equal(check, numbers % 10)
    # Published example from the NHS Data Dictionary: 943 476 5919 is valid (check digit 9).
    assert pop.nhs_check_digits(np.array([943476591]))[0] == 9


def test_nhs_numbers_beyond_the_999_range_stay_valid_and_unique():
    numbers = pop.nhs_numbers(950_000, 1)
    assert len(np.unique(numbers)) == 950_000
    assert (numbers // 10_000_000 >= 990).all()
    assert np.array_equal(pop.nhs_check_digits(numbers // 10), numbers % 10)


def test_age_structure_of_people_alive_on_the_reference_date_matches_ons(people):
    alive = people.obs_end == pop.REFERENCE_DATE
    age = people.age_years(pop.REFERENCE_DATE)[alive]
    band = np.minimum((age // 5).astype(int), len(pop.AGE_BANDS) - 1)
    observed = np.bincount(band, minlength=len(pop.AGE_BANDS)) / alive.sum()
    # Each 5-year band within 0.8 percentage points of the ONS share (sampling SE ~0.1 pp here).
    assert np.abs(observed - pop.AGE_BANDS).max() < 0.008
    female = people.female[alive].mean()
    assert 0.49 < female < 0.52


def test_ethnicity_is_birmingham_like_in_b_postcodes_and_regional_overall(people):
    white = np.isin(people.ethnic, list("ABC"))
    in_b = people.area == 0
    assert abs((1 - white[in_b].mean()) - 0.42) < 0.02     # B area ~42% not White
    assert abs(white.mean() - 0.77) < 0.02                  # West Midlands, Census 2021: ~77% White


def test_deprivation_is_skewed_to_the_most_deprived_deciles(people):
    deciles = np.bincount(people.imd, minlength=11)[1:] / len(people)
    assert deciles[0] > 0.2 and deciles[0] > 2 * deciles[9]
    assert deciles[:3].sum() > 0.4


def test_registration_periods_are_consistent(people):
    assert (people.obs_start >= np.maximum(people.birth, pop.WINDOW_START)).all()
    assert (people.obs_end >= people.obs_start).all()
    assert (people.obs_end <= pop.REFERENCE_DATE).all()
    dead = people.death >= 0
    assert abs(dead.mean() - pop.DIED_SHARE) < 0.01
    assert (people.death[dead] == people.obs_end[dead]).all()
    moved = people.change_date >= 0
    assert moved.any()
    assert ((people.change_date[moved] > people.obs_start[moved])
            & (people.change_date[moved] < people.obs_end[moved])).all()
    assert (people.practice2[moved] != people.practice[moved]).all()


def test_geography_codes_are_well_formed():
    geo = pop.geography()
    assert all(len(c) == 9 and c.startswith("E01") for c in geo.lsoa_codes)
    assert len(set(geo.lsoa_codes)) == len(geo.lsoa_codes)
    people = pop.make_people(np.random.default_rng(1), 0, 500, geo, pop.nhs_numbers(500, 1), 2, 1)
    codes = pop.postcodes(np.random.default_rng(1), people, geo)
    import re
    assert all(re.fullmatch(r"(B|CV|WV|WS|DY|ST|WR|HR|TF|SY)\d{1,2} \d[ABD-HJLNP-UW-Z]{2}", c) for c in codes)
