"""Benchmark the rare-disease rankers on the published phenopacket-store cases in the shared data.

    .venv/bin/python benchmarks/raredisease.py                  # writes benchmarks/results/raredisease-<UTC>.json
    .venv/bin/python benchmarks/raredisease.py --only-ensemble  # just the grouped folds and the cold start

Headline (``ensemble_grouped_folds``): the gene cohorts are dealt into 5 folds; each fold is ranked by an ensemble
trained on the other folds only, so no cohort is ever in both training and test; figures are the mean, standard
deviation, minimum and maximum over the folds, beside the likelihood-ratio ranker on the same folds. Probabilities
of each fold are calibrated on the other folds' held-out scores. ``ensemble_cold_start`` times the real batch
command, ``mercia raredisease diagnose --cases --out --top 10``, as a fresh process over every dev case (imports,
knowledge base, ensemble, ranking, per-term explanations of the ten shown diseases, writing): cases/s = cases /
its wall time, and per CPU-second of the process (which the load of the shared machine distorts less), once with
the knowledge-base cache empty and once with it filled; ``--cold-start-only`` repeats just that measurement
(``results/raredisease-cold-start-<UTC>.json``).

The likelihood-ratio figures below it:
    .venv/bin/python benchmarks/raredisease.py --tune '{"floor": [0.02, 0.05]}'   # grid on the tuning half

Reports top-1/3/10 and MRR separately for cases whose publication was an annotation source of HPO 2025-01-16
(cited: the answer leaked into the knowledge base), for those whose publication was not (the honest figure),
and for diseases absent from that release; then gene prioritisation with the causal gene among 50 decoys, and
speed. Hyper-parameters are only ever tuned (``--tune``) on the *tuning* half of the gene cohorts (a fixed hash
split); figures are also reported for the held-out half so the effect of tuning can be seen.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from mercia.raredisease import ensemble
from mercia.raredisease import kb as kb_module
from mercia.raredisease.features import FEATURES
from mercia.raredisease.genes import GenePrioritiser, from_gene_list
from mercia.raredisease.ranker import Case, ModelParameters, Ranker, rank_of

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "phenopackets" / "dev_cases.jsonl"
if not DATA.exists():
    DATA = Path("/work/shared/data/phenopackets/dev_cases.jsonl")
RESULTS = Path(__file__).resolve().parent / "results"
DECOYS = 50
SEED = 20250116


def tuning_half(cohort: str) -> bool:
    """Fixed split by gene cohort: cases of a cohort are all tuning or all held out."""
    return hashlib.sha256(cohort.encode()).digest()[0] % 2 == 0


def load_cases() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def disease_columns(ranker: Ranker, cases: list[dict]) -> list[int]:
    """Each case's disease (its first listed) as a column of the ranker's scores; -1 when the ranker has
    no such disease."""
    columns = []
    for case in cases:
        disease = ranker.kb.disease_index.get(case["diseases"][0])
        columns.append(-1 if disease is None else int(ranker.disease_position[disease]))
    return columns


def disease_ranks(ranker: Ranker, cases: list[dict]) -> np.ndarray:
    """Rank of the case's disease among all candidate diseases (0 when absent from the knowledge base)."""
    scores, _ = ranker.score_matrix([Case(c["observed"], c["excluded"]) for c in cases], strict=False)
    ranks = np.zeros(len(cases), dtype=int)
    for i, column in enumerate(disease_columns(ranker, cases)):
        if column >= 0:
            ranks[i] = rank_of(scores[i], column)
    return ranks


def summarise(ranks: np.ndarray) -> dict:
    if not len(ranks):
        return {"n": 0}
    found = ranks > 0
    reciprocal = np.where(found, 1.0 / np.maximum(ranks, 1), 0.0)
    return {
        "n": int(len(ranks)),
        "top1": round(float(np.mean(found & (ranks <= 1))), 4),
        "top3": round(float(np.mean(found & (ranks <= 3))), 4),
        "top10": round(float(np.mean(found & (ranks <= 10))), 4),
        "mrr": round(float(reciprocal.mean()), 4),
    }


def slices(cases: list[dict], ranks: np.ndarray) -> dict:
    cited = np.array([c["pmid_cited_in_hpoa_2025_01_16"] for c in cases])
    present = np.array([c["disease_in_hpoa_2025_01_16"] for c in cases])
    return {
        "all_in_kb": summarise(ranks[present]),
        "cited": summarise(ranks[present & cited]),
        "not_cited": summarise(ranks[present & ~cited]),
        "disease_absent": summarise(ranks[~present]),
    }


