"""National data opt-out: people on the list are never loaded, and are purged if already present.

The list (NHS numbers, one per line; blank lines and ``#`` comments ignored) is applied at the
door by ``mercia.ingest.load`` and by ``purge`` here.  Only keyed-hash pseudonyms of the list are
kept (``mercia_opt_out``), so later loads keep withholding those people without the platform ever
storing their NHS numbers.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mercia.cdm import Store, quote
from mercia.cdm.extensions import ensure_extension_tables, person_tables
from mercia.privacy.nhs import normalise_nhs_numbers
from mercia.privacy.pseudonym import Pseudonymiser

OPT_OUT_DDL = "CREATE TABLE IF NOT EXISTS mercia_opt_out (nhs_pseudonym VARCHAR NOT NULL)"


def read_opt_out_file(path: Path | str) -> frozenset[str]:
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    values = [line for line in lines if line]
    return frozenset(normalise_nhs_numbers(pa.array(values, pa.string())).to_pylist())


def stored_opt_outs(store: Store) -> frozenset[str]:
    store.execute(OPT_OUT_DDL)
    return frozenset(r[0] for r in store.query("SELECT nhs_pseudonym FROM mercia_opt_out"))


def record_opt_outs(store: Store, pseudonyms: list[str]) -> None:
    store.execute(OPT_OUT_DDL)
    known = stored_opt_outs(store)
    new = sorted(set(pseudonyms) - known)
    store.insert_arrow("mercia_opt_out", pa.table({"nhs_pseudonym": pa.array(new, pa.string())}))



def purge(store: Store, nhs_numbers: frozenset[str], pseudonymiser: Pseudonymiser) -> dict[str, int]:
    """Delete everyone on the list from every table (all organisations' records of the linked
    person), in one transaction; returns rows deleted per table."""
    ensure_extension_tables(store)
    pseudonyms = [p for p in pseudonymiser.nhs_pseudonyms(sorted(nhs_numbers)).to_pylist() if p]
    deleted: dict[str, int] = {}
    with store.transaction():
        record_opt_outs(store, pseudonyms)
        store.execute("DROP TABLE IF EXISTS mercia_tmp_purge")
        store.execute("CREATE TEMP TABLE mercia_tmp_purge (person_id BIGINT)")
        store.execute("""INSERT INTO mercia_tmp_purge SELECT DISTINCT person_id FROM mercia_person_link
                         WHERE nhs_pseudonym IN (SELECT nhs_pseudonym FROM mercia_opt_out)""")
        doomed = "(SELECT person_id FROM mercia_tmp_purge)"
        for table, pk in person_tables(store).items():
            row_id = quote(pk) if pk else "person_id"
            store.execute(f"""DELETE FROM mercia_provenance WHERE cdm_table = '{table}' AND row_id IN
                              (SELECT {row_id} FROM {quote(table)} WHERE person_id IN {doomed})""")
            deleted[table] = int(store.query_one(f"SELECT count(*) FROM {quote(table)} WHERE person_id IN {doomed}"))
            store.execute(f"DELETE FROM {quote(table)} WHERE person_id IN {doomed}")
        if store.table_exists("cohort"):
            store.execute(f"DELETE FROM cohort WHERE subject_id IN {doomed}")
        deleted["mercia_person_link"] = int(store.query_one(
            f"SELECT count(*) FROM mercia_person_link WHERE person_id IN {doomed}"))
        store.execute(f"DELETE FROM mercia_person_link WHERE person_id IN {doomed}")
        store.execute("DROP TABLE IF EXISTS mercia_tmp_purge")
    return {t: n for t, n in deleted.items() if n}
