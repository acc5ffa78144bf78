"""Learning-to-rank ensemble over the likelihood-ratio ranker: candidates, training, calibration, ranking.

The likelihood-ratio :class:`~mercia.raredisease.ranker.Ranker` scores every disease; its ``candidates`` best
are re-ranked by a LightGBM LambdaRank model (Burges, "From RankNet to LambdaRank to LambdaMART", MSR-TR-2010-82)
over the features of :mod:`mercia.raredisease.features` (ranking evaluates the trees with
:mod:`mercia.raredisease.trees`: exact, and without importing LightGBM). Scores become probabilities by
temperature scaling with a "none of these" logit (Guo et al., ICML 2017), fitted on held-out gene cohorts only.

Evaluation and training use grouped folds: all cases of a gene cohort fall in one fold, so a model is never
tested on a cohort it was trained on — which is how a new patient in clinic looks to the ranker.

The shipped model (``models/ensemble.json``: the LightGBM text model plus calibration and provenance) is made by

    python -m mercia.cli raredisease train-ensemble --cases ../shared/data/phenopackets/dev_cases.jsonl

which is deterministic for a seed (one thread, LightGBM ``deterministic``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mercia.raredisease.features import FEATURES, PairFeatures
from mercia.raredisease.ontology import UnknownTermError
from mercia.raredisease.ranker import Case, Ranker, TermEvidence, TermRows
from mercia.raredisease.trees import TreeEnsemble

MODEL_FILE = Path(__file__).parent / "models" / "ensemble.json"
LR_COLUMN = FEATURES.index("lr")
SEED = 20250116


class EmptyPhenotypeError(ValueError):
    """A case with no observed or excluded HPO term: there is nothing to rank on."""


@dataclass(frozen=True)
class EnsembleSettings:
    candidates: int = 50  # the LR ranker's best diseases that the model re-ranks
    chunk: int = 400  # cases per batch of sparse products (bounds memory)
    folds: int = 5
    num_leaves: int = 15
    learning_rate: float = 0.05
    rounds: int = 300
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.8
    seed: int = SEED
    sparse_information: float = 6.0  # below this summed IC (nats) of the observed terms, "too sparse to decide"


def grouped_folds(groups: list[str], k: int, seed: int = SEED) -> np.ndarray:
    """Fold (0..k-1) of each case such that all cases of a group share one fold; groups are dealt largest
    first to the fold with fewest cases so far (ties between equal groups broken by a seeded shuffle)."""
    names, inverse, sizes = np.unique(np.asarray(groups, dtype=str), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(len(names), dtype=np.int64)
    for g in order:
        fold_of_group[g] = int(np.argmin(load))
        load[fold_of_group[g]] += sizes[g]
    return fold_of_group[inverse]


@dataclass
class Pairs:
    """Candidate (case, disease) pairs of a batch: the LR ranker's ``candidates`` best per usable case."""

    case: np.ndarray  # row in the batch
    disease: np.ndarray  # candidate column of the ranker
    features: np.ndarray
    lr_scores: np.ndarray | None  # cases x diseases, natural-log LR (for the order beyond the candidates), if kept
    usable: np.ndarray
    information: np.ndarray  # summed IC of each case's observed terms


@dataclass
class CaseTerms:
    """Cases' resolved terms as (cases x terms) 0/1 selectors, and the likelihood-ratio rows of every term they
    use: made once per batch, so a term that many chunks of cases share has its row built once (it was a sixth of
    ranking); kept to explain the diseases shown."""

    observed: sp.csr_matrix
    excluded: sp.csr_matrix
    rows: TermRows

    def chunk(self, start: int, stop: int) -> CaseTerms:
        return CaseTerms(self.observed[start:stop], self.excluded[start:stop], self.rows)


def case_terms(ranker: Ranker, cases: list[Case], strict: bool = False) -> CaseTerms:
    observed, excluded = ranker.selectors(cases, strict)
    return CaseTerms(observed, excluded, ranker.term_rows(observed, excluded))


