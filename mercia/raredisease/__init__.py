"""Rare disease: HPO phenotyping, phenotype-driven diagnosis, gene prioritisation, patient matching, Phenopackets.

* ``kb`` / ``ontology``: the HPO release (ontology, disease annotations, disease-gene links), cached;
* ``ranker``: the likelihood-ratio differential diagnosis (``Ranker``, ``Case``) with explanations;
* ``features`` / ``ensemble``: a LightGBM LambdaRank re-ranking of its candidates, trained and calibrated on
  held-out gene cohorts (``EnsembleRanker``: probabilities, supporting and contradicting terms);
* ``genes``: candidate genes from a list or an annotated VCF, ranked with the phenotype;
* ``phenopackets``: GA4GH Phenopacket v2 reader and writer (``read_phenopacket``, ``write_phenopacket``);
* ``patients``: cases in the OMOP CDM (``save_case``, ``load_case``); ``matching``: similar patients.

See docs/raredisease.md.
"""
