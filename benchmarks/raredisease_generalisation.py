"""Issue 21, fourth round: why the re-ranker does not generalise to unseen gene cohorts, measured on held-out folds.

    .venv/bin/python benchmarks/raredisease_generalisation.py misses     # not-cited ranks per gene cohort
    .venv/bin/python benchmarks/raredisease_generalisation.py recall     # candidate recall of the first stages
    .venv/bin/python benchmarks/raredisease_generalisation.py pool       # re-rank the LR ranker's 50/75/100 best
    .venv/bin/python benchmarks/raredisease_generalisation.py features   # extra features (ATTEMPTS=0,2: some)
    .venv/bin/python benchmarks/raredisease_generalisation.py ranker-config I  # one ranker setting (0..8)
    .venv/bin/python benchmarks/raredisease_generalisation.py ranker-combine   # settings chosen in nested folds

Each writes ``results/raredisease-generalisation-<part>-<UTC>.json`` (``ranker-config`` writes its scores to a
temporary folder for ``ranker-combine``, so the settings can run as parallel processes). Folds are those of
``benchmarks/raredisease.py`` (5, dealt by gene cohort, seed 20250116); figures are mean ± sd over the 5 held-out
folds (all_in_kb n=2288, not_cited n=644).

* ``recall``: share of cases whose true disease is among the K best diseases (K = 50, 100, 200) of each
  first-stage scorer over all 8,359 OMIM diseases — the likelihood-ratio score, Resnik best-match average of the
  case's terms (Phenomizer, one way), IC-weighted coverage of the case — and of the union of their K/3 … K best.
  The re-ranker can only put first a disease it is given.
* ``features``: the shipped 19 features plus, one group at a time: ``lr_z``, each disease's LR standardised by
  the mean and sd of its LR over random term sets of the case's size (Phenomizer's p-value idea: a disease with
  many annotations scores high on any set); the case's context (summed and mean IC of its terms); organ systems
  (the share of the case's terms in systems the disease has, the disease's frequent systems the case omits).
* ``ranker-config`` / ``ranker-combine``: LambdaRank settings (leaves, min_data_in_leaf, feature_fraction,
  truncation, monotone LR, cases weighted by their cohort's size) chosen per outer fold by grouped 4-fold cross-validation inside its training folds (objective: the mean of
  not-cited and all-in-KB MRR, the protocol the LR ranker was tuned with), reported on the outer fold; and a
  bag of 5 rankers over seeds.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(__file__))
from raredisease import disease_columns, load_cases, summarise, write_result  # noqa: E402

from mercia.raredisease import ensemble  # noqa: E402
from mercia.raredisease.features import FEATURES, PairFeatures  # noqa: E402
from mercia.raredisease.ranker import Case, Ranker  # noqa: E402


class Bench:
    """The dev cases' candidate pairs, labels, folds and slices, computed once."""

    def __init__(self, candidates: int = 50):
        self.real = load_cases()
        self.ranker = Ranker()
        self.features = PairFeatures(self.ranker)
        self.settings = ensemble.EnsembleSettings(candidates=candidates)
        self.cases = [Case(c["observed"], c["excluded"]) for c in self.real]
        self.pairs = ensemble.candidate_pairs(self.features, self.cases, self.settings)
        self.labels = ensemble.labels_for(self.pairs, self.ranker, [c["diseases"] for c in self.real])
        self.folds = ensemble.grouped_folds([c["cohort"] for c in self.real], 5, self.settings.seed)
        self.columns = np.array(disease_columns(self.ranker, self.real))
        in_kb = np.array([c["disease_in_hpoa_2025_01_16"] for c in self.real])
        cited = np.array([c["pmid_cited_in_hpoa_2025_01_16"] for c in self.real])
        self.masks = {"all_in_kb": in_kb, "not_cited": in_kb & ~cited}
        _, inverse, counts = np.unique([c["cohort"] for c in self.real], return_inverse=True, return_counts=True)
        self.cohort_size = counts[inverse]

    def fold_figures(self, ranks: np.ndarray, which=range(5)) -> dict:
        out = {}
        for name, mask in self.masks.items():
            per_fold = [summarise(ranks[mask & (self.folds == k)]) for k in which]
            for metric in ("top1", "top10", "mrr"):
                values = np.array([f[metric] for f in per_fold])
                out[f"{name}_{metric}"] = round(float(values.mean()), 4)
                out[f"{name}_{metric}_sd"] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
                out[f"{name}_{metric}_per_fold"] = values.round(4).tolist()
        return out

    def held_out(self, x: np.ndarray, settings) -> np.ndarray:
        scores = np.zeros(len(self.labels))
        for k in range(5):
            train = self.folds[self.pairs.case] != k
            trees = ensemble.train_trees(x[train], self.labels[train], self.pairs.case[train], settings)
            scores[~train] = trees.predict(x[~train])
        return scores