def gene_ranks(ranker: Ranker, cases: list[dict], scores: np.ndarray) -> np.ndarray:
    """Rank of the causal gene among itself plus 50 decoys drawn (fixed seed) from the genes that have a
    disease in genes_to_phenotype; 0 when the causal gene has no candidate disease."""
    rng = np.random.default_rng(SEED)
    pool = np.array(sorted(set(ranker.kb.gene_symbols[ranker.kb.gene_disease_gene].tolist())))
    prioritiser = GenePrioritiser(ranker)
    ranks = np.zeros(len(cases), dtype=int)
    for i, case in enumerate(cases):
        causal = case["genes"][0]
        decoys = [g for g in rng.choice(pool, DECOYS + 1, replace=False).tolist() if g != causal][:DECOYS]
        ranked = prioritiser.rank(Case(case["observed"], case["excluded"]), from_gene_list([causal, *decoys]),
                                  top=DECOYS + 1, scores=scores[i])
        position = next(r for r in ranked if r.gene == causal)
        if np.isfinite(position.score):
            ties_below = sum(1 for r in ranked if r.score == position.score and r.rank > position.rank)
            ranks[i] = position.rank + ties_below  # pessimistic about ties, like rank_of
    return ranks


def same_gene_ranks(ranker: Ranker, cases: list[dict], scores: np.ndarray) -> np.ndarray:
    """For diseases absent from the knowledge base: rank of the best known disease of the causal gene (what a
    clinician would see as the nearest answer); 0 when the gene has none."""
    ranks = np.zeros(len(cases), dtype=int)
    for i, case in enumerate(cases):
        columns = ranker.disease_position[ranker.kb.diseases_of_gene(case["genes"][0])]
        columns = columns[columns >= 0]
        if len(columns):
            ranks[i] = min(rank_of(scores[i], c) for c in columns)
    return ranks


def _fold_stats(values: list[float]) -> dict:
    array = np.array(values, dtype=float)
    return {"mean": round(float(array.mean()), 4), "sd": round(float(array.std(ddof=1)), 4),
            "min": round(float(array.min()), 4), "max": round(float(array.max()), 4),
            "per_fold": [round(float(v), 4) for v in array]}


def grouped_fold_figures(ranker: Ranker, cases: list[dict], settings: ensemble.EnsembleSettings) -> dict:
    """Out-of-fold ranks of the ensemble and of the LR ranker, per slice, summarised over the folds."""
    _, info = ensemble.train(ranker, cases, settings, final=False)
    pairs, held_out, folds, labels = info["pairs"], info["held_out_scores"], info["folds"], info["labels"]
    columns = disease_columns(ranker, cases)
    by_model = {"ensemble": ensemble.reranked_positions(pairs, held_out, columns),
                "likelihood_ratio": ensemble.reranked_positions(pairs, pairs.features[:, FEATURES.index("lr")], columns)}
    in_kb = np.array([c["disease_in_hpoa_2025_01_16"] for c in cases])
    cited = np.array([c["pmid_cited_in_hpoa_2025_01_16"] for c in cases])
    masks = {"all_in_kb": in_kb, "cited": in_kb & cited, "not_cited": in_kb & ~cited}
    out: dict = {"folds": settings.folds, "grouping": "gene cohort (field `cohort`)",
                 "cases_per_fold": np.bincount(folds).tolist(),
                 "cohorts_per_fold": [len({c["cohort"] for c, f in zip(cases, folds) if f == k})
                                      for k in range(settings.folds)],
                 "candidates_reranked": settings.candidates}
    for model, ranks in by_model.items():
        out[model] = {}
        for name, mask in masks.items():
            figures = [summarise(ranks[mask & (folds == k)]) for k in range(settings.folds)]
            out[model][name] = {"n": int(mask.sum()),
                                **{m: _fold_stats([f[m] for f in figures]) for m in ("top1", "top10", "mrr")}}
    out["calibration"] = calibration_figures(pairs, held_out, labels, folds, settings.folds)
    information = pairs.information
    sparse = information < settings.sparse_information
    ranks = by_model["ensemble"]
    out["too_sparse_flag"] = {
        "threshold_nats": settings.sparse_information,
        "flagged": summarise(ranks[in_kb & sparse]), "not_flagged": summarise(ranks[in_kb & ~sparse])}
    return out


