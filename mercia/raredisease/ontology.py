"""The Human Phenotype Ontology as compact arrays: parsing, id resolution, ancestry and term search.

Built from :func:`mercia.vocab.hpo.parse_obo` (the one HPO reader) and cached with the annotations by
:mod:`mercia.raredisease.kb`, so this module only turns parsed terms into arrays and answers questions over them.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import scipy.sparse as sp

from mercia.vocab.hpo import OboTerms

PHENOTYPIC_ABNORMALITY = "HP:0000118"
HP_ID = re.compile(r"^HP:\d{7}$")


class UnknownTermError(ValueError):
    """An HPO id that is malformed, absent from the release, or obsolete without a replacement."""


class ObsoleteTermWarning(UserWarning):
    """An alternative or obsolete HPO id was mapped to its current term."""


class Ontology:
    """Current (non-obsolete) HPO terms indexed 0..n-1, with parent and ancestor matrices.

    ``ancestors`` is the reflexive transitive closure as a CSR matrix (row = term, columns = its ancestors
    including itself), which is what every vectorised step of the ranker multiplies by.
    """

    def __init__(self, ids, names, synonyms, parent_ptr, parent_idx, aliases, version):
        self.ids = np.asarray(ids)
        self.names = np.asarray(names, dtype=object)
        self.synonyms = synonyms  # list[str] per term, joined with "|"
        self.version = str(version)
        self.index = {term_id: i for i, term_id in enumerate(self.ids.tolist())}
        self.aliases = aliases  # alt/obsolete id -> current id
        n = len(self.ids)
        self.parents = sp.csr_matrix(
            (np.ones(len(parent_idx), dtype=np.int8), parent_idx, parent_ptr), shape=(n, n)
        )
        self.ancestors = self._closure()
        self.depth = self._depths()

    @classmethod
    def from_obo(cls, terms: OboTerms) -> Ontology:
        current = [i for i, dead in enumerate(terms.obsolete) if not dead]
        position = {terms.ids[i]: k for k, i in enumerate(current)}
        aliases: dict[str, str] = {}
        for i, term_id in enumerate(terms.ids):
            if terms.obsolete[i]:
                if terms.replaced_by[i] and terms.replaced_by[i] in position:
                    aliases[term_id] = terms.replaced_by[i]
            else:
                for alt in terms.alt_ids[i]:
                    aliases[alt] = term_id
        ptr, idx = [0], []
        for i in current:
            idx.extend(sorted(position[p] for p in terms.parents[i] if p in position))
            ptr.append(len(idx))
        return cls(
            [terms.ids[i] for i in current],
            [terms.names[i] for i in current],
            ["|".join(terms.synonyms[i]) for i in current],
            np.asarray(ptr, dtype=np.int64),
            np.asarray(idx, dtype=np.int32),
            aliases,
            terms.version,
        )

    def _closure(self) -> sp.csr_matrix:
        """Reflexive transitive closure by repeated sparse products (depth of HPO is ~15, so few rounds)."""
        n = len(self.ids)
        closure = (sp.identity(n, dtype=np.int32, format="csr") + self.parents.astype(np.int32)).tocsr()
        while True:
            grown = closure @ closure
            grown.data[:] = 1
            if grown.nnz == closure.nnz:
                return grown.astype(np.int8).tocsr()
            closure = grown

    def _depths(self) -> np.ndarray:
        return np.diff(self.ancestors.indptr).astype(np.int32) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def resolve(self, term_id: str, *, warn: bool = True) -> int:
        """Index of a current term; alt and obsolete ids map to their replacement with a warning."""
        term_id = term_id.strip()
        if not HP_ID.match(term_id):
            raise UnknownTermError(f"{term_id!r} is not an HPO id (expected HP:nnnnnnn)")
        if term_id in self.index:
            return self.index[term_id]
        if term_id in self.aliases:
            current = self.aliases[term_id]
            if warn:
                warnings.warn(
                    f"{term_id} is an alternative or obsolete HPO id; using {current} "
                    f"({self.names[self.index[current]]})",
                    ObsoleteTermWarning,
                    stacklevel=2,
                )
            return self.index[current]
        raise UnknownTermError(f"{term_id} is not a current term of HPO {self.version} and has no replacement")

    def ancestors_of(self, i: int) -> np.ndarray:
        """Ancestors of term i including itself."""
        return self.ancestors.indices[self.ancestors.indptr[i] : self.ancestors.indptr[i + 1]]

    def is_ancestor(self, ancestor: int, term: int) -> bool:
        return bool(np.isin(ancestor, self.ancestors_of(term)))

    def most_specific(self, indices) -> list[int]:
        """Drop terms that are ancestors of another term in the list (they add no information)."""
        unique = list(dict.fromkeys(indices))
        implied = set()
        for i in unique:
            implied.update(int(a) for a in self.ancestors_of(i) if a != i)
        return [i for i in unique if i not in implied]

    def search(self, text: str, limit: int = 20) -> list[tuple[str, str, str]]:
        """Rank terms whose name or synonym matches every word of ``text`` (prefix match on the last word).

        Returns (id, name, matched synonym or "") ordered by exact match, then prefix, then shorter names.
        An HP id as text returns that term.
        """
        text = text.strip()
        if HP_ID.match(text):
            i = self.resolve(text, warn=False)
            return [(str(self.ids[i]), str(self.names[i]), "")]
        words = re.findall(r"[\w']+", text.lower())
        if not words:
            return []
        pattern = re.compile(
            "".join(rf"(?=.*\b{re.escape(w)}\b)" for w in words[:-1]) + rf"(?=.*\b{re.escape(words[-1])})"
        )
        hits = []
        for i, (name, synonyms) in enumerate(zip(self.names.tolist(), self.synonyms)):
            for label in [name, *filter(None, synonyms.split("|"))]:
                lowered = label.lower()
                if pattern.match(lowered):
                    key = (lowered != text.lower(), not lowered.startswith(words[0]), label != name, len(label))
                    hits.append((key, i, "" if label == name else label))
                    break
        hits.sort(key=lambda hit: hit[0])
        return [(str(self.ids[i]), str(self.names[i]), synonym) for _, i, synonym in hits[:limit]]
