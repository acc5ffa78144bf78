"""Issue 21, fifth round: train the re-ranker (also) on patients simulated from the knowledge base itself.

    .venv/bin/python benchmarks/raredisease_simulated.py diagnose VARIANT     # simulated vs real true-pair features
    .venv/bin/python benchmarks/raredisease_simulated.py outer VARIANT W,W..  # held-out figures per sim weight
    .venv/bin/python benchmarks/raredisease_simulated.py nested VARIANT W,W.. # the weight chosen in nested folds

The dev cases' diseases are a small part of the knowledge base, so a ranker trained on them alone learns little
about diseases it has never seen. Simulated patients (one or more per OMIM disease with enough phenotypic
annotations): the disease's annotations sampled by their frequency, the case's size drawn from the dev cases'
sizes; some terms replaced by a parent or grandparent (imprecision), by a child or a sibling (a term the
annotations do not hold), some noise terms drawn from all annotations (the population background), and excluded
terms (half the disease's own unsampled features — checked because they fit, as curators do — half background).

Variants (``VARIANT``):
* ``perturbed``: features computed against the full knowledge base;
* ``hidden``: the simulated diseases are dealt into 5 groups; a group's patients are scored against a knowledge base
  in which each annotation a patient's term was drawn from is removed with probability ½ — so, like a patient whose
  report did not feed the annotations, part of the terms are not the annotation's terms.

Simulated cases are added to every fold's training cases (they come from the knowledge base only, which is known at
test time, never from a dev case); the held-out folds are the real gene-cohort folds of
``benchmarks/raredisease.py``. ``W`` weighs each simulated case against a real one (LightGBM query weights). The simulation's settings are
``SIM`` below; the environment variable ``SIM`` (JSON) overrides some of them for one run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(__file__))
from raredisease_generalisation import Bench, cpu_now, timing, write  # noqa: E402

from mercia.raredisease import ensemble, features as features_module, ranker as ranker_module  # noqa: E402
from mercia.raredisease.features import FEATURES, PairFeatures  # noqa: E402
from mercia.raredisease.ranker import Case, Ranker  # noqa: E402

SIM = {"min_annotations": 3, "per_disease": 1, "ancestor": 0.2, "grandparent": 0.05, "specific": 0.1,
       "sibling": 0.05, "noise": 0.15, "excluded_own": 0.5, "hide": 0.5, "groups": 5, "seed": 7}
SIM |= json.loads(os.environ.get("SIM", "{}"))  # e.g. SIM='{"hide": 0.25}' (written into each result)


class Simulator:
    """Patients drawn from a ranker's annotations (see the module docstring)."""

    def __init__(self, bench: Bench, settings: dict):
        self.s = settings
        self.ranker = bench.ranker
        ontology = self.ranker.kb.ontology
        self.ids = ontology.ids.astype(str)
        phenotypic = np.asarray(ontology.ancestors[:, ontology.index["HP:0000118"]].todense()).ravel() > 0
        self.phenotypic = phenotypic
        self.direct = self.ranker.direct.tocsc()
        self.parents = ontology.parents.tocsr()
        self.children = ontology.parents.T.tocsr()
        self.pool = self.direct.indices[phenotypic[self.direct.indices]]  # background: every annotation
        observed, excluded = self.ranker.selectors(bench.cases, strict=False)
        self.sizes = np.diff(observed.indptr)
        self.excluded_sizes = np.diff(excluded.indptr)
        self.rng = np.random.default_rng(settings["seed"])

    def _up(self, t: int) -> int:
        parents = self.parents.indices[self.parents.indptr[t]:self.parents.indptr[t + 1]]
        parents = parents[self.phenotypic[parents]]
        return int(self.rng.choice(parents)) if len(parents) else t

    def _down(self, t: int) -> int:
        children = self.children.indices[self.children.indptr[t]:self.children.indptr[t + 1]]
        return int(self.rng.choice(children)) if len(children) else t

    def patient(self, column: int) -> tuple[list[int], list[int], list[int]]:
        """Observed and excluded term indices, and the annotations the observed terms were drawn from."""
        s, rng = self.s, self.rng
        a, b = self.direct.indptr[column], self.direct.indptr[column + 1]
        terms, freq = self.direct.indices[a:b], self.direct.data[a:b]
        keep = self.phenotypic[terms]
        terms, freq = terms[keep], freq[keep]
        size = max(1, int(rng.choice(self.sizes)))
        n_noise = rng.binomial(size, s["noise"])
        drawn = terms[rng.random(len(terms)) < freq]
        if not len(drawn):
            drawn = terms[[int(np.argmax(freq))]]
        drawn = rng.permutation(drawn)[:max(1, size - n_noise)]
        observed = []
        for t in drawn.tolist():
            u = rng.random()
            if u < s["ancestor"]:
                t = self._up(t)
            elif u < s["ancestor"] + s["grandparent"]:
                t = self._up(self._up(t))
            elif u < s["ancestor"] + s["grandparent"] + s["specific"]:
                t = self._down(t)
            elif u < s["ancestor"] + s["grandparent"] + s["specific"] + s["sibling"]:
                t = self._down(self._up(t))
            observed.append(t)
        observed += rng.choice(self.pool, n_noise).tolist()
        n_exc = int(rng.choice(self.excluded_sizes))
        unsampled = np.setdiff1d(terms, drawn)
        own = min(len(unsampled), rng.binomial(n_exc, s["excluded_own"]))
        weights = 1.0 - self.direct[unsampled, column].toarray().ravel() * 0.5 if own else None
        excluded = (rng.choice(unsampled, own, replace=False, p=weights / weights.sum()).tolist() if own else [])
        excluded += rng.choice(self.pool, n_exc - own).tolist()
        return observed, excluded, drawn.tolist()

    def cases(self) -> tuple[list[Case], list[int], list[list[int]]]:
        counts = np.bincount(np.repeat(np.arange(self.direct.shape[1]), np.diff(self.direct.indptr)),
                             self.phenotypic[self.direct.indices], minlength=self.direct.shape[1])
        columns = [c for c in range(self.direct.shape[1]) if counts[c] >= self.s["min_annotations"]]
        out, truth, sources = [], [], []
        for c in columns:
            for _ in range(self.s["per_disease"]):
                observed, excluded, drawn = self.patient(c)
                out.append(Case([self.ids[t] for t in observed], [self.ids[t] for t in excluded]))
                truth.append(c)
                sources.append(drawn)
        return out, truth, sources


