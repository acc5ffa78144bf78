"""What a running Mercia server holds: the store, governance, the airlock and the job runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mercia.cdm import Store
from mercia.cdm.sessions import current
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
    """The server's root store and the services over it.  Each HTTP request and each job runs in a
    session of its own (``mercia.cdm.sessions``, bound by ``mercia.web.app`` and ``JobRunner``), so
    ``store`` is that session's connection there, and the root's elsewhere."""

    def __init__(self, store: Store, options: ServerOptions | None = None):
        self.root_store = store
        self.options = options or ServerOptions()
        self.gov = Governance(store)
        self.airlock = Airlock(self.gov)
        self.jobs = JobRunner(self.gov.db, self.options.job_workers)
        from mercia.services.cohorts import adopt_project_cohorts   # cohorts builds on this module

        adopt_project_cohorts(self)

    @property
    def store(self) -> Store:
        return current(self.root_store)

    @property
    def lock(self):
        """Held around direct use of ``store`` by threads that may share its connection: the
        session's own lock inside a request or job (uncontended), the root's elsewhere."""
        return self.gov.db.lock


def state_of(request) -> MerciaState:
    """The state a web or API request runs against (``app.state.mercia`` of its ASGI app)."""
    return request.app.state.mercia
