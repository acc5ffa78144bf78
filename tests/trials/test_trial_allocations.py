"""The statistician's unblinded allocation summary: arms by site, balance by factor; nobody else; audited."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mercia.governance import Forbidden, NotFound
from mercia.services.state import ServerOptions
from mercia.trials.prescreen import worklist
from mercia.web.app import create_app

from .conftest import SITE_A, make_world
from .test_trials_service import enrol

T = "ISRCTN12345678"
LEVELS = [{"sex": "F", "age": "<65"}, {"sex": "M", "age": "<65"}, {"sex": "F", "age": "65+"},
          {"sex": "M", "age": "65+"}, {"sex": "F", "age": "<65"}, {"sex": "F", "age": "65+"}]


def randomise_six(world):
    worklist(world.register, world.people["nurse_a"], T, SITE_A)
    return {person: world.recruitment.allocation(world.people["pharm"], T, person)["arm"]
            for person, levels in zip(range(6, 12), LEVELS, strict=True) if enrol(world, person, levels=levels)}


def test_summary_counts_arms_and_balance_for_the_statistician_only(world):
    arms = randomise_six(world)
    summary = world.recruitment.allocation_summary(world.people["stats"], T)
    assert summary["total"] == 6 and summary["by_arm"] == {
        arm: sum(1 for a in arms.values() if a == arm) for arm in ("drug", "placebo")}
    assert summary["sites"][0]["site"] == SITE_A and sum(summary["sites"][1][a] for a in ("drug", "placebo")) == 0
    sex = next(f for f in summary["factors"] if f["factor"] == "sex")
    females = [p for p, lv in zip(range(6, 12), LEVELS, strict=True) if lv["sex"] == "F"]
    f_row = next(r for r in sex["rows"] if r["level"] == "F")
    assert f_row["drug"] == sum(1 for p in females if arms[p] == "drug")
    assert f_row["imbalance"] == abs(f_row["drug"] - f_row["placebo"])
    assert world.gov.audit.search(action="trial.allocation_summary")[0]["actor"] == "stats"
    for name in ("manager", "nurse_a", "pi_a", "pharm", "gp_a", "researcher"):
        with pytest.raises((Forbidden, NotFound)):   # no role on the trial at all: not even its existence
            world.recruitment.allocation_summary(world.people[name], T)


def test_allocations_page_by_role(store, monkeypatch):
    if store.dialect != "duckdb":
        pytest.skip("the web app test runs on the DuckDB store")
    monkeypatch.setenv("MERCIA_RANDOMISATION_KEY", "web-test-key-web-test-key-0123456789")
    world = make_world(store)
    randomise_six(world)
    client = TestClient(create_app(store, ServerOptions(secure_cookies=False, job_workers=1)),
                        base_url="http://testserver")
    with client:
        for name, status in (("nurse_a", 403), ("manager", 403), ("pharm", 403), ("stats", 200)):
            token, _ = world.gov.start_session(world.people[name])
            client.cookies.set("mercia_session", token)
            page = client.get(f"/trials/{T}/allocations")
            assert page.status_code == status, name
        assert "Balance by sex" in page.text and "Balance by age" in page.text and "drug" in page.text
        assert "Unblinded allocation summary" in client.get(f"/trials/{T}").text
        token, _ = world.gov.start_session(world.people["manager"])
        client.cookies.set("mercia_session", token)
        assert "Unblinded allocation summary" not in client.get(f"/trials/{T}").text
