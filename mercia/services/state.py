"""What a running Mercia server holds: its two stores, governance, the airlock and the job runner.

The research store holds the CDM (reads, cohort rows, analyses); the state store holds Mercia's own
tables (users, projects, sessions, jobs, the audit log), which need row-level transactions.  They
are one store unless the server is given a separate state store (``mercia serve --state-db``),
which a research store without row transactions (Spark) needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mercia.cdm import Store, StoreError
from mercia.cdm.sessions import current
from mercia.config import load_settings
from mercia.governance import Airlock, Governance
from mercia.services.errors import NotOffered
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
    """The server's root stores and the services over them.  Each HTTP request and each job runs in a
    session of its own on each store (``mercia.cdm.sessions``, bound by ``mercia.web.app`` and
    ``JobRunner``), so ``store`` is that session's connection there, and the root's elsewhere.

    ``root_store`` is the research store; ``state_store`` the one governance, jobs and audit live in
    (the research store itself unless given)."""

    def __init__(self, store: Store, options: ServerOptions | None = None, state_store: Store | None = None):
        if state_store is None and store.no_row_transactions:
            raise StoreError(f"The Mercia server keeps users, projects, jobs and the audit log in row-level "
                             f"transactions, which a {store.dialect} store lacks ({store.no_row_transactions}): "
                             "give it a separate state store, a DuckDB file or PostgreSQL URL (mercia serve "
                             "--state-db, or MERCIA_STATE_DB), and the research data stays on "
                             f"{store.dialect}", engine=store.dialect)
        self.root_store = store
        self.state_store = state_store or store
        self.options = options or ServerOptions()
        self.gov = Governance(self.state_store)
        self.airlock = Airlock(self.gov)
        self.jobs = JobRunner(self.gov.db, self.options.job_workers, self.roots)
        from mercia.services.cohorts import adopt_project_cohorts   # cohorts builds on this module

        adopt_project_cohorts(self)

    @property
    def roots(self) -> tuple[Store, ...]:
        """Every root store, each once: a request or job binds a session on each."""
        return (self.state_store, self.root_store) if self.separate_state else (self.state_store,)

    @property
    def separate_state(self) -> bool:
        return self.state_store is not self.root_store

    @property
    def store(self) -> Store:
        """The research store (the CDM), as this request's or job's session."""
        return current(self.root_store)

    @property
    def lock(self):
        """Held around direct use of ``store`` by threads that may share its connection: the
        session's own lock inside a request or job (uncontended), the root's elsewhere."""
        return self.gov.db.lock

    def require_row_transactions(self, purpose: str) -> None:
        """Refuse ``purpose``, which writes Mercia's own tables beside the CDM, where the research store
        cannot keep them (Spark)."""
        try:
            self.root_store.require_row_transactions(purpose)
        except StoreError as exc:
            raise NotOffered(str(exc)) from None

    def require_one_store(self, purpose: str) -> None:
        """Refuse ``purpose``, whose tables and cohorts live in one store with governance, on a
        server with a separate state store."""
        if self.separate_state:
            raise NotOffered(f"{purpose} keeps its tables beside both the CDM and governance, so it needs them "
                             "in one store; this server keeps governance in a separate state store "
                             f"({self.root_store.dialect} research store)")


def state_of(request) -> MerciaState:
    """The state a web or API request runs against (``app.state.mercia`` of its ASGI app)."""
    return request.app.state.mercia
