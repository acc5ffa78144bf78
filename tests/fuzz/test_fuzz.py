"""Fuzzing the readers (issue 11).  Three layers:

- every seed of ``corpus/<target>/`` goes through its target (fast);
- hypothesis puts arbitrary JSON values into every element of valid FHIR resources and Circe
  definitions, which byte mutation rarely reaches (fast);
- atheris, coverage-guided, runs each target for ``MERCIA_FUZZ_SECONDS`` (default 5) in a
  subprocess (slow).  In ``make test`` that is a check that each target fuzzes from its seeds without
  a finding, not the search itself: the search is the long run, on demand and after a reader changes,
  ``python -m tests.fuzz.run TARGET --seconds 3600`` (or ``MERCIA_FUZZ_SECONDS=600 pytest -m slow
  tests/fuzz``).  A finding is fixed and kept as a seed in ``corpus/``, which every run replays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import CORPUS, TARGETS, checked, seeds

ROOT = Path(__file__).resolve().parents[2]
FUZZ_SECONDS = int(os.environ.get("MERCIA_FUZZ_SECONDS", "5"))


@pytest.mark.parametrize("target", TARGETS)
def test_every_seed_is_read_without_a_crash(target):
    corpus = seeds(target)
    assert len(corpus) >= 2, f"tests/fuzz/corpus/{target} needs seeds"
    run = checked(target)
    for data in corpus:
        run(data)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


def _paths(node, prefix=()):
    """Every (path) to a value inside a JSON document."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _replace(document, path, value):
    document = orjson.loads(orjson.dumps(document))
    if not path:
        return value
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return document


def _documents(target: str) -> list:
    """The seeds' JSON documents (a seed that is a fuzzing finding may be no JSON at all)."""
    documents = []
    for line in (line for data in seeds(target) for line in data.splitlines() if line.strip().startswith(b"{")):
        try:
            documents.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return documents


def _mutations(target: str):
    documents = _documents(target)
    return st.sampled_from(documents).flatmap(
        lambda doc: st.tuples(st.just(doc), st.sampled_from(list(_paths(doc))), JSON))


@pytest.mark.parametrize("target", ["fhir_ndjson", "fhir_bundle", "phenopacket", "circe"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_in_any_element_is_read_or_refused_cleanly(target, data):
    document, path, value = data.draw(_mutations(target))
    checked(target)(json.dumps(_replace(document, path, value)).encode())


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_coverage_guided_fuzzing_finds_nothing(target, tmp_path):
    pytest.importorskip("atheris", reason="atheris (test extra) is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, "--seconds", str(FUZZ_SECONDS), "--work", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=FUZZ_SECONDS + 120)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, result.stderr[-4000:]
    assert (CORPUS / target).is_dir()
