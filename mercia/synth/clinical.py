"""Clinical histories of one chunk of people, generated as whole numpy columns (no loop per event).

The model, in order: chronic conditions (probability by age at the end of observation, sex,
ethnicity, deprivation and earlier conditions, calibrated so that prevalence among people
registered on the reference date matches the QOF 2023-24 targets below); yearly chronic disease
reviews with labs and vital signs whose values depend on the conditions active that day; repeat
prescriptions that follow NICE first-line choices; acute GP consultations; hospital activity
(admissions for MI, stroke, heart failure, cancer, fractures, joint replacement, appendicitis,
deliveries; outpatient follow-up; A&E); PROMs around joint replacement; births and pregnancies;
deaths with a cause; rare diseases with HPO phenotypes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mercia.synth import catalogue as cat
from mercia.synth.population import (REFERENCE_DATE, WINDOW_START, YEAR, Geography, People, geography,
                                     make_people)
from mercia.synth.rare import RareCases, sample_cases
from mercia.synth.rare import panel as rare_panel


@dataclass(frozen=True)
class ConditionModel:
    key: str
    target: float            # QOF 2023-24 West Midlands prevalence (register / eligible list), rounded
    min_age: float           # QOF register age floor (and earliest onset)
    a50: float | None        # logistic age curve centre (None = flat in age)
    slope: float = 8.0
    female: float = 1.0      # relative risk, female vs male (0 = male only; inf = female only)
    ethnic: tuple = (1, 1, 1, 1, 1, 1)  # relative risk per population.GROUPS
    deprivation: float = 0.0  # log relative risk from least (10) to most (1) deprived decile
    after: tuple = ()        # (earlier condition key, relative risk)
    dying: float = 1.0       # relative risk among people who died in the window (they were sicker)


# Targets: NHS England QOF 2023-24 prevalence, West Midlands ICBs (rounded; docs/synth.md).
# Relative risks by ethnicity: e.g. type 2 diabetes ~2-3x in South Asian and ~2x in Black people
# (Diabetes UK / NICE PH38); hypertension higher in Black people (NICE NG136).
CONDITION_MODELS = [
    ConditionModel("hypertension", 0.150, 18, 58, 9, 0.95, (1, 1, 1.3, 1.5, 1, 1), 0.3),
    ConditionModel("t2dm", 0.083, 17, 58, 10, 0.8, (1, 1.3, 2.6, 2.0, 1.3, 1.3), 0.6, (("hypertension", 1.8),)),
    ConditionModel("asthma", 0.066, 6, None, female=1.2, deprivation=0.3),
    ConditionModel("copd", 0.019, 35, 66, 7, 0.9, (1, 0.6, 0.5, 0.4, 0.5, 0.6), 1.0, dying=2.5),
    ConditionModel("ckd", 0.043, 18, 74, 7, 1.3, (1, 1, 1.3, 1.3, 1, 1), 0.3,
                   (("hypertension", 2.0), ("t2dm", 2.0))),
    ConditionModel("af", 0.022, 18, 77, 6, 0.8, (1, 0.6, 0.5, 0.5, 0.5, 0.6), 0.0, (("hypertension", 1.5),)),
    ConditionModel("chd", 0.031, 18, 70, 7, 0.55, (1, 1, 1.5, 0.7, 0.7, 1), 0.5,
                   (("hypertension", 1.6), ("t2dm", 1.8)), dying=2.0),
    ConditionModel("hf", 0.011, 18, 78, 6, 0.8, (1, 1, 1, 1, 1, 1), 0.4, (("chd", 3.0), ("af", 2.0)),
                   dying=3.0),
    ConditionModel("depression", 0.135, 18, None, female=1.9, deprivation=0.5),
    ConditionModel("breast_cancer", 0.011, 18, 62, 9, float("inf"), dying=2.0),
    ConditionModel("prostate_cancer", 0.007, 18, 72, 6, 0.0, (1, 1, 0.6, 2.0, 0.5, 1), dying=2.0),
    ConditionModel("colorectal_cancer", 0.004, 18, 70, 8, 0.8, dying=3.0),
    ConditionModel("lung_cancer", 0.0015, 18, 72, 7, 0.9, (1, 1, 0.5, 0.5, 0.8, 1), 1.0, dying=8.0),
    ConditionModel("stroke", 0.019, 18, 74, 8, 0.9, (1, 1, 1.2, 1.4, 1, 1), 0.3,
                   (("hypertension", 2.0), ("af", 2.5)), dying=2.5),
    ConditionModel("dementia", 0.0075, 65, 85, 4, 1.4, dying=3.0),
    ConditionModel("hypothyroidism", 0.035, 18, 58, 12, 5.0),
    ConditionModel("osteoarthritis", 0.10, 45, 68, 8, 1.5),
    ConditionModel("epilepsy", 0.0085, 18, None, deprivation=0.5),
    ConditionModel("rheumatoid_arthritis", 0.008, 16, 58, 10, 2.5),
    ConditionModel("osteoporosis", 0.009, 50, 76, 6, 4.0),
]
MODEL_KEYS = [m.key for m in CONDITION_MODELS]
CHRONIC_REVIEWED = {"hypertension", "t2dm", "asthma", "copd", "ckd", "af", "chd", "hf", "stroke",
                    "hypothyroidism", "epilepsy", "rheumatoid_arthritis", "dementia", "osteoporosis"}

# (condition, drug, share of patients treated, course length in days or 0 = until end of record).
PRESCRIBING = [
    ("hypertension", "amlodipine", 0.45, 0), ("hypertension", "ramipril", 0.30, 0),
    ("hypertension", "lisinopril", 0.10, 0), ("hypertension", "indapamide", 0.20, 0),
    ("t2dm", "metformin", 0.88, 0), ("t2dm", "gliclazide", 0.25, 0), ("t2dm", "atorvastatin", 0.75, 0),
    ("chd", "atorvastatin", 0.85, 0), ("chd", "aspirin", 0.70, 0), ("chd", "bisoprolol", 0.50, 0),
    ("af", "apixaban", 0.65, 0), ("af", "warfarin", 0.15, 0), ("af", "bisoprolol", 0.45, 0),
    ("hf", "furosemide", 0.80, 0), ("hf", "ramipril", 0.55, 0), ("hf", "bisoprolol", 0.60, 0),
    ("stroke", "clopidogrel", 0.80, 0), ("stroke", "atorvastatin", 0.80, 0),
    ("asthma", "salbutamol", 0.95, 0), ("asthma", "fluticasone", 0.55, 0),
    ("copd", "salbutamol", 0.95, 0), ("copd", "fluticasone_salmeterol", 0.60, 0),
    ("ckd", "simvastatin", 0.35, 0), ("depression", "sertraline", 0.65, 540),
    ("hypothyroidism", "levothyroxine", 0.97, 0), ("osteoporosis", "alendronate", 0.70, 0),
    ("dementia", "donepezil", 0.50, 0), ("epilepsy", "carbamazepine", 0.55, 0),
    ("rheumatoid_arthritis", "methotrexate", 0.60, 0),
]
DIAGNOSTIC_TESTS = {"af": "ecg", "chd": "ecg", "hf": "ecg"}
ISSUE_DAYS = 84          # a 12-week repeat prescription
# Acute primary-care problems: (condition, min age, max age, weight, antibiotic, antibiotic share)
ACUTE = [
    ("otitis_media", 0, 12, 3.0, "amoxicillin", 0.5), ("viral_pharyngitis", 0, 120, 2.0, "", 0),
    ("strep_throat", 3, 40, 0.8, "penicillin_v", 0.9), ("acute_bronchitis", 0, 120, 1.5, "doxycycline", 0.3),
    ("sinusitis", 12, 120, 1.5, "amoxicillin", 0.2), ("cystitis", 16, 120, 1.2, "nitrofurantoin", 0.9),
    ("sprain_ankle", 8, 70, 0.6, "", 0),
]
CARE_SITE_GP, CARE_SITE_TRUST, CARE_SITE_PATHOLOGY, CARE_SITE_RARE = 1, 1001, 2001, 3001
CARE_SITE_METABOLOMICS = 4001
RARE_DISEASE_SHARE = 1 / 17     # people living with a rare disease (Rare Disease UK)
RARE_CHILD_SHARE = 0.5          # of whom children
RARE_CLINIC_OPENED = 6000       # 2016-06-10: the regional clinic's records start here


@dataclass
class Columns:
    """Rows of one table as parallel columns, appended part by part: numbers as numpy arrays,
    text as Arrow string arrays (a constant string is repeated by Arrow, not by Python)."""

    parts: dict[str, list] = field(default_factory=dict)

    def add(self, **cols) -> None:
        n = len(next(iter(cols.values())))
        for k, v in cols.items():
            if isinstance(v, str):
                part = pa.array([v]).take(pa.array(np.zeros(n, dtype=np.int32)))
            elif np.ndim(v) == 0:
                part = np.full(n, v)
            elif np.asarray(v).dtype.kind in "OUS":
                part = pa.array(np.asarray(v, dtype=object), pa.string())
            else:
                part = np.asarray(v)
            self.parts.setdefault(k, []).append(part)

    def get(self) -> dict[str, np.ndarray | pa.Array]:
        return {k: pa.concat_arrays(v) if isinstance(v[0], pa.Array) else np.concatenate(v)
                for k, v in self.parts.items()}

    def __len__(self) -> int:
        first = next(iter(self.parts.values()), [])
        return sum(len(p) for p in first)


@dataclass
class Chunk:
    """Everything generated for one chunk; ``omop.py`` turns it into CDM tables and extracts."""

    people: People
    visits: Columns
    conditions: Columns
    drugs: Columns
    measurements: Columns
    procedures: Columns
    observations: Columns
    deaths: Columns
    rare: RareCases | None
    rare_visit: np.ndarray       # local visit index per rare case (-1 = not seen)


def _logistic(age, a50, slope):
    return 1 / (1 + np.exp(-(age - a50) / slope))


def _raw_risk(m: ConditionModel, people: People, exit_age: np.ndarray, flags: dict) -> np.ndarray:
    base = np.ones(len(people)) if m.a50 is None else _logistic(exit_age, m.a50, m.slope)
    base = np.where(exit_age >= m.min_age, base, 0.0)
    if m.female == float("inf"):
        sex = np.where(people.female, 1.0, 0.0)
    else:
        sex = np.where(people.female, m.female, 1.0)
    eth = np.asarray(m.ethnic, dtype=float)[people.group]
    dep = np.exp(m.deprivation * (10 - people.imd) / 9)
    risk = base * sex * eth * dep * np.where(people.death >= 0, m.dying, 1.0)
    for key, rr in m.after:
        risk = risk * np.where(flags[key], rr, 1.0)
    return risk


@functools.lru_cache(maxsize=1)
def calibration() -> dict[str, float]:
    """Scale per condition so that expected prevalence among people registered on the reference
    date, within the register's ages, equals the target.  Fitted once on a fixed sample."""
    rng = np.random.default_rng(12345)
    n = 200_000
    people = make_people(rng, 0, n, geography(), np.zeros(n, dtype=np.int64), 1, 1)
    alive = people.obs_end == REFERENCE_DATE
    exit_age = people.age_years(people.obs_end)
    flags, scales = {}, {}
    for m in CONDITION_MODELS:
        raw = _raw_risk(m, people, exit_age, flags)
        eligible = alive & (exit_age >= m.min_age)
        scale = m.target / raw[eligible].mean()
        for _ in range(6):  # the 0.95 cap bites for a few groups: correct for it
            got = np.minimum(raw * scale, 0.95)[eligible].mean()
            scale *= m.target / got
        scales[m.key] = scale
        flags[m.key] = rng.random(n) < np.minimum(raw * scale, 0.95)
    return scales


