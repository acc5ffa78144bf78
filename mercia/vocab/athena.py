"""Loading an OHDSI Athena vocabulary download (``CONCEPT.csv``, ``CONCEPT_ANCESTOR.csv``, ...).

Athena ships tab-separated files without quoting and with ``YYYYMMDD`` dates; the CDM loader reads
those natively, so this is the CDM loader restricted to vocabulary tables.  The vocabulary tables
that have a file are replaced in one transaction.  If the starter vocabulary was installed, it is
put back in the same transaction for the vocabularies the download does not itself provide (an
Athena ICD10 or HPO always wins).  Files Athena adds that are not tables (``readme.txt``,
``cpt4.jar``, ``cpt.sh``) are listed as ignored.
"""

from __future__ import annotations

from pathlib import Path

from mercia.cdm.loader import LoadError, LoadReport, discover, load_omop_files
from mercia.cdm.schema import VOCABULARY_TABLES
from mercia.cdm.store import Store


def load_athena(store: Store, directory: Path | str) -> LoadReport:
    from mercia.vocab.starter import install_starter, starter_installed

    found, report = discover(Path(directory))
    vocabulary_tables = {t.name for t in VOCABULARY_TABLES}
    others = sorted(set(found) - vocabulary_tables)
    if others:
        raise LoadError(found[others[0]], f"{others[0]} is not a vocabulary table; an Athena download holds "
                                          f"only {', '.join(sorted(vocabulary_tables))} "
                                          "(use `mercia db load-omop` for CDM data)")
    if "concept" not in found:
        raise LoadError(directory, "no CONCEPT.csv: not an Athena vocabulary download")
    had_starter = starter_installed(store)
    with store.transaction():
        report = load_omop_files(store, found, report)
        if had_starter:
            install_starter(store)
    return report
