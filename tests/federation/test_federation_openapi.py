"""The hub's OpenAPI document, fuzzed (schemathesis): every operation answers 2xx or a 4xx that says
why, never a 500 — as an administrator, as a researcher, and as nobody."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from mercia.cdm import Store
from mercia.federation.demo import approved_project
from mercia.federation.hub import Hub
from mercia.federation.hubapp import PREFIX, create_hub_app
from mercia.federation.signing import generate_keypair
from mercia.governance.model import Role
from tests import fuzzing  # noqa: F401 - the Arrow result's media type

EXAMPLES_PER_OPERATION = 8


@pytest.mark.slow
def test_hub_api_never_answers_500(tmp_path):
    hub = Hub(Store(str(tmp_path / "hub.duckdb")))
    _, public = generate_keypair(tmp_path / "node.key")
    hub.enrol("M85001", "Practice", public.read_text(), actor="test")
    _, researcher_token, _ = approved_project(hub)
    admin = hub.gov.create_user("hubadmin", "Admin", "a-long-password-1", [(Role.ADMIN, "")])
    _, admin_token = hub.gov.create_token(admin, "t")
    client = TestClient(create_hub_app(hub))
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {f"{PREFIX}/queries", f"{PREFIX}/node/work", f"{PREFIX}/nodes"}
    statuses: dict[int, int] = {}
    for operation in operations:
        for token in (admin_token, researcher_token, None):
            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def call(case):
                if token:  # noqa: B023 - called at once below
                    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}  # noqa: B023
                response = case.call()
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])

            call()
    assert statuses.get(401, 0) > 5 and statuses.get(403, 0) > 5, statuses
    assert sum(n for s, n in statuses.items() if s < 300) > 5, statuses
