"""Issue 21, sixth round: knowledge learned from the training folds' patients, measured on held-out gene cohorts.

    .venv/bin/python benchmarks/raredisease_learned.py first-stage          # LR ranker alone: background, association
    .venv/bin/python benchmarks/raredisease_learned.py first-stage weights  # larger association weights
    .venv/bin/python benchmarks/raredisease_learned.py first-stage floor    # a floor learned per term
    .venv/bin/python benchmarks/raredisease_learned.py features             # case-IC and summed-association features
    .venv/bin/python benchmarks/raredisease_learned.py rerank [0,4,..] [seed]  # learned first stage + re-ranker

Each writes ``results/raredisease-generalisation-learned-<part>-<UTC>.json``. Folds are those of
``benchmarks/raredisease.py`` (5, dealt by gene cohort, seed 20250116); figures are mean ± sd over the 5 held-out
folds and the paired per-fold difference from the reference (the shipped setting, recomputed in the same run) as
mean ± sd of the 5 differences. Every statistic is learned from training-fold cases only: a held-out fold's from
the four training folds; a training case's (whose features the re-ranker learns from) from the training folds
other than its own (cross-fitting), so it never sees statistics its own cohort shaped.

Learned statistics (each cohort counts once: shares of its cases, averaged over cohorts):
* patient background: how often patients report t (or a term below it), against the annotations' bg(t);
* learned floor: how often patients report t when their disease is *not* annotated with t (or below), over how
  often they report t at all — smoothed, never below the LR model's floor; an observed term the knowledge base
  leaves at the floor for a disease gets this LR instead (patients report "Seizure" in many diseases that do not
  carry it, so its absence from a disease's annotations is weak evidence against it);
* term-to-annotation association: log lift of "a cohort's patients report t" given "its disease is annotated
  with a or below", kept where at least ``MIN_SUPPORT`` cohorts show it and t and a are not related by the
  hierarchy; per (case, disease) summed over the case's terms the knowledge base leaves at the floor, each its
  best association with an annotation of the disease.

* ``first-stage``: the LR ranker alone with each of them (no training): recall of the true disease among the 50
  candidates, the LR's own top-1/top-10.
* ``features``: the 19 features plus case-IC coverage (overlap and its share of the case, IC from the patients'
  frequencies smoothed toward the knowledge base's) or the association summed over every pair of case term and
  disease annotation (per observed term and per annotation of the disease).
* ``rerank``: candidates from the first stage with the learned floor and/or the association (weight fixed, or
  chosen per outer fold by inner grouped folds), re-ranked with the 19 features (optionally from the first
  stage's score) plus the learned evidence; a third argument sets the booster's seed only.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(__file__))
from raredisease_generalisation import Bench, cpu_now, timing, write  # noqa: E402

from mercia.raredisease import ensemble  # noqa: E402
from mercia.raredisease.features import FEATURES  # noqa: E402
from mercia.raredisease.ranker import Ranker, _sorted_entry_keys  # noqa: E402

MIN_SUPPORT = 3  # cohorts that must show a term-to-annotation association before it counts
CASE_IC_PRIOR = 20.0  # pseudo-cohorts of the knowledge base's frequencies in a patient-derived frequency
FLOOR_PRIOR = 5.0  # pseudo-cohorts at the model's floor in the learned floor
SHOWN = ("not_cited_top1", "not_cited_top1_sd", "not_cited_top10", "all_in_kb_top1", "not_cited_top1_paired_difference",
         "not_cited_top1_paired_difference_sd", "not_cited_top10_paired_difference")  # printed while running
ASSOCIATION_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0)  # weights of the learned association in the first stage


class Patients:
    """Per-case term closures and true-disease closures, and cohort membership, for learning inside folds."""

    def __init__(self, bench: Bench):
        self.bench = bench
        ranker = bench.ranker
        self.observed, self.excluded = ranker.selectors(bench.cases, strict=False)
        ancestors = ranker.kb.ontology.ancestors.astype(np.float64)
        self.closure = (self.observed @ ancestors).tocsr()
        self.closure.data[:] = 1.0
        cohorts = np.array([c["cohort"] for c in bench.real])
        self.cohort_names, self.cohort = np.unique(cohorts, return_inverse=True)
        truth = bench.columns
        known = truth >= 0
        n_dis = len(ranker.diseases)
        truth_matrix = sp.csr_matrix((np.ones(known.sum()), (np.flatnonzero(known), truth[known])),
                                     shape=(len(truth), n_dis))
        self.disease_closure = (truth_matrix @ bench.features.closure.T).tocsr()  # cases x terms
        self.related = (ranker.kb.ontology.ancestors + ranker.kb.ontology.ancestors.T).tocsr()
        self.related.data[:] = 1

    def cohort_shares(self, rows: np.ndarray, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Cohorts (of ``rows``) x terms: share of the cohort's cases whose row holds the term."""
        cohort = self.cohort[rows]
        size = np.bincount(cohort, minlength=len(self.cohort_names))
        average = sp.csr_matrix((1.0 / size[cohort], (cohort, np.arange(len(rows)))),
                                shape=(len(self.cohort_names), len(rows)))
        shares = (average @ matrix[rows]).tocsr()
        present = np.flatnonzero(size > 0)
        return shares[present]

    def case_frequency(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Mean over the rows' cohorts of the share of their cases reporting each term (or one below it)."""
        shares = self.cohort_shares(rows, self.closure)
        return np.asarray(shares.mean(axis=0)).ravel(), shares.shape[0]

    def association(self, rows: np.ndarray) -> sp.csr_matrix:
        """terms x terms: log lift of a case term t given an annotation a of the true disease, learned from the
        rows' cohorts; kept where positive, shown by at least MIN_SUPPORT cohorts and not related by the hierarchy."""
        weight = self.bench.features.weight
        informative = sp.diags((weight > 0).astype(np.float64))
        reported = (self.cohort_shares(rows, self.closure) @ informative).tocsr()
        annotated = (self.cohort_shares(rows, self.disease_closure) @ informative).tocsr()
        reported.eliminate_zeros()
        annotated.eliminate_zeros()
        n_cohorts = reported.shape[0]
        joint = (reported.T @ annotated).tocsr()  # sum over cohorts of share(t) * share(a)
        present_t, present_a = reported.copy(), annotated.copy()
        present_t.data[:] = 1.0
        present_a.data[:] = 1.0
        support = (present_t.T @ present_a).tocsr()  # cohorts showing both: the same entries as ``joint``
        for matrix in (joint, support):
            matrix.sort_indices()
        assert np.array_equal(joint.indices, support.indices) and np.array_equal(joint.indptr, support.indptr)
        joint = joint.tocoo()
        p_t = np.asarray(reported.sum(axis=0)).ravel() / n_cohorts
        p_a = np.asarray(annotated.sum(axis=0)).ravel() / n_cohorts
        lift = joint.data / n_cohorts / (p_t[joint.row] * p_a[joint.col])
        related = _sorted_entry_keys(joint.multiply(self.related).tocsr())
        keys = joint.row.astype(np.int64) * joint.shape[1] + joint.col
        keep = (support.data >= MIN_SUPPORT) & ~np.isin(keys, related) & (lift > 1.0)
        n_terms = len(weight)
        return sp.csr_matrix((np.log(lift[keep]), (joint.row[keep], joint.col[keep])), shape=(n_terms, n_terms))


    def learned_floor(self, rows: np.ndarray, floor: float) -> np.ndarray:
        """Per term, log(learned floor / floor): how often the rows' patients report t (or a term below it) when
        their disease is not annotated with it, over how often patients report it at all (cohort-averaged, each
        smoothed: FLOOR_PRIOR pseudo-cohorts at the model's floor, CASE_IC_PRIOR at the knowledge base's
        frequency), never below the floor; 0 for terms the rows' patients never report."""
        rows = rows[self.bench.columns[rows] >= 0]
        unannotated = self.closure[rows].multiply(self.disease_closure[rows]).tocsr()
        unannotated = (self.closure[rows] - unannotated).tocsr()
        not_annotated = self.disease_closure[rows].copy()
        not_annotated.data[:] = 1.0
        cohort = self.cohort[rows]
        size = np.bincount(cohort, minlength=len(self.cohort_names))
        average = sp.csr_matrix((1.0 / size[cohort], (cohort, np.arange(len(rows)))),
                                shape=(len(self.cohort_names), len(rows)))
        n_cohorts = int((size > 0).sum())
        reported = np.asarray((average @ self.closure[rows]).sum(axis=0)).ravel()
        reported_unannotated = np.asarray((average @ unannotated).sum(axis=0)).ravel()
        cohorts_unannotated = n_cohorts - np.asarray((average @ not_annotated).sum(axis=0)).ravel()
        kb_share = np.exp(-self.bench.features.ic)
        rate = (reported + CASE_IC_PRIOR * kb_share) / (n_cohorts + CASE_IC_PRIOR)
        rate_unannotated = (reported_unannotated + FLOOR_PRIOR * floor * rate) / (cohorts_unannotated + FLOOR_PRIOR)
        return np.log(np.clip(rate_unannotated / rate, floor, 1.0) / floor)


def floor_evidence(bench: Bench, log_ratio: np.ndarray, observed: sp.csr_matrix) -> np.ndarray:
    """cases x diseases: sum over the case's observed terms the knowledge base leaves at the LR floor for the
    disease of log(learned floor / floor)."""
    terms = np.unique(observed.indices)
    explained = bench.ranker.term_rows(observed, observed[:0]).observed.copy()  # rows: ``terms``
    explained.data[:] = 1.0
    weighted = observed[:, terms] @ sp.diags(log_ratio[terms])
    return (np.asarray(weighted.sum(axis=1)) - (weighted @ explained).toarray())


def with_background(ranker: Ranker, background: np.ndarray) -> Ranker:
    """The LR ranker with another background bg(t) (its LR rows divided by it)."""
    out = copy.copy(ranker)
    out.background = background
    inverse = sp.diags(1.0 / background)
    out.implied_lr = (inverse @ ranker.implied).tocsr()
    out.direct_lr = (inverse @ ranker.direct).tocsr()
    out.row_max = np.asarray(out.implied_lr.max(axis=1).todense()).ravel()
    return out


def association_evidence(bench: Bench, association: sp.csr_matrix, observed: sp.csr_matrix,
                         unexplained_only: bool) -> np.ndarray:
    """cases x diseases: sum over the case's observed terms q of the best learned association of q with any
    annotation of the disease (max over a in its closure); with ``unexplained_only``, only terms the knowledge
    base leaves at the LR floor for that disease (what the hierarchy does not already explain)."""
    closure = bench.features.closure.tocsr()
    terms = np.unique(observed.indices)
    learned = association[terms].tocoo()
    n_dis = closure.shape[1]
    diseases_of = closure[learned.col].tocoo()  # per learned entry, the diseases carrying its annotation
    best = np.zeros(len(terms) * n_dis, dtype=np.float32)
    np.maximum.at(best, learned.row[diseases_of.row].astype(np.int64) * n_dis + diseases_of.col,
                  learned.data[diseases_of.row].astype(np.float32))
    best = best.reshape(len(terms), n_dis)
    if unexplained_only:
        explained = bench.ranker.term_rows(observed, observed[:0]).observed  # rows: ``terms``, sorted
        best[explained.nonzero()] = 0.0
    return np.asarray((observed[:, terms] @ best))


def first_stage() -> None:
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    patients = Patients(bench)
    ranker, truth = bench.ranker, bench.columns

    def background(mix):
        def scores(k, test):
            patient_bg, _ = patients.case_frequency(np.flatnonzero(bench.folds != k))
            kb_bg = ranker.background
            mixed = np.maximum(kb_bg, patient_bg) if mix == "max" else mix * patient_bg + (1 - mix) * kb_bg
            fold_ranker = with_background(ranker, np.maximum(mixed, kb_bg.min()))
            return fold_ranker.selector_scores(patients.observed[test], patients.excluded[test])[0]
        return scores

    def association(weight, unexplained_only):
        def scores(k, test):
            learned = patients.association(np.flatnonzero(bench.folds != k)).tocsr()
            evidence = association_evidence(bench, learned, patients.observed[test], unexplained_only)
            return ranker.selector_scores(patients.observed[test], patients.excluded[test])[0] + weight * evidence
        return scores

    variants = {"knowledge base (shipped)": lambda k, test: ranker.selector_scores(
                    patients.observed[test], patients.excluded[test])[0],
                "background max(kb, patients)": background("max"),
                "background mean of kb and patients": background(0.5),
                "background patients 0.8 + kb 0.2": background(0.8)}
    def learned_floor(with_association):
        def scores(k, test):
            learn = np.flatnonzero(bench.folds != k)
            observed = patients.observed[test]
            out = ranker.selector_scores(observed, patients.excluded[test])[0]
            out += floor_evidence(bench, patients.learned_floor(learn, ranker.params.floor), observed)
            if with_association:
                out += association_evidence(bench, patients.association(learn).tocsr(), observed, True)
            return out
        return scores

    if len(sys.argv) > 2 and sys.argv[2] == "floor":  # the third run: a floor learned per term
        variants = {name: variants[name] for name in list(variants)[:1]}
        variants["LR with a floor learned per term from the patients"] = learned_floor(False)
        variants["that + 1 x learned association (floor terms)"] = learned_floor(True)
        weights, which = (), ()
    elif len(sys.argv) > 2 and sys.argv[2] == "weights":  # the second run: larger weights, floor terms only
        variants = {name: variants[name] for name in list(variants)[:1]}
        weights, which = ASSOCIATION_WEIGHTS, (True,)
    else:
        weights, which = (0.25, 0.5, 1.0), (True, False)
    for weight in weights:
        for unexplained_only in which:
            terms = "terms the KB leaves at the floor" if unexplained_only else "every term"
            variants[f"LR + {weight} x learned association ({terms})"] = association(weight, unexplained_only)
    out, reference = {}, None
    for name, score_fold in variants.items():
        per_fold = {"not_cited_top1": [], "not_cited_top10": [], "not_cited_recall50": [], "all_in_kb_top1": [],
                    "all_in_kb_recall50": []}
        for k in range(5):
            test = np.flatnonzero(bench.folds == k)
            scores = score_fold(k, test)
            t = truth[test]
            own = scores[np.arange(len(t)), np.maximum(t, 0)]
            rank = np.where(t >= 0, (scores >= own[:, None]).sum(axis=1), 0)  # ties count against
            for slice_name, mask in bench.masks.items():
                r = rank[mask[test]]
                per_fold[f"{slice_name}_top1"].append(float(np.mean((r > 0) & (r <= 1))))
                per_fold[f"{slice_name}_recall50"].append(float(np.mean((r > 0) & (r <= 50))))
                if slice_name == "not_cited":
                    per_fold["not_cited_top10"].append(float(np.mean((r > 0) & (r <= 10))))
        values = {m: np.array(v) for m, v in per_fold.items()}
        reference = reference or values
        out[name] = {m: {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4),
                         "paired_difference": round(float((v - reference[m]).mean()), 4),
                         "paired_difference_sd": round(float((v - reference[m]).std(ddof=1)), 4),
                         "per_fold": v.round(4).tolist()} for m, v in values.items()}
        print(name, {m: (x["mean"], x["paired_difference"], x["paired_difference_sd"]) for m, x in out[name].items()},
              flush=True)
    write("learned-first-stage", {
        "what": "LR ranker alone, held-out folds only, ties count against: (a) its background bg(t) learned from the "
                "training folds' patients (mean over training cohorts of the share of cases reporting t or a term "
                "below it), mixed with the knowledge base's; (b) its score plus a weight times the learned "
                "term-to-annotation association (sum over observed terms of the best log lift to any annotation "
                "of the disease), learned from the training folds only.",
        "how": "benchmarks/raredisease_learned.py first-stage", "min_support": MIN_SUPPORT,
        "variants": out, **timing(started, cpu)})