def write(part: str, document: dict) -> None:
    print(write_result(f"raredisease-generalisation-{part}", document))


def timing(started: float, cpu: float) -> dict:
    return {"wall_seconds": round(time.time() - started, 1), "cpu_seconds": round(cpu_now() - cpu, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# -- recall ----------------------------------------------------------------------------------------------------
def first_stage_scores(bench: Bench, chunk: int = 200) -> dict[str, np.ndarray]:
    """Cases x diseases scores of the three first-stage scorers."""
    features, ranker = bench.features, bench.ranker
    n_dis = len(ranker.diseases)
    closure = features.closure.tocsr()
    ancestors = ranker.kb.ontology.ancestors.astype(np.float64)
    coverage, resnik = [], []
    for start in range(0, len(bench.cases), chunk):
        observed, _ = ranker.selectors(bench.cases[start:start + chunk], strict=False)
        case_closure = (observed @ ancestors).tocsr()
        case_closure.data[:] = 1.0
        weighted = case_closure @ sp.diags(features.weight)
        total = np.asarray(weighted.sum(axis=1)).ravel()
        coverage.append((weighted @ closure).toarray() / np.maximum(total, 1e-9)[:, None])
        terms = np.unique(observed.indices)
        owner, ancestor = ranker._expand_ancestors(terms)
        useful = features.weight[ancestor] > 0
        owner, ancestor = owner[useful], ancestor[useful]
        rows = closure[ancestor].tocoo()
        best = np.zeros((len(terms), n_dis))  # term x disease: IC of the most informative shared ancestor
        np.maximum.at(best, (owner[rows.row], rows.col), features.ic[ancestor][rows.row])
        n_obs = np.maximum(np.diff(observed.indptr), 1)
        resnik.append((observed[:, terms] @ best) / n_obs[:, None])
    return {"likelihood_ratio": bench.pairs.lr_scores, "resnik_case_to_disease": np.vstack(resnik),
            "coverage_of_case": np.vstack(coverage)}


def top_sets(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def recall() -> None:
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    scores = first_stage_scores(bench)
    truth = bench.columns
    known = truth >= 0
    out = {}
    for k in (50, 100, 200):
        found = {name: (top_sets(s, k) == truth[:, None]).any(axis=1) for name, s in scores.items()}
        for share in (3,):
            parts = [top_sets(s, k // share) for s in scores.values()]
            union = np.hstack(parts)
            sizes = np.array([len(np.unique(row)) for row in union])
            found[f"union of the three scorers' {k // share} best"] = (union == truth[:, None]).any(axis=1)
            out[f"union_size_mean_at_{k}"] = round(float(sizes.mean()), 1)
        lr_half = np.hstack([top_sets(scores["likelihood_ratio"], k // 2),
                             top_sets(scores["resnik_case_to_disease"], k // 4),
                             top_sets(scores["coverage_of_case"], k // 4)])
        found[f"union: LR's {k // 2} best + Resnik's and coverage's {k // 4} best"] = (
            lr_half == truth[:, None]).any(axis=1)
        for name, hit in found.items():
            for slice_name, mask in bench.masks.items():
                per_fold = [float(hit[mask & known & (bench.folds == f)].mean()) for f in range(5)]
                out.setdefault(f"recall_at_{k}", {}).setdefault(name, {})[slice_name] = {
                    "mean": round(float(np.mean(per_fold)), 4), "sd": round(float(np.std(per_fold, ddof=1)), 4),
                    "pooled": round(float(hit[mask & known].mean()), 4)}
    document = {"what": "Recall of the true disease (first listed) among the K best of each first-stage scorer over "
                        "the 8,359 OMIM diseases, on the 2,820 dev cases; mean ± sd over the 5 gene-cohort folds and "
                        "pooled; no training involved.",
                "how": "benchmarks/raredisease_generalisation.py recall", **out, **timing(started, cpu)}
    write("recall", document)


# -- features ----------------------------------------------------------------------------------------------------
NULL_SIZES = np.array([1, 2, 3, 4, 5, 6, 8, 10, 13, 17, 22, 30])


def null_lr(bench: Bench, per_size: int = 150, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each disease's LR score over random observed-term sets of each size in NULL_SIZES (terms
    drawn as often as they are annotated, phenotypic only; never from a dev case)."""
    ranker = bench.ranker
    ontology = ranker.kb.ontology
    phenotypic = np.asarray(ontology.ancestors[:, ontology.index["HP:0000118"]].todense()).ravel() > 0
    direct = ranker.direct.tocsc()
    pool = direct.indices[phenotypic[direct.indices]]
    rng = np.random.default_rng(seed)
    ids = ontology.ids
    mean, sd = [], []
    for size in NULL_SIZES:
        cases = [Case([str(ids[t]) for t in rng.choice(pool, size)], []) for _ in range(per_size)]
        scores, _ = ranker.score_matrix(cases, strict=False)
        mean.append(scores.mean(axis=0))
        sd.append(scores.std(axis=0))
    return np.array(mean), np.maximum(np.array(sd), 1e-3)


def features() -> None:
    bench = Bench()
    pairs = bench.pairs
    x = pairs.features
    lr = x[:, FEATURES.index("lr")]
    n_obs = x[:, FEATURES.index("n_observed")]
    mean, sd = null_lr(bench)
    size = np.clip(np.searchsorted(NULL_SIZES, n_obs), 0, len(NULL_SIZES) - 1)
    lr_z = (lr - mean[size, pairs.disease]) / sd[size, pairs.disease]
    best_z = np.full(len(pairs.usable), -np.inf)
    np.maximum.at(best_z, pairs.case, lr_z)
    information = pairs.information[pairs.case]
    mean_ic = information / np.maximum(n_obs, 1)
    systems = organ_systems(bench)
    attempts = {
        "shipped 19 features": x,
        "+ organ systems (share of the case's terms in systems the disease has; the disease's systems with "
        "frequent features that the case does not mention)": np.column_stack([x, systems]),
        "+ lr_z, lr_z_gap (LR standardised by the disease's null over random term sets of the case's size)":
            np.column_stack([x, lr_z, lr_z - best_z[pairs.case]]),
        "+ case context (summed IC, mean IC of the observed terms)": np.column_stack([x, information, mean_ic]),
        "+ both": np.column_stack([x, lr_z, lr_z - best_z[pairs.case], information, mean_ic]),
    }
    results = []
    only = os.environ.get("ATTEMPTS")
    for i, (name, columns) in enumerate(attempts.items()):
        if only and str(i) not in only.split(","):
            continue
        started, cpu = time.time(), cpu_now()
        names = FEATURES + tuple(f"extra_{i}" for i in range(columns.shape[1] - len(FEATURES)))
        ensemble.FEATURES = names  # the booster's feature names
        scores = bench.held_out(columns, bench.settings)
        ensemble.FEATURES = FEATURES
        ranks = ensemble.reranked_positions(pairs, scores, bench.columns.tolist())
        entry = {"experiment": name, **bench.fold_figures(ranks), **timing(started, cpu)}
        results.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if "per_fold" not in k}), flush=True)
    write("features", {"what": "Extra features on top of the shipped 19, held out by gene cohort (5 folds), "
                               "mean ± sd; shipped settings (50 candidates, 15 leaves, 300 rounds).",
                       "how": "benchmarks/raredisease_generalisation.py features; null: 150 random term sets per "
                              f"size {NULL_SIZES.tolist()}, seed 11", "attempts": results})


# -- ranker settings, nested -------------------------------------------------------------------------------------
MONOTONE = {"lr": 1, "lr_gap": 1, "gene_lr_gap": 1, "lr_log_rank": -1}
CONFIGS = {
    "shipped (15 leaves, min_data_in_leaf 40, feature_fraction 0.8)": {},
    "7 leaves, min_data_in_leaf 100, feature_fraction 0.6": {"num_leaves": 7, "min_data_in_leaf": 100,
                                                             "feature_fraction": 0.6},
    "7 leaves, min_data_in_leaf 200, feature_fraction 0.5, lambda_l2 10": {
        "num_leaves": 7, "min_data_in_leaf": 200, "feature_fraction": 0.5, "lambda_l2": 10.0},
    "3 leaves, min_data_in_leaf 100, 600 rounds": {"num_leaves": 3, "min_data_in_leaf": 100, "rounds": 600},
    "truncation level 5 (rank 1 emphasised)": {"lambdarank_truncation_level": 5},
    "monotone: higher LR / LR gap / gene LR never worse, lower rank never worse": {"monotone": True},
    "cases weighted 1/sqrt(cases of their gene cohort)": {"cohort_weight": 0.5},
    "cases weighted 1/(cases of their gene cohort)": {"cohort_weight": 1.0},
}
BAG = "bag of 5 shipped-setting rankers (seeds 1-5, bagging 0.8; not tuned)"
CONFIGS[BAG] = {}


class Bag:
    """Mean of several boosters' scores."""

    def __init__(self, members):
        self.members = members

    def predict(self, x):
        return np.mean([m.predict(x) for m in self.members], axis=0)


def train_with(overrides: dict, seeds=(0,), cohort_size: np.ndarray | None = None):
    """A train function for Bench.held_out with LightGBM parameters overridden (and a bag over seeds; with
    ``cohort_weight`` p, each case weighs cohort_size ** -p)."""
    import lightgbm

    def train(x, labels, pair_case, settings):
        positive = np.bincount(pair_case, weights=labels, minlength=int(pair_case.max()) + 1) > 0
        keep = positive[pair_case]
        order = np.argsort(pair_case[keep], kind="stable")
        _, sizes = np.unique(pair_case[keep][order], return_counts=True)
        members = []
        weight = None
        if "cohort_weight" in overrides:
            weight = cohort_size[pair_case[keep][order]] ** -overrides["cohort_weight"]
            weight = weight / weight.mean()
        for seed in seeds:
            params = ensemble._booster_params(settings)
            params |= {k: v for k, v in overrides.items() if k not in ("rounds", "monotone", "cohort_weight")}
            if overrides.get("monotone"):
                params["monotone_constraints"] = [MONOTONE.get(f, 0) for f in FEATURES]
            if len(seeds) > 1:
                params |= {"seed": seed, "bagging_seed": seed, "feature_fraction_seed": seed,
                           "bagging_fraction": 0.8, "bagging_freq": 1}
            data = lightgbm.Dataset(x[keep][order], labels[keep][order], group=sizes, weight=weight,
                                    free_raw_data=True)
            members.append(lightgbm.train(params, data, num_boost_round=overrides.get("rounds", settings.rounds)))
        return Bag(members)

    return train


PARTS = Path(tempfile.gettempdir()) / "mercia-raredisease-generalisation"  # per-config scores for ranker-combine


def ranker_config(index: str) -> None:
    """One config of CONFIGS: inner objective per outer fold and outer held-out scores (configs run as parallel
    processes; ``ranker-combine`` makes the nested choice)."""
    bench = Bench()
    pairs, x = bench.pairs, bench.pairs.features
    pair_fold = bench.folds[pairs.case]
    name = list(CONFIGS)[int(index)]
    started, cpu = time.time(), cpu_now()
    if name == BAG:
        fn = train_with({}, seeds=(1, 2, 3, 4, 5))
    else:
        fn = train_with(CONFIGS[name], cohort_size=bench.cohort_size)
    inner, outer = [], np.zeros(len(bench.labels))
    for k in range(5):
        rest = [j for j in range(5) if j != k]
        if name != BAG:
            inner_scores = np.zeros(len(bench.labels))
            for j in rest:
                tr = (pair_fold != k) & (pair_fold != j)
                inner_scores[pair_fold == j] = fn(x[tr], bench.labels[tr], pairs.case[tr], bench.settings).predict(
                    x[pair_fold == j])
            figures = bench.fold_figures(ensemble.reranked_positions(pairs, inner_scores, bench.columns.tolist()),
                                         which=rest)
            inner.append((figures["not_cited_mrr"] + figures["all_in_kb_mrr"]) / 2)
        tr = pair_fold != k
        outer[~tr] = fn(x[tr], bench.labels[tr], pairs.case[tr], bench.settings).predict(x[~tr])
    PARTS.mkdir(exist_ok=True)
    np.save(PARTS / f"outer-{index}.npy", outer)
    (PARTS / f"config-{index}.json").write_text(json.dumps({"config": name, "inner_objective_per_outer_fold": inner,
                                                            **timing(started, cpu)}))
    print(name, inner, flush=True)


def ranker_combine(*earlier: str) -> None:
    """The nested choice over the settings run (and those of ``earlier`` result files not run again): per outer
    fold the setting with the best inner objective, scored by its figures on that fold."""
    bench = Bench()
    columns = bench.columns.tolist()
    configs, not_run = {}, []
    for path in earlier:
        configs |= {c["config"]: c for c in json.loads(Path(path).read_text())["configs"]}
    for index, name in enumerate(CONFIGS):
        if (PARTS / f"config-{index}.json").exists():
            entry = json.loads((PARTS / f"config-{index}.json").read_text())
            outer = np.load(PARTS / f"outer-{index}.npy")
            entry["outer_figures"] = bench.fold_figures(ensemble.reranked_positions(bench.pairs, outer, columns))
            configs[name] = entry
        elif name not in configs:
            not_run.append(name)
    tuned = [c for c in configs.values() if c["inner_objective_per_outer_fold"]]
    chosen = [max(tuned, key=lambda c: c["inner_objective_per_outer_fold"][k]) for k in range(5)]
    nested = {}
    for key in chosen[0]["outer_figures"]:
        if key.endswith("_per_fold"):
            values = np.array([c["outer_figures"][key][k] for k, c in enumerate(chosen)])
            metric = key.removesuffix("_per_fold")
            nested |= {metric: round(float(values.mean()), 4), f"{metric}_sd": round(float(values.std(ddof=1)), 4),
                       key: values.tolist()}
    write("ranker", {"what": "LambdaRank settings chosen per outer gene-cohort fold by grouped 4-fold CV inside its "
                             "training folds (objective: mean of not-cited and all-in-KB MRR); 'nested' (each outer "
                             "fold scored by the setting its inner folds chose) is the honest figure; each config's "
                             "'outer_figures' is for reference only (choosing by it would be tuning on the test "
                             "folds). The bag (5 seeds, bagging 0.8) is not tuned.",
                     "how": "benchmarks/raredisease_generalisation.py ranker-config I (one process per config, "
                            "nice 10), then ranker-combine [earlier results]", "earlier_results": list(earlier),
                     "chosen_per_outer_fold": [c["config"] for c in chosen], "nested": nested,
                     "configs": list(configs.values()), "configs_not_run": not_run})


# -- where the misses are ----------------------------------------------------------------------------------------
def misses() -> None:
    """Held-out ranks of the shipped setting per gene cohort (not-cited cases), and how many misses have a disease
    of the true disease's gene first."""
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    pairs = bench.pairs
    scores = bench.held_out(pairs.features, bench.settings)
    ranks = ensemble.reranked_positions(pairs, scores, bench.columns.tolist())
    not_cited = np.flatnonzero(bench.masks["not_cited"])
    starts = np.searchsorted(pairs.case, np.arange(len(bench.real) + 1))
    missed = [i for i in not_cited if ranks[i] != 1]
    first = [pairs.disease[starts[i]:starts[i + 1]][np.argmax(scores[starts[i]:starts[i + 1]])] for i in missed]
    same_gene = sum(bench.features.gene_siblings[d, bench.columns[i]] > 0 for i, d in zip(missed, first))
    cohorts = np.array([bench.real[i]["cohort"] for i in not_cited])
    table = []
    for name in np.unique(cohorts):
        mine = ranks[not_cited[cohorts == name]]
        table.append({"cohort": str(name), "cases": len(mine), "fold": int(bench.folds[not_cited[cohorts == name][0]]),
                      "top1": round(float(np.mean(mine == 1)), 3),
                      "top10": round(float(np.mean((mine > 0) & (mine <= 10))), 3)})
    table.sort(key=lambda row: -row["cases"])
    write("misses", {"what": "Not-cited cases (644, in KB) ranked by the shipped setting on held-out gene-cohort folds: "
                             "per cohort top-1/top-10; misses whose first disease shares a gene with the true one.",
                     "how": "benchmarks/raredisease_generalisation.py misses", "not_cited_misses": len(missed),
                     "misses_with_a_same_gene_disease_first": int(same_gene), "cohorts": table,
                     **timing(started, cpu)})


# -- a larger pool ---------------------------------------------------------------------------------------------
def pool() -> None:
    """The shipped settings re-ranking the LR ranker's 50, 75 or 100 best diseases."""
    results = []
    for candidates in (50, 75, 100):
        started, cpu = time.time(), cpu_now()
        bench = Bench(candidates)
        scores = bench.held_out(bench.pairs.features, bench.settings)
        ranks = ensemble.reranked_positions(bench.pairs, scores, bench.columns.tolist())
        entry = {"candidates": candidates, **bench.fold_figures(ranks), **timing(started, cpu)}
        results.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if "per_fold" not in k}), flush=True)
    write("pool", {"what": "The shipped ensemble settings (19 features, 15 leaves, 300 rounds) re-ranking the LR "
                           "ranker's K best diseases; held out by gene cohort (5 folds), mean ± sd.",
                   "how": "benchmarks/raredisease_generalisation.py pool", "attempts": results})


if __name__ == "__main__":
    {"recall": recall, "pool": pool, "features": features, "ranker-config": ranker_config,
     "ranker-combine": ranker_combine, "misses": misses}[sys.argv[1]](*sys.argv[2:])
