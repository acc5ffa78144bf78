"""Find the patients whose phenotype (and genes) best match a given patient: the core of a Matchmaker
Exchange-style service across the organisations whose data share one CDM.

Similarity is the cosine between information-content-weighted phenotype profiles, where a profile is the
patient's observed HPO terms plus all their ancestors (so "Focal seizure" and "Generalized seizure" share
"Seizure", weighted by how rare "Seizure" is among diseases). A shared gene with variants adds
``GENE_BONUS``. Results carry pseudonyms (HMAC of the person id, ``mercia.privacy``), never person ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from mercia.cdm import Store
from mercia.raredisease.kb import KnowledgeBase
from mercia.raredisease.patients import CaseNotFoundError, gene_table, phenotype_table

GENE_BONUS = 0.25
PSEUDONYM_PURPOSE = "raredisease/match"
MIN_SHARED_IC = 2.0  # shared terms at least this informative are listed (about 1 in 7 diseases or rarer)


@dataclass
class Match:
    pseudonym: str
    score: float
    phenotype_similarity: float
    shared_terms: list[tuple[str, str]]
    shared_genes: list[str]

    def to_dict(self) -> dict:
        return {"pseudonym": self.pseudonym, "score": round(self.score, 4),
                "phenotype_similarity": round(self.phenotype_similarity, 4),
                "shared_terms": [{"id": i, "label": label} for i, label in self.shared_terms],
                "shared_genes": self.shared_genes}


def profiles(store: Store, kb: KnowledgeBase) -> tuple[np.ndarray, sp.csr_matrix]:
    """Person ids and their observed terms with ancestors (persons x terms, 0/1); unknown terms are skipped."""
    table = phenotype_table(store)
    observed = table.filter(pc.invert(table.column("excluded")))
    hp_ids = observed.column("hp_id").to_numpy(zero_copy_only=False)
    distinct, inverse = np.unique(hp_ids, return_inverse=True)
    ontology = kb.ontology
    index = np.array([_term_index(ontology, h) for h in distinct.tolist()], dtype=np.int64)[inverse]
    known = index >= 0
    people, rows = np.unique(observed.column("person_id").to_numpy()[known], return_inverse=True)
    cols = index[known]
    direct = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(people), len(ontology)))
    closure = (direct @ ontology.ancestors) > 0
    return people.astype(np.int64), closure.astype(np.float64).tocsr()


def _term_index(ontology, hp_id: str) -> int:
    """Index of a current term (alt and obsolete ids mapped); -1 for ids this release does not know."""
    current = hp_id if hp_id in ontology.index else ontology.aliases.get(hp_id)
    return ontology.index[current] if current else -1


def match_patient(store: Store, person_id: int, kb: KnowledgeBase, pseudonymise, top: int = 10) -> list[Match]:
    """The ``top`` best-matching other persons; ``pseudonymise`` maps a list of person ids to pseudonyms."""
    person_ids, closure = profiles(store, kb)
    where = np.flatnonzero(person_ids == person_id)
    if not len(where):
        raise CaseNotFoundError(f"person {person_id} has no HPO observations in the store")
    ic = kb.information_content()
    weighted = closure @ sp.diags(ic)
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    target = where[0]
    similarity = (weighted @ weighted[target].T).toarray().ravel() / np.maximum(norms * norms[target], 1e-12)
    genes = gene_table(store)
    carrier = genes.column("person_id").to_numpy(zero_copy_only=False).astype(np.int64)
    symbol = genes.column("gene").to_numpy(zero_copy_only=False)
    mine = set(symbol[carrier == person_id].tolist())
    sharing = np.isin(person_ids, carrier[np.isin(symbol, list(mine))]) if mine else np.zeros(len(person_ids), bool)
    score = similarity + GENE_BONUS * sharing
    score[target] = -np.inf
    order = [i for i in np.argsort(-score, kind="stable")[:top] if np.isfinite(score[i])]
    pseudonyms = pseudonymise([int(person_ids[i]) for i in order])
    ontology = kb.ontology
    target_terms = set(closure[target].indices.tolist())
    matches = []
    for i, pseudonym in zip(order, pseudonyms):
        common = [t for t in target_terms.intersection(closure[i].indices.tolist()) if ic[t] >= MIN_SHARED_IC]
        shared = [(str(ontology.ids[t]), str(ontology.names[t])) for t in ontology.most_specific(sorted(common))]
        genes_in_common = sorted(mine & set(symbol[carrier == person_ids[i]].tolist()))
        matches.append(Match(str(pseudonym), float(score[i]), float(similarity[i]), shared, genes_in_common))
    return matches


def default_pseudonymiser():
    """Pseudonyms from the platform key (``MERCIA_PSEUDONYM_KEY`` or key file): fails clearly without one."""
    from mercia.privacy.pseudonym import Pseudonymiser, load_key

    pseudonymiser = Pseudonymiser(load_key())
    return lambda ids: pseudonymiser.hash_values(PSEUDONYM_PURPOSE, ids).to_pylist()
