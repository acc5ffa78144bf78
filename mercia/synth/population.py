"""The people of the synthetic West Midlands: age, sex, ethnicity, place, deprivation, NHS number,
names, GP registration periods, moves and deaths — all drawn as whole numpy columns per chunk.

Published figures used (rounded; see docs/synth.md for the sources):
- age/sex: ONS mid-2022 population estimates, West Midlands region (E12000005), 5-year bands;
- ethnicity: Census 2021 (TS021), West Midlands region and Birmingham, NHS ethnic category codes;
- deprivation: English Indices of Deprivation 2019, share of LSOAs per national IMD decile.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np

EPOCH = dt.date(1970, 1, 1)


def day(d: dt.date) -> int:
    return (d - EPOCH).days


REFERENCE_DATE = day(dt.date(2024, 3, 31))   # end of QOF year 2023-24: the "today" of the region
WINDOW_START = day(dt.date(2010, 4, 1))      # GP records and hospital data start here
YEAR = 365.25

# ONS mid-2022 West Midlands, percentage of persons per 5-year band 0-4 ... 85-89, 90+ (rounded),
# and the share of each band that is female.
AGE_BANDS = np.array([5.7, 6.2, 6.4, 6.1, 6.5, 6.6, 6.7, 6.4, 6.1, 6.0, 6.6, 6.6, 5.9, 5.0, 5.0, 3.7, 2.5, 1.4, 0.6])
FEMALE_SHARE = np.array([.49, .49, .49, .49, .49, .50, .50, .50, .50, .51, .51, .51, .51, .52, .53, .54, .57, .61, .70])
AGE_BANDS = AGE_BANDS / AGE_BANDS.sum()

# Postcode areas of the region with their share of the population and the districts used.
AREAS = [  # (area, share, districts, city)
    ("B", 0.30, [f"B{i}" for i in range(1, 80)], "Birmingham"),
    ("CV", 0.15, [f"CV{i}" for i in range(1, 38)], "Coventry"),
    ("WV", 0.08, [f"WV{i}" for i in range(1, 17)], "Wolverhampton"),
    ("WS", 0.09, [f"WS{i}" for i in range(1, 16)], "Walsall"),
    ("DY", 0.09, [f"DY{i}" for i in range(1, 15)], "Dudley"),
    ("ST", 0.14, [f"ST{i}" for i in range(1, 22)], "Stoke-on-Trent"),
    ("WR", 0.06, [f"WR{i}" for i in range(1, 16)], "Worcester"),
    ("HR", 0.03, [f"HR{i}" for i in range(1, 10)], "Hereford"),
    ("TF", 0.04, [f"TF{i}" for i in range(1, 14)], "Telford"),
    ("SY", 0.02, [f"SY{i}" for i in range(1, 6)], "Shrewsbury"),
]
LSOAS_PER_DISTRICT = 30
# Share of LSOAs per national IMD decile (1 = most deprived): Birmingham-like for B, regional otherwise.
IMD_B = np.array([.40, .13, .09, .07, .06, .06, .05, .05, .05, .04])
IMD_REST = np.array([.15, .13, .11, .10, .10, .09, .09, .08, .08, .07])

# NHS ethnic category codes and their mix: B postcode area (Birmingham, Solihull, Sutton Coldfield:
# ~42% not White) and the rest of the region.
ETHNIC_CODES = np.array(list("ABCDEFGHJKLMNPRS"))
ETHNIC_B = np.array([.52, .01, .05, .02, .005, .01, .01, .06, .14, .03, .03, .03, .04, .01, .01, .025])
ETHNIC_REST = np.array([.815, .005, .035, .01, .003, .007, .005, .05, .02, .004, .01, .008, .012, .003, .005, .008])
ETHNIC_GROUP = {"A": "white", "B": "white", "C": "white", "D": "mixed", "E": "mixed", "F": "mixed", "G": "mixed",
                "H": "south_asian", "J": "south_asian", "K": "south_asian", "L": "south_asian",
                "M": "black", "N": "black", "P": "black", "R": "east_asian", "S": "other"}
GROUPS = ["white", "mixed", "south_asian", "black", "east_asian", "other"]

# Fraction of the people ever registered in the window who died, or left the region, before the
# reference date (ONS crude death rate ~1% a year over 14 years; net out-migration).
DIED_SHARE, LEFT_SHARE, MOVED_IN_SHARE, CHANGED_PRACTICE_SHARE = 0.11, 0.05, 0.20, 0.08

_NAMES = {  # a few common names per group: (female given, male given, family)
    "white": (["Olivia", "Amelia", "Emily", "Sophie", "Jessica", "Charlotte", "Lucy", "Hannah", "Grace", "Margaret",
               "Susan", "Sarah", "Karen", "Julie", "Helen"],
              ["Oliver", "George", "Harry", "Jack", "Jacob", "Thomas", "James", "William", "David", "John", "Paul",
               "Mark", "Richard", "Peter", "Andrew"],
              ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright",
               "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke"]),
    "south_asian": (["Aisha", "Fatima", "Zara", "Maryam", "Priya", "Anjali", "Simran", "Nadia", "Ayesha", "Sana"],
                    ["Mohammed", "Ali", "Ibrahim", "Yusuf", "Arjun", "Rahul", "Harpreet", "Imran", "Hamza", "Bilal"],
                    ["Khan", "Ahmed", "Hussain", "Ali", "Patel", "Singh", "Kaur", "Begum", "Akhtar", "Mahmood",
                     "Sharma", "Iqbal", "Rahman", "Shah", "Malik"]),
    "black": (["Abigail", "Precious", "Grace", "Blessing", "Chloe", "Aaliyah", "Esther", "Amara"],
              ["Daniel", "Samuel", "Joshua", "Emmanuel", "Tyrone", "Kwame", "David", "Isaac"],
              ["Okafor", "Campbell", "Mensah", "Francis", "Adeyemi", "Brown", "Williams", "Osei", "Clarke", "Grant"]),
    "east_asian": (["Mei", "Li", "Yan", "Hui", "Lin"], ["Wei", "Jun", "Hao", "Ming", "Chen"],
                   ["Chen", "Wang", "Li", "Zhang", "Liu", "Wong", "Lee"]),
}
_NAMES["mixed"] = tuple(a + b for a, b in zip(_NAMES["white"], _NAMES["black"]))
_NAMES["other"] = tuple(a + b for a, b in zip(_NAMES["white"], _NAMES["south_asian"]))

_POSTCODE_LETTERS = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))  # inward-code letters (no C I K M O V)


@dataclass(frozen=True)
class Geography:
    """Postcode districts and synthetic LSOAs of the region, fixed for every seed."""

    districts: np.ndarray      # district string per district index
    district_area: np.ndarray  # area index per district
    lsoa_codes: np.ndarray     # E01 9xxxxx code per LSOA index
    lsoa_district: np.ndarray  # district index per LSOA
    lsoa_imd: np.ndarray       # IMD decile per LSOA


@functools.lru_cache(maxsize=1)
def geography() -> Geography:
    rng = np.random.default_rng(20240331)
    districts, district_area = [], []
    for a, (_, _, ds, _) in enumerate(AREAS):
        districts += ds
        district_area += [a] * len(ds)
    district_area = np.array(district_area)
    n_lsoa = len(districts) * LSOAS_PER_DISTRICT
    lsoa_district = np.repeat(np.arange(len(districts)), LSOAS_PER_DISTRICT)
    in_b = district_area[lsoa_district] == 0
    imd = np.where(in_b, rng.choice(10, n_lsoa, p=IMD_B), rng.choice(10, n_lsoa, p=IMD_REST)) + 1
    # Synthetic but well-formed LSOA 2021 codes: E01 + six digits, in a range no real LSOA uses.
    codes = np.char.add("E01", np.char.zfill((900000 + np.arange(n_lsoa)).astype(str), 6))
    return Geography(np.array(districts), district_area, codes, lsoa_district, imd)


def nhs_check_digits(bases: np.ndarray) -> np.ndarray:
    """Modulus-11 check digit of 9-digit bases (NHS Data Dictionary); 10 marks an invalid base."""
    digits = (bases[:, None] // 10 ** np.arange(8, -1, -1)) % 10
    check = 11 - (digits @ np.arange(10, 1, -1)) % 11
    return np.where(check == 11, 0, check)


def nhs_numbers(count: int, seed: int) -> np.ndarray:
    """``count`` distinct valid NHS numbers (int64), 999 range first, then 990-998; never issued.
    Each 3-digit prefix block is shuffled on its own, so the first ~909,000 are all ``999``."""
    rng = np.random.default_rng([seed, 999])
    out, needed = [], count
    for prefix in (999, *range(990, 999)):
        if needed <= 0:
            break
        bases = prefix * 1_000_000 + np.arange(1_000_000)
        check = nhs_check_digits(bases)
        valid = bases[check != 10] * 10 + check[check != 10]
        take = valid[rng.permutation(len(valid))[:needed]]
        out.append(take)
        needed -= len(take)
    if needed > 0:
        raise ValueError(f"cannot issue {count} synthetic NHS numbers (the never-issued ranges hold ~9 million)")
    return np.concatenate(out)


@dataclass
class People:
    """One chunk of people: every attribute is a numpy column of the same length."""

    person_id: np.ndarray
    female: np.ndarray
    birth: np.ndarray            # day number
    death: np.ndarray            # day number or -1
    obs_start: np.ndarray        # first registration start
    obs_end: np.ndarray          # last registration end (death, leaving or the reference date)
    change_date: np.ndarray      # day the person changed practice, or -1
    practice: np.ndarray         # first practice index
    practice2: np.ndarray        # practice after the change (== practice when none)
    trust: np.ndarray            # home acute trust index
    lsoa: np.ndarray
    district: np.ndarray
    area: np.ndarray
    imd: np.ndarray
    ethnic: np.ndarray           # NHS ethnic category letter
    group: np.ndarray            # index into GROUPS
    nhs_number: np.ndarray

    def __len__(self) -> int:
        return len(self.person_id)

    def age_years(self, at: np.ndarray | int) -> np.ndarray:
        return (np.asarray(at) - self.birth) / YEAR

    def practice_at(self, days: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Practice of person ``idx`` on day ``days`` (vectorised over events)."""
        changed = (self.change_date[idx] >= 0) & (days >= self.change_date[idx])
        return np.where(changed, self.practice2[idx], self.practice[idx])