def _uncached(kb, name, settings, build, shape):
    """cached_matrix keys on the release files; a knowledge base with annotations removed must not use it."""
    return build().tocsr()


def hidden_features(bench: Bench, sim: Simulator, cases, truth, sources) -> ensemble.Pairs:
    """Pairs of the simulated cases, each group scored against a KB without (half of) its patients' sources."""
    kb, ranker = bench.ranker.kb, bench.ranker
    rng = np.random.default_rng(sim.s["seed"] + 1)
    group = rng.integers(0, sim.s["groups"], len(cases))
    key = kb.ann_disease.astype(np.int64) * len(kb.ontology) + kb.ann_term
    parts = []
    saved = ranker_module.cached_matrix, features_module.cached_matrix
    ranker_module.cached_matrix = features_module.cached_matrix = _uncached
    try:
        for g in range(sim.s["groups"]):
            mine = np.flatnonzero(group == g)
            hide = [int(ranker.diseases[truth[i]]) * len(kb.ontology) + t for i in mine for t in sources[i]
                    if rng.random() < sim.s["hide"]]
            keep = ~np.isin(key, np.array(hide, dtype=np.int64))
            reduced = replace(kb, ann_term=kb.ann_term[keep], ann_disease=kb.ann_disease[keep],
                              ann_freq=kb.ann_freq[keep], ann_patients=kb.ann_patients[keep],
                              ann_onset=kb.ann_onset[keep])
            pf = PairFeatures(Ranker(reduced, ranker.params))
            pairs = ensemble.candidate_pairs(pf, [cases[i] for i in mine], bench.settings, keep_scores=False)
            pairs.case = mine[pairs.case]
            parts.append(pairs)
    finally:
        ranker_module.cached_matrix, features_module.cached_matrix = saved
    order = np.argsort(np.concatenate([p.case for p in parts]), kind="stable")
    return ensemble.Pairs(np.concatenate([p.case for p in parts])[order],
                          np.concatenate([p.disease for p in parts])[order],
                          np.vstack([p.features for p in parts])[order], None,
                          np.ones(len(cases), dtype=bool), np.zeros(len(cases)))


