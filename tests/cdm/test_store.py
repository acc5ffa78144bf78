from mercia.cdm import CDM_TABLES


def test_init_schema_creates_every_cdm_table(store):
    for name, table in CDM_TABLES.items():
        assert [c for c, _ in store.columns(name)] == table.column_names, name


def test_init_schema_is_idempotent(store):
    store.init_schema()
    assert set(store.table_counts()) == set(CDM_TABLES)


def test_gibleed_person_count(gibleed_store):
    assert gibleed_store.table_counts(["person"]) == {"person": 2694}
