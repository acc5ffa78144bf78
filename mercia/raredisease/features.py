"""Per (case, candidate disease) features for the learning-to-rank ensemble, computed with sparse products.

Every feature is a function of the case and one disease only (never of the other candidates), so the score of a
disease can be recomputed for a changed case (explanations remove one term at a time). Similarity measures use
the information content IC(t) = -log(share of candidate diseases with t or a term below it); terms carried by
more than ``UNIVERSAL_SHARE`` of the diseases are near-universal and count for nothing in the IC-weighted
features (they would only reward richly annotated diseases).

Features (``FEATURES``):
* ``lr``: the likelihood-ratio score of :class:`~mercia.raredisease.ranker.Ranker` (natural log); ``lr_gap``: its
  distance below the case's best disease; ``lr_log_rank``: log of its rank among all diseases; ``gene_lr_gap``:
  the best LR among the diseases that share a gene with it, below the case's best (gene-level smoothing);
* ``coverage_of_case`` / ``coverage_of_disease`` / ``simgic``: IC-weighted overlap of the two ancestor closures
  over the case's and the disease's total (simGIC, Pesquita et al. 2008, is the overlap over the union);
* ``resnik_case_to_disease`` / ``resnik_sum``: Resnik best-match average (and sum) of the case's terms against
  the disease: for each observed term the IC of the most informative ancestor it shares with the disease's
  annotations (Phenomizer's one-way semantic similarity, Köhler et al., AJHG 2009;85:457);
* ``matched`` / ``unmatched``: observed terms the disease implies / observed terms it shares nothing
  informative with; ``contradicted``: observed terms the disease is annotated NOT to have;
* ``excluded_features`` / ``excluded_frequency``: excluded terms the disease has, and their summed frequency;
* ``obligate_missed``: summed frequency of the disease's frequent (f >= 0.8) features the report does not cover;
* ``gene_coverage_of_case``: coverage of the case by the pooled profile of the disease's genes (diseases that
  share a gene share phenotypes: HPO genes_to_phenotype), which smooths sparsely annotated diseases;
* ``log_annotations``: the disease's annotation count, so the model can correct the bias to rich profiles;
* ``n_observed`` / ``n_excluded``: how much the case says.

Tried inside the grouped folds and left out, because the held-out means did not improve (docs/raredisease.md
lists the figures): Resnik best-match average disease-to-case and the symmetric (Phenomizer) mean of both
directions.  The Phenopackets of the development set carry no onset or sex, so no onset/sex compatibility
feature can be trained or checked; none is computed.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mercia.raredisease.kb import cached_matrix
from mercia.raredisease.ranker import Ranker, row_entries

UNIVERSAL_SHARE = 0.2  # terms in more than this share of diseases add no IC-weighted evidence
FREQUENT = 0.8  # "obligate" features for the missed-feature count
FEATURES = (
    "lr", "lr_gap", "lr_log_rank", "gene_lr_gap", "resnik_case_to_disease", "resnik_sum", "coverage_of_case",
    "coverage_of_disease", "simgic", "matched", "unmatched", "contradicted", "excluded_features",
    "excluded_frequency", "obligate_missed", "gene_coverage_of_case", "log_annotations", "n_observed", "n_excluded",
)


class PairFeatures:
    """Knowledge-base matrices behind the features; build once per :class:`Ranker`."""

    def __init__(self, ranker: Ranker):
        self.ranker = ranker
        kb, ontology = ranker.kb, ranker.kb.ontology
        n_dis = len(ranker.diseases)
        self.closure = ranker.implied.copy()  # terms x diseases: the disease has the term or one below it
        self.closure.data[:] = 1.0
        carriers = np.diff(self.closure.indptr)
        self.ic = -np.log(np.maximum(carriers, 1) / (n_dis + 1))
        self.weight = np.where(carriers > UNIVERSAL_SHARE * n_dis, 0.0, self.ic)
        # IC as a small integer code (0: none), so Resnik's term x disease maximum fits a quarter of the memory
        levels, code = np.unique(self.ic, return_inverse=True)
        self.ic_levels = np.r_[0.0, levels]
        self.ic_code = (code + 1).astype(np.min_scalar_type(len(levels)))
        self.disease_total = self.closure.T @ self.weight
        negated_closure = (ontology.ancestors.astype(np.float64) @ ranker.negated).tocsr()
        negated_closure.data[:] = 1.0
        frequent = ranker.direct.copy()
        frequent.data[frequent.data < FREQUENT] = 0.0
        phenotypic = ontology.ancestors[:, ontology.index["HP:0000118"]].toarray().ravel() > 0
        self.frequent = (sp.diags(phenotypic.astype(np.float64)) @ frequent).tocsr()
        self.frequent.eliminate_zeros()
        self.frequent_total = np.asarray(self.frequent.sum(axis=0)).ravel()
        # column-major copies, for products restricted to a batch's candidate diseases
        self.by_disease = tuple(m.tocsc() for m in (self.closure, ranker.implied, negated_closure, self.frequent))
        self.log_annotations = np.log1p(np.diff(ranker.direct.tocsc().indptr)).astype(np.float64)
        self._gene_profiles(kb, n_dis)

    def _gene_profiles(self, kb, n_dis: int) -> None:
        """Gene x term closure pooled over every annotated disease of the gene (all sources), and the candidate
        diseases' genes."""
        n_all, n_terms = len(kb.disease_ids), len(kb.ontology)

        def weighted_profiles() -> sp.csr_matrix:  # genes x terms, IC-weighted (a fifth of a cold start to build)
            annotated = sp.csr_matrix((np.ones(len(kb.ann_term)), (kb.ann_disease, kb.ann_term)),
                                      shape=(n_all, n_terms))
            gene_disease = sp.csr_matrix(
                (np.ones(len(kb.gene_disease_gene)), (kb.gene_disease_gene, kb.gene_disease_disease)),
                shape=(len(kb.gene_symbols), n_all))
            direct = (gene_disease @ annotated).tocsr()
            direct.data[:] = 1.0
            profile = (direct @ kb.ontology.ancestors.astype(np.float64)).tocsr()
            profile.data[:] = 1.0
            weighted = (profile @ sp.diags(self.weight)).tocsr()
            weighted.eliminate_zeros()
            return weighted

        self.gene_profile = cached_matrix(kb, "gene-profiles", self.ranker.derivation() | {
            "universal_share": UNIVERSAL_SHARE}, weighted_profiles, (len(kb.gene_symbols), n_terms)).T  # terms x genes
        position = self.ranker.disease_position[kb.gene_disease_disease]
        keep = position >= 0
        self.disease_genes = sp.csr_matrix(
            (np.ones(keep.sum()), (position[keep], kb.gene_disease_gene[keep])), shape=(n_dis, len(kb.gene_symbols)))
        self.gene_siblings = (self.disease_genes @ self.disease_genes.T).tocsr()  # diseases sharing a gene
        self.gene_siblings.sort_indices()

    def compute(self, observed: sp.csr_matrix, excluded: sp.csr_matrix, scores: np.ndarray,
                pair_case: np.ndarray, pair_disease: np.ndarray) -> np.ndarray:
        """Feature rows for (case, disease) pairs; ``observed``/``excluded`` are the ranker's 0/1 case selectors
        and ``scores`` the natural-log LR of every disease for each case (cases x diseases)."""
        lr = scores[pair_case, pair_disease]
        best = scores.max(axis=1)[pair_case]
        rank = _ranks(scores, pair_case, pair_disease).astype(np.float64)
        ontology = self.ranker.kb.ontology
        case_closure = (observed @ ontology.ancestors.astype(np.float64)).tocsr()
        case_closure.data[:] = 1.0
        case_weighted = case_closure @ sp.diags(self.weight)
        case_total = np.asarray(case_weighted.sum(axis=1)).ravel()[pair_case]
        # products only over the pairs' diseases (a third to a half of them): column of a pair's disease
        diseases, column = np.unique(pair_disease, return_inverse=True)
        closure, implied, negated, frequent = (m[:, diseases].tocsr() for m in self.by_disease)
        overlap = _pairs(case_weighted @ closure, pair_case, column)
        dis_total = self.disease_total[pair_disease]
        n_obs = np.diff(observed.indptr).astype(np.float64)[pair_case]
        n_exc = np.diff(excluded.indptr).astype(np.float64)[pair_case]
        matched = _pairs(observed @ closure, pair_case, column)
        resnik_sum, informative = self._resnik(observed, pair_case, column, closure)
        covered = self.ranker._covered(observed, excluded)
        gene_overlap = self._gene_overlap(case_weighted, pair_case, pair_disease)
        columns = {
            "lr": lr,
            "lr_gap": lr - best,
            "lr_log_rank": np.log(rank),
            "gene_lr_gap": self._gene_lr(scores, pair_case, pair_disease) - best,
            "resnik_case_to_disease": resnik_sum / np.maximum(n_obs, 1),
            "resnik_sum": resnik_sum,
            "coverage_of_case": overlap / np.maximum(case_total, 1e-9),
            "coverage_of_disease": overlap / np.maximum(dis_total, 1e-9),
            "simgic": overlap / np.maximum(case_total + dis_total - overlap, 1e-9),
            "matched": matched,
            "unmatched": n_obs - informative,
            "contradicted": _pairs(observed @ negated, pair_case, column),
            "excluded_features": _pairs(excluded @ closure, pair_case, column),
            "excluded_frequency": _pairs(excluded @ implied, pair_case, column),
            "obligate_missed": self.frequent_total[pair_disease] - _pairs(covered @ frequent, pair_case, column),
            "gene_coverage_of_case": gene_overlap / np.maximum(case_total, 1e-9),
            "log_annotations": self.log_annotations[pair_disease],
            "n_observed": n_obs,
            "n_excluded": n_exc,
        }
        return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in FEATURES])

    def _resnik(self, observed: sp.csr_matrix, pair_case, column, closure) -> tuple[np.ndarray, np.ndarray]:
        """Per pair: sum over observed terms of the IC of their most informative ancestor in the disease's closure,
        and how many observed terms share an informative (non-universal) ancestor with it.  ``closure`` holds
        only the pairs' diseases (about half of them in a chunk of cases); ``column`` is each pair's among them."""
        terms = np.unique(observed.indices)
        owner, ancestor = self.ranker._expand_ancestors(terms)
        useful = self.weight[ancestor] > 0
        owner, ancestor = owner[useful], ancestor[useful]
        n_dis = closure.shape[1]
        rows = closure[ancestor].tocoo()
        best = np.zeros(len(terms) * n_dis, dtype=self.ic_code.dtype)  # term x pair disease: best ancestor's IC
        np.maximum.at(best, owner[rows.row].astype(np.int64) * n_dis + rows.col, self.ic_code[ancestor][rows.row])
        pair, term = row_entries(observed, pair_case)
        values = self.ic_levels[best[np.searchsorted(terms, term) * n_dis + column[pair]]]
        return (np.bincount(pair, values, minlength=len(pair_case)),
                np.bincount(pair, values > 0, minlength=len(pair_case)).astype(np.float64))

    def _gene_lr(self, scores: np.ndarray, pair_case, pair_disease) -> np.ndarray:
        """Per pair, the best LR among the diseases sharing a gene with the pair's disease (its own without)."""
        pair, sibling = row_entries(self.gene_siblings, pair_disease)
        out = scores[pair_case, pair_disease].copy()
        np.maximum.at(out, pair, scores[pair_case[pair], sibling])
        return out

    def _gene_overlap(self, case_weighted, pair_case, pair_disease) -> np.ndarray:
        """Best IC overlap of the case with the pooled profile of any gene of the disease (0 without a gene)."""
        pair, gene = row_entries(self.disease_genes, pair_disease)
        genes, column = np.unique(gene, return_inverse=True)
        per_gene = case_weighted @ self.gene_profile[:, genes].tocsr()  # cases x the pairs' genes
        out = np.zeros(len(pair_case))
        np.maximum.at(out, pair, _pairs(per_gene, pair_case[pair], column))
        return out