def simulated_pairs(bench: Bench, variant: str, settings: dict = SIM):
    sim = Simulator(bench, settings)
    cases, truth, sources = sim.cases()
    if variant == "hidden":
        pairs = hidden_features(bench, sim, cases, truth, sources)
    else:
        pairs = ensemble.candidate_pairs(bench.features, cases, bench.settings, keep_scores=False)
    labels = (pairs.disease == np.asarray(truth)[pairs.case]).astype(np.float64)
    return pairs, labels, len(cases)


def gene_smoothed(share: str = "0.3") -> None:
    """Features ``smoothed_lr`` and its gap below the case's best: the LR ranker over a knowledge base in which
    each disease also carries, at frequency ``share``, the terms annotated to any other disease (OMIM, Orphanet,
    DECIPHER) of one of its genes that it lacks itself (HPO genes_to_phenotype's idea: diseases of a gene share
    phenotypes). Added to the shipped 19; held out as before."""
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    kb = bench.ranker.kb
    n_all, n_terms = len(kb.disease_ids), len(kb.ontology)
    gene_disease = sp.csr_matrix((np.ones(len(kb.gene_disease_gene)), (kb.gene_disease_gene, kb.gene_disease_disease)),
                                 shape=(len(kb.gene_symbols), n_all))
    siblings = (gene_disease.T @ gene_disease).tocsr()
    siblings.setdiag(0)
    siblings.eliminate_zeros()
    annotated = sp.csr_matrix((np.ones(len(kb.ann_term)), (kb.ann_disease, kb.ann_term)), shape=(n_all, n_terms))
    annotated.data[:] = 1.0
    borrowed = (siblings @ annotated).tocsr()
    borrowed.data[:] = 1.0
    borrowed = (borrowed - borrowed.multiply(annotated)).tocoo()
    borrowed.eliminate_zeros()
    n = borrowed.nnz
    smoothed = replace(kb, ann_term=np.r_[kb.ann_term, borrowed.col.astype(kb.ann_term.dtype)],
                       ann_disease=np.r_[kb.ann_disease, borrowed.row.astype(kb.ann_disease.dtype)],
                       ann_freq=np.r_[kb.ann_freq, np.full(n, float(share), dtype=kb.ann_freq.dtype)],
                       ann_patients=np.r_[kb.ann_patients, np.zeros(n, dtype=kb.ann_patients.dtype)],
                       ann_onset=np.r_[kb.ann_onset, np.full(n, -1, dtype=kb.ann_onset.dtype)])
    saved = ranker_module.cached_matrix
    ranker_module.cached_matrix = _uncached
    try:
        smoothed_ranker = Ranker(smoothed, bench.ranker.params)
    finally:
        ranker_module.cached_matrix = saved
    scores, _ = smoothed_ranker.score_matrix(bench.cases, strict=False)
    pairs = bench.pairs
    value = scores[pairs.case, pairs.disease]
    x = np.column_stack([pairs.features, value, value - scores.max(axis=1)[pairs.case]])
    first_stage = np.zeros(len(bench.real), dtype=np.int64)
    known = bench.columns >= 0
    truth = scores[np.flatnonzero(known), bench.columns[known]]
    first_stage[known] = (scores[known] >= truth[:, None]).sum(axis=1)
    ensemble.FEATURES = FEATURES + ("smoothed_lr", "smoothed_lr_gap")
    try:
        held = bench.held_out(x, bench.settings)
    finally:
        ensemble.FEATURES = FEATURES
    ranks = ensemble.reranked_positions(pairs, held, bench.columns.tolist())
    document = {"what": "Gene-smoothed LR: each OMIM disease also carries, at frequency `share`, the terms of the "
                        "other diseases (all sources) of its genes; its LR and gap below the case's best added to "
                        "the shipped 19 features; held out by gene cohort (5 folds), mean ± sd.",
                "share": float(share), "borrowed_annotations": int(n),
                "smoothed_lr_alone": bench.fold_figures(first_stage),
                "reranked": bench.fold_figures(ranks), **timing(started, cpu)}
    print(json.dumps({k: ({a: b for a, b in v.items() if "per_fold" not in a} if isinstance(v, dict) else v)
                      for k, v in document.items()}, indent=1))
    write("simulated-gene-smoothed", document)


