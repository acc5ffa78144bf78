"""What a running Mercia server holds: the store, governance, the airlock and the job runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from mercia.api.jobs import JobRunner
from mercia.cdm import Store
from mercia.governance import Airlock, Governance


@dataclass
class ServerOptions:
    secure_cookies: bool = True
    session_cookie: str = "mercia_session"
    job_workers: int = 2
    oidc: dict[str, str] | None = None  # see mercia.web.oidc
    # Reverse proxies whose X-Forwarded-For is believed (see mercia.api.auth.client_source).
    trusted_proxies: tuple[str, ...] = field(default_factory=lambda: tuple(_settings().trusted_proxies))


def _settings():
    from mercia.config import load_settings

    return load_settings()



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


def state_of(request: Request) -> MerciaState:
    return request.app.state.mercia