def pair_values(case_rows: sp.csr_matrix, disease_columns: sp.csr_matrix, pair_case: np.ndarray,
                pair_disease: np.ndarray) -> np.ndarray:
    """Per pair, the dot product of its case's row (cases x terms) and its disease's column (terms x diseases)."""
    diseases, column = np.unique(pair_disease, return_inverse=True)
    cases, row = np.unique(pair_case, return_inverse=True)
    product = (case_rows[cases] @ disease_columns[:, diseases]).toarray()
    return product[row, column]


def learned_columns(bench: Bench, patients: Patients, learn_rows: np.ndarray, pair_rows: np.ndarray,
                    groups: tuple[str, ...]) -> list[np.ndarray]:
    """Extra feature columns for the pairs ``pair_rows`` from statistics learned on the cases ``learn_rows``."""
    pairs, features = bench.pairs, bench.features
    case, disease = pairs.case[pair_rows], pairs.disease[pair_rows]
    out = []
    if "case_ic" in groups:
        frequency, n_cohorts = patients.case_frequency(learn_rows)
        kb_share = np.exp(-features.ic)
        share = (n_cohorts * frequency + CASE_IC_PRIOR * kb_share) / (n_cohorts + CASE_IC_PRIOR)
        weight = np.where(features.weight > 0, -np.log(share), 0.0)
        case_weighted = (patients.closure @ sp.diags(weight)).tocsr()
        total = np.asarray(case_weighted.sum(axis=1)).ravel()[case]
        overlap = pair_values(case_weighted, features.closure, case, disease)
        out.append(overlap / np.maximum(total, 1e-9))
        out.append(overlap)
    if "association" in groups:
        association = patients.association(learn_rows)
        learned = (patients.observed @ association).tocsr()  # cases x annotation terms
        total = pair_values(learned, features.closure, case, disease)
        n_obs = np.maximum(np.diff(patients.observed.indptr)[case], 1)
        size = np.asarray(features.closure.sum(axis=0)).ravel()[disease]
        out.append(total / n_obs)
        out.append(total / np.maximum(size, 1.0))
    return out


