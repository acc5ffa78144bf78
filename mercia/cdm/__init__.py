"""The OMOP CDM v5.4 store shared by every Mercia capability (its names are imported on first use, so a
submodule such as ``mercia.cdm.cli`` or ``mercia.cdm.dialect`` does not bring in pyarrow)."""

from mercia import lazy_exports

_EXPORTS = {"CDM_TABLES": "mercia.cdm.schema", "CDM_VERSION": "mercia.cdm.schema", "Column": "mercia.cdm.schema",
            "Table": "mercia.cdm.schema", "Store": "mercia.cdm.store", "StoreError": "mercia.cdm.store",
            "StoreUnavailable": "mercia.cdm.store", "quote": "mercia.cdm.store"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
