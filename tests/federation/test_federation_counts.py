"""The hub's de-duplication (``hub.network_counts``) against a plain reading of its rule, on random member
rows: shared persons, persons known only by a demographic token, several cells, both ways of counting cells."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mercia.federation.hub import MEMBER_ROWS, network_counts


def random_rows(seed: int, n: int, cells: list[str]) -> pa.Table:
    """Rows of five sites over a few hundred persons: most with an NHS token, some only with a demographic
    token that a person elsewhere also carries, some with neither link; persons repeat across sites."""
    rng = np.random.default_rng(seed)
    person = rng.integers(0, n // 3, n)
    nhs = np.where(rng.random(n) < 0.8, person + 1_000, None)
    demographic = np.where(rng.random(n) < 0.7, person % (n // 4) + 50_000, None)
    rows = pa.table({"site": pa.array(rng.choice(["S1", "S2", "S3", "S4", "S5"], n)).dictionary_encode(),
                     "nhs": pa.array(nhs, pa.uint64()), "demographic": pa.array(demographic, pa.uint64()),
                     "cell": pa.array(rng.choice(cells, n)).dictionary_encode()}).cast(MEMBER_ROWS)
    return pa.concat_tables([rows.slice(start, n // 5) for start in range(0, n, n // 5)])   # chunks, as received


def counted_plainly(rows: pa.Table, partition: bool) -> tuple[int, int, dict[str, int]]:
    """The rule in plain Python: a person is their NHS token; a row with only a demographic token is the
    person with the smallest NHS token seen with that demographic token, else a person of its own."""
    records = rows.to_pylist()
    alias: dict[int, int] = {}
    for r in records:
        if r["nhs"] is not None and r["demographic"] is not None:
            alias[r["demographic"]] = min(alias.get(r["demographic"], r["nhs"]), r["nhs"])
    sites: dict[tuple, set] = {}
    cells: dict[tuple, set] = {}
    for r in records:
        if r["nhs"] is not None:
            key = ("nhs", r["nhs"])
        else:
            key = ("nhs", alias[r["demographic"]]) if r["demographic"] in alias else ("own", r["demographic"])
        sites.setdefault(key, set()).add(r["site"])
        cells.setdefault(key, set()).add(r["cell"])
    per_cell: dict[str, int] = {}
    for held in cells.values():
        for cell in [min(held)] if partition else held:
            per_cell[cell] = per_cell.get(cell, 0) + 1
    return len(sites), sum(len(s) > 1 for s in sites.values()), per_cell


@pytest.mark.parametrize("partition", [True, False])
@pytest.mark.parametrize("cells", [[""], ["sex=female", "sex=male", "sex=unknown"]])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_network_counts_follow_the_rule(seed, cells, partition):
    rows = random_rows(seed, 3_000, cells)
    assert rows.column("nhs").null_count and rows.column("demographic").null_count
    assert network_counts(rows, partition) == counted_plainly(rows, partition)


def test_network_counts_with_every_row_linked_by_nhs_token():
    rows = random_rows(4, 3_000, [""])
    rows = rows.filter(pc.is_valid(rows.column("nhs")))
    assert rows.column("nhs").null_count == 0 and rows.num_rows > 2_000
    assert network_counts(rows, True) == counted_plainly(rows, True)
    assert network_counts(rows.slice(0, 0), True) == (0, 0, {})
