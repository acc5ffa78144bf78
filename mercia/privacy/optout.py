"""National data opt-out: people on the list are never loaded, and are purged if already present.

The list (NHS numbers, one per line; blank lines and ``#`` comments ignored) is applied at the
door by ``mercia.ingest.load`` and by ``purge`` here.  Only keyed-hash pseudonyms are kept: of the
list (``mercia_opt_out``) and of the purged people's local record ids (``mercia_opt_out_source``,
per organisation), so later loads keep withholding those people, also from an extract that names
them by local id only, without the platform ever storing their NHS numbers.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mercia.cdm import Store, quote
from mercia.cdm.extensions import (DERIVED_PERSON_TABLES, PERSON_NAMED_RECORD_TABLES, ensure_extension_tables,
                                   person_tables)
from mercia.privacy.nhs import normalise_nhs_numbers
from mercia.privacy.pseudonym import Pseudonymiser

OPT_OUT_DDL = "CREATE TABLE IF NOT EXISTS mercia_opt_out (nhs_pseudonym VARCHAR NOT NULL)"
# Stored persons withheld by the opt-out (listed after their load, not purged yet): their data must not be used.
OPTED_OUT_PERSONS = ("SELECT l.person_id FROM mercia_person_link l "
                     "JOIN mercia_opt_out o ON o.nhs_pseudonym = l.nhs_pseudonym")
OPT_OUT_SOURCE_DDL = """CREATE TABLE IF NOT EXISTS mercia_opt_out_source (
    nhs_pseudonym VARCHAR NOT NULL, org VARCHAR NOT NULL, source_pseudonym VARCHAR NOT NULL)"""
# The tables that name a source record (organisation, pseudonymised record key): what the store keeps
# about a record besides its rows.  A purge deletes the rows of each that name one of the person's records.
RECORD_TABLES = ("mercia_provenance", "mercia_record_version", *PERSON_NAMED_RECORD_TABLES)


def read_opt_out_file(path: Path | str) -> frozenset[str]:
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    values = [line for line in lines if line]
    return frozenset(normalise_nhs_numbers(pa.array(values, pa.string())).to_pylist())


def _ensure_opt_out_tables(store: Store) -> None:
    store.execute(OPT_OUT_DDL)
    store.execute(OPT_OUT_SOURCE_DDL)


def stored_opt_outs(store: Store) -> frozenset[str]:
    _ensure_opt_out_tables(store)
    return frozenset(r[0] for r in store.query("SELECT nhs_pseudonym FROM mercia_opt_out"))


def stored_source_opt_outs(store: Store, org: str) -> frozenset[str]:
    """The source pseudonyms of ``org``'s purged people: a record naming one is withheld."""
    _ensure_opt_out_tables(store)
    return frozenset(r[0] for r in store.query("SELECT source_pseudonym FROM mercia_opt_out_source WHERE org = ?",
                                               [org]))


def record_opt_outs(store: Store, pseudonyms: list[str]) -> None:
    known = stored_opt_outs(store)
    new = sorted(set(pseudonyms) - known)
    store.insert_arrow("mercia_opt_out", pa.table({"nhs_pseudonym": pa.array(new, pa.string())}))


def _nhs_pseudonyms(nhs_numbers: frozenset[str], pseudonymiser: Pseudonymiser) -> list[str]:
    return [p for p in pseudonymiser.nhs_pseudonyms(sorted(nhs_numbers)).to_pylist() if p]


