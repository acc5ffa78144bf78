"""Two cohorts side by side: prevalence of every covariate and its standardised mean difference.

Binary covariates (each category of the characteristics table, each comorbidity category, each
feature concept) get the SMD of a proportion; continuous ones (age, observation, comorbidity scores)
the SMD of a mean, both as in Austin PC, Stat Med 2009;28:3083-3107.  The binary SMD is recomputed by
the disclosure policy from the published (rounded) counts; |SMD| > 0.1 is the usual flag for
imbalance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mercia.analytics.base import count, derived, finish, label, statistic
from mercia.analytics.characterise import DEFAULT_DOMAINS, characterise
from mercia.cdm import Store
from mercia.privacy.disclosure import AnalysisResult, DisclosurePolicy, PartitionSpec, StatTable, smd_binary

IMBALANCE = 0.1


def _binary_covariates(result: AnalysisResult) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for row in [*result.table("demographics").rows, *result.table("organisations").rows]:
        out[("Characteristic", _characteristic(row["variable"], row["category"]))] = row["count_persons"]
    for row in result.table("comorbidity").rows:
        out[("Comorbidity", f"{row['comorbidity_index']}: {row['category']}")] = row["count_persons"]
    for row in result.table("features").rows:
        kind = f"{row['domain']} {row['level']} {row['time_window']}"
        out[(kind, f"{row['concept_name']} ({row['concept_id']})")] = row["count_persons"]
    return out


def _characteristic(variable: str, category: str) -> str:
    return f"{variable}: {category}"


def compare(store: Store, target_id: int, comparator_id: int, windows: Sequence[Any] = ("-365:0",),
            domains: Sequence[str] = DEFAULT_DOMAINS, policy: DisclosurePolicy | None = None,
            raw: bool = False) -> AnalysisResult:
    target = characterise(store, target_id, windows, domains, raw=True)
    comparator = characterise(store, comparator_id, windows, domains, raw=True)
    n_t, n_c = target.table("demographics").population, comparator.table("demographics").population
    bt, bc = _binary_covariates(target), _binary_covariates(comparator)
    # a characteristic's categories partition each cohort, as in the characterisation (sex, age band, IMD
    # decile...): published as a partition there, so they are here, or the cover hidden there shows beside
    # the cells it covers; comorbidities and features are in none
    variables = {_characteristic(r["variable"], r["category"]): r["variable"]
                 for result in (target, comparator) for name in ("demographics", "organisations")
                 for r in result.table(name).rows}
    rows = []
    for key in sorted(set(bt) | set(bc)):
        a, b = bt.get(key, 0), bc.get(key, 0)
        rows.append({"covariate_type": key[0], "variable": variables.get(key[1]) if key[0] == "Characteristic"
                     else None, "covariate": key[1], "count_target": a, "count_target_total": n_t,
                     "count_comparator": b, "count_comparator_total": n_c,
                     "percent_target": 100.0 * a / n_t, "percent_comparator": 100.0 * b / n_c,
                     "smd": smd_binary(a, n_t, b, n_c)})
    rows.sort(key=lambda r: -abs(r["smd"] or 0))
    binary = StatTable(
        name="smd_binary", title="Binary covariates: standardised mean differences",
        columns=[label("covariate_type", "Type"), label("variable", "Variable"), label("covariate", "Covariate"),
                 count("count_target", "Target", denominator="count_target_total"),
                 count("count_target_total", "Target N"),
                 count("count_comparator", "Comparator", denominator="count_comparator_total"),
                 count("count_comparator_total", "Comparator N"),
                 derived("percent_target", "percent", ["count_target", "count_target_total"], "Target %"),
                 derived("percent_comparator", "percent", ["count_comparator", "count_comparator_total"],
                         "Comparator %"),
                 derived("smd", "smd_binary", ["count_target", "count_target_total", "count_comparator",
                                               "count_comparator_total"], "SMD")],
        rows=rows, notes=[f"|SMD| > {IMBALANCE} flags imbalance"],
        partitions=[PartitionSpec(column="count_target", within=["variable"]),
                    PartitionSpec(column="count_comparator", within=["variable"])])
    continuous_rows = []
    comparator_rows = {r["variable"]: r for r in comparator.table("continuous").rows}
    for row in target.table("continuous").rows:
        other = comparator_rows.get(row["variable"])
        if other is None:
            continue
        continuous_rows.append({
            "variable": row["variable"], "count_target": row["count_persons"], "mean_target": row["mean"],
            "sd_target": row["sd"], "count_comparator": other["count_persons"], "mean_comparator": other["mean"],
            "sd_comparator": other["sd"], "smd": smd_continuous(row["mean"], row["sd"], other["mean"], other["sd"])})
    both = ["count_target", "count_comparator"]
    continuous = StatTable(
        name="smd_continuous", title="Continuous covariates: standardised mean differences",
        columns=[label("variable", "Variable"), count("count_target", "Target N"),
                 statistic("mean_target", ["count_target"], "Target mean"),
                 statistic("sd_target", ["count_target"], "Target SD"),
                 count("count_comparator", "Comparator N"),
                 statistic("mean_comparator", ["count_comparator"], "Comparator mean"),
                 statistic("sd_comparator", ["count_comparator"], "Comparator SD"),
                 statistic("smd", both, "SMD", None)],
        rows=continuous_rows)
    result = AnalysisResult(
        analysis="comparison", title=f"Cohort {target_id} (target) vs cohort {comparator_id} (comparator)",
        parameters={"target_cohort_id": int(target_id), "comparator_cohort_id": int(comparator_id),
                    **{k: v for k, v in target.parameters.items() if k != "cohort_id"}},
        tables=[target.table("summary").model_copy(update={"name": "summary_target", "title": "Target cohort"}),
                comparator.table("summary").model_copy(update={"name": "summary_comparator",
                                                               "title": "Comparator cohort"}),
                continuous, binary])
    return finish(result, policy, raw)


def smd_continuous(mean_a: float | None, sd_a: float | None, mean_b: float | None, sd_b: float | None) -> float | None:
    if None in (mean_a, sd_a, mean_b, sd_b):
        return None
    pooled = math.sqrt((sd_a ** 2 + sd_b ** 2) / 2)
    if pooled == 0:
        return 0.0 if mean_a == mean_b else None
    return (mean_a - mean_b) / pooled
