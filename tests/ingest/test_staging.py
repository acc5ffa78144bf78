"""Staged columns: rows one at a time and whole tables keep the order they came in; a field the schema
does not have is an error, not a silent null."""

import pyarrow as pa
import pytest

from mercia.ingest.staging import SITE_SCHEMA, Columns


def test_rows_and_tables_keep_their_order():
    sites = Columns(SITE_SCHEMA)
    sites.add(record="Organization/a", kind="Organization")
    sites.add_table(pa.table({"record": ["Organization/b", "Organization/c"], "line": [2, 3]}))
    sites.add(record="Organization/d", name="D", line=4)
    table = sites.table()
    assert len(sites) == 4 and table.schema == SITE_SCHEMA
    assert table.column("record").to_pylist() == [f"Organization/{x}" for x in "abcd"]
    assert table.column("line").to_pylist() == [None, 2, 3, 4]
    assert sites.data["name"] == [None, None, None, "D"]


def test_a_field_the_schema_lacks_is_refused():
    sites = Columns(SITE_SCHEMA)
    sites.add(record="Organization/a", ods="X1")
    with pytest.raises(ValueError, match="staged fields not in the schema: ods"):
        sites.table()
