"""Data-quality report: counts per domain and organisation, vocabulary mapping rates, rejects by
reason, what each organisation's latest load changed (new, changed, unchanged, removed, superseded
records), and checks in the style of the OHDSI Data Quality Dashboard (Kahn et al. 2016 framework:
conformance, completeness, plausibility; each check counts violating rows against a threshold).

Every query is one aggregate per check, scoped to an organisation through ``mercia_provenance``
when ``org`` is given.  The report only reads: a table the store lacks (a CDM loaded without Mercia's
ingestion has no provenance or rejects) counts as empty, on every engine alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from mercia.cdm import CDM_TABLES, Store, quote
from mercia.cdm.dialect import add_days

DOMAINS = {  # table -> (primary key, concept column, source value column, date column)
    "visit_occurrence": ("visit_occurrence_id", "visit_concept_id", "visit_source_value", "visit_start_date"),
    "condition_occurrence": ("condition_occurrence_id", "condition_concept_id", "condition_source_value",
                             "condition_start_date"),
    "drug_exposure": ("drug_exposure_id", "drug_concept_id", "drug_source_value", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_occurrence_id", "procedure_concept_id", "procedure_source_value",
                             "procedure_date"),
    "measurement": ("measurement_id", "measurement_concept_id", "measurement_source_value", "measurement_date"),
    "observation": ("observation_id", "observation_concept_id", "observation_source_value", "observation_date"),
    "device_exposure": ("device_exposure_id", "device_concept_id", "device_source_value",
                        "device_exposure_start_date"),
    "specimen": ("specimen_id", "specimen_concept_id", "specimen_source_value", "specimen_date"),
}
# Plausible value ranges for common LOINC codes, in the units these codes are usually recorded
# in (clinical reference knowledge, as DQD's plausibleValueLow/High thresholds).
PLAUSIBLE_RANGES = {
    "8302-2": (20, 250, "body height cm"), "29463-7": (0.3, 350, "body weight kg"),
    "39156-5": (8, 100, "BMI kg/m2"), "8867-4": (20, 300, "heart rate /min"),
    "8480-6": (40, 300, "systolic BP mmHg"), "8462-4": (20, 200, "diastolic BP mmHg"),
    "8310-5": (25, 45, "body temperature Cel"), "9279-1": (2, 80, "respiratory rate /min"),
    "2708-6": (40, 100, "oxygen saturation %"), "59408-5": (40, 100, "oxygen saturation %"),
    "4548-4": (2, 25, "HbA1c %"), "2345-7": (0.5, 60, "glucose mmol/L or g/L"),
    "2093-3": (0.5, 800, "cholesterol"), "718-7": (1, 25, "haemoglobin g/dL"),
}


@dataclass
class Check:
    name: str
    category: str  # conformance | completeness | plausibility
    table: str
    description: str
    violations: int
    rows: int
    threshold_pct: float

    @property
    def pct(self) -> float:
        return 100.0 * self.violations / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.pct <= self.threshold_pct


@dataclass
class Report:
    org: str | None
    generated: str
    counts: list[dict] = field(default_factory=list)
    mapping: list[dict] = field(default_factory=list)
    unmapped: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)  # each organisation's latest load against what it held
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["checks"] = [{**asdict(c), "pct": round(c.pct, 3), "passed": c.passed} for c in self.checks]
        return data


class _Scope:
    def __init__(self, store: Store, org: str | None):
        self.store, self.org = store, org
        self._exists: dict[str, bool] = {}
        self.has_provenance = self.exists("mercia_provenance")

    def exists(self, table: str) -> bool:
        if table not in self._exists:
            self._exists[table] = self.store.table_exists(table)
        return self._exists[table]

    def rows(self, table: str, alias: str = "t") -> tuple[str, list]:
        """WHERE fragment restricting ``table`` to the organisation's rows."""
        if not self.org:
            return "TRUE", []
        if not self.has_provenance:  # no row came through ingestion, so none is the organisation's
            return "FALSE", []
        pk = CDM_TABLES[table].primary_key if table in CDM_TABLES else f"{table}_id"
        return (f"{alias}.{quote(pk)} IN (SELECT row_id FROM mercia_provenance WHERE cdm_table = '{table}' "
                f"AND org = ?)"), [self.org]

    def count(self, table: str, condition: str = "TRUE", join: str = "") -> tuple[int, int]:
        if not self.exists(table):
            return 0, 0
        where, params = self.rows(table)
        sql = f"SELECT count(*) FILTER (WHERE {condition}), count(*) FROM {quote(table)} t {join} WHERE {where}"
        violations, rows = self.store.query(sql, params or None)[0]
        return int(violations or 0), int(rows or 0)


