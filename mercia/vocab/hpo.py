"""Human Phenotype Ontology terms as OMOP concepts.

HPO is not (yet) an OMOP standard vocabulary, so Mercia gives each term a concept id in OMOP's
local range (> 2,000,000,000), derived from the HP number itself: ``HP:0001250`` is concept
2,100,001,250.  Deriving rather than assigning means every store, extract and cache agrees on the
id without a lookup table.
"""

from __future__ import annotations

import re

HPO_CONCEPT_OFFSET = 2_100_000_000
HPO_VOCABULARY_ID = "HPO"
_HP_ID = re.compile(r"^HP:(\d{7})$")


def hpo_concept_id(hp_id: str) -> int:
    match = _HP_ID.match(hp_id.strip())
    if not match:
        raise ValueError(f"not an HPO term id (expected HP:NNNNNNN): {hp_id!r}")
    return HPO_CONCEPT_OFFSET + int(match.group(1))


def hp_id_from_concept_id(concept_id: int) -> str:
    number = concept_id - HPO_CONCEPT_OFFSET
    if not 0 <= number < 10_000_000:
        raise ValueError(f"concept {concept_id} is not in Mercia's HPO range")
    return f"HP:{number:07d}"