def chunk_pairs(features: PairFeatures, terms: CaseTerms, settings: EnsembleSettings,
                extra: dict[int, list[int]] | None = None, keep_scores: bool = True) -> Pairs:
    """Features of the candidates of one chunk of cases (at most ``settings.chunk``, which bounds memory);
    ``extra`` adds given diseases to a case's candidates (an explanation needs the score of one disease for a
    changed case).  Without ``keep_scores`` the cases x diseases LR matrix is dropped (ranking needs only the
    candidates' LR, which is the ``lr`` feature; evaluation needs the rest)."""
    observed, excluded = terms.observed, terms.excluded
    scores, usable = features.ranker.selector_scores(observed, excluded, terms.rows)
    k = min(settings.candidates, scores.shape[1])
    best = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    pair_case = np.repeat(np.arange(observed.shape[0]), k)
    pair_dis = best.ravel()
    more = [(i, d) for i, ds in (extra or {}).items() for d in ds]
    if more:
        pair_case = np.r_[pair_case, [m[0] for m in more]]
        pair_dis = np.r_[pair_dis, [m[1] for m in more]]
        unique = np.unique(pair_case.astype(np.int64) * scores.shape[1] + pair_dis)
        pair_case, pair_dis = unique // scores.shape[1], unique % scores.shape[1]
    keep = usable[pair_case]
    pair_case, pair_dis = pair_case[keep], pair_dis[keep]
    return Pairs(pair_case, pair_dis, features.compute(observed, excluded, scores, pair_case, pair_dis),
                 scores if keep_scores else None, usable, observed @ features.ic)


def candidate_pairs(features: PairFeatures, cases: list[Case], settings: EnsembleSettings,
                    strict: bool = False, extra: dict[int, list[int]] | None = None,
                    keep_scores: bool = True) -> Pairs:
    """:func:`chunk_pairs` over any number of cases (``extra`` keyed by position in ``cases``)."""
    terms = case_terms(features.ranker, cases, strict)
    parts = []
    for start in range(0, len(cases), settings.chunk):
        stop = min(start + settings.chunk, len(cases))
        mine = {i - start: ds for i, ds in (extra or {}).items() if start <= i < stop}
        parts.append(chunk_pairs(features, terms.chunk(start, stop), settings, mine, keep_scores))
        parts[-1].case += start
    return Pairs(np.concatenate([p.case for p in parts]), np.concatenate([p.disease for p in parts]),
                 np.vstack([p.features for p in parts]),
                 np.vstack([p.lr_scores for p in parts]) if keep_scores else None,
                 np.concatenate([p.usable for p in parts]), np.concatenate([p.information for p in parts]))


def _booster_params(settings: EnsembleSettings) -> dict:
    return {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [1, 10], "lambdarank_truncation_level": 20,
        "num_leaves": settings.num_leaves, "learning_rate": settings.learning_rate,
        "min_data_in_leaf": settings.min_data_in_leaf, "feature_fraction": settings.feature_fraction,
        "bagging_seed": settings.seed, "feature_fraction_seed": settings.seed, "seed": settings.seed,
        "deterministic": True, "num_threads": 1, "force_row_wise": True, "verbose": -1,
    }


def train_trees(x: np.ndarray, labels: np.ndarray, pair_case: np.ndarray, settings: EnsembleSettings
                  ) -> TreeEnsemble:
    """LambdaRank on the groups (cases) that have their true disease among the candidates."""
    import lightgbm

    positive = np.bincount(pair_case, weights=labels, minlength=int(pair_case.max()) + 1) > 0
    keep = positive[pair_case]
    order = np.argsort(pair_case[keep], kind="stable")
    cases = pair_case[keep][order]
    _, sizes = np.unique(cases, return_counts=True)
    data = lightgbm.Dataset(x[keep][order], labels[keep][order], group=sizes, feature_name=list(FEATURES),
                            free_raw_data=True)
    booster = lightgbm.train(_booster_params(settings), data, num_boost_round=settings.rounds)
    return TreeEnsemble(booster.model_to_string())