def calibration_figures(pairs, held_out, labels, folds, k: int) -> dict:
    """Each fold's probabilities from a temperature fitted on the other folds' held-out scores; reliability of
    the top candidate (10 bins), expected calibration error and Brier score over all cases."""
    probability = np.zeros(len(held_out))
    for fold in range(k):
        other = folds[pairs.case] != fold
        sub = ensemble.Pairs(pairs.case[other], pairs.disease[other], pairs.features[other], pairs.lr_scores,
                             pairs.usable, pairs.information)
        temperature, none = ensemble.fit_calibration(sub, held_out[other], labels[other])
        probability[~other] = ensemble.probabilities(pairs, held_out, temperature, none)[~other]
    n = len(pairs.usable)
    best = np.full(n, -1)
    top_p = np.zeros(n)
    correct = np.zeros(n, dtype=bool)
    for i in np.argsort(held_out, kind="stable"):  # the last write per case is its highest score
        best[pairs.case[i]], top_p[pairs.case[i]], correct[pairs.case[i]] = i, probability[i], labels[i] > 0
    used = best >= 0
    bins = np.minimum((top_p[used] * 10).astype(int), 9)
    table = []
    for b in range(10):
        inside = bins == b
        if inside.any():
            table.append({"bin": f"{b / 10:.1f}-{(b + 1) / 10:.1f}", "cases": int(inside.sum()),
                          "mean_probability": round(float(top_p[used][inside].mean()), 3),
                          "accuracy": round(float(correct[used][inside].mean()), 3)})
    ece = sum(t["cases"] * abs(t["mean_probability"] - t["accuracy"]) for t in table) / used.sum()
    return {"method": "temperature + 'none of these' logit, fitted on the other folds", "top1_reliability": table,
            "expected_calibration_error": round(float(ece), 4),
            "brier_top1": round(float(np.mean((top_p[used] - correct[used]) ** 2)), 4)}