GROUPS = {"case_ic": ("case_ic",), "association": ("association",), "both": ("case_ic", "association")}


def learned_features() -> None:
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    patients = Patients(bench)
    pairs, settings = bench.pairs, bench.settings
    pair_fold = bench.folds[pairs.case]
    all_rows = np.arange(len(bench.real))
    results, reference = {}, None
    for name, groups in {"reference": (), **GROUPS}.items():
        t0 = cpu_now()
        held_out = np.zeros(len(bench.labels))
        for k in range(5):
            extra = np.zeros((len(pairs.case), 0))
            if groups:
                parts = {}
                for j in range(5):  # fold j's pairs get statistics learned without folds j and k
                    learn = all_rows[(bench.folds != j) & (bench.folds != k)]
                    parts[j] = learned_columns(bench, patients, learn, np.flatnonzero(pair_fold == j), groups)
                learn = all_rows[bench.folds != k]
                parts[k] = learned_columns(bench, patients, learn, np.flatnonzero(pair_fold == k), groups)
                extra = np.zeros((len(pairs.case), len(parts[k])))
                for j, columns in parts.items():
                    extra[pair_fold == j] = np.column_stack(columns)
            x = np.hstack([pairs.features, extra])
            train = pair_fold != k
            trees = train_trees(x[train], bench.labels[train], pairs.case[train], settings)
            held_out[~train] = trees.predict(x[~train])
        ranks = ensemble.reranked_positions(pairs, held_out, bench.columns.tolist())
        figures = bench.fold_figures(ranks)
        reference = reference or figures
        add_paired_differences(figures, reference, ("not_cited_top1", "not_cited_top10", "all_in_kb_top1"))
        figures["cpu_seconds"] = round(cpu_now() - t0, 1)
        results[name] = figures
        print(name, {m: figures[m] for m in SHOWN}, flush=True)
    write("learned-features", {
        "what": "Held-out re-ranker figures with features learned from the training folds' patients (cross-fitted "
                "inside the training folds); mean ± sd over the 5 gene-cohort folds, paired differences from the "
                "reference computed in the same run.",
        "how": "benchmarks/raredisease_learned.py features",
        "min_support": MIN_SUPPORT, "case_ic_prior": CASE_IC_PRIOR, "variants": results, **timing(started, cpu)})


