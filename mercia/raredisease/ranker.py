"""Phenotype-driven differential diagnosis: a likelihood-ratio model over sparse term x disease matrices.

The model (in the spirit of LIRICAL, Robinson et al. 2020, AJHG 107:403) scores disease D for a patient with
observed terms Q and excluded terms X as

    log LR(D) = sum_q log max(floor, min(max_lr, LR_obs(q, D))) + sum_x log LR_exc(x, D)
                + sum_{features t of D the report does not cover} log(1 - reporting_rate * P(t|D))

* ``P(t|D)``: the annotated frequency of t in D, or of its most frequent annotated descendant (an annotation
  implies all its ancestors: the true-path rule). Unstated frequencies count as ``default_frequency``.
* ``bg(t)``: the mean of ``P(t|D)`` over the candidate diseases, i.e. how often a random disease shows t.
* ``LR_obs(q, D)`` is the best of three matches: exact or implied (``P(q|D) / bg(q)``); the patient term is
  more specific than an annotation a (``lambda_specific * P(a|D) / bg(a)``); the patient term and an annotation
  share the ancestor a (``lambda_related * P(a|D) / bg(a)``). A term D does not explain falls to ``floor``,
  so unexplained terms cost little (annotations are incomplete); a term D is annotated NOT to have (on it or
  an ancestor) gets ``not_lr``.
* ``LR_exc(x, D) = rho * max(1 - P(x|D), excluded_floor) / (1 - bg(x))`` for the diseases annotated with x,
  ``1 / (1 - bg(x))`` for the others: rho (``excluded_ascertainment``) says that a feature is far more often
  recorded as absent when it belongs to the disease in question (docs/raredisease.md).
* The last sum is the evidence of silence: features of D that the patient's terms neither imply, refine nor
  exclude, each of which would have been reported with probability ``reporting_rate * P(t|D)``.

All disease-independent constants are kept, so the per-term LRs in an explanation multiply to the score.
Ranking is vectorised: per batch, one sparse row per distinct query term is built from the ancestor rows,
and a sparse (cases x terms) @ (terms x diseases) product gives every score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from mercia.raredisease.kb import KnowledgeBase, cached_matrix, default_kb
from mercia.raredisease.ontology import UnknownTermError

TERM_BLOCK = 256  # query terms whose LR rows are built together


@dataclass(frozen=True)
class ModelParameters:
    """Hyper-parameters; the defaults were chosen on the tuning half of the gene cohorts only (docs)."""

    default_frequency: float = 0.8  # P(t|D) when the annotation states no frequency (mostly OMIM synopses)
    frequency_pseudocount: float = 1.0  # k/n frequencies shrink towards 1/2: (k + a) / (n + 2a)
    lambda_specific: float = 0.3  # credit when the patient term is more specific than an annotation
    lambda_related: float = 0.05  # credit when they only share an ancestor
    partial_max_background: float = 0.05  # no "related" credit through ancestors more common than this
    floor: float = 0.05  # LR of an observed term the disease does not explain
    max_lr: float = 100.0  # cap per observed term, so one rare exact match cannot decide alone
    not_lr: float = 0.01  # LR of an observed term the disease is annotated NOT to have
    excluded_floor: float = 0.02  # lower bound of 1 - P(x|D) for an excluded term
    excluded_ascertainment: float = 8.0  # excluded features are checked because they fit the disease
    reporting_rate: float = 0.1  # chance that a present feature of D would be reported by the patient
    min_background: float = 1.0  # bg(t) >= min_background / number of diseases
    sources: tuple[str, ...] = ("OMIM",)


@dataclass
class Case:
    """What the ranker needs from a patient: HPO ids observed and explicitly excluded, candidate genes."""

    observed: list[str]
    excluded: list[str] = field(default_factory=list)
    genes: list[str] = field(default_factory=list)
    id: str = ""


@dataclass
class TermRows:
    """log(LR / floor) of observed terms and log LR_exc + log(1 - bg) of excluded terms (rows: the terms used,
    sorted; columns: candidate diseases)."""

    observed_terms: np.ndarray
    observed: sp.csr_matrix
    excluded_terms: np.ndarray
    excluded: sp.csr_matrix

    # each matrix's entries as sorted keys, to look up (term, disease) pairs by binary search: scipy's own lookup
    # scans whole rows when the pairs are few against the matrix (a batch's rows hold ~10^6 entries); made on
    # first use, as only explanations (term_log_lrs) look pairs up
    @cached_property
    def observed_keys(self) -> np.ndarray:
        return _sorted_entry_keys(self.observed)

    @cached_property
    def excluded_keys(self) -> np.ndarray:
        return _sorted_entry_keys(self.excluded)


@dataclass
class TermEvidence:
    term: str
    label: str
    status: str  # observed | excluded | unreported (the disease's features the patient's report does not cover)
    # observed: exact | implied | more-specific | related | unexplained | contradicted;
    # excluded: disease-feature | not-a-feature; unreported: unreported
    match: str
    disease_term: str | None
    frequency: float | None
    lr: float


@dataclass
class Candidate:
    rank: int
    disease_id: str
    label: str
    score: float  # log10 of the composite likelihood ratio
    posterior: float
    genes: list[str]
    evidence: list[TermEvidence] = field(default_factory=list)

    def to_dict(self, explain: bool = False) -> dict:
        out = {"rank": self.rank, "disease_id": self.disease_id, "label": self.label,
               "score": round(self.score, 4), "posterior": self.posterior, "genes": self.genes}
        if explain:
            out["evidence"] = [asdict(e) for e in self.evidence]
        return out


def _max_by_key(rows, cols, vals, n_cols):
    """Group (row, col) duplicates keeping the largest value; returns unique rows, cols, vals."""
    keys = rows.astype(np.int64) * n_cols + cols
    if not len(keys):
        return keys, keys, np.asarray(vals, dtype=np.float64)
    order = np.argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    keys = keys[starts]
    return keys // n_cols, keys % n_cols, np.maximum.reduceat(vals[order], starts)


class Ranker:
    """Ranks the candidate diseases of a knowledge base for cases; build once, reuse for many cases."""

    def __init__(self, kb: KnowledgeBase | None = None, params: ModelParameters | None = None):
        self.kb = kb or default_kb()
        self.params = params or ModelParameters()
        p = self.params
        ontology = self.kb.ontology
        prefixes = np.char.partition(self.kb.disease_ids.astype(str), ":")[:, 0]
        self.diseases = np.flatnonzero(np.isin(prefixes, list(p.sources))).astype(np.int32)
        position = np.full(len(self.kb.disease_ids), -1, dtype=np.int32)
        position[self.diseases] = np.arange(len(self.diseases))
        self.disease_position = position
        n_terms, n_dis = len(ontology), len(self.diseases)

        keep = position[self.kb.ann_disease] >= 0
        terms = self.kb.ann_term[keep]
        dis = position[self.kb.ann_disease[keep]]
        freq = np.where(np.isnan(self.kb.ann_freq[keep]), p.default_frequency, self.kb.ann_freq[keep])
        # k/n counts from a few patients are shrunk towards 1/2 (rule of succession with a pseudo-count)
        patients = self.kb.ann_patients[keep]
        counted = patients > 0
        freq = freq.astype(np.float64)
        freq[counted] = (freq[counted] * patients[counted] + p.frequency_pseudocount) / (
            patients[counted] + 2 * p.frequency_pseudocount
        )
        self.direct = sp.csr_matrix((freq, (terms, dis)), shape=(n_terms, n_dis))
        # true-path rule: each annotation implies all ancestors, at the largest frequency found below them
        def true_path() -> sp.csr_matrix:
            owner, up_terms = self._expand_ancestors(terms)
            r, c, v = _max_by_key(up_terms, dis[owner], freq[owner], n_dis)
            return sp.csr_matrix((v, (r, c)), shape=(n_terms, n_dis))

        self.implied = cached_matrix(self.kb, "true-path", self.derivation(), true_path, (n_terms, n_dis))
        self.background = np.maximum(np.asarray(self.implied.sum(axis=1)).ravel() / n_dis, p.min_background / n_dis)
        inverse_bg = sp.diags(1.0 / self.background)
        self.implied_lr = (inverse_bg @ self.implied).tocsr()
        self.direct_lr = (inverse_bg @ self.direct).tocsr()
        self.row_max = np.asarray(self.implied_lr.max(axis=1).todense()).ravel()
        keep_not = position[self.kb.not_disease] >= 0
        self.negated = sp.csr_matrix(
            (np.ones(keep_not.sum()), (self.kb.not_term[keep_not], position[self.kb.not_disease[keep_not]])),
            shape=(n_terms, n_dis),
        )
        # features of D the patient neither shows nor excludes: each was reported with prob. reporting_rate * f
        phenotypic = np.asarray(
            ontology.ancestors[:, ontology.index["HP:0000118"]].todense()
        ).ravel()[terms].astype(bool)
        self.unreported = sp.csr_matrix(
            (np.log1p(-p.reporting_rate * np.minimum(freq[phenotypic], 0.999)), (terms[phenotypic], dis[phenotypic])),
            shape=(n_terms, n_dis),
        )
        self.unreported_total = np.asarray(self.unreported.sum(axis=0)).ravel()
        self.descendants = ontology.ancestors.T.tocsr()
        self.proper_ancestors = (ontology.ancestors - sp.identity(n_terms, dtype=np.int8, format="csr")).tocsr()
        self.proper_ancestors.eliminate_zeros()

    def derivation(self) -> dict:
        """The parameters that matrices derived from the annotations depend on (part of their cache key)."""
        p = self.params
        return {"default_frequency": p.default_frequency, "sources": p.sources,
                "frequency_pseudocount": p.frequency_pseudocount}

    # -- query preparation -------------------------------------------------------------------------------------
    def resolve_case(self, case: Case, strict: bool = True) -> tuple[list[int], list[int]]:
        """Term indices in the patient's order: observed reduced to the most specific, excluded without those an
        observed term implies (a contradiction).

        ``strict`` raises on an unknown id (and warns on a mapped obsolete one); otherwise such ids are skipped
        silently, which is what batch ranking of cases coded with a newer HPO release needs.
        """
        ontology = self.kb.ontology
        observed = ontology.most_specific(self._indices(case.observed, strict))
        implied = set()
        for q in observed:
            implied.update(ontology.ancestors_of(q).tolist())
        excluded = [x for x in dict.fromkeys(self._indices(case.excluded, strict)) if x not in implied]
        return observed, excluded

    def _indices(self, ids: list[str], strict: bool) -> list[int]:
        ontology = self.kb.ontology
        if strict:
            return [ontology.resolve(t) for t in ids]
        index, out = ontology.index, []
        for t in ids:
            i = index.get(t)  # current ids (nearly all) need no validation; others go through resolve
            if i is None:
                try:
                    i = ontology.resolve(t, warn=False)
                except UnknownTermError:
                    continue
            out.append(i)
        return out

    def selectors(self, cases: list[Case], strict: bool) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """resolve_case for a batch, as (cases x terms) 0/1 matrices of observed and excluded terms."""
        n_terms = len(self.kb.ontology)
        observed = _selector([self._indices(c.observed, strict) for c in cases], n_terms)
        excluded = _selector([self._indices(c.excluded, strict) for c in cases], n_terms)
        observed.data[:] = 1.0  # repeated ids were summed
        excluded.data[:] = 1.0
        # drop observed terms that are ancestors of another observed term, and contradicted excluded terms
        redundant = observed.multiply((observed @ self.proper_ancestors) > 0)
        observed = (observed - redundant).tocsr()
        observed.eliminate_zeros()
        contradicted = excluded.multiply((observed @ self.kb.ontology.ancestors) > 0)
        excluded = (excluded - contradicted).tocsr()
        excluded.eliminate_zeros()
        return observed, excluded

    def _observed_rows(self, terms: np.ndarray) -> sp.csr_matrix:
        """log(LR_obs / floor) for each query term (rows) and disease, kept where it differs from the floor."""
        p = self.params
        n_dis = len(self.diseases)
        owner, ancestors = self._expand_ancestors(terms)
        is_self = ancestors == terms[owner]
        can_beat_floor = ~is_self & (self.row_max[ancestors] * max(p.lambda_specific, p.lambda_related) > p.floor)
        related = can_beat_floor & (self.background[ancestors] <= p.partial_max_background)
        parts = []
        for matrix, mask, weight in (
            (self.implied_lr, is_self, 1.0),
            (self.direct_lr, can_beat_floor, p.lambda_specific),
            (self.implied_lr, related, p.lambda_related),
        ):
            rows = matrix[ancestors[mask]].tocoo()
            parts.append((owner[mask][rows.row], rows.col, rows.data * weight))
        r, c, v = (np.concatenate(x) for x in zip(*parts))
        v = np.minimum(v, p.max_lr)
        good = v > p.floor
        r, c, v = _max_by_key(r[good], c[good], np.log(v[good] / p.floor), n_dis)
        positive = sp.csr_matrix((v, (r, c)), shape=(len(terms), n_dis))
        negated = self.negated[ancestors].tocoo()
        if not negated.nnz:
            return positive
        contradicted = sp.csr_matrix(
            (np.ones(negated.nnz), (owner[negated.row], negated.col)), shape=(len(terms), n_dis)
        )
        contradicted.data[:] = 1.0  # duplicates were summed
        return (positive - positive.multiply(contradicted) + contradicted * np.log(p.not_lr / p.floor)).tocsr()

    def _expand_ancestors(self, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``terms``, ancestor) for every ancestor (itself included) of every term."""
        return row_entries(self.kb.ontology.ancestors, terms)

    def _excluded_rows(self, terms: np.ndarray) -> sp.csr_matrix:
        """log LR_exc(x, D) + log(1 - bg(x)), which is 0 for the diseases not annotated with x."""
        p = self.params
        rows = self.implied[terms].tocsr()
        rows.data = np.log(p.excluded_ascertainment * np.maximum(1.0 - rows.data, p.excluded_floor))
        return rows

    # -- ranking -----------------------------------------------------------------------------------------------
    def score_matrix(self, cases: list[Case], strict: bool = True) -> tuple[np.ndarray, list]:
        """Natural-log composite LR of every candidate disease (columns) for every case (rows), and per case
        whether it had any usable term."""
        observed, excluded = self.selectors(cases, strict)  # cases x terms, 0/1
        return self.selector_scores(observed, excluded)

    def term_rows(self, observed: sp.csr_matrix, excluded: sp.csr_matrix) -> TermRows:
        """The per-term log-LR rows (term x disease) of the terms a batch of cases uses."""
        used_observed, used_excluded = np.unique(observed.indices), np.unique(excluded.indices)
        empty = sp.csr_matrix((0, len(self.diseases)))
        # a block of terms at a time: their candidate entries (every ancestor's row) take ~100 kB per term, so
        # blocks keep that memory small and reused instead of fresh pages for the whole batch's terms at once
        blocks = [used_observed[i:i + TERM_BLOCK] for i in range(0, len(used_observed), TERM_BLOCK)]
        return TermRows(used_observed, sp.vstack([self._observed_rows(b) for b in blocks], format="csr")
                        if blocks else empty,
                        used_excluded, self._excluded_rows(used_excluded) if len(used_excluded) else empty)

    def selector_scores(self, observed: sp.csr_matrix, excluded: sp.csr_matrix,
                        rows: TermRows | None = None) -> tuple[np.ndarray, np.ndarray]:
        """score_matrix for cases given as (cases x terms) 0/1 selectors of resolved observed and excluded terms
        (``rows``: their :meth:`term_rows`, when the caller keeps them for explanations)."""
        rows = rows or self.term_rows(observed, excluded)
        # dense: the observed terms' product fills most of the matrix; the other two products are added where
        # they have entries (a dense copy of each would be three more fresh cases x diseases arrays per call)
        if len(rows.observed_terms):
            scores = (observed[:, rows.observed_terms] @ rows.observed).toarray()
        else:
            scores = np.zeros((observed.shape[0], len(self.diseases)))
        flat = scores.reshape(-1)
        if len(rows.excluded_terms):
            _add_entries(flat, excluded[:, rows.excluded_terms] @ rows.excluded)
        if self.params.reporting_rate > 0:
            _add_entries(flat, -(self._covered(observed, excluded) @ self.unreported))
        # the disease-independent parts: the floor of every observed term, 1 / (1 - bg) of every excluded one
        constants = np.asarray(observed.sum(axis=1)).ravel() * np.log(self.params.floor)
        constants -= excluded @ np.log1p(-np.minimum(self.background, 0.999))
        scores += constants[:, None]
        if self.params.reporting_rate > 0:
            scores += self.unreported_total
        usable = (np.diff(observed.indptr) + np.diff(excluded.indptr)) > 0
        return scores, usable

    def term_log_lrs(self, observed: sp.csr_matrix, excluded: sp.csr_matrix, rows: TermRows,
                     pair_case: np.ndarray, pair_disease: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every term of each (case, disease) pair with its natural-log LR for that disease, vectorised: (pair,
        term, log LR) with excluded terms' indices negated minus one (-1 - term).  The same numbers as
        :meth:`explain`; with the unreported features' share they sum to the score."""
        out = []
        for selector, used, matrix, keys, constant, sign in (
                (observed, rows.observed_terms, rows.observed, rows.observed_keys,
                 np.full(len(self.background), np.log(self.params.floor)), 1),
                (excluded, rows.excluded_terms, rows.excluded, rows.excluded_keys,
                 -np.log1p(-np.minimum(self.background, 0.999)), -1)):
            owner, terms = row_entries(selector, pair_case)
            values = _values_at(matrix, keys, np.searchsorted(used, terms), pair_disease[owner])
            out.append((owner, terms if sign > 0 else -1 - terms, values + constant[terms]))
        return tuple(np.concatenate(parts) for parts in zip(*out))

    def _covered(self, observed: sp.csr_matrix, excluded: sp.csr_matrix) -> sp.csr_matrix:
        """Per case, the terms its report accounts for: ancestors and descendants of the observed terms and
        descendants of the excluded ones (their features are neither missing nor unreported)."""
        covered = observed @ self.kb.ontology.ancestors + observed @ self.descendants + excluded @ self.descendants
        covered.data[:] = 1.0
        return covered.tocsr()

    def rank(self, case: Case, top: int = 10, explain: bool = True) -> list[Candidate]:
        return self.rank_many([case], top=top, explain=explain)[0]

    def rank_many(self, cases: list[Case], top: int = 10, explain: bool = False, strict: bool = True):
        """Top candidates per case; diseases are restricted to those of the case's genes when it has genes."""
        scores, usable = self.score_matrix(cases, strict)
        for i, case in enumerate(cases):
            if case.genes:
                scores[i, ~self.gene_mask(case.genes)] = -np.inf
        k = min(top, scores.shape[1])
        best = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
        peak = np.take_along_axis(scores, best, axis=1).max(axis=1, initial=-np.inf)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        shifted = scores - peak[:, None]
        np.exp(shifted, out=shifted)
        log_norm = np.log(shifted.sum(axis=1)) + peak  # log of the total likelihood, for the posterior
        out = []
        for i in range(len(cases)):
            if not usable[i]:
                out.append([])  # no usable term: every disease ties, so there is nothing to rank
                continue
            row = scores[i]
            order = best[i][np.lexsort((best[i], -row[best[i]]))]
            candidates = []
            for rank, j in enumerate(order[np.isfinite(row[order])], 1):
                disease = int(self.diseases[j])
                candidates.append(Candidate(
                    rank=rank,
                    disease_id=str(self.kb.disease_ids[disease]),
                    label=str(self.kb.disease_names[disease]),
                    score=float(row[j] / np.log(10)),
                    posterior=float(np.exp(row[j] - log_norm[i])),
                    genes=self.kb.genes_of(disease),
                    evidence=self.explain(self.resolve_case(cases[i], strict), j) if explain else [],
                ))
            out.append(candidates)
        return out

    def gene_mask(self, genes: list[str]) -> np.ndarray:
        """Candidate diseases associated with any of the genes."""
        mask = np.zeros(len(self.diseases), dtype=bool)
        for gene in genes:
            pos = self.disease_position[self.kb.diseases_of_gene(gene)]
            mask[pos[pos >= 0]] = True
        return mask

    # -- explanation -------------------------------------------------------------------------------------------
    def explain(self, resolved: tuple[list[int], list[int]], column: int) -> list[TermEvidence]:
        """Per patient term: how it matched the disease and its likelihood ratio (these multiply to the score)."""
        p = self.params
        ontology = self.kb.ontology
        ids, names = ontology.ids, ontology.names
        implied = self.implied[:, column].toarray().ravel()
        direct = self.direct[:, column].toarray().ravel()
        negated = self.negated[:, column].toarray().ravel()
        evidence = []
        for q in resolved[0]:
            ancestors = ontology.ancestors_of(q)
            options = [(p.floor, "unexplained", None)]
            if implied[q] > 0:
                below = self._best_annotated_descendant(q, direct)
                match = "exact" if direct[q] > 0 else "implied"
                options.append((implied[q] / self.background[q], match, below))
            for a in ancestors[ancestors != q]:
                if direct[a] > 0:
                    options.append((p.lambda_specific * direct[a] / self.background[a], "more-specific", a))
                if implied[a] > 0 and self.background[a] <= p.partial_max_background:
                    options.append((p.lambda_related * implied[a] / self.background[a], "related", a))
            lr, match, via = max(options, key=lambda o: o[0])
            lr = max(min(lr, p.max_lr), p.floor)
            freq = None
            if via is not None:
                freq = float({"more-specific": direct[via], "related": implied[via]}.get(match, implied[q]))
            if negated[ancestors].any():
                lr, match, via = p.not_lr, "contradicted", int(ancestors[negated[ancestors] > 0][0])
                freq = 0.0
            evidence.append(TermEvidence(str(ids[q]), str(names[q]), "observed", match,
                                         None if via is None else str(ids[via]), freq, float(lr)))
        for x in resolved[1]:
            f = implied[x]
            lr = p.excluded_ascertainment * max(1 - f, p.excluded_floor) if f > 0 else 1.0
            via = self._best_annotated_descendant(x, direct) if f > 0 else None
            evidence.append(TermEvidence(str(ids[x]), str(names[x]), "excluded",
                                         "disease-feature" if f > 0 else "not-a-feature",
                                         None if via is None else str(ids[via]), float(f) if f > 0 else None,
                                         float(lr / (1 - min(self.background[x], 0.999)))))
        if p.reporting_rate > 0:
            n_terms = len(ontology)
            covered = self._covered(_selector([resolved[0]], n_terms), _selector([resolved[1]], n_terms)).indices
            unreported = self.unreported[:, column].toarray().ravel()
            missing = np.flatnonzero(unreported)
            missing = missing[~np.isin(missing, covered)]
            evidence.append(TermEvidence(
                "", f"{len(missing)} features of the disease not reported for the patient", "unreported",
                "unreported", None, None, float(np.exp(unreported[missing].sum()))))
        return evidence

    def _best_annotated_descendant(self, term: int, direct: np.ndarray) -> int:
        annotated = np.flatnonzero(direct)
        below = annotated[[term in self.kb.ontology.ancestors_of(a) for a in annotated]]
        return int(below[np.argmax(direct[below])]) if len(below) else term


def row_entries(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``rows``, column) of every stored entry of the given rows of a CSR matrix, vectorised."""
    sizes = np.diff(matrix.indptr)[rows]
    owner = np.repeat(np.arange(len(rows)), sizes)
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return owner, matrix.indices[np.repeat(matrix.indptr[rows], sizes) + offsets]


def _add_entries(flat: np.ndarray, product: sp.csr_matrix) -> None:
    """Add a sparse product's entries (unique per row and column, as a product has them) to a dense matrix given
    flat, in place; adding only where there are entries gives the same numbers as adding its dense copy."""
    flat[_entry_keys(product)] += product.data


def _entry_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """row * columns + column of every stored entry, in storage order (ascending when indices are sorted)."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def _sorted_entry_keys(matrix: sp.csr_matrix) -> np.ndarray:
    matrix.sort_indices()  # a no-op for the rows as built; the keys must ascend
    return _entry_keys(matrix)


def _values_at(matrix: sp.csr_matrix, keys: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``matrix[rows, columns]`` (0 where nothing is stored) by binary search in its sorted entry keys."""
    if not len(keys):
        return np.zeros(len(rows))
    wanted = rows.astype(np.int64) * matrix.shape[1] + columns
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, matrix.data[at], 0.0)


def _selector(term_lists: list[list[int]], n_terms: int) -> sp.csr_matrix:
    """One 0/1 row per case marking its terms."""
    ptr = np.cumsum([0] + [len(terms) for terms in term_lists])
    flat = np.fromiter((t for terms in term_lists for t in terms), dtype=np.int64, count=int(ptr[-1]))
    return sp.csr_matrix((np.ones(len(flat)), flat, ptr), shape=(len(term_lists), n_terms))


def rank_of(row: np.ndarray, column: int) -> int:
    """1-based rank of a column in a score row, counting ties pessimistically (ties rank below)."""
    return int((row > row[column]).sum() + (row == row[column]).sum())
