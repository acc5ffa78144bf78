"""Mercia's local concept id blocks, defined once, so no two local vocabularies can share an id.

OMOP reserves concept ids from 2,000,000,000 for local concepts, and ``concept_id`` is a 32-bit
INTEGER (at most 2,147,483,647; Mercia's own cohort check refuses larger ids), so every block lies
in between.  Ids are derived from each source code inside its block (docs/vocab.md has the table).

Before this table existed, OMIM, ORPHA and DECIPHER diseases had ids at 2,200,000,000,
2,300,000,000 and 2,400,000,000 + number: above the 32-bit limit, so cohorts refused them.
:func:`migrate_legacy_disease_ids` moves a store written with those ids into the blocks below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the block table is read by light modules (mercia.vocab.hpo): no store import
    from mercia.cdm.store import Store

LOCAL_CONCEPT_ID_MIN = 2_000_000_000
OMOP_CONCEPT_ID_MAX = 2**31 - 1

# name -> (first id, first id past the block); the number of codes a block holds is its size.
LOCAL_CONCEPT_BLOCKS: dict[str, tuple[int, int]] = {
    "ICD10": (2_000_000_000, 2_100_000_000),      # mercia.vocab.icd10: codes, blocks, chapters inside
    "HPO": (2_100_000_000, 2_110_000_000),        # + HP number (7 digits)
    "OMIM": (2_110_000_000, 2_120_000_000),       # + MIM number (6 digits today)
    "Nightingale": (2_120_000_000, 2_121_000_000),  # mercia.vocab.metabolites: + catalogue row
    "HMDB": (2_121_000_000, 2_122_000_000),
    "ChEBI": (2_122_000_000, 2_123_000_000),
    "LipidMaps": (2_123_000_000, 2_124_000_000),
    "KEGG": (2_124_000_000, 2_125_000_000),
    "ORPHA": (2_130_000_000, 2_140_000_000),      # + Orphanet number (up to 6 digits today)
    "DECIPHER": (2_140_000_000, 2_141_000_000),   # + DECIPHER syndrome number
}

# Where the diseases were before: vocabulary -> old first id; each old block held 100,000,000 codes.
LEGACY_DISEASE_OFFSETS = {"OMIM": 2_200_000_000, "ORPHA": 2_300_000_000, "DECIPHER": 2_400_000_000}
LEGACY_DISEASE_RANGE = 100_000_000


def block_start(name: str) -> int:
    return LOCAL_CONCEPT_BLOCKS[name][0]


def block_size(name: str) -> int:
    low, high = LOCAL_CONCEPT_BLOCKS[name]
    return high - low


def _concept_id_columns(store: Store) -> dict[str, list[str]]:
    """table -> its concept id columns (``concept_id``, ``concept_id_1/2``, ``*_concept_id``), for
    the CDM tables and Mercia's extension tables present in the store."""
    from mercia.cdm.extensions import EXTRA_PERSON_TABLES
    from mercia.cdm.schema import CDM_TABLES

    found = {}
    for table in [*CDM_TABLES, *EXTRA_PERSON_TABLES]:
        if store.table_exists(table):
            names = [name for name, _ in store.columns(table)
                     if name in ("concept_id", "concept_id_1", "concept_id_2") or name.endswith("_concept_id")]
            if names:
                found[table] = names
    return found


def migrate_legacy_disease_ids(store: Store) -> dict[str, int]:
    """Move OMIM/ORPHA/DECIPHER ids written at the old offsets into their blocks, in every concept id
    column, in one transaction; returns rows changed per ``table.column`` (empty when nothing was
    left to move, so running it again changes nothing).  An old id whose number does not fit its new
    block is refused, naming the table and column, and nothing is changed."""
    old_low = min(LEGACY_DISEASE_OFFSETS.values())
    old_high = max(LEGACY_DISEASE_OFFSETS.values()) + LEGACY_DISEASE_RANGE
    moved: dict[str, int] = {}
    with store.transaction():
        for table, columns in _concept_id_columns(store).items():
            for column in columns:
                in_old = f"{column} >= {old_low} AND {column} < {old_high}"
                count, misfits = store.query(
                    f"SELECT count(*), count(*) FILTER (WHERE {_new_id(column)} IS NULL) FROM {table} WHERE {in_old}")[0]
                if misfits:
                    raise ValueError(f"{table}.{column}: {misfits:,} legacy disease concept ids have no place in "
                                     "the new local blocks (number too large); nothing was changed")
                if count:
                    store.execute(f"UPDATE {table} SET {column} = {_new_id(column)} WHERE {in_old}")
                    moved[f"{table}.{column}"] = int(count)
    return moved


def _new_id(column: str) -> str:
    """SQL for the new id of an old disease id in ``column`` (NULL when it does not fit)."""
    cases = " ".join(
        f"WHEN {column} >= {old} AND {column} < {old + LEGACY_DISEASE_RANGE} "
        f"AND {column} - {old} < {block_size(name)} THEN {column} - {old} + {block_start(name)}"
        for name, old in LEGACY_DISEASE_OFFSETS.items())
    return f"CASE {cases} END"
