"""Rare diseases named in HPO's annotations (OMIM, Orphanet, DECIPHER) as OMOP concepts.

The HPO release ships ``phenotype.hpoa``: which phenotypes each disease has.  The starter vocabulary
turns every annotated disease into a local concept (name as HPO gives it) and each annotation of a
present phenotype into a ``Has phenotype`` / ``Phenotype of`` relationship.  As for HPO terms, the
concept id is derived from the disease's own number, never assigned:

- ``OMIM:154700`` -> 2,110,154,700 (2,110,000,000 + MIM number)
- ``ORPHA:558`` (also written ``Orphanet:558``) -> 2,130,000,558
- ``DECIPHER:1`` -> 2,140,000,001

Each vocabulary's block is in :mod:`mercia.vocab.local_ids` (all below OMOP's 32-bit limit).

``concept_code`` is the number alone, as OMOP's own OMIM vocabulary has it (``154700``).
"""

from __future__ import annotations

import re

from mercia.vocab.local_ids import block_size, block_start

DISEASE_VOCABULARIES = {v: block_start(v) for v in ("OMIM", "ORPHA", "DECIPHER")}
_DISEASE_ID = re.compile(r"^(OMIM|ORPHA|Orphanet|DECIPHER):(\d{1,8})$")


def disease_concept_id(disease_id: str) -> int:
    """The Mercia local concept id of ``OMIM:n``, ``ORPHA:n`` / ``Orphanet:n`` or ``DECIPHER:n``."""
    match = _DISEASE_ID.match(disease_id.strip())
    prefix = "ORPHA" if match and match.group(1) == "Orphanet" else match and match.group(1)
    if not match or int(match.group(2)) >= block_size(prefix):
        raise ValueError(f"not an OMIM, ORPHA or DECIPHER disease id: {disease_id!r}")
    return DISEASE_VOCABULARIES[prefix] + int(match.group(2))