def diagnose(variant: str = "perturbed") -> None:
    """Mean true-pair features of real cited / not-cited cases and of simulated cases."""
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    pairs, labels, n = simulated_pairs(bench, variant)
    cited = np.array([r["pmid_cited_in_hpoa_2025_01_16"] for r in bench.real])
    rows = {}
    real_pos = bench.labels > 0
    for name, x in (("real cited", bench.pairs.features[real_pos & cited[bench.pairs.case]]),
                    ("real not cited", bench.pairs.features[real_pos & ~cited[bench.pairs.case]]),
                    (f"simulated ({variant})", pairs.features[labels > 0])):
        f = {k: x[:, FEATURES.index(k)] for k in FEATURES}
        n_obs = np.maximum(f["n_observed"], 1)
        rows[name] = {"true pairs among candidates": int(len(x)),
                      "matched share": round(float((f["matched"] / n_obs).mean()), 3),
                      "unmatched share": round(float((f["unmatched"] / n_obs).mean()), 3),
                      "coverage_of_case": round(float(f["coverage_of_case"].mean()), 3),
                      "excluded features share": round(float((f["excluded_features"] /
                                                              np.maximum(f["n_excluded"], 1)).mean()), 3),
                      "LR rank 1 share": round(float((f["lr_log_rank"] == 0).mean()), 3),
                      "mean log LR rank": round(float(f["lr_log_rank"].mean()), 3)}
    found = np.bincount(pairs.case, labels, minlength=n) > 0
    document = {"what": "Features of the true (case, disease) pair: real dev cases (cited / not cited) against "
                        "simulated patients; only cases whose disease is among the LR ranker's 50 best.",
                "variant": variant, "simulation": SIM, "simulated_cases": n,
                "simulated_true_disease_in_candidates": round(float(found.mean()), 3), "rows": rows,
                **timing(started, cpu)}
    print(json.dumps(document, indent=1))
    write(f"simulated-diagnose-{variant}", document)


def _trainer(weight: float):
    """train_trees with simulated cases (case ids >= real_cases) weighted ``weight`` against real ones."""
    import lightgbm

    def train(x, labels, pair_case, settings, real_cases):
        positive = np.bincount(pair_case, weights=labels, minlength=int(pair_case.max()) + 1) > 0
        keep = positive[pair_case]
        order = np.argsort(pair_case[keep], kind="stable")
        cases, sizes = np.unique(pair_case[keep][order], return_counts=True)
        group_weight = np.where(cases >= real_cases, weight, 1.0)
        data = lightgbm.Dataset(x[keep][order], labels[keep][order], group=sizes,
                                weight=np.repeat(group_weight, sizes), free_raw_data=True)
        return lightgbm.train(ensemble._booster_params(settings), data, num_boost_round=settings.rounds)

    return train