def _ranks(scores: np.ndarray, pair_case: np.ndarray, pair_disease: np.ndarray, block: int = 256) -> np.ndarray:
    """1-based rank of each pair's disease in its case's row, best score first and ties by column (the order of
    a stable descending sort), without sorting whole rows: a pair scoring above every disease outside its case's
    pairs (the candidates are each case's best) is ranked among those pairs alone; any other pair is counted
    against its whole row."""
    value = scores[pair_case, pair_disease]
    scores[pair_case, pair_disease] = -np.inf  # for the best score outside the pairs (no copy of the matrix)
    among_pairs = value > scores.max(axis=1)[pair_case]
    scores[pair_case, pair_disease] = value
    order = np.lexsort((pair_disease, -value, pair_case))
    group_start = np.searchsorted(pair_case[order], pair_case[order], side="left")
    rank = np.empty(len(value), dtype=np.int64)
    rank[order] = np.arange(len(order)) - group_start + 1
    columns = np.arange(scores.shape[1])
    for start in range(0, len(rest := np.flatnonzero(~among_pairs)), block):
        pick = rest[start:start + block]
        row, v, d = scores[pair_case[pick]], value[pick, None], pair_disease[pick, None]
        rank[pick] = (row > v).sum(axis=1) + ((row == v) & (columns < d)).sum(axis=1) + 1
    return rank


def _pairs(matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values of a (sparse or dense) matrix at (row, col) pairs (callers pass chunks of a few hundred cases, so
    the dense form is small and gathering from it is far faster than sparse indexing)."""
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    return dense[rows, cols].astype(np.float64)
