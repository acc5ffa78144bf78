"""One small synthetic region per test session, shared read-only by the synth tests."""

from __future__ import annotations

import pytest

from mercia.synth import generate_region

REGION_PERSONS = 2_000
REGION_SEED = 7
REGION_ERROR_RATE = 0.03


@pytest.fixture(scope="session")
def region(tmp_path_factory):
    out = tmp_path_factory.mktemp("region") / "wm"
    manifest = generate_region(out, persons=REGION_PERSONS, seed=REGION_SEED, error_rate=REGION_ERROR_RATE,
                               practices=3, trusts=2)
    return out, manifest