class ChunkBuilder:
    """Builds one chunk.  Visits are numbered locally; ``omop.py`` offsets every id per chunk."""

    def __init__(self, seed: int, chunk_index: int, first_person: int, n: int, nhs: np.ndarray,
                 n_practices: int, n_trusts: int, geo: Geography):
        self.rng = np.random.default_rng([seed, chunk_index])
        self.n_trusts = n_trusts
        self.p = make_people(self.rng, first_person, n, geo, nhs, n_practices, n_trusts)
        self.visits, self.conditions, self.drugs = Columns(), Columns(), Columns()
        self.measurements, self.procedures, self.observations, self.deaths = Columns(), Columns(), Columns(), Columns()
        self.n_visits = 0
        self.order_counter = 0

    # -- primitives ----------------------------------------------------------------------------
    def add_visits(self, person, start, end, concept, care_site, source, method="", discharge="") -> np.ndarray:
        """``source`` is the setting (GP, IP, OP, AE, RD); ``method``/``discharge`` are the NHS Data
        Dictionary admission and discharge method codes of inpatient spells."""
        person = np.asarray(person)
        n = len(person)
        idx = np.arange(self.n_visits, self.n_visits + n)
        self.n_visits += n
        self.visits.add(person=person, start=np.asarray(start), end=np.asarray(end), concept=concept,
                        care_site=np.asarray(care_site), source=source, method=method, discharge=discharge)
        return idx

    def gp_visits(self, person, days) -> np.ndarray:
        site = CARE_SITE_GP + self.p.practice_at(days, person)
        return self.add_visits(person, days, days, cat.OUTPATIENT_VISIT, site, "GP")

    def trust_site(self, person) -> np.ndarray:
        home = self.p.trust[person]
        away = self.rng.random(len(person)) < 0.12
        other = (home + 1 + self.rng.integers(0, max(self.n_trusts - 1, 1), len(person))) % self.n_trusts
        return CARE_SITE_TRUST + np.where(away & (self.n_trusts > 1), other, home)

    def add_conditions(self, person, days, key, visit, hospital: bool) -> None:
        c = cat.CONDITIONS[key]
        self.conditions.add(person=np.asarray(person), date=np.asarray(days), concept=c.concept_id,
                            source=c.icd10 if hospital else c.code, visit=np.asarray(visit), key=key)

    def add_procedures(self, person, days, key, visit, hospital: bool) -> None:
        c = cat.PROCEDURES[key]
        self.procedures.add(person=np.asarray(person), date=np.asarray(days), concept=c.concept_id,
                            source=c.opcs4 if hospital and c.opcs4 else c.code, visit=np.asarray(visit), key=key)

    def in_record(self, person, days) -> np.ndarray:
        return (days >= self.p.obs_start[person]) & (days <= self.p.obs_end[person])

    # -- the model -----------------------------------------------------------------------------
    def build(self) -> Chunk:
        p, rng = self.p, self.rng
        n = len(p)
        exit_age = p.age_years(p.obs_end)
        scales = calibration()
        self.has, self.rec, self.onset = {}, {}, {}
        for m in CONDITION_MODELS:
            risk = np.minimum(_raw_risk(m, p, exit_age, self.has) * scales[m.key], 0.95)
            has = rng.random(n) < risk
            span = np.maximum(exit_age - m.min_age, 0)
            onset_age = m.min_age + span * np.sqrt(rng.random(n)) if m.a50 is not None else \
                m.min_age + span * rng.random(n)
            onset = p.birth + (onset_age * YEAR).astype(np.int64)
            self.has[m.key] = has
            self.onset[m.key] = np.minimum(onset, p.obs_end)
            self.rec[m.key] = np.clip(onset, p.obs_start, p.obs_end)
        self._diagnoses()
        self._reviews()
        self._prescribing()
        self._acute_primary_care()
        self._hospital()
        self._births()
        self._deaths()
        rare, rare_visit = self._rare()
        return Chunk(p, self.visits, self.conditions, self.drugs, self.measurements, self.procedures,
                     self.observations, self.deaths, rare, rare_visit)

    def _diagnoses(self) -> None:
        """Each chronic condition is coded at a GP consultation on its record date."""
        for m in CONDITION_MODELS:
            who = np.flatnonzero(self.has[m.key])
            days = self.rec[m.key][who]
            key = m.key
            if key == "asthma":
                child = (days - self.p.birth[who]) / YEAR < 16
                for sub, keep in (("childhood_asthma", child), ("asthma", ~child)):
                    self.add_conditions(who[keep], days[keep], sub, self.gp_visits(who[keep], days[keep]), False)
                continue
            if key == "copd":
                emph = self.rng.random(len(who)) < 0.2
                for sub, keep in (("emphysema", emph), ("copd", ~emph)):
                    visit = self.gp_visits(who[keep], days[keep])
                    self.add_conditions(who[keep], days[keep], sub, visit, False)
                    self.add_procedures(who[keep], days[keep], "spirometry", visit, False)
                continue
            visit = self.gp_visits(who, days)
            self.add_conditions(who, days, key, visit, False)
            if key in DIAGNOSTIC_TESTS:  # done in primary care when the diagnosis is made
                self.add_procedures(who, days, DIAGNOSTIC_TESTS[key], visit, False)

    def _active(self, key, person, days) -> np.ndarray:
        return self.has[key][person] & (self.rec[key][person] <= days)

    def _reviews(self) -> None:
        p, rng = self.p, self.rng
        first = np.full(len(p), np.iinfo(np.int64).max)
        for key in CHRONIC_REVIEWED:
            first = np.where(self.has[key], np.minimum(first, self.rec[key]), first)
        who = np.flatnonzero(first < np.iinfo(np.int64).max)
        count = ((p.obs_end[who] - first[who]) // 365).astype(np.int64)
        person = np.repeat(who, count)
        k = np.arange(len(person)) - np.repeat(np.cumsum(count) - count, count) + 1
        days = first[person] + k * 365 + rng.integers(-30, 30, len(person))
        days = np.clip(days, p.obs_start[person], p.obs_end[person])
        visit = self.gp_visits(person, days)
        self._labs_and_vitals(person, days, visit, routine=True)

    def _labs_and_vitals(self, person, days, visit, routine: bool) -> None:
        """Pathology panels and GP vital signs, values drawn from the person's state that day."""
        rng, p = self.rng, self.p
        n = len(person)
        act = {k: self._active(k, person, days) for k in self.has}
        age = (days - p.birth[person]) / YEAR
        adult = age >= 18
        female = p.female[person]
        renal_risk = act["hypertension"] | act["t2dm"] | act["ckd"] | act["hf"] | act["af"]
        u = rng.random((5, n))
        if routine:
            panels = {
                "UE": adult & (renal_risk | (u[0] < 0.15)),
                "HBA1C": act["t2dm"] | (adult & (u[1] < 0.05)),
                "LIPID": adult & ((act["t2dm"] | act["chd"] | act["stroke"] | (act["hypertension"] & (age > 40)))
                                  & (u[2] < 0.8)),
                "FBC": (act["ckd"] | act["hf"]) | (u[3] < 0.25),
                "TFT": act["hypothyroidism"] | (u[4] < 0.03),
            }
        else:  # hospital admission bloods
            panels = {"UE": np.ones(n, bool), "FBC": np.ones(n, bool), "HBA1C": np.zeros(n, bool),
                      "LIPID": np.zeros(n, bool), "TFT": np.zeros(n, bool)}
        statin = act["t2dm"] | act["chd"] | act["stroke"]
        egfr = np.where(act["ckd"], np.clip(rng.normal(42, 10, n), 8, 59),
                        np.clip(118 - 0.85 * np.maximum(age - 20, 0) + rng.normal(0, 9, n), 60, 130))
        sex_k = np.where(female, 0.7, 0.9)
        creat = 88.4 * sex_k * (egfr / (141 * 0.993 ** age * np.where(female, 1.018, 1.0))) ** (-1 / 1.209)
        values = {
            "hba1c": np.where(act["t2dm"], np.clip(rng.normal(58, 12, n), 40, 130), np.clip(rng.normal(37, 4, n), 25, 47)),
            "egfr": egfr, "creatinine": np.clip(creat, 20, 1200),
            "sodium": rng.normal(139, 2.5, n), "potassium": rng.normal(4.3, 0.4, n) + 0.3 * act["ckd"],
            "cholesterol": np.clip(np.where(statin, rng.normal(4.2, 0.8, n), rng.normal(5.3, 1.0, n)), 2.0, 11),
            "hdl": np.clip(np.where(female, rng.normal(1.55, 0.35, n), rng.normal(1.25, 0.3, n)), 0.5, 3.2),
            "haemoglobin": np.clip(np.where(female, rng.normal(133, 10, n), rng.normal(148, 11, n))
                                   - 12 * act["ckd"], 70, 195),
            "wbc": rng.lognormal(np.log(6.8), 0.25, n), "platelets": np.clip(rng.normal(260, 60, n), 40, 700),
            "mcv": rng.normal(90, 5, n),
            "tsh": np.where(act["hypothyroidism"], rng.lognormal(np.log(3.2), 0.7, n), rng.lognormal(np.log(1.8), 0.45, n)),
        }
        ranges = {"hba1c": (20, 41), "egfr": (90, 200), "creatinine": (45, 110), "sodium": (133, 146),
                  "potassium": (3.5, 5.3), "cholesterol": (0, 5), "hdl": (1.0, 3.0), "haemoglobin": (115, 170),
                  "wbc": (4, 11), "platelets": (150, 400), "mcv": (80, 100), "tsh": (0.35, 4.94)}
        for panel, (_, tests) in cat.LAB_PANELS.items():
            rows = np.flatnonzero(panels[panel])
            if len(rows) == 0:
                continue
            order = np.arange(self.order_counter, self.order_counter + len(rows))
            self.order_counter += len(rows)
            for test in tests:
                c = cat.MEASUREMENTS[test]
                lo, hi = ranges[test]
                self.measurements.add(person=person[rows], date=days[rows], concept=c.concept_id, key=test,
                                      value=np.round(values[test][rows], 1), low=float(lo), high=float(hi),
                                      visit=visit[rows], type=cat.LAB, order=order, panel=panel)
        if routine:
            bp = np.flatnonzero(adult & (act["hypertension"] | act["t2dm"] | act["ckd"] | act["chd"] | act["stroke"]
                                         | (u[0] < 0.2)))
            sbp = np.where(act["hypertension"][bp], rng.normal(141, 14, len(bp)),
                           rng.normal(118 + 0.35 * np.maximum(age[bp] - 30, 0), 11, len(bp)))
            dbp = np.where(act["hypertension"][bp], rng.normal(84, 9, len(bp)), rng.normal(76, 8, len(bp)))
            bmi_rows = np.flatnonzero(adult & (act["t2dm"] | (u[1] < 0.3)))
            bmi = np.clip(np.where(act["t2dm"][bmi_rows], rng.normal(31.5, 5.5, len(bmi_rows)),
                                   rng.normal(27, 5, len(bmi_rows))), 15, 60)
            for key, rows, vals, rng_lo, rng_hi in (("systolic_bp", bp, np.round(sbp), 90, 140),
                                                    ("diastolic_bp", bp, np.round(dbp), 60, 90),
                                                    ("bmi", bmi_rows, np.round(bmi, 1), 18.5, 25)):
                c = cat.MEASUREMENTS[key]
                self.measurements.add(person=person[rows], date=days[rows], concept=c.concept_id, key=key,
                                      value=vals, low=float(rng_lo), high=float(rng_hi), visit=visit[rows],
                                      type=cat.EHR, order=np.full(len(rows), -1), panel="")

    def _prescribing(self) -> None:
        p, rng = self.p, self.rng
        for cond, drug, share, course in PRESCRIBING:
            who = np.flatnonzero(self.has[cond] & (rng.random(len(p)) < share))
            start = self.rec[cond][who] + rng.integers(0, 30, len(who))
            end = p.obs_end[who] if course == 0 else np.minimum(p.obs_end[who], start + course)
            keep = start < end
            who, start, end = who[keep], start[keep], end[keep]
            count = (end - start) // ISSUE_DAYS + 1
            person = np.repeat(who, count)
            k = np.arange(len(person)) - np.repeat(np.cumsum(count) - count, count)
            days = np.repeat(start, count) + k * ISSUE_DAYS
            c = cat.DRUGS[drug]
            self.drugs.add(person=person, date=days, days_supply=ISSUE_DAYS, concept=c.concept_id,
                           source=c.code, key=drug, visit=np.full(len(person), -1))

    def _acute_primary_care(self) -> None:
        p, rng = self.p, self.rng
        years = (p.obs_end - p.obs_start) / YEAR
        mid_age = p.age_years((p.obs_start + p.obs_end) // 2)
        rate = np.select([mid_age < 5, mid_age < 16, mid_age < 65], [1.2, 0.5, 0.6], 1.0) * \
            np.where(p.female & (mid_age > 16), 1.3, 1.0)
        count = rng.poisson(rate * years)
        person = np.repeat(np.arange(len(p)), count)
        days = p.obs_start[person] + (rng.random(len(person)) * (p.obs_end[person] - p.obs_start[person])).astype(np.int64)
        visit = self.gp_visits(person, days)
        age = (days - p.birth[person]) / YEAR
        # Vectorised choice of problem: weights per (visit, problem), then inverse-CDF sampling.
        w = np.stack([np.where((age >= lo) & (age < hi) & ((key != "cystitis") | p.female[person]), wt, 0.0)
                      for key, lo, hi, wt, _, _ in ACUTE], axis=1)
        coded = rng.random(len(person)) < 0.55
        choice = (w.cumsum(1) / np.maximum(w.sum(1, keepdims=True), 1e-9) < rng.random((len(person), 1))).sum(1)
        for j, (key, _, _, _, drug, share) in enumerate(ACUTE):
            rows = np.flatnonzero(coded & (choice == j))
            self.add_conditions(person[rows], days[rows], key, visit[rows], False)
            if drug:
                treated = rows[rng.random(len(rows)) < share]
                c = cat.DRUGS[drug]
                self.drugs.add(person=person[treated], date=days[treated], days_supply=7, concept=c.concept_id,
                               source=c.code, key=drug, visit=visit[treated])
        tested = rng.random(len(person)) < 0.12
        self._labs_and_vitals(person[tested], days[tested], visit[tested], routine=True)

    def _admit(self, person, days, los, primary: str, method: str, procedure: str | None = None,
               discharge: str = "1") -> np.ndarray:
        """Inpatient spells with a primary diagnosis, comorbidity codes, admission bloods."""
        keep = self.in_record(person, days)
        person, days, los = person[keep], days[keep], np.asarray(los)[keep] if np.ndim(los) else np.full(keep.sum(), los)
        end = np.minimum(days + los, self.p.obs_end[person])
        visit = self.add_visits(person, days, end, cat.INPATIENT_VISIT, self.trust_site(person), "IP",
                                method, discharge)
        self.add_conditions(person, days, primary, visit, True)
        for key in ("hypertension", "t2dm", "af", "copd", "ckd", "hf"):
            rows = np.flatnonzero(self._active(key, person, days))
            self.add_conditions(person[rows], days[rows], key, visit[rows], True)
        if procedure:
            self.add_procedures(person, days + (los > 1), procedure, visit, True)
        self._labs_and_vitals(person, days, visit, routine=False)
        return visit

    def _hospital(self) -> None:
        p, rng = self.p, self.rng
        n = len(p)
        # Events at diagnosis of serious conditions.
        chd = np.flatnonzero(self.has["chd"] & (rng.random(n) < 0.35))
        mi_days = self.onset["chd"][chd]
        pci = rng.random(len(chd)) < 0.6
        self._admit(chd[pci], mi_days[pci], 4, "mi", "21", "pci")
        self._admit(chd[~pci], mi_days[~pci], 6, "mi", "21", None)
        cabg = np.flatnonzero(self.has["chd"] & (rng.random(n) < 0.05))
        self._admit(cabg, self.onset["chd"][cabg] + 60, 8, "chd", "11", "cabg")
        stroke = np.flatnonzero(self.has["stroke"])
        self._admit(stroke, self.onset["stroke"][stroke], rng.integers(3, 25, len(stroke)), "stroke", "21")
        hf = np.flatnonzero(self.has["hf"] & (rng.random(n) < 0.5))
        self._admit(hf, self.onset["hf"][hf], rng.integers(3, 12, len(hf)), "hf", "21")
        for cancer in ("breast_cancer", "prostate_cancer", "colorectal_cancer", "lung_cancer"):
            who = np.flatnonzero(self.has[cancer])
            self._admit(who, self.onset[cancer][who] + 30, rng.integers(1, 8, len(who)), cancer, "11")
        hipfx = np.flatnonzero(self.has["osteoporosis"] & (rng.random(n) < 0.25))
        self._admit(hipfx, self.onset["osteoporosis"][hipfx], rng.integers(7, 30, len(hipfx)), "hip_fracture", "21")
        age_ref = p.age_years(p.obs_end)
        pneu = np.flatnonzero((age_ref > 65) & (rng.random(n) < 0.12))
        pday = p.obs_start[pneu] + (rng.random(len(pneu)) * (p.obs_end[pneu] - p.obs_start[pneu])).astype(np.int64)
        self._admit(pneu, pday, rng.integers(2, 14, len(pneu)), "pneumonia", "21")
        app = np.flatnonzero(rng.random(n) < 0.004)
        aday = p.birth[app] + ((5 + rng.random(len(app)) * 30) * YEAR).astype(np.int64)
        self._admit(app, aday, 2, "appendicitis", "21", "appendicectomy")
        # Joint replacement for osteoarthritis, with PROMs before and six months after.
        oa = self.has["osteoarthritis"]
        for proc, share in (("knee_replacement", 0.12), ("hip_replacement", 0.08)):
            who = np.flatnonzero(oa & (rng.random(n) < share))
            op = self.rec["osteoarthritis"][who] + rng.integers(180, 1500, len(who))
            self._admit(who, op, rng.integers(2, 5, len(who)), "osteoarthritis", "11", proc)
            done = self.in_record(who, op)
            self._proms(who[done], op[done], proc)
        # Outpatient follow-up of long-term conditions, yearly-ish after diagnosis.
        followed = np.zeros(n, bool)
        for key in ("chd", "hf", "ckd", "af", "rheumatoid_arthritis", "epilepsy", "breast_cancer",
                    "prostate_cancer", "colorectal_cancer", "lung_cancer"):
            followed |= self.has[key]
        first = np.full(n, np.iinfo(np.int64).max)
        for key in ("chd", "hf", "ckd", "af", "rheumatoid_arthritis", "epilepsy"):
            first = np.where(self.has[key], np.minimum(first, self.rec[key]), first)
        who = np.flatnonzero(followed & (first < np.iinfo(np.int64).max))
        count = rng.poisson(0.6 * (p.obs_end[who] - first[who]) / YEAR)
        person = np.repeat(who, count)
        days = first[person] + (rng.random(len(person)) * (p.obs_end[person] - first[person])).astype(np.int64)
        self.add_visits(person, days, days, cat.OUTPATIENT_VISIT, self.trust_site(person), "OP")
        # A&E attendances.
        count = rng.poisson(0.12 * (p.obs_end - p.obs_start) / YEAR)
        person = np.repeat(np.arange(n), count)
        days = p.obs_start[person] + (rng.random(len(person)) * (p.obs_end[person] - p.obs_start[person])).astype(np.int64)
        visit = self.add_visits(person, days, days, cat.ER_VISIT, self.trust_site(person), "AE")
        injury = np.array(["sprain_ankle", "fracture_forearm", "laceration_hand", "concussion"])
        pick = rng.integers(0, len(injury), len(person))
        coded = rng.random(len(person)) < 0.7
        for j, key in enumerate(injury):
            rows = np.flatnonzero(coded & (pick == j))
            self.add_conditions(person[rows], days[rows], str(key), visit[rows], True)

    def _proms(self, person, op_day, proc: str) -> None:
        rng = self.rng
        pre = op_day - rng.integers(14, 60, len(person))
        post = op_day + 182
        for when, days, better in (("pre", pre, False), ("post", post, True)):
            ok = self.in_record(person, days)
            who, d = person[ok], days[ok]
            k = len(who)
            dims = np.clip(rng.normal(1.6 if better else 3.0, 0.8, (k, 5)).round(), 1, 5).astype(int)
            profile = np.array(["".join(map(str, r)) for r in dims], dtype=object) if k else np.array([], object)
            vas = np.clip(rng.normal(78 if better else 58, 15, k).round(), 0, 100)
            qs = [("eq5d5l_profile", np.full(k, np.nan), profile), ("eq_vas", vas, np.full(k, None, object))]
            if proc == "knee_replacement":
                oks = np.clip(rng.normal(37 if better else 19, 8, k).round(), 0, 48)
                qs.append(("oks", oks, np.full(k, None, object)))
            for key, num, text in qs:
                c = cat.PROMS[key]
                self.observations.add(person=who, date=d, concept=c.concept_id, value=num, text=text,
                                      source=c.code, visit=np.full(k, -1), type=cat.PATIENT_SELF_REPORT,
                                      qualifier=f"{proc}:{when}")

    def _births(self) -> None:
        """Babies born in the window get a mother in the chunk: her pregnancy and delivery."""
        p, rng = self.p, self.rng
        babies = np.flatnonzero(p.birth >= WINDOW_START + 280)
        women = np.flatnonzero(p.female)
        if len(babies) == 0 or len(women) == 0:
            return
        mother = np.full(len(babies), -1)
        for _ in range(12):  # rejection sampling: a registered woman aged 18-44 on the day
            todo = np.flatnonzero(mother < 0)
            cand = women[rng.integers(0, len(women), len(todo))]
            bday = p.birth[babies[todo]]
            age = (bday - p.birth[cand]) / YEAR
            ok = (age >= 18) & (age < 45) & self.in_record(cand, bday) & self.in_record(cand, bday - 200)
            mother[todo[ok]] = cand[ok]
        has = mother >= 0
        mum, bday = mother[has], p.birth[babies[has]]
        booking = bday - 200
        self.add_conditions(mum, booking, "pregnant", self.gp_visits(mum, booking), False)
        caes = rng.random(len(mum)) < 0.3
        for proc, rows in (("caesarean", caes), ("normal_delivery", ~caes)):
            self._admit(mum[rows], bday[rows], np.where(caes[rows], 3, 1), "delivered", "31", proc)

    def _deaths(self) -> None:
        p, rng = self.p, self.rng
        dead = np.flatnonzero(p.death >= 0)
        if len(dead) == 0:
            return
        # A known serious condition is the likely cause; otherwise pneumonia or a cardiac arrest.
        causes = [("lung_cancer", 12), ("breast_cancer", 6), ("prostate_cancer", 5), ("colorectal_cancer", 6),
                  ("hf", 5), ("copd", 5), ("dementia", 6), ("chd", 4), ("stroke", 4)]
        score = np.stack([np.where(self.has[k][dead], w, 0.0) for k, w in causes] +
                         [np.full(len(dead), 0.6), np.full(len(dead), 0.4)], axis=1)
        pick = (score.cumsum(1) / score.sum(1, keepdims=True) < rng.random((len(dead), 1))).sum(1)
        keys = np.array([k for k, _ in causes] + ["pneumonia", "cardiac_arrest"])[pick]
        keys = np.where(keys == "chd", "mi", keys)
        concept = np.array([cat.CONDITIONS[k].concept_id for k in keys])
        icd = np.array([cat.CONDITIONS[k].icd10 for k in keys], dtype=object)
        self.deaths.add(person=dead, date=p.death[dead], concept=concept, source=icd)
        in_hospital = rng.random(len(dead)) < 0.45
        for key in np.unique(keys[in_hospital]):
            rows = dead[in_hospital & (keys == key)]
            los = rng.integers(1, 15, len(rows))
            self._admit(rows, p.death[rows] - los, los, str(key), "21", None, discharge="4")

    def _rare(self) -> tuple[RareCases | None, np.ndarray]:
        p, rng = self.p, self.rng
        age = p.age_years(p.obs_end)
        child = age < 18
        child_share = child.mean() if len(p) else 0.0
        prob = np.where(child, RARE_DISEASE_SHARE * RARE_CHILD_SHARE / max(child_share, 1e-9),
                        RARE_DISEASE_SHARE * (1 - RARE_CHILD_SHARE) / max(1 - child_share, 1e-9))
        patients = np.flatnonzero(rng.random(len(p)) < prob)
        if len(patients) == 0:
            return None, np.array([], dtype=np.int64)
        cases = sample_cases(rng, patients)
        seen_day = np.maximum(p.obs_start[patients], RARE_CLINIC_OPENED) + rng.integers(0, 900, len(patients))
        seen = seen_day <= p.obs_end[patients]
        visit = np.full(len(patients), -1)
        visit[seen] = self.add_visits(patients[seen], seen_day[seen], seen_day[seen], cat.OUTPATIENT_VISIT,
                                      CARE_SITE_RARE, "RD")
        cases.seen_day = seen_day
        panel_ = rare_panel()
        seen_cases = np.flatnonzero(seen)
        self.conditions.add(person=patients[seen_cases], date=seen_day[seen_cases], concept=0,
                            source=panel_.disease_ids[cases.disease[seen_cases]], visit=visit[seen_cases], key="rare")
        feat = np.flatnonzero(seen[cases.feature_case] & ~cases.feature_excluded)
        case_of = cases.feature_case[feat]
        self.observations.add(person=patients[case_of], date=seen_day[case_of],
                              concept=panel_.ann_concept[cases.feature_ann[feat]], value=np.full(len(feat), np.nan),
                              text=np.full(len(feat), None, object), source=panel_.ann_hpo[cases.feature_ann[feat]],
                              visit=visit[case_of], type=cat.EHR, qualifier="")
        return cases, visit


def build_chunk(seed: int, chunk_index: int, first_person: int, n: int, nhs: np.ndarray, n_practices: int,
                n_trusts: int) -> Chunk:
    return ChunkBuilder(seed, chunk_index, first_person, n, nhs, n_practices, n_trusts, geography()).build()


__all__ = ["CONDITION_MODELS", "Chunk", "ChunkBuilder", "build_chunk", "calibration"]
