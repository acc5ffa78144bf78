"""A Mercia server acting as the federation hub: one Hub per running server, over its own store and
governance, so researchers ask federated questions with the accounts and projects they already have."""

from __future__ import annotations

import threading

from mercia.federation.hub import Hub, HubSettings
from mercia.services.state import MerciaState

_CREATE = threading.Lock()


def hub_of(state: MerciaState) -> Hub:
    """The server's hub, created (tables and all) on first use."""
    with _CREATE:
        hub = getattr(state, "federation_hub", None)
        if hub is None:
            hub = state.federation_hub = Hub(state.state_store, HubSettings(), gov=state.gov)
    return hub