def labels_for(pairs: Pairs, ranker: Ranker, truths: list[list[str]]) -> np.ndarray:
    """1 for a pair whose disease is one of the case's diagnoses, else 0."""
    column = {str(ranker.kb.disease_ids[d]): j for j, d in enumerate(ranker.diseases.tolist())}
    truth_columns = [{column[t] for t in ts if t in column} for ts in truths]
    return np.array([d in truth_columns[c] for c, d in zip(pairs.case.tolist(), pairs.disease.tolist())],
                    dtype=np.float64)


def reranked_positions(pairs: Pairs, model_scores: np.ndarray, columns: list[int]) -> np.ndarray:
    """1-based rank of one disease column per case after re-ranking (0 for none or an unusable case): the
    candidates by model score, then the rest by LR score; ties count against (pessimistic)."""
    ranks = np.zeros(len(columns), dtype=np.int64)
    starts = np.searchsorted(pairs.case, np.arange(len(columns) + 1))
    for i, column in enumerate(columns):
        if column < 0 or not pairs.usable[i]:
            continue
        a, b = starts[i], starts[i + 1]
        here = pairs.disease[a:b]
        where = np.flatnonzero(here == column)
        if len(where):
            mine = model_scores[a:b][where[0]]
            ranks[i] = int((model_scores[a:b] >= mine).sum())
        else:
            row = pairs.lr_scores[i]
            ranks[i] = (b - a) + int((row >= row[column]).sum() - (row[here] >= row[column]).sum())
    return ranks