def make_people(rng: np.random.Generator, first_person: int, n: int, geo: Geography, nhs: np.ndarray,
                n_practices: int, n_trusts: int) -> People:
    status = rng.random(n)
    died = status < DIED_SHARE
    left = (status >= DIED_SHARE) & (status < DIED_SHARE + LEFT_SHARE)

    band = rng.choice(len(AGE_BANDS), n, p=AGE_BANDS)
    age = band * 5 + rng.random(n) * np.where(band == len(AGE_BANDS) - 1, 12, 5)
    female = rng.random(n) < FEMALE_SHARE[band]
    end = np.full(n, REFERENCE_DATE, dtype=np.int64)
    exit_day = WINDOW_START + (rng.random(n) * (REFERENCE_DATE - WINDOW_START)).astype(np.int64)
    # People who died: age at death ~ N(80, 11) (ONS deaths by age, England and Wales), 1% infants.
    death_age = np.where(rng.random(n) < 0.01, rng.random(n) * 0.9, np.clip(rng.normal(80, 11, n), 0.1, 104))
    age = np.where(died, death_age, age)
    end = np.where(died | left, exit_day, end)
    birth = end - (age * YEAR).astype(np.int64)
    death = np.where(died, end, -1)

    start = np.maximum(birth, WINDOW_START)
    moved_in = rng.random(n) < MOVED_IN_SHARE
    move_day = start + (rng.random(n) * np.maximum(end - start, 0)).astype(np.int64)
    start = np.where(moved_in, move_day, start)

    area = rng.choice(len(AREAS), n, p=np.array([a[1] for a in AREAS]))
    district_of_area = [np.flatnonzero(geo.district_area == a) for a in range(len(AREAS))]
    district = np.empty(n, dtype=np.int64)
    for a, ds in enumerate(district_of_area):
        m = area == a
        district[m] = ds[rng.integers(0, len(ds), m.sum())]
    lsoa = district * LSOAS_PER_DISTRICT + rng.integers(0, LSOAS_PER_DISTRICT, n)

    eth_idx = np.where(area == 0, rng.choice(len(ETHNIC_CODES), n, p=ETHNIC_B / ETHNIC_B.sum()),
                       rng.choice(len(ETHNIC_CODES), n, p=ETHNIC_REST / ETHNIC_REST.sum()))
    ethnic = ETHNIC_CODES[eth_idx]
    group_of_code = np.array([GROUPS.index(ETHNIC_GROUP[c]) for c in ETHNIC_CODES])

    # Practices serve neighbourhoods: the practice follows the LSOA, with some spill-over.
    practice = (lsoa * 7919) % n_practices
    spill = rng.random(n) < 0.15
    practice = np.where(spill, rng.integers(0, n_practices, n), practice)
    changed = (rng.random(n) < CHANGED_PRACTICE_SHARE) & (end - start > 2 * 365) & (n_practices > 1)
    change_date = np.where(changed, start + ((end - start) * (0.2 + 0.6 * rng.random(n))).astype(np.int64), -1)
    practice2 = np.where(changed, (practice + 1 + rng.integers(0, max(n_practices - 1, 1), n)) % n_practices,
                         practice)
    trust = area % n_trusts

    return People(
        person_id=np.arange(first_person + 1, first_person + n + 1, dtype=np.int64), female=female,
        birth=birth.astype(np.int64), death=death.astype(np.int64), obs_start=start.astype(np.int64),
        obs_end=end.astype(np.int64), change_date=change_date.astype(np.int64), practice=practice,
        practice2=practice2, trust=trust, lsoa=lsoa, district=district, area=area,
        imd=geo.lsoa_imd[lsoa], ethnic=ethnic, group=group_of_code[eth_idx],
        nhs_number=nhs[first_person:first_person + n])


def names(rng: np.random.Generator, people: People) -> tuple[np.ndarray, np.ndarray]:
    """Given and family names drawn from the small per-group lists above."""
    n = len(people)
    given = np.empty(n, dtype=object)
    family = np.empty(n, dtype=object)
    for g, group in enumerate(GROUPS):
        m = people.group == g
        if not m.any():
            continue
        fem, mal, fam = (np.array(x, dtype=object) for x in _NAMES[group])
        k = int(m.sum())
        is_f = people.female[m]
        given[m] = np.where(is_f, fem[rng.integers(0, len(fem), k)], mal[rng.integers(0, len(mal), k)])
        family[m] = fam[rng.integers(0, len(fam), k)]
    return given, family


def postcodes(rng: np.random.Generator, people: People, geo: Geography) -> np.ndarray:
    """Full postcodes ``<district> <digit><letter><letter>`` (well-formed, not checked against PAF)."""
    n = len(people)
    inward = np.char.add(np.char.add(rng.integers(0, 10, n).astype(str),
                                     _POSTCODE_LETTERS[rng.integers(0, 20, n)]),
                         _POSTCODE_LETTERS[rng.integers(0, 20, n)])
    return np.char.add(np.char.add(geo.districts[people.district], " "), inward)