# -- re-ranking over the learned first stage ----------------------------------------------------------------------
NESTED_WEIGHTS = (0.0, 0.5, 1.0, 2.0)  # first-stage association weights the inner folds choose among


def first_stage_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    own = scores[np.arange(len(truth)), np.maximum(truth, 0)]
    return np.where(truth >= 0, (scores >= own[:, None]).sum(axis=1), 0)


def nested_weight(bench: Bench, patients: Patients, k: int) -> tuple[float, dict]:
    """The first-stage association weight that inner grouped folds inside outer fold k's training folds prefer
    (objective: mean of not-cited and all-in-KB MRR of the first stage, the protocol the LR ranker was tuned with)."""
    objective = {w: [] for w in NESTED_WEIGHTS}
    for j in range(5):
        if j == k:
            continue
        rows = np.flatnonzero(bench.folds == j)
        learned = patients.association(np.flatnonzero((bench.folds != j) & (bench.folds != k))).tocsr()
        evidence = association_evidence(bench, learned, patients.observed[rows], True)
        lr = bench.ranker.selector_scores(patients.observed[rows], patients.excluded[rows])[0]
        for w in NESTED_WEIGHTS:
            ranks = first_stage_ranks(lr + w * evidence, bench.columns[rows])
            mrr = [np.mean(np.where(ranks[mask[rows]] > 0, 1.0 / np.maximum(ranks[mask[rows]], 1), 0.0))
                   for mask in bench.masks.values()]
            objective[w].append(float(np.mean(mrr)))
    means = {w: float(np.mean(v)) for w, v in objective.items()}
    return max(means, key=means.get), means


