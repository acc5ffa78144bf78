"""The federation hub's routes in the main API (``/api/v1/federation``): the same routes as the
stand-alone hub (``mercia hub serve``), with the server's own sign-in."""

from __future__ import annotations

from mercia.api.auth import current_user
from mercia.federation.hubapp import federation_router
from mercia.services.federation import hub_of
from mercia.services.state import state_of

router = federation_router(lambda request: hub_of(state_of(request)), current_user)
