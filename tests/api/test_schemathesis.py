"""Property-based calls against the published OpenAPI schema (schemathesis): whatever arrives, the
API answers with a 2xx or a 4xx that says why, never a 500.

Driven from a plain test (schemathesis's pytest plugin does not support pytest 9 yet): each
operation's case strategy runs under a bounded hypothesis budget.
"""

from __future__ import annotations

import pytest
import schemathesis
from tests.api.api_world import build_world
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from mercia.cdm import Store
from tests import fuzzing  # noqa: F401 - the federation routes' Arrow result's media type

EXAMPLES_PER_OPERATION = 8


@pytest.mark.slow
def test_api_never_answers_500(tmp_path):
    world = build_world(Store(str(tmp_path / "cdm.duckdb")))
    with world.client:
        # built once and cached by the app: schemathesis's loader gives the first build only 10 s, which a
        # loaded machine can exceed
        assert world.client.get("/api/v1/openapi.json").status_code == 200
        schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", world.client.app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 40
        statuses: dict[int, int] = {}
        for operation in operations:
            token = world.login("res")  # fresh for each operation: fuzzed calls may revoke tokens
            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case):
                case.headers = {**(case.headers or {}), **token}  # noqa: B023 - called at once below
                response = case.call()
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])

            call()
        # the fuzzing reached real handlers, not just the authentication wall
        assert statuses.get(200, 0) > 20 and statuses.get(404, 0) > 5, statuses