def cold_start(cases: list[dict], cache: Path | None = None) -> dict:
    """Time the real command a clinic's batch would run, ``mercia raredisease diagnose --cases IN --out OUT``
    (top 10, each ranked disease with its per-term likelihood ratios), from process start to exit: imports,
    knowledge base, ensemble, reading, ranking, explaining and writing every case.  ``cache`` points the
    knowledge-base cache at an empty folder, so the process also parses the HPO release (cache cold)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if cache is not None:
        env["MERCIA_CACHE_DIR"] = str(cache)
    files = kb_module.active_files()
    warm = cache is None and (kb_module.cache_dir() / f"hpo-{kb_module._hash_files(files)}.npz").exists()
    with tempfile.TemporaryDirectory(prefix="mercia-rd-bench-") as folder:
        given, written = Path(folder) / "cases.jsonl", Path(folder) / "rankings.jsonl"
        # phenotype only: the cases' genes would restrict the ranking to the causal gene's diseases
        given.write_text("".join(json.dumps({"id": c["id"], "observed": c["observed"], "excluded": c["excluded"]})
                                 + "\n" for c in cases))
        load_before = os.getloadavg()[0]
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mercia.cli", "raredisease", "diagnose", "--cases", str(given),
                        "--out", str(written), "--top", "10"], capture_output=True, text=True, env=env, check=True)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = written.read_bytes().splitlines()
        rankings = [json.loads(line) for line in lines]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    assert len(rankings) == len(cases)
    shown = [d for r in rankings for d in r["ranking"]]
    assert all("term_lrs" in d for d in shown)
    return {"cases": len(cases), "knowledge_base_cache_warm": warm,
            "wall_seconds": round(wall, 3), "cases_per_second": round(len(cases) / wall, 1),
            "process_cpu_seconds": round(cpu, 3), "cases_per_cpu_second": round(len(cases) / cpu, 1),
            "ranked_diseases_written": len(shown), "peak_rss_mb": round(cpu_after.ru_maxrss / 1024),
            "rankings_sha256_16": hashlib.sha256(b"\n".join(lines)).hexdigest()[:16],
            "counted": "one `mercia raredisease diagnose --cases --out --top 10` process, start to exit, every dev "
                       "case (observed and excluded terms only); CPU = user + system of that process (getrusage)",
            "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def cold_starts(cases: list[dict]) -> dict:
    """The cold start with the knowledge-base cache empty (a fresh folder), then with it filled."""
    with tempfile.TemporaryDirectory(prefix="mercia-rd-cache-") as empty:
        cache_cold = cold_start(cases, Path(empty))
    return {"cache_cold": cache_cold, "cache_warm": cold_start(cases)}


def write_result(name: str, document: dict) -> Path:
    """A fresh ``results/<name>-<UTC>.json`` per run."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"{name}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def tune(kb, cases: list[dict], grid: dict) -> dict:
    """Grid search on the tuning half only; the objective is the mean of the MRR over all its in-KB cases and
    over its not-cited cases (so leaked cases cannot dominate)."""
    tuning = [c for c in cases if tuning_half(c["cohort"]) and c["disease_in_hpoa_2025_01_16"]]
    results = []
    for values in itertools.product(*grid.values()):
        params = replace(ModelParameters(), **dict(zip(grid, values)))
        figures = slices(tuning, disease_ranks(Ranker(kb, params), tuning))
        objective = (figures["all_in_kb"]["mrr"] + figures["not_cited"]["mrr"]) / 2
        results.append({"params": dict(zip(grid, values)), "objective": round(objective, 4),
                        "all_top1": figures["all_in_kb"]["top1"], "not_cited_top1": figures["not_cited"]["top1"],
                        "not_cited_top10": figures["not_cited"]["top10"]})
        print(json.dumps(results[-1]), flush=True)
    best = max(results, key=lambda r: r["objective"])
    return {"tuned_on": f"{len(tuning)} in-KB cases of the tuning cohorts", "grid": grid, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-start-only", action="store_true",
                        help="only time the cold start; writes results/raredisease-cold-start-<UTC>.json")
    parser.add_argument("--only-ensemble", action="store_true", help="only the grouped folds and the cold start")
    parser.add_argument("--tune", metavar="GRID_JSON", help='grid-search on the tuning half, e.g. {"floor": [0.02, 0.05]}')
    args = parser.parse_args()
    cases = load_cases()
    if args.cold_start_only:
        figures = cold_starts(cases)
        print(write_result("raredisease-cold-start", {"data": DATA.name, **figures}))
        print(json.dumps(figures, indent=2))
        return

    started = time.perf_counter()
    kb = kb_module.load()
    kb_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ranker = Ranker(kb)
    ranker_seconds = time.perf_counter() - started
    if args.tune:
        print(json.dumps(tune(kb, cases, json.loads(args.tune)), indent=1))
        return
    settings = ensemble.EnsembleSettings()
    started = time.perf_counter()
    headline = {"ensemble_cold_start": cold_starts(cases),
                "ensemble_grouped_folds": grouped_fold_figures(ranker, cases, settings),
                "ensemble_settings": asdict(settings),
                "cross_validation_seconds": None}
    headline["cross_validation_seconds"] = round(time.perf_counter() - started, 1)
    if args.only_ensemble:
        print(write_result("raredisease", {"knowledge_base": kb.version, "data": DATA.name, "cases": len(cases),
                                           **headline}))
        print(json.dumps(headline, indent=2))
        return

    started, cpu = time.perf_counter(), time.process_time()
    ranks = disease_ranks(ranker, cases)
    rank_seconds, rank_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    ranked = ranker.rank_many([Case(c["observed"], c["excluded"]) for c in cases], top=10, strict=False)
    top10_seconds, top10_cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(ranked) == len(cases)

    tuning = np.array([tuning_half(c["cohort"]) for c in cases])
    in_kb = np.array([c["disease_in_hpoa_2025_01_16"] for c in cases])
    scores, _ = ranker.score_matrix([Case(c["observed"], c["excluded"]) for c in cases], strict=False)
    g_ranks = gene_ranks(ranker, cases, scores)
    absent = [c for c, keep in zip(cases, in_kb) if not keep]
    result = {
        "knowledge_base": kb.version,
        "data": str(DATA.name),
        "cases": len(cases),
        **headline,
        "candidate_diseases": int(len(ranker.diseases)),
        "parameters": asdict(ranker.params),
        "phenotype_only": slices(cases, ranks),
        "phenotype_only_by_split": {
            "tuning_cohorts": slices([c for c, t in zip(cases, tuning) if t], ranks[tuning]),
            "held_out_cohorts": slices([c for c, t in zip(cases, tuning) if not t], ranks[~tuning]),
        },
        "gene_prioritisation_50_decoys": {
            "all_in_kb": summarise(g_ranks[in_kb]),
            "not_cited": summarise(g_ranks[in_kb & ~np.array([c["pmid_cited_in_hpoa_2025_01_16"] for c in cases])]),
            "disease_absent": summarise(g_ranks[~in_kb]),
            "seed": SEED,
        },
        "disease_absent_best_known_disease_of_causal_gene": summarise(
            same_gene_ranks(ranker, absent, scores[~in_kb])),
        "speed": {
            "kb_load_seconds": round(kb_seconds, 3),
            "ranker_build_seconds": round(ranker_seconds, 3),
            "cases_per_second_full_scores": round(len(cases) / rank_seconds, 1),
            "cases_per_second_top10": round(len(cases) / top10_seconds, 1),
            "cases_per_cpu_second_full_scores": round(len(cases) / rank_cpu, 1),
            "cases_per_cpu_second_top10": round(len(cases) / top10_cpu, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        },
    }
    print(write_result("raredisease", result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