def _scores(bench: Bench, sim, weight: float, test_fold: int, train_folds) -> np.ndarray:
    """Model scores of the real pairs of ``test_fold`` (or of every fold not trained on) from a model trained on
    the real cases of ``train_folds`` plus, for ``weight`` > 0, the simulated cases."""
    pairs, fold = bench.pairs, bench.folds[bench.pairs.case]
    train = np.isin(fold, list(train_folds))
    x, labels, case = pairs.features[train], bench.labels[train], pairs.case[train]
    n_real = len(bench.real)
    if weight > 0:
        s_pairs, s_labels, _ = sim
        x = np.vstack([x, s_pairs.features])
        labels = np.r_[labels, s_labels]
        case = np.r_[case, s_pairs.case + n_real]
    model = _trainer(weight)(x, labels, case, bench.settings, n_real)
    test = fold == test_fold
    out = np.zeros(len(bench.labels))
    out[test] = model.predict(pairs.features[test])
    return out


def outer(variant: str = "perturbed", weights: str = "0,0.3,1") -> None:
    """Held-out figures (real cases of each gene-cohort fold) for each simulated-case weight."""
    bench = Bench()
    sim = simulated_pairs(bench, variant) if variant != "none" else None
    results = []
    for w in [float(v) for v in weights.split(",")]:
        started, cpu = time.time(), cpu_now()
        scores = sum(_scores(bench, sim, w, k, [j for j in range(5) if j != k]) for k in range(5))
        ranks = ensemble.reranked_positions(bench.pairs, scores, bench.columns.tolist())
        entry = {"simulated_weight": w, **bench.fold_figures(ranks), **timing(started, cpu)}
        results.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if "per_fold" not in k}), flush=True)
    write(f"simulated-outer-{variant}", {
        "what": "Re-ranker trained on each fold's real training cases plus simulated patients (weight 0: real only, "
                "the shipped protocol), held out by gene cohort (5 folds), mean ± sd over folds.",
        "variant": variant, "simulation": SIM, "simulated_cases": sim[2] if sim else 0, "attempts": results})


def nested(variant: str = "perturbed", weights: str = "0,0.3,1") -> None:
    """Per outer fold, the weight with the best inner objective (mean of not-cited and all-in-KB MRR over grouped
    4-fold cross-validation inside its training folds), scored on the outer fold."""
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    sim = simulated_pairs(bench, variant)
    grid = [float(v) for v in weights.split(",")]
    chosen, outer_scores = [], np.zeros(len(bench.labels))
    inner_table = []
    for k in range(5):
        rest = [j for j in range(5) if j != k]
        objective = []
        for w in grid:
            scores = sum(_scores(bench, sim, w, j, [i for i in rest if i != j]) for j in rest)
            f = bench.fold_figures(ensemble.reranked_positions(bench.pairs, scores, bench.columns.tolist()), rest)
            objective.append((f["not_cited_mrr"] + f["all_in_kb_mrr"]) / 2)
        w = grid[int(np.argmax(objective))]
        chosen.append(w)
        inner_table.append([round(o, 4) for o in objective])
        outer_scores += _scores(bench, sim, w, k, rest)
        print(k, objective, w, flush=True)
    ranks = ensemble.reranked_positions(bench.pairs, outer_scores, bench.columns.tolist())
    document = {"what": "Simulated-case weight chosen per outer gene-cohort fold by inner grouped 4-fold CV "
                        "(objective: mean of not-cited and all-in-KB MRR), scored on the outer fold.",
                "variant": variant, "simulation": SIM, "grid": grid, "inner_objective": inner_table,
                "chosen_weight_per_fold": chosen, **bench.fold_figures(ranks), **timing(started, cpu)}
    print(json.dumps({k: v for k, v in document.items() if "per_fold" not in k}))
    write(f"simulated-nested-{variant}", document)


if __name__ == "__main__":
    {"diagnose": diagnose, "outer": outer, "nested": nested, "gene-smoothed": gene_smoothed}[sys.argv[1]](*sys.argv[2:])
