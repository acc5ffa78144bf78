"""Vocabularies: Athena downloads, the bundled ICD-10 + HPO starter, search and hierarchy.

The Python API other capabilities use::

    from mercia import vocab
    vocab.ensure_starter_vocabulary(store)          # ICD-10 2019, HPO and its diseases; local ids
    vocab.search(store, "type 2 diabetes", vocabulary="ICD10")
    vocab.descendants(store, icd10_concept_id("E11"))
    vocab.maps_to(store, "ICD10", ["E11.9"])       # source code -> standard concept (Arrow)

The names are imported on first use: the HPO reader (``mercia.vocab.hpo``), which the rare-disease ranker needs,
then does not bring in pyarrow, DuckDB and Parquet with the store-facing modules (a tenth of a second).
"""

from mercia import lazy_exports

_MODULES = {
    "mercia.vocab.athena": ["load_athena"],
    "mercia.vocab.diseases": ["disease_concept_id"],
    "mercia.vocab.hpo": ["HPO_VOCABULARY_ID", "hp_id_from_concept_id", "hpo_concept_id"],
    "mercia.vocab.icd10": ["ICD10_VOCABULARY_ID", "icd10_concept_id"],
    "mercia.vocab.concepts": ["ancestors", "concept", "concept_by_code", "descendants", "maps_to",
                              "refresh_search_index", "search"],
    "mercia.vocab.starter": ["ensure_starter_vocabulary", "install_starter", "starter_versions"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
