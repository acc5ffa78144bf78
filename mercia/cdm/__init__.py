"""The OMOP CDM v5.4 store shared by every Mercia capability."""

from mercia.cdm.schema import CDM_TABLES, CDM_VERSION, Column, Table
from mercia.cdm.store import Store, StoreError, StoreUnavailable, quote

__all__ = ["CDM_TABLES", "CDM_VERSION", "Column", "Store", "StoreError", "StoreUnavailable", "Table", "quote"]
