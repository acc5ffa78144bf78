"""Bulk load of OMOP CDM tables from a directory of ``<table>.csv[.gz]`` / ``.parquet`` files.

First version: DuckDB reads each file with the CDM's own column types.  (Being hardened by the
foundation work: atomicity, Athena TSV, PostgreSQL COPY, error messages naming file/line/column.)
"""

from __future__ import annotations

from pathlib import Path

from mercia.cdm.schema import CDM_TABLES
from mercia.cdm.store import Store, quote


def load_omop_directory(store: Store, directory: Path) -> dict[str, int]:
    loaded: dict[str, int] = {}
    for path in sorted(Path(directory).iterdir()):
        name = path.name.split(".")[0].lower()
        if name not in CDM_TABLES:
            continue
        table = CDM_TABLES[name]
        con = store.duckdb_connection
        header = con.execute(f"SELECT * FROM read_csv('{path}', header=true, all_varchar=true) LIMIT 0").description
        present = [d[0] for d in header if d[0] in table.column_names]
        types = {c: table.column(c).sql_type.replace("DOUBLE PRECISION", "DOUBLE") for c in present}
        cols = ", ".join(quote(c) for c in present)
        # OMOP convention: an unknown required concept is concept 0 ("No matching concept").
        select = ", ".join(f"COALESCE({quote(c)}, 0)" if table.column(c).required and table.column(c).is_concept_id
                           else quote(c) for c in present)
        spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in types.items()) + "}"
        con.execute(f"INSERT INTO {quote(name)} ({cols}) SELECT {select} FROM "
                    f"read_csv('{path}', header=true, columns={spec})")
        loaded[name] = con.execute(f"SELECT count(*) FROM {quote(name)}").fetchone()[0]
    return loaded
