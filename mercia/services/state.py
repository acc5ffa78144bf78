"""What a running Mercia server holds: the store, governance, the airlock and the job runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mercia.cdm import Store
from mercia.config import load_settings
from mercia.governance import Airlock, Governance
from mercia.services.jobs import JobRunner


@dataclass
class ServerOptions:
    secure_cookies: bool = True
    session_cookie: str = "mercia_session"
    job_workers: int = 2
    oidc: dict[str, str] | None = None  # see mercia.web.oidc
    max_request_bytes: int = field(default_factory=lambda: load_settings().max_request_bytes)
    max_upload_bytes: int = field(default_factory=lambda: load_settings().max_upload_bytes)
    # Reverse proxies whose X-Forwarded-For is believed (see mercia.api.auth.client_source).
    trusted_proxies: tuple[str, ...] = field(default_factory=lambda: tuple(load_settings().trusted_proxies))
    # Key file for NHS-number pseudonyms in uploaded extracts (else the environment/settings; see mercia.privacy).
    pseudonym_key_file: Path | None = None


class MerciaState:
    def __init__(self, store: Store, options: ServerOptions | None = None):
        self.store = store
        self.options = options or ServerOptions()
        self.gov = Governance(store)
        self.airlock = Airlock(self.gov)
        self.jobs = JobRunner(self.gov.db, self.options.job_workers)

    @property
    def lock(self):
        """Held around any direct use of ``store``: one connection, many threads."""
        return self.gov.db.lock


def state_of(request) -> MerciaState:
    """The state a web or API request runs against (``app.state.mercia`` of its ASGI app)."""
    return request.app.state.mercia
