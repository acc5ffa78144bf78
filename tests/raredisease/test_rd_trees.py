"""The numpy tree evaluator must score exactly as LightGBM does, so rankings do not move."""

from __future__ import annotations

import json

import lightgbm
import numpy as np
import pytest

from mercia.raredisease import ensemble
from mercia.raredisease.ranker import Case
from mercia.raredisease.trees import TreeEnsemble, UnsupportedModelError


@pytest.fixture(scope="module")
def shipped():
    model = ensemble.EnsembleModel.load()
    return model, lightgbm.Booster(model_str=model.trees.text)


@pytest.fixture(scope="module")
def sample_cases(shared_data):
    lines = (shared_data / "phenopackets" / "dev_cases.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[::7] if line.strip()]  # every 7th dev case: ~400
    return [Case(r["observed"], r["excluded"], id=r["id"]) for r in rows]


def test_shipped_model_scores_equal_lightgbm_bit_for_bit(shipped, ranker, sample_cases):
    model, booster = shipped
    pairs = ensemble.candidate_pairs(ensemble.PairFeatures(ranker), sample_cases, model.settings, keep_scores=False)
    assert len(pairs.case) > 10_000
    assert np.array_equal(model.predict(pairs.features), booster.predict(pairs.features, num_threads=1))


def test_rankings_equal_those_of_lightgbm_predict(shipped, ranker, sample_cases):
    model, booster = shipped
    new = ensemble.EnsembleRanker(ranker, model)
    old = ensemble.EnsembleRanker(ranker, ensemble.EnsembleModel.load())
    old.model.predict = lambda x: booster.predict(x, num_threads=1)  # the path before the numpy evaluator
    first = [r.to_dict() for r in new.rank_many(sample_cases, top=10, term_lrs=True)]
    second = [r.to_dict() for r in old.rank_many(sample_cases, top=10, term_lrs=True)]
    assert first == second and sum(len(r["ranking"]) for r in first) > 3000


def test_zeros_tiny_values_and_nan_are_read_as_lightgbm_reads_them(shipped):
    model, booster = shipped
    rng = np.random.default_rng(5)
    x = rng.normal(scale=3.0, size=(5000, model.trees.n_features))
    odd = [1.0, 0.0, np.nan, 1e-36, -1e-40, np.inf, -np.inf]
    x *= rng.choice(odd, size=x.shape, p=[.7, .1, .05, .05, .04, .03, .03])
    exact = np.array(model.trees.edges[0][:50])  # values on a threshold go left
    x[:50, 0] = exact
    assert np.array_equal(model.predict(x), booster.predict(x, num_threads=1))


def test_any_small_numerical_model_is_reproduced(tmp_path):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2000, 4))
    x[:, 3] = rng.integers(0, 3, size=2000)  # a few distinct values: thresholds at midpoints
    y = (x[:, 0] > 0.3).astype(float) + x[:, 1] * (x[:, 3] == 1)
    params = {"objective": "regression", "num_leaves": 16, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=20)
    trees = TreeEnsemble(booster.model_to_string())
    probe = rng.normal(size=(3000, 4)) * 2
    assert np.array_equal(trees.predict(probe), booster.predict(probe, num_threads=1))
    with pytest.raises(ValueError, match="rows of 4 features"):
        trees.predict(probe[:, :3])


def test_models_it_cannot_reproduce_are_refused():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 3))
    y = x[:, 0] * 3 + np.sin(x[:, 1] * 4) + x[:, 2] ** 2
    big = lightgbm.train({"objective": "regression", "num_leaves": 31, "min_data_in_leaf": 5, "verbose": -1},
                         lightgbm.Dataset(x, y), num_boost_round=2)
    with pytest.raises(UnsupportedModelError, match="31 leaves"):
        TreeEnsemble(big.model_to_string())
    x[::10, 0] = np.nan  # missing values seen in training: LightGBM routes them, which is not reproduced
    routed = lightgbm.train({"objective": "regression", "num_leaves": 8, "min_data_in_leaf": 5, "verbose": -1},
                            lightgbm.Dataset(x, y), num_boost_round=5)
    with pytest.raises(UnsupportedModelError, match="missing-value split"):
        TreeEnsemble(routed.model_to_string())