# -- calibration -----------------------------------------------------------------------------------------------
def fit_calibration(pairs: Pairs, model_scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Temperature and "none of these" logit maximising the held-out likelihood of each case's true disease
    (a case whose disease is not a candidate, or not in the knowledge base, counts as "none")."""
    cases = np.unique(pairs.case)

    def loss(theta):
        temperature, none = math.exp(theta[0]), theta[1]
        logits = model_scores / temperature
        norm = _group_logsumexp(pairs.case, logits, none, len(pairs.usable))
        hit = np.bincount(pairs.case, weights=labels * logits, minlength=len(pairs.usable))
        has = np.bincount(pairs.case, weights=labels, minlength=len(pairs.usable)) > 0
        chosen = np.where(has, hit, none)
        return float(-(chosen[cases] - norm[cases]).mean())

    from scipy.optimize import minimize  # only training calibrates; ranking should not pay for the import

    result = minimize(loss, x0=np.array([0.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
    return float(math.exp(result.x[0])), float(result.x[1])


def _group_logsumexp(group: np.ndarray, logits: np.ndarray, extra: float, n: int) -> np.ndarray:
    peak = np.full(n, extra)
    np.maximum.at(peak, group, logits)
    total = np.exp(extra - peak) + np.bincount(group, weights=np.exp(logits - peak[group]), minlength=n)
    return np.log(total) + peak


def probabilities(pairs: Pairs, model_scores: np.ndarray, temperature: float, none: float) -> np.ndarray:
    logits = model_scores / temperature
    norm = _group_logsumexp(pairs.case, logits, none, len(pairs.usable))
    return np.exp(logits - norm[pairs.case])


# -- the shipped model -----------------------------------------------------------------------------------------
@dataclass
class EnsembleModel:
    trees: TreeEnsemble  # the trained LightGBM model
    temperature: float
    none_logit: float
    settings: EnsembleSettings
    provenance: dict = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.trees.predict(x)

    def save(self, path: Path = MODEL_FILE) -> None:
        document = {"format": 1, "features": list(FEATURES), "settings": asdict(self.settings),
                    "temperature": self.temperature, "none_logit": self.none_logit, "provenance": self.provenance,
                    "lightgbm_model": self.trees.text}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> EnsembleModel:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no trained ensemble; make it with "
                                    "`python -m mercia.cli raredisease train-ensemble --cases dev_cases.jsonl`")
        document = json.loads(Path(path).read_text())
        if document["features"] != list(FEATURES):
            raise ValueError(f"{path}: trained on features {document['features']}, this code computes {FEATURES}; "
                             "retrain with `mercia raredisease train-ensemble`")
        return cls(TreeEnsemble(document["lightgbm_model"]), document["temperature"], document["none_logit"],
                   EnsembleSettings(**document["settings"]), document["provenance"])


def train(ranker: Ranker, cases: list[dict], settings: EnsembleSettings = EnsembleSettings(),
          features: PairFeatures | None = None, final: bool = True) -> tuple[EnsembleModel | None, dict]:
    """Cross-validate by gene cohort (out-of-fold scores give the figures and the calibration), then (``final``)
    fit the booster on every case. ``cases`` are dev_cases.jsonl rows (observed, excluded, diseases, cohort)."""
    features = features or PairFeatures(ranker)
    pairs = candidate_pairs(features, [Case(c["observed"], c["excluded"]) for c in cases], settings)
    labels = labels_for(pairs, ranker, [c["diseases"] for c in cases])
    folds = grouped_folds([c["cohort"] for c in cases], settings.folds, settings.seed)
    held_out = np.zeros(len(labels))
    for k in range(settings.folds):
        train_rows = folds[pairs.case] != k
        trees = train_trees(pairs.features[train_rows], labels[train_rows], pairs.case[train_rows], settings)
        held_out[~train_rows] = trees.predict(pairs.features[~train_rows])
    temperature, none = fit_calibration(pairs, held_out, labels)
    info = {"pairs": pairs, "labels": labels, "held_out_scores": held_out, "folds": folds}
    if not final:
        return None, info
    trees = train_trees(pairs.features, labels, pairs.case, settings)
    digest = hashlib.sha256("\n".join(sorted(c["id"] for c in cases)).encode()).hexdigest()[:16]
    provenance = {"knowledge_base": ranker.kb.version, "cases": len(cases), "case_ids_sha256_16": digest,
                  "folds": settings.folds, "calibrated_on": "out-of-fold scores (grouped by gene cohort)"}
    model = EnsembleModel(trees, temperature, none, settings, provenance)
    return model, info


# -- ranking ---------------------------------------------------------------------------------------------------
@dataclass
class RankedDisease:
    rank: int
    disease_id: str
    label: str
    score: float  # the model's score (relative: compare within one case)
    probability: float  # calibrated on held-out gene cohorts
    lr_score: float  # log10 LR of the likelihood-ratio model
    genes: list[str]
    supporting: list[dict] | None = None  # terms whose removal lowers the score (None: not explained)
    contradicting: list[dict] | None = None  # terms whose removal raises it
    evidence: list[TermEvidence] = field(default_factory=list)  # the LR model's per-term evidence
    term_lrs: dict | None = None  # batch explanation: term (excluded ones as "not HP:...") -> LR, and "unreported"

    def to_dict(self, explain: bool = False) -> dict:
        out = {"rank": self.rank, "disease_id": self.disease_id, "label": self.label,
               "score": round(self.score, 4), "probability": round(self.probability, 4),
               "lr_score": round(self.lr_score, 4), "genes": self.genes}
        if self.supporting is not None:
            out |= {"supporting": self.supporting, "contradicting": self.contradicting}
        if self.term_lrs is not None:
            out["term_lrs"] = self.term_lrs
        if explain:
            out["evidence"] = [asdict(e) for e in self.evidence]
        return out


@dataclass
class Ranking:
    candidates: list[RankedDisease]
    too_sparse: bool  # the phenotype carries too little information to tell diseases apart
    information: float  # summed IC (nats) of the observed terms

    def to_dict(self, explain: bool = False) -> dict:
        return {"too_sparse_to_decide": self.too_sparse, "information_nats": round(self.information, 2),
                "ranking": [c.to_dict(explain) for c in self.candidates]}


class EnsembleRanker:
    """Re-ranks the LR ranker's candidates with the trained model; build once, reuse for many cases."""

    def __init__(self, ranker: Ranker | None = None, model: EnsembleModel | None = None):
        self.ranker = ranker or Ranker()
        self.model = model or EnsembleModel.load()
        self.features = PairFeatures(self.ranker)
        self.kb = self.ranker.kb
        self.disease_labels = self.kb.disease_ids.astype(str).tolist(), self.kb.disease_names.astype(str).tolist()
        ids = self.kb.ontology.ids.astype(str).tolist()
        self.term_labels = np.array(ids + [f"not {t}" for t in ids], dtype=object)  # observed, then excluded

    def scores(self, cases: list[Case], strict: bool = False, extra=None) -> tuple[Pairs, np.ndarray]:
        pairs = candidate_pairs(self.features, cases, self.model.settings, strict, extra, keep_scores=False)
        return pairs, (self.model.predict(pairs.features) if len(pairs.case) else np.zeros(0))

    def rank(self, case: Case, top: int = 10, explain: bool = True) -> Ranking:
        if not case.observed and not case.excluded:
            raise EmptyPhenotypeError("the case has no observed or excluded HPO term: nothing to rank on")
        problems = []
        for status, ids in (("observed", case.observed), ("excluded", case.excluded)):
            for term in ids:
                try:
                    self.kb.ontology.resolve(term, warn=False)
                except UnknownTermError as exc:
                    problems.append(f"{status} term {exc}")
        if problems:
            raise UnknownTermError("; ".join(problems))
        ranking = self.rank_many([case], top=top, strict=True)[0]
        if not ranking.candidates:
            raise EmptyPhenotypeError("none of the case's HPO terms is usable")
        if explain:
            self._explain(case, ranking)
        return ranking

    def rank_many(self, cases: list[Case], top: int = 10, strict: bool = False,
                  term_lrs: bool = False) -> list[Ranking]:
        """Rankings of many cases, a chunk at a time; ``term_lrs`` adds each shown disease's per-term
        likelihood ratios (vectorised, so batches keep their speed; :meth:`rank` explains one case fully)."""
        out = []
        terms = case_terms(self.ranker, cases, strict)
        for start in range(0, len(cases), self.model.settings.chunk):
            stop = min(start + self.model.settings.chunk, len(cases))
            chunk = terms.chunk(start, stop)
            pairs = chunk_pairs(self.features, chunk, self.model.settings, keep_scores=False)
            scores = self.model.predict(pairs.features) if len(pairs.case) else np.zeros(0)
            out.extend(self._rankings(cases[start:stop], pairs, scores, top, chunk if term_lrs else None))
        return out

    def _rankings(self, cases: list[Case], pairs: Pairs, scores: np.ndarray, top: int,
                  terms: CaseTerms | None) -> list[Ranking]:
        probability = probabilities(pairs, scores, self.model.temperature, self.model.none_logit)
        order = np.lexsort((pairs.disease, -scores, pairs.case))  # per case: best first, ties by column
        starts = np.searchsorted(pairs.case[order], np.arange(len(cases) + 1))
        shown = []
        for i, case in enumerate(cases):
            mine = order[starts[i]:starts[i + 1]]
            if case.genes:
                mine = mine[self.ranker.gene_mask(case.genes)[pairs.disease[mine]]]
            shown.append(mine[:top])
        picked = np.concatenate(shown)
        diseases = self.ranker.diseases[pairs.disease[picked]].tolist()
        score, chance = scores[picked].tolist(), probability[picked].tolist()
        lr = (pairs.features[picked, LR_COLUMN] / np.log(10)).tolist()
        lrs = self._term_lrs(pairs, picked, terms) if terms is not None else [None] * len(picked)
        ids, names = self.disease_labels
        out, n = [], 0
        for i, picks in enumerate(shown):
            candidates = []
            for rank in range(1, len(picks) + 1):
                d = diseases[n]
                candidates.append(RankedDisease(rank, ids[d], names[d], score[n], chance[n], lr[n],
                                                self.kb.genes_of(d), term_lrs=lrs[n]))
                n += 1
            information = float(pairs.information[i])
            out.append(Ranking(candidates, information < self.model.settings.sparse_information, information))
        return out

    def _term_lrs(self, pairs: Pairs, picked: np.ndarray, terms: CaseTerms) -> list[dict]:
        """Per picked pair: each observed and excluded term's LR under the likelihood-ratio model, and the
        unreported features' share; they multiply to the pair's LR (10 ** lr_score)."""
        owner, term, log_lr = self.ranker.term_log_lrs(terms.observed, terms.excluded, terms.rows,
                                                       pairs.case[picked], pairs.disease[picked])
        order = np.argsort(owner, kind="stable")
        owner, term, log_lr = owner[order], term[order], log_lr[order]
        unreported = pairs.features[picked, LR_COLUMN] - np.bincount(owner, log_lr, minlength=len(picked))
        labels = self.term_labels[np.where(term < 0, len(self.kb.ontology) - 1 - term, term)].tolist()
        values = np.exp(log_lr).round(4).tolist()
        bounds = np.searchsorted(owner, np.arange(len(picked) + 1)).tolist()
        factors = np.exp(unreported).tolist()
        return [dict(zip(labels[a:b], values[a:b]), unreported=round(factor, 6))
                for a, b, factor in zip(bounds[:-1], bounds[1:], factors)]

    def _explain(self, case: Case, ranking: Ranking) -> None:
        """Each observed/excluded term's effect on the score of each listed disease: the score of the case
        without that term, minus the score with it (leave-one-out), plus the LR model's evidence."""
        observed, excluded = self.ranker.resolve_case(case)
        ontology = self.kb.ontology
        terms = [("observed", t) for t in observed] + [("excluded", t) for t in excluded]
        columns = [int(self.ranker.disease_position[self.kb.disease_index[c.disease_id]]) for c in ranking.candidates]
        variants = []
        for status, t in terms:
            kept_obs = [str(ontology.ids[o]) for o in observed if not (status == "observed" and o == t)]
            kept_exc = [str(ontology.ids[x]) for x in excluded if not (status == "excluded" and x == t)]
            variants.append(Case(kept_obs, kept_exc))
        base_pairs, base_scores = self.scores([Case([str(ontology.ids[o]) for o in observed],
                                                    [str(ontology.ids[x]) for x in excluded])],
                                              strict=True, extra={0: columns})
        base = dict(zip(base_pairs.disease.tolist(), base_scores.tolist()))
        if variants:
            pairs, scores = self.scores(variants, strict=True, extra={i: columns for i in range(len(variants))})
            without = {(int(c), int(d)): float(s) for c, d, s in zip(pairs.case, pairs.disease, scores)}
        for candidate, column in zip(ranking.candidates, columns):
            candidate.evidence = self.ranker.explain((observed, excluded), column)
            candidate.supporting, candidate.contradicting = [], []
            for i, (status, t) in enumerate(terms):
                if (i, column) not in without:  # the case without this term has nothing left to rank on
                    continue
                effect = base[column] - without[(i, column)]
                entry = {"term": str(ontology.ids[t]), "label": str(ontology.names[t]), "status": status,
                         "effect": round(effect, 4)}
                if effect > 0:
                    candidate.supporting.append(entry)
                elif effect < 0:
                    candidate.contradicting.append(entry)
            candidate.supporting.sort(key=lambda e: -e["effect"])
            candidate.contradicting.sort(key=lambda e: e["effect"])


@lru_cache(maxsize=1)
def default_ensemble() -> EnsembleRanker:
    """The shipped model over the active knowledge base, built once per process."""
    return EnsembleRanker()

