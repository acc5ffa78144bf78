"""Every CDM v5.4 table and column exists with the right type and nullability on every engine,
compared against the one specification in mercia/cdm/schema.py."""

import pytest

from mercia.cdm import CDM_TABLES
from mercia.cdm.schema import VOCABULARY_TABLES

# How each engine's information_schema names the types the spec renders.
ENGINE_TYPES = {
    "duckdb": {"BIGINT": "BIGINT", "DATE": "DATE", "TIMESTAMP": "TIMESTAMP", "DOUBLE PRECISION": "DOUBLE",
               "VARCHAR": "VARCHAR"},
    "postgres": {"BIGINT": "bigint", "DATE": "date", "TIMESTAMP": "timestamp without time zone",
                 "DOUBLE PRECISION": "double precision", "VARCHAR": "character varying"},
}


def test_spec_matches_the_cdm_v54_tables_eunomia_ships(gibleed_dir):
    """GiBleed's schema.json (written by OHDSI Eunomia, not by us) lists CDM v5.4 tables and columns."""
    import json

    shipped = json.loads((gibleed_dir / "schema.json").read_text())
    assert set(shipped) == set(CDM_TABLES)
    for name, columns in shipped.items():
        ours = CDM_TABLES[name].column_names
        if name == "note_nlp":  # Eunomia drops the column named `offset` (a reserved word)
            ours = [c for c in ours if c != "offset"]
        assert [c for c, _ in columns] == ours, name
        # Same type family; the two documented renderings: NUMERIC as DOUBLE, TEXT as VARCHAR.
        rendered = {"NUMERIC": "DOUBLE PRECISION", "TEXT": "VARCHAR", "DOUBLE": "DOUBLE PRECISION"}
        for column, shipped_type in columns:
            assert rendered.get(shipped_type, shipped_type) == CDM_TABLES[name].column(column).sql_type, column
    assert {t.name for t in VOCABULARY_TABLES} == {
        "concept", "vocabulary", "domain", "concept_class", "concept_relationship", "relationship",
        "concept_synonym", "concept_ancestor", "source_to_concept_map", "drug_strength"}


def test_every_column_has_the_spec_type_and_nullability(store):
    catalog = "" if store.dialect == "postgres" else "AND table_catalog = current_database()"
    rows = store.query(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        f"WHERE table_schema = current_schema() {catalog} AND table_name <> ?", ["__none__"])
    actual = {(t, c): (typ, nullable == "NO") for t, c, typ, nullable in rows}
    expected = {(t.name, c.name): (ENGINE_TYPES[store.dialect][c.sql_type], c.required)
                for t in CDM_TABLES.values() for c in t.columns}
    assert {k: actual.get(k) for k in expected} == expected


def test_postgres_has_the_indexes_duckdb_does_without(store):
    if store.dialect != "postgres":
        assert store.query_one("SELECT count(*) FROM duckdb_indexes() WHERE schema_name = current_schema()") == 0
        return
    indexed = {r[0] for r in store.query("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    assert {"idx_person_person_id", "idx_concept_ancestor_ancestor_concept_id",
            "idx_concept_relationship_concept_id_1", "idx_condition_occurrence_person_id"} <= indexed
    # each domain table's own concept, which a cohort's criteria select
    assert {"idx_condition_occurrence_condition_concept_id", "idx_drug_exposure_drug_concept_id",
            "idx_measurement_measurement_concept_id", "idx_visit_occurrence_visit_concept_id",
            "idx_drug_era_drug_concept_id"} <= indexed
    assert not {name for name in indexed if name.endswith(("_source_concept_id", "_type_concept_id"))}


def test_primary_keys_can_be_enforced(empty_store):
    empty_store.init_schema(enforce_primary_keys=True)
    empty_store.execute("INSERT INTO domain VALUES ('Condition', 'Condition', 19)")
    try:
        empty_store.execute("INSERT INTO domain VALUES ('Condition', 'Again', 19)")
    except Exception as exc:  # noqa: BLE001 - each engine has its own constraint error
        assert "duplicate" in str(exc).lower() or "constraint" in str(exc).lower()
    else:
        raise AssertionError("duplicate primary key accepted")


def test_year_of_birth_may_be_null_also_in_a_store_made_when_it_was_required(empty_store):
    """Mercia keeps case reports without an age (docs/cdm.md): a store created NOT NULL before that
    is relaxed by init_schema, on every engine, and keeps its rows."""
    person = CDM_TABLES["person"]
    old = [f'"{c.name}" {c.sql_type}{" NOT NULL" if c.required or c.name == "year_of_birth" else ""}'
           for c in person.columns]
    empty_store.execute(f"CREATE TABLE person ({', '.join(old)}, PRIMARY KEY (person_id))")
    add = "INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, ethnicity_concept_id)"
    empty_store.execute(f"{add} VALUES (1, 0, 1990, 0, 0)")
    empty_store.init_schema()
    empty_store.init_schema()  # idempotent
    empty_store.execute(f"{add} VALUES (2, 0, NULL, 0, 0)")
    assert empty_store.query("SELECT person_id, year_of_birth FROM person ORDER BY 1") == [(1, 1990), (2, None)]


def test_a_new_stores_tables_come_all_or_none(empty_store, monkeypatch):
    """The CDM and extension tables are made in one transaction (one commit to disk, not one per statement):
    a statement that fails leaves none of them, and the next run makes them all."""
    from mercia.cdm import extensions
    from mercia.cdm.store import StoreError

    ddl = extensions.DDL
    monkeypatch.setattr(extensions, "DDL", [*ddl, "CREATE TABLE mercia_broken (x NOT_A_TYPE)"])
    with pytest.raises(StoreError):
        extensions.ensure_extension_tables(empty_store)
    assert not [t for t in ("person", "mercia_load", "mercia_provenance") if empty_store.table_exists(t)]
    monkeypatch.setattr(extensions, "DDL", ddl)
    extensions.ensure_extension_tables(empty_store)
    extensions.ensure_extension_tables(empty_store)  # idempotent
    assert all(empty_store.table_exists(t) for t in ("person", "mercia_load", "mercia_provenance", "mercia_id_block"))
