"""Vocabularies: Athena downloads, the bundled ICD-10 + HPO starter, search and hierarchy.

The Python API other capabilities use::

    from mercia import vocab
    vocab.ensure_starter_vocabulary(store)          # ICD-10 2019, HPO and its diseases; local ids
    vocab.search(store, "type 2 diabetes", vocabulary="ICD10")
    vocab.descendants(store, icd10_concept_id("E11"))
    vocab.maps_to(store, "ICD10", ["E11.9"])       # source code -> standard concept (Arrow)
"""

from mercia.vocab.athena import load_athena
from mercia.vocab.diseases import disease_concept_id
from mercia.vocab.hpo import HPO_VOCABULARY_ID, hp_id_from_concept_id, hpo_concept_id
from mercia.vocab.icd10 import ICD10_VOCABULARY_ID, icd10_concept_id
from mercia.vocab.search import (ancestors, concept, concept_by_code, descendants, maps_to, refresh_search_index,
                                 search)
from mercia.vocab.starter import ensure_starter_vocabulary, install_starter, starter_versions

__all__ = ["HPO_VOCABULARY_ID", "ICD10_VOCABULARY_ID", "ancestors", "concept", "concept_by_code", "descendants",
           "disease_concept_id", "ensure_starter_vocabulary", "hp_id_from_concept_id", "hpo_concept_id",
           "icd10_concept_id", "install_starter", "load_athena", "maps_to", "refresh_search_index", "search",
           "starter_versions"]
