"""Rare diseases named in HPO's annotations (OMIM, Orphanet, DECIPHER) as OMOP concepts.

The HPO release ships ``phenotype.hpoa``: which phenotypes each disease has.  The starter vocabulary
turns every annotated disease into a local concept (name as HPO gives it) and each annotation of a
present phenotype into a ``Has phenotype`` / ``Phenotype of`` relationship.  As for HPO terms, the
concept id is derived from the disease's own number, never assigned:

- ``OMIM:154700`` -> 2,200,154,700 (2,200,000,000 + MIM number)
- ``ORPHA:558`` (also written ``Orphanet:558``) -> 2,300,000,558
- ``DECIPHER:1`` -> 2,400,000,001

``concept_code`` is the number alone, as OMOP's own OMIM vocabulary has it (``154700``).
"""

from __future__ import annotations

import re

DISEASE_VOCABULARIES = {"OMIM": 2_200_000_000, "ORPHA": 2_300_000_000, "DECIPHER": 2_400_000_000}
DISEASE_RANGE = 100_000_000
_DISEASE_ID = re.compile(r"^(OMIM|ORPHA|Orphanet|DECIPHER):(\d{1,8})$")


def disease_concept_id(disease_id: str) -> int:
    """The Mercia local concept id of ``OMIM:n``, ``ORPHA:n`` / ``Orphanet:n`` or ``DECIPHER:n``."""
    match = _DISEASE_ID.match(disease_id.strip())
    if not match or int(match.group(2)) >= DISEASE_RANGE:
        raise ValueError(f"not an OMIM, ORPHA or DECIPHER disease id: {disease_id!r}")
    prefix = "ORPHA" if match.group(1) == "Orphanet" else match.group(1)
    return DISEASE_VOCABULARIES[prefix] + int(match.group(2))
