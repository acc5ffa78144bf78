"""`mercia db optimize`: clinical tables stored in concept order on DuckDB (zone maps), left as they
are elsewhere; the rows never change."""

from __future__ import annotations

import pytest

from mercia.cdm.optimize import optimize

from .test_cli import db_url, invoke

# condition rows written out of concept order: (id, person, concept)
CONDITIONS = [(1, 3, 300), (2, 1, 100), (3, 2, 300), (4, 1, 200), (5, 2, 100), (6, 1, 300)]


def _write_conditions(store) -> None:
    store.init_schema()
    values = ", ".join(f"({i}, {p}, {c}, DATE '2020-01-0{i}', 32020)" for i, p, c in CONDITIONS)
    store.execute(
        "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
        f"condition_start_date, condition_type_concept_id) VALUES {values}"
    )


def _rows(store) -> list[tuple]:
    return sorted(store.query("SELECT condition_occurrence_id, person_id, condition_concept_id FROM condition_occurrence"))


def test_optimize_stores_duckdb_rows_in_concept_order_and_changes_no_row(store):
    _write_conditions(store)
    before = _rows(store)
    done = optimize(store)
    assert _rows(store) == before
    if store.dialect == "duckdb":
        assert "condition_occurrence" in done
        stored = store.query("SELECT condition_concept_id, person_id FROM condition_occurrence ORDER BY rowid")
        assert stored == sorted((c, p) for _, p, c in CONDITIONS)
    else:
        assert done == []


def test_optimize_refuses_a_table_it_does_not_order(store):
    with pytest.raises(ValueError, match="person: not a clinical table kept in concept order"):
        optimize(store, ["person"])


def test_optimize_command(store):
    _write_conditions(store)
    url = db_url(store)
    done = invoke("db", "optimize", "--db", url, "--table", "condition_occurrence")
    assert done.exit_code == 0, done.output
    expected = "in concept order: condition_occurrence" if url.endswith(".duckdb") else "nothing to reorder"
    assert expected in done.output
    refused = invoke("db", "optimize", "--db", url, "--table", "concept")
    assert refused.exit_code == 1
    assert "concept: not a clinical table kept in concept order" in refused.output


def test_optimize_keeps_an_enforced_primary_key(tmp_path):
    """Deleting and re-inserting every key in one transaction is allowed (and the key still holds)."""
    from mercia.cdm import Store, StoreError

    store = Store(str(tmp_path / "pk.duckdb"))
    store.init_schema(enforce_primary_keys=True)
    _write_conditions(store)
    assert optimize(store, ["condition_occurrence"]) == ["condition_occurrence"]
    assert _rows(store) == sorted((i, p, c) for i, p, c in CONDITIONS)
    with pytest.raises(StoreError):
        store.execute(
            "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
            "condition_start_date, condition_type_concept_id) VALUES (1, 1, 1, DATE '2020-01-01', 1)"
        )