def fold_pairs(bench: Bench, patients: Patients, rows: np.ndarray, learn: np.ndarray | None,
               association_weight: float | None, floor: bool | str):
    """Candidates of the cases ``rows`` by the first stage (LR, plus the learned floor's evidence with ``floor``,
    plus association_weight x the learned association), their 19 features plus the learned evidence, and the
    first-stage scores (for ranks beyond the candidates); statistics are learned from the cases ``learn``.
    ``floor="scores"``: the LR features (lr, its gap, rank, gene-level gap) are computed from the first stage's
    score instead of the knowledge base's LR."""
    observed, excluded = patients.observed[rows], patients.excluded[rows]
    lr = bench.ranker.selector_scores(observed, excluded)[0]
    combined, extra = lr.copy(), []
    n_obs = np.maximum(np.diff(observed.indptr), 1)
    if floor:
        evidence = floor_evidence(bench, patients.learned_floor(learn, bench.ranker.params.floor), observed)
        combined += evidence
        extra.append(evidence)
    if association_weight is not None:
        learned = patients.association(learn).tocsr()
        evidence = association_evidence(bench, learned, observed, True)
        combined += association_weight * evidence
        extra += [evidence, evidence / n_obs[:, None],
                  association_evidence(bench, learned, observed, False) / n_obs[:, None]]
    k = bench.settings.candidates
    best = np.argpartition(combined, combined.shape[1] - k, axis=1)[:, -k:]
    pair_case, pair_disease = np.repeat(np.arange(len(rows)), k), best.ravel()
    usable = (np.diff(observed.indptr) + np.diff(excluded.indptr)) > 0
    keep = usable[pair_case]
    pair_case, pair_disease = pair_case[keep], pair_disease[keep]
    scores = combined if floor == "scores" else lr
    x = bench.features.compute(observed, excluded, scores, pair_case, pair_disease)
    x = np.column_stack([x] + [e[pair_case, pair_disease] for e in extra])
    return rows[pair_case], pair_disease, x, combined, usable


