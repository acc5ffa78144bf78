"""``mercia.services.raredisease.diagnose_case``: the ensemble's ranking as the API and web page receive it."""

from __future__ import annotations

import pytest

from mercia.governance import GovernanceError
from mercia.services.raredisease import diagnose_case


def test_diagnose_case_returns_calibrated_explained_candidates():
    result = diagnose_case(["HP:0001166", "HP:0001519", "HP:0000545", "HP:0001083"], [], [], top=5)
    assert result["hpo_version"].startswith("HPO 2025-01-16")
    top = result["ranking"][0]
    assert top["disease_id"] == "OMIM:154700" and 0 < top["probability"] < 1
    assert {"supporting", "contradicting", "evidence", "lr_score"} <= set(top)
    assert result["too_sparse_to_decide"] is False
    assert [c["rank"] for c in result["ranking"]] == [1, 2, 3, 4, 5]


def test_diagnose_case_refuses_bad_terms_naming_each_one():
    with pytest.raises(GovernanceError, match="HP:9999999.*HP:12"):
        diagnose_case(["HP:9999999", "HP:12"], [], [])
    with pytest.raises(GovernanceError, match="no observed or excluded HPO term"):
        diagnose_case([], [], [])
