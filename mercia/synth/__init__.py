"""Synthetic West Midlands region: people, health records, organisations' extracts and ground truth.

``generate_region`` writes extracts + truth (docs/synth.md is the layout contract); ``write_omop`` is
the fast path straight into an OMOP CDM store, ``write_omop_parquet`` the same tables as partitioned
Parquet for any engine; ``load_truth`` loads a region's true CDM into a store.
"""

from mercia.synth.omop import Organisations, load_truth, write_omop, write_omop_parquet
from mercia.synth.region import generate_region

__all__ = ["Organisations", "generate_region", "load_truth", "write_omop", "write_omop_parquet"]