def purge(store: Store, nhs_numbers: frozenset[str], pseudonymiser: Pseudonymiser) -> dict[str, int]:
    """Delete everyone on the list (all organisations' records of the linked person) from every table
    holding their rows, and everything the store keeps about their records: provenance, versions,
    content hashes, rejects naming them, bills of their visits, links, network tokens, cohort
    memberships and trial pre-screening candidates.  One transaction; returns rows deleted per table."""
    ensure_extension_tables(store)
    deleted: dict[str, int] = {}

    def delete(table: str, where: str) -> None:
        count = int(store.query_one(f"SELECT count(*) FROM {quote(table)} WHERE {where}"))
        deleted[table] = deleted.get(table, 0) + count
        store.execute(f"DELETE FROM {quote(table)} WHERE {where}")

    with store.transaction():
        record_opt_outs(store, _nhs_pseudonyms(nhs_numbers, pseudonymiser))
        for name, columns in (("mercia_tmp_purge", "person_id BIGINT"),
                              ("mercia_tmp_purge_rows", "cdm_table VARCHAR, row_id BIGINT"),
                              ("mercia_tmp_purge_records", "org VARCHAR, source_record VARCHAR")):
            store.execute(f"DROP TABLE IF EXISTS {name}")
            store.execute(f"CREATE TEMP TABLE {name} ({columns})")
        store.execute("""INSERT INTO mercia_tmp_purge SELECT DISTINCT person_id FROM mercia_person_link
                         WHERE nhs_pseudonym IN (SELECT nhs_pseudonym FROM mercia_opt_out)""")
        doomed = "(SELECT person_id FROM mercia_tmp_purge)"
        tables = person_tables(store)
        for table, pk in tables.items():
            row_id = quote(pk) if pk else "person_id"
            store.execute(f"INSERT INTO mercia_tmp_purge_rows SELECT '{table}', {row_id} FROM {quote(table)} "
                          f"WHERE person_id IN {doomed}")
        # a bill is a cost row of the visit it bills (cost has no person_id)
        store.execute("""INSERT INTO mercia_tmp_purge_rows SELECT 'cost', cost_id FROM cost
                         WHERE cost_domain_id = 'Visit' AND cost_event_id IN (SELECT row_id FROM mercia_tmp_purge_rows
                                                                              WHERE cdm_table = 'visit_occurrence')""")
        # the person's records: those with a row of theirs, and those without a row that say whose they are
        store.execute("""INSERT INTO mercia_tmp_purge_records SELECT DISTINCT org, source_record FROM mercia_provenance
                         WHERE (cdm_table, row_id) IN (SELECT cdm_table, row_id FROM mercia_tmp_purge_rows)""")
        for table in PERSON_NAMED_RECORD_TABLES:
            store.execute(f"""INSERT INTO mercia_tmp_purge_records SELECT DISTINCT org, source_record FROM {table}
                              WHERE person_id IN {doomed} AND source_record IS NOT NULL""")
        for table, pk in [*tables.items(), ("cost", "cost_id")]:
            delete(table, f"{quote(pk) if pk else 'person_id'} IN "
                          f"(SELECT row_id FROM mercia_tmp_purge_rows WHERE cdm_table = '{table}')")
        for table, column in DERIVED_PERSON_TABLES.items():
            if store.table_exists(table):
                delete(table, f"{column} IN {doomed}")
        for table in RECORD_TABLES:
            delete(table, "(org, source_record) IN (SELECT org, source_record FROM mercia_tmp_purge_records)")
        for table in PERSON_NAMED_RECORD_TABLES:
            delete(table, f"person_id IN {doomed}")
        links = f"(SELECT org, source_pseudonym FROM mercia_person_link WHERE person_id IN {doomed})"
        # their local ids, kept as pseudonyms with the list: a later extract naming them withholds them
        store.execute(f"""INSERT INTO mercia_opt_out_source SELECT DISTINCT o.nhs_pseudonym, l.org, l.source_pseudonym
            FROM mercia_person_link l JOIN mercia_person_link n ON n.person_id = l.person_id
            JOIN mercia_opt_out o ON o.nhs_pseudonym = n.nhs_pseudonym
            WHERE l.person_id IN {doomed} AND (l.org, l.source_pseudonym) NOT IN
                  (SELECT org, source_pseudonym FROM mercia_opt_out_source)""")
        delete("mercia_network_token", f"(org, source_pseudonym) IN {links}")
        delete("mercia_person_token", f"person_id IN {doomed}")
        delete("mercia_person_link", f"person_id IN {doomed}")
        for name in ("mercia_tmp_purge", "mercia_tmp_purge_rows", "mercia_tmp_purge_records"):
            store.execute(f"DROP TABLE {name}")
    return {t: n for t, n in deleted.items() if n}


def readmit(store: Store, nhs_numbers: frozenset[str], pseudonymiser: Pseudonymiser) -> int:
    """Take people off the stored opt-out list (they opted back in): later loads store their records
    again, as new ones (the purge kept nothing that could call them unchanged).  Returns how many
    listed people were on the stored list."""
    pseudonyms = _nhs_pseudonyms(nhs_numbers, pseudonymiser)
    _ensure_opt_out_tables(store)
    with store.transaction():
        store.temp_table_from_arrow("mercia_tmp_readmit", "nhs_pseudonym VARCHAR",
                                    pa.table({"nhs_pseudonym": pa.array(pseudonyms, pa.string())}))
        listed = int(store.query_one("SELECT count(*) FROM mercia_opt_out WHERE nhs_pseudonym IN "
                                     "(SELECT nhs_pseudonym FROM mercia_tmp_readmit)"))
        for table in ("mercia_opt_out", "mercia_opt_out_source"):
            store.execute(f"DELETE FROM {table} WHERE nhs_pseudonym IN (SELECT nhs_pseudonym FROM mercia_tmp_readmit)")
    return listed
