"""Who is in a cohort at its index date: demographics, deprivation, organisation, prior observation,
FeatureExtraction-style covariate prevalence with concept-ancestor roll-ups, lab value distributions
and Charlson/Elixhauser comorbidity.

Each person counts once, at the first entry of the cohort (the index date).  Feature windows are
day offsets relative to index, both ends inclusive, as in OHDSI FeatureExtraction (``-365:0`` is the
year before index including the index day).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mercia.analytics import comorbidity as cm
from mercia.analytics.base import (
    AnalyticsError, age_band_sql, as_id, categorical_table, cohort_check, concept_names, count, derived,
    distribution_columns, distribution_row, finish, index_table_sql, label, quantiles_sql, temp_table,
)
from mercia.cdm import Store
from mercia.cdm.dialect import add_days, as_text, days_between
from mercia.privacy.disclosure import AnalysisResult, DisclosurePolicy, PartitionSpec, StatTable


@dataclass(frozen=True)
class Domain:
    name: str
    table: str
    concept: str
    date: str


DOMAINS = {d.name: d for d in [
    Domain("condition", "condition_occurrence", "condition_concept_id", "condition_start_date"),
    Domain("drug", "drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    Domain("procedure", "procedure_occurrence", "procedure_concept_id", "procedure_date"),
    Domain("measurement", "measurement", "measurement_concept_id", "measurement_date"),
    Domain("observation", "observation", "observation_concept_id", "observation_date"),
    Domain("device", "device_exposure", "device_concept_id", "device_exposure_start_date"),
    Domain("visit", "visit_occurrence", "visit_concept_id", "visit_start_date"),
]}
DEFAULT_DOMAINS = ("condition", "drug", "procedure", "measurement", "observation")


@dataclass(frozen=True)
class Window:
    """Days relative to index, both ends inclusive."""
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.start}d to {self.end}d"

    @classmethod
    def parse(cls, text: str | Window | Sequence[int]) -> Window:
        if isinstance(text, Window):
            return text
        if isinstance(text, str):
            parts = text.replace("..", ":").split(":")
        else:
            parts = list(text)
        if len(parts) != 2:
            raise AnalyticsError(f"window {text!r}: expected START:END in days relative to index, e.g. -365:0")
        start, end = (as_id(p, f"window {text!r}") for p in parts)
        if start > end:
            raise AnalyticsError(f"window {text!r}: start {start} is after end {end}")
        return cls(start, end)


def characterise(store: Store, cohort_id: int, windows: Sequence[Any] = ("-365:0",),
                 domains: Sequence[str] = DEFAULT_DOMAINS, comorbidity_lookback_days: int | None = None,
                 policy: DisclosurePolicy | None = None, raw: bool = False) -> AnalysisResult:
    """Characterise cohort ``cohort_id``; the result has been through ``policy`` (the configured one
    by default) unless ``raw`` is set, which only trusted code inside Mercia should do."""
    cohort_id = as_id(cohort_id, "cohort id")
    parsed = [Window.parse(w) for w in windows]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise AnalyticsError(f"unknown domain(s) {unknown}; choose from {sorted(DOMAINS)}")
    entries = cohort_check(store, cohort_id)
    with temp_table(store, index_table_sql(store, cohort_id), "mercia_idx") as idx:
        persons = int(store.query_one(f"SELECT COUNT(*) FROM {idx}"))
        tables = [
            _summary(store, idx, persons, entries),
            *_demographics(store, idx, persons),
            _age_sex(store, idx, persons),
        ]
        score_table, comorbidity_table, score_rows = _comorbidity(store, idx, persons,
                                                                  comorbidity_lookback_days)
        tables.insert(1, _continuous(store, idx, persons, score_rows))
        tables += [comorbidity_table, score_table]
        if domains:
            tables += _features(store, idx, persons, parsed, list(domains))
    result = AnalysisResult(
        analysis="characterisation", title=f"Characterisation of cohort {cohort_id}",
        parameters={"cohort_id": cohort_id, "windows": [w.name for w in parsed], "domains": list(domains),
                    "comorbidity_lookback_days": comorbidity_lookback_days,
                    "index": "first cohort entry per person"},
        tables=tables)
    return finish(result, policy, raw)


def _summary(store: Store, idx: str, persons: int, entries: int) -> StatTable:
    imd, in_obs = store.query(f"SELECT COUNT(imd_decile), COUNT(op_start) FROM {idx}")[0]
    return StatTable(
        name="summary", title="Cohort", population=persons,
        # each count is part of the cohort: one a few short of it (24 persons, 21 with an IMD decile) would give
        # the few it leaves out (the IMD table's hidden "Not recorded"), so the near-100% rule hides it
        columns=[label("item", "Item"), count("count", "Count", denominator="population")],
        rows=[{"item": "Persons", "count": persons}, {"item": "Cohort entries", "count": entries},
              {"item": "Persons in observation at index", "count": int(in_obs)},
              {"item": "Persons with an IMD decile", "count": int(imd)}])


def _continuous(store: Store, idx: str, persons: int, score_rows: list[dict[str, Any]]) -> StatTable:
    variables = {"Age at index (years)": "age", "Prior observation (days)": "prior_obs_days",
                 "Observation after index (days)": "post_obs_days",
                 "Time in cohort (days)": days_between(store, "index_date", "end_date")}
    sql = " UNION ALL ".join(f"SELECT {i}, {quantiles_sql(store, expr)} FROM {idx}"
                             for i, expr in enumerate(variables.values()))
    by_order = {int(r[0]): r[1:] for r in store.query(sql)}
    rows = [{"variable": name, **distribution_row(by_order[i])} for i, name in enumerate(variables)]
    return StatTable(name="continuous", title="Continuous characteristics at index", population=persons,
                     columns=[label("variable", "Variable"),
                              count("count_persons", "Persons", denominator="population"), *distribution_columns()],
                     rows=rows + score_rows)


def _demographics(store: Store, idx: str, persons: int) -> list[StatTable]:
    """Characteristics at index, and organisations in a table of their own (there may be hundreds)."""
    prior_band = ("CASE WHEN prior_obs_days IS NULL THEN 'Not in observation' "
                  "WHEN prior_obs_days < 365 THEN '< 1 year' WHEN prior_obs_days < 1095 THEN '1-3 years' "
                  "WHEN prior_obs_days < 1825 THEN '3-5 years' ELSE '5+ years' END")
    site = ("COALESCE(cs.care_site_name, cs.care_site_source_value, "
            "CASE WHEN i.care_site_id IS NULL THEN 'Not recorded' "
            f"ELSE 'care site ' || {as_text(store, 'i.care_site_id')} END)")
    parts = {
        "Sex": as_text(store, "i.gender_concept_id"),
        "Age band": age_band_sql("i.age"),
        "Race": as_text(store, "i.race_concept_id"),
        "Ethnicity": as_text(store, "i.ethnicity_concept_id"),
        "IMD decile": f"COALESCE({as_text(store, 'i.imd_decile')}, 'Not recorded')",
        "Organisation": site,
        "Prior observation": prior_band,
    }
    sql = " UNION ALL ".join(
        f"SELECT {n} AS v, {expr} AS category, COUNT(*) FROM {idx} i "
        f"LEFT JOIN care_site cs ON cs.care_site_id = i.care_site_id GROUP BY {expr}"
        for n, expr in enumerate(parts.values()))
    found = store.query(sql)
    concept_vars = {0, 2, 3}
    names = concept_names(store, [int(c) for v, c, _ in found if v in concept_vars and c is not None])
    rows = []
    for v, category, n in found:
        text = names.get(int(category)) if v in concept_vars and category is not None else category
        rows.append({"variable": list(parts)[v], "category": text, "count_persons": int(n), "_order": v})
    rows.sort(key=lambda r: (r.pop("_order"), _category_key(r["variable"], r["category"], r["count_persons"])))
    return [categorical_table("demographics", "Characteristics at index",
                              [r for r in rows if r["variable"] != "Organisation"], persons),
            categorical_table("organisations", "Organisation (care site) at index",
                              [r for r in rows if r["variable"] == "Organisation"], persons)]


def _category_key(variable: str, category: str, n: int) -> tuple:
    """Bands and deciles in their natural order, everything else by size."""
    if variable in ("Age band", "IMD decile"):
        digits = "".join(ch for ch in category.split("-")[0] if ch.isdigit())
        return (0, int(digits)) if digits else (1, 0)
    if variable == "Prior observation":
        order = ["< 1 year", "1-3 years", "3-5 years", "5+ years", "Not in observation"]
        return (order.index(category) if category in order else 99, 0)
    return (0, -n, category)


def _age_sex(store: Store, idx: str, persons: int) -> StatTable:
    band = age_band_sql("age")
    found = store.query(f"SELECT {band}, gender_concept_id, COUNT(*) FROM {idx} GROUP BY {band}, gender_concept_id")
    names = concept_names(store, [g for _, g, _ in found if g is not None])
    rows = [{"age_band": b, "sex": names.get(g, "Not recorded"), "count_persons": int(n)} for b, g, n in found]
    rows.sort(key=lambda r: (_category_key("Age band", r["age_band"], 0), r["sex"]))
    return StatTable(
        name="age_sex", title="Age and sex at index", population=persons,
        columns=[label("age_band", "Age band"), label("sex", "Sex"),
                 count("count_persons", "Persons", denominator="population"),
                 derived("percent", "percent", ["count_persons", "population"], "%")],
        rows=rows, partitions=[PartitionSpec(column="count_persons"),
                               PartitionSpec(column="count_persons", within=["sex"]),
                               PartitionSpec(column="count_persons", within=["age_band"])])


def _comorbidity(store: Store, idx: str, persons: int,
                 lookback: int | None) -> tuple[StatTable, StatTable, list[dict[str, Any]]]:
    with temp_table(store, cm.prefix_values_sql(store), "mercia_cmp") as prefixes, \
            temp_table(store, cm.flags_sql(store, idx, prefixes, lookback), "mercia_cm") as flags:
        prevalence = store.query(f"SELECT comorbidity_index, category, COUNT(DISTINCT person_id) FROM {flags} "
                                 f"GROUP BY comorbidity_index, category")
        with temp_table(store, cm.scores_sql(flags, idx), "mercia_sc") as scores:
            sql = " UNION ALL ".join(f"SELECT {i}, {quantiles_sql(store, col)} FROM {scores}"
                                     for i, col in enumerate(cm.SCORE_COLUMNS))
            dist = {int(r[0]): r[1:] for r in store.query(sql)}
            bands = store.query(f"""
                SELECT CASE WHEN quan2011_score = 0 THEN '0' WHEN quan2011_score <= 2 THEN '1-2'
                            WHEN quan2011_score <= 4 THEN '3-4' ELSE '5+' END, COUNT(*)
                FROM {scores} GROUP BY 1""")
    score_rows = [{"variable": title, **distribution_row(dist[i])}
                  for i, title in enumerate(cm.SCORE_COLUMNS.values())]
    found = {(index, key): int(n) for index, key, n in prevalence}
    rows = []
    for index, (cats, _, schemes) in cm.INDICES.items():
        for c in cats:
            rows.append({"comorbidity_index": index, "category": c.label,
                         "weights": ", ".join(f"{s}={c.weights[s]}" for s in schemes),
                         "count_persons": found.get((index, c.key), 0)})
    comorbidity_table = StatTable(
        name="comorbidity", title="Comorbidity categories (Quan 2005 ICD-10 codes, as standard concepts)",
        population=persons,
        columns=[label("comorbidity_index", "Index"), label("category", "Category"),
                 label("weights", "Weights"), count("count_persons", "Persons", denominator="population"),
                 derived("percent", "percent", ["count_persons", "population"], "%")],
        rows=rows, notes=["Conditions recorded on or before index" +
                          ("" if lookback is None else f" (last {lookback} days)") +
                          ": standard concepts the category's ICD-10 codes map to (and their descendants), "
                          "or the ICD-10 source codes themselves"])
    order = ["0", "1-2", "3-4", "5+"]
    band_rows = sorted(({"variable": "Charlson (Quan 2011)", "category": b, "count_persons": int(n)}
                        for b, n in bands), key=lambda r: order.index(r["category"]))
    return categorical_table("charlson_bands", "Charlson score (Quan 2011 weights)", band_rows, persons), \
        comorbidity_table, score_rows


def _features(store: Store, idx: str, persons: int, windows: list[Window],
              domains: list[str]) -> list[StatTable]:
    """Prevalence of each concept (and each ancestor, rolled up) per domain and window."""
    events = " UNION ALL ".join(
        f"SELECT DISTINCT '{d.name}' AS domain, '{w.name}' AS time_window, i.person_id, x.{d.concept} AS concept_id "
        f"FROM {idx} i JOIN {d.table} x ON x.person_id = i.person_id "
        f"WHERE x.{d.date} BETWEEN {add_days(store, 'i.index_date', w.start)} "
        f"AND {add_days(store, 'i.index_date', w.end)} AND x.{d.concept} <> 0"
        for d in (DOMAINS[n] for n in domains) for w in windows)
    with temp_table(store, events, "mercia_ev") as ev:
        found = store.query(f"""
            SELECT domain, time_window, 'concept' AS level, concept_id, COUNT(*) FROM {ev}
            GROUP BY domain, time_window, concept_id
            UNION ALL
            SELECT domain, time_window, 'ancestor', ancestor_concept_id, COUNT(*) FROM (
                SELECT DISTINCT e.domain, e.time_window, e.person_id, ca.ancestor_concept_id
                FROM {ev} e JOIN concept_ancestor ca ON ca.descendant_concept_id = e.concept_id
                WHERE ca.ancestor_concept_id <> e.concept_id AND ca.ancestor_concept_id <> 0) rolled
            GROUP BY domain, time_window, ancestor_concept_id""")
    measurement_rows = _measurement_values(store, idx, windows[0]) if "measurement" in domains else []
    names = concept_names(store, [r[3] for r in found] + [r["concept_id"] for r in measurement_rows])
    window_order = {w.name: i for i, w in enumerate(windows)}
    rows = sorted(({"domain": d, "time_window": w, "level": lvl, "concept_id": int(c),
                    "concept_name": names[int(c)], "count_persons": int(n)} for d, w, lvl, c, n in found),
                  key=lambda r: (domains.index(r["domain"]), window_order[r["time_window"]],
                                 r["level"] != "concept", -r["count_persons"], r["concept_id"]))
    features = StatTable(
        name="features", title="Covariate prevalence before index", population=persons,
        columns=[label("domain", "Domain"), label("time_window", "Window"), label("level", "Level"),
                 label("concept_id", "Concept id"), label("concept_name", "Concept"),
                 count("count_persons", "Persons", denominator="population"),
                 derived("percent", "percent", ["count_persons", "population"], "%")],
        rows=rows, notes=["level 'ancestor' rolls descendants up through concept_ancestor"])
    for row in measurement_rows:
        row["concept_name"] = names[row["concept_id"]]
    labs = StatTable(
        name="measurement_values", title=f"Measurement values ({windows[0].name}, latest per person)",
        population=persons,
        columns=[label("concept_id", "Concept id"), label("concept_name", "Measurement"), label("unit", "Unit"),
                 count("count_persons", "Persons", denominator="population"), *distribution_columns()],
        rows=measurement_rows)
    return [features, labs]


def _measurement_values(store: Store, idx: str, window: Window) -> list[dict[str, Any]]:
    found = store.query(f"""
        WITH latest AS (
            SELECT measurement_concept_id, unit, value_as_number FROM (
                SELECT m.measurement_concept_id, COALESCE(u.concept_name, m.unit_source_value, '') AS unit,
                       m.value_as_number,
                       ROW_NUMBER() OVER (PARTITION BY i.person_id, m.measurement_concept_id
                                          ORDER BY m.measurement_date DESC, m.measurement_id DESC) AS rn
                FROM {idx} i JOIN measurement m ON m.person_id = i.person_id
                LEFT JOIN concept u ON u.concept_id = m.unit_concept_id
                WHERE m.measurement_date BETWEEN {add_days(store, 'i.index_date', window.start)}
                                             AND {add_days(store, 'i.index_date', window.end)}
                  AND m.value_as_number IS NOT NULL AND m.measurement_concept_id <> 0) ranked
            WHERE rn = 1)
        SELECT measurement_concept_id, unit, {quantiles_sql(store, 'value_as_number')}
        FROM latest GROUP BY measurement_concept_id, unit""")
    rows = [{"concept_id": int(c), "concept_name": "", "unit": unit, **distribution_row(rest)}
            for c, unit, *rest in found]
    return sorted(rows, key=lambda r: (-r["count_persons"], r["concept_id"]))
