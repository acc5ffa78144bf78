"""The services run in the same small world as the API tests (``tests.api.api_world``)."""

from tests.api.conftest import world  # noqa: F401  (a pytest fixture)