def rerank() -> None:
    """Held-out re-ranker figures with the learned association in the first stage and/or as features."""
    started, cpu = time.time(), cpu_now()
    bench = Bench()
    patients = Patients(bench)
    truth = bench.columns
    variants = {"reference (shipped setting, this harness)": (None, False),
                "association features, LR candidates": (0.0, False),
                "association features, first-stage weight chosen by inner folds": ("nested", False),
                "association features, first-stage weight 1 (the LR-alone peak, chosen on held-out folds)":
                    (1.0, False),
                "learned floor in the first stage, its evidence as a feature": (None, True),
                "learned floor and association (weight 1) in the first stage, both as features": (1.0, True),
                "learned floor in the first stage and in the LR features, its evidence as a feature": (None, "scores"),
                "learned floor and association (weight 1) in the first stage and the LR features, both as features":
                    (1.0, "scores")}
    if len(sys.argv) > 2:
        picked = [int(i) for i in sys.argv[2].split(",")]
        variants = {name: v for i, (name, v) in enumerate(variants.items()) if i in picked}
    # a third argument: another seed of the booster only (bagging and feature fraction), the folds unchanged
    booster_seed = int(sys.argv[3]) if len(sys.argv) > 3 else bench.settings.seed
    booster_settings = replace(bench.settings, seed=booster_seed)
    results, reference, chosen = {}, None, {}
    for name, (weight_rule, floor) in variants.items():
        t0 = cpu_now()
        ranks = np.zeros(len(truth), dtype=np.int64)
        recall = np.zeros(len(truth), dtype=bool)
        for k in range(5):
            if weight_rule == "nested":
                weight, means = nested_weight(bench, patients, k)
                chosen[k] = {"weight": weight, "inner_objective": means}
            else:
                weight = weight_rule
            parts = []
            for j in range(5):
                rows = np.flatnonzero(bench.folds == j)
                learn = np.flatnonzero((bench.folds != j) & (bench.folds != k))
                parts.append(fold_pairs(bench, patients, rows, learn, weight, floor))
            case = np.concatenate([p[0] for p in parts])
            disease = np.concatenate([p[1] for p in parts])
            x = np.vstack([p[2] for p in parts])
            labels = np.array(
                [truth[c] == d for c, d in zip(case.tolist(), disease.tolist())], dtype=np.float64)
            train = bench.folds[case] != k
            trees = train_trees(x[train], labels[train], case[train], booster_settings)
            test_rows, test_parts = np.flatnonzero(bench.folds == k), parts[k]
            local = np.searchsorted(test_rows, test_parts[0])
            pairs = ensemble.Pairs(local, test_parts[1], test_parts[2], test_parts[3], test_parts[4],
                                   np.zeros(len(test_rows)))
            fold_ranks = ensemble.reranked_positions(pairs, trees.predict(x[~train]), truth[test_rows].tolist())
            ranks[test_rows] = fold_ranks
            recall[test_rows] = first_stage_ranks(test_parts[3], truth[test_rows]) <= bench.settings.candidates
        figures = bench.fold_figures(ranks)
        for slice_name, mask in bench.masks.items():
            per_fold = [float(recall[mask & (bench.folds == f) & (truth >= 0)].mean()) for f in range(5)]
            figures[f"{slice_name}_recall50_per_fold"] = np.round(per_fold, 4).tolist()
            figures[f"{slice_name}_recall50"] = round(float(np.mean(per_fold)), 4)
        reference = reference or figures
        add_paired_differences(figures, reference,
                               ("not_cited_top1", "not_cited_top10", "all_in_kb_top1", "not_cited_recall50"))
        figures["cpu_seconds"] = round(cpu_now() - t0, 1)
        results[name] = figures
        print(name, {m: figures[m] for m in SHOWN + ("not_cited_recall50", "not_cited_recall50_paired_difference")},
              flush=True)
    write("learned-rerank", {
        "what": "Held-out re-ranker (shipped LambdaRank settings) with the learned term-to-annotation association "
                "(floor terms only) as three extra features and/or added to the first stage (LR + weight x "
                "association picks the 50 candidates); every statistic a fold's pairs use is learned without that "
                "fold and without the outer test fold; mean ± sd over the 5 gene-cohort folds, paired differences "
                "from the reference of this run.",
        "how": "benchmarks/raredisease_learned.py rerank " + " ".join(sys.argv[2:]), "min_support": MIN_SUPPORT,
        "floor_prior": FLOOR_PRIOR, "case_ic_prior": CASE_IC_PRIOR, "booster_seed": booster_seed,
        "nested_choices": chosen, "variants": results, **timing(started, cpu)})


def train_trees(x, labels, pair_case, settings):
    """The ensemble's own training over any number of feature columns (the extra ones named extra_<i>)."""
    names = FEATURES + tuple(f"extra_{i}" for i in range(x.shape[1] - len(FEATURES)))
    ensemble.FEATURES = names  # the booster's feature names
    try:
        return ensemble.train_trees(x, labels, pair_case, settings)
    finally:
        ensemble.FEATURES = FEATURES


def add_paired_differences(figures: dict, reference: dict, metrics: tuple[str, ...]) -> None:
    """Mean and sd of the per-fold differences from the reference, for each metric."""
    for metric in metrics:
        diff = np.array(figures[f"{metric}_per_fold"]) - np.array(reference[f"{metric}_per_fold"])
        figures[f"{metric}_paired_difference"] = round(float(diff.mean()), 4)
        figures[f"{metric}_paired_difference_sd"] = round(float(diff.std(ddof=1)), 4)


if __name__ == "__main__":
    {"first-stage": first_stage, "features": learned_features, "rerank": rerank}[sys.argv[1]]()