def build_report(store: Store, org: str | None = None) -> Report:
    scope = _Scope(store, org)
    report = Report(org=org, generated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    org_where, org_params = ("WHERE org = ?", [org]) if org else ("", [])
    if scope.has_provenance:
        report.counts = store.query_dicts(f"""
            SELECT org, cdm_table, count(DISTINCT row_id) AS row_count FROM mercia_provenance {org_where}
            GROUP BY org, cdm_table ORDER BY org, cdm_table""", org_params or None)
    for table, (pk, concept, source, _) in DOMAINS.items():
        if not scope.exists(table):
            continue
        where, params = scope.rows(table)
        row = store.query(f"""SELECT count(*), count(*) FILTER (WHERE t.{concept} <> 0) FROM {quote(table)} t
                              WHERE {where}""", params or None)[0]
        if row[0]:
            report.mapping.append({"table": table, "rows": int(row[0]), "mapped": int(row[1]),
                                   "mapped_pct": round(100.0 * row[1] / row[0], 2)})
            report.unmapped += [{"table": table, "source_value": r[0], "rows": int(r[1])} for r in store.query(
                f"""SELECT t.{source}, count(*) FROM {quote(table)} t WHERE t.{concept} = 0 AND {where}
                    GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST LIMIT 10""", params or None)]
    if scope.exists("mercia_reject"):
        report.rejects = store.query_dicts(f"""
            SELECT org, action, field, reason, count(*) AS records FROM mercia_reject {org_where}
            GROUP BY org, action, field, reason
            ORDER BY org, records DESC, action, field NULLS LAST, reason""", org_params or None)
    # a store whose last load predates these counts (mercia.cdm.extensions adds them) has none to show
    if scope.exists("mercia_load") and "records_changed" in {name for name, _ in store.columns("mercia_load")}:
        report.changes = store.query_dicts(f"""
            SELECT org, load_id, extract, loaded_at, records_read AS records,
                   records_loaded - records_unchanged - COALESCE(records_changed, 0) AS new,
                   COALESCE(records_changed, 0) AS changed, records_unchanged AS unchanged,
                   COALESCE(records_removed, 0) AS removed, COALESCE(records_superseded, 0) AS superseded,
                   records_rejected AS rejected, records_withheld AS withheld
            FROM mercia_load l WHERE load_id = (SELECT max(load_id) FROM mercia_load m WHERE m.org = l.org)
            {"AND org = ?" if org else ""} ORDER BY org""", org_params or None)
    report.checks = _checks(store, scope)
    return report


def _checks(store: Store, scope: _Scope) -> list[Check]:
    checks: list[Check] = []

    def add(name, category, table, description, condition, threshold=0.0, join=""):
        violations, rows = scope.count(table, condition, join)
        checks.append(Check(name, category, table, description, violations, rows, threshold))

    today = dt.date.today().isoformat()
    add("gender_conformance", "conformance", "person", "gender_concept_id is MALE, FEMALE or 0",
        "t.gender_concept_id NOT IN (8507, 8532, 0)")
    add("year_of_birth_plausible", "plausibility", "person", "year of birth between 1880 and this year",
        f"t.year_of_birth < 1880 OR t.year_of_birth > {dt.date.today().year}")
    # shown, never failed: a case report without an age is kept with the age unknown (docs/ingest.md)
    add("year_of_birth_unknown", "completeness", "person", "year of birth unknown (age unknown)",
        "t.year_of_birth IS NULL", threshold=100.0)
    add("birth_after_death", "plausibility", "death", "death before the year of birth",
        "extract(year FROM t.death_date) < p.year_of_birth", join="JOIN person p ON p.person_id = t.person_id")
    for table, (pk, concept, source, date) in DOMAINS.items():
        add(f"{table}_source_value_length", "conformance", table,
            f"{source} longer than the CDM's VARCHAR({CDM_TABLES[table].column(source).max_length})",
            f"length(t.{source}) > {CDM_TABLES[table].column(source).max_length}")
        add(f"{table}_concept_mapped", "completeness", table, f"{concept} = 0 (source code not mapped)",
            f"t.{concept} = 0", threshold=100.0)
        add(f"{table}_in_future", "plausibility", table, f"{date} after today", f"t.{date} > DATE '{today}'")
        add(f"{table}_before_birth", "plausibility", table, f"{date} before the year of birth",
            f"extract(year FROM t.{date}) < p.year_of_birth", join="JOIN person p ON p.person_id = t.person_id")
        add(f"{table}_after_death", "plausibility", table, f"{date} more than 60 days after death",
            f"t.{date} > {add_days(store, 'd.death_date', 60)}", join="LEFT JOIN death d ON d.person_id = t.person_id")
        add(f"{table}_outside_observation", "plausibility", table, f"{date} outside every observation period",
            f"""NOT EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = t.person_id
                AND t.{date} BETWEEN o.observation_period_start_date AND o.observation_period_end_date)""")
    add("visit_end_before_start", "plausibility", "visit_occurrence", "visit ends before it starts",
        "t.visit_end_date < t.visit_start_date")
    add("drug_end_before_start", "plausibility", "drug_exposure", "drug exposure ends before it starts",
        "t.drug_exposure_end_date < t.drug_exposure_start_date")
    add("measurement_value_missing", "completeness", "measurement", "no value as number or concept",
        "t.value_as_number IS NULL AND t.value_as_concept_id IS NULL", threshold=20.0)
    add("measurement_unit_missing", "completeness", "measurement", "numeric value without a unit",
        "t.value_as_number IS NOT NULL AND t.unit_source_value IS NULL", threshold=5.0)
    cases = " ".join(f"WHEN '{code}' THEN t.value_as_number NOT BETWEEN {lo} AND {hi}"
                     for code, (lo, hi, _) in PLAUSIBLE_RANGES.items())
    add("implausible_lab_value", "plausibility", "measurement",
        f"value outside a plausible range for {len(PLAUSIBLE_RANGES)} common LOINC codes",
        f"t.value_as_number IS NOT NULL AND COALESCE(CASE t.measurement_source_value {cases} END, FALSE)")
    return checks
