"""``mercia demo`` on a machine without the public test data (a fresh clone with only Python and make)."""

from __future__ import annotations

from mercia.demo import build_demo
from mercia.vocab.metabolites import NIGHTINGALE_VOCABULARY_ID


def test_demo_builds_without_the_nightingale_catalogue(tmp_path, monkeypatch):
    monkeypatch.setenv("MERCIA_NMR_CATALOGUE", str(tmp_path / "absent" / "nmr_info.csv"))
    built = build_demo(tmp_path / "demo", persons=400, seed=3)
    try:
        assert built.nmr_catalogue is None
        assert built.store.query_one("SELECT count(*) FROM person") > 0
        assert built.store.query_one("SELECT count(*) FROM concept WHERE vocabulary_id = ?",
                                     [NIGHTINGALE_VOCABULARY_ID]) == 0
        cohorts = [name for (name,) in built.store.query("SELECT name FROM mercia_cohort ORDER BY name")]
        assert cohorts == ["New type 2 diabetes starting metformin"]
    finally:
        built.store.close()
