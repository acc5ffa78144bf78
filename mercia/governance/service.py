"""One entry point over a Store's governance tables, for the server and the CLI.

The rules live by concern: ``identity`` (people, sign-in, second factor, sessions, tokens),
``projects`` (pillars, themes, projects, approvals, data access) and ``audit``; the airlock
(``mercia.governance.airlock``) builds on them.  ``Governance`` only wires them to one
``GovernanceDB`` and forwards the names services call, so callers need a single object.
"""

from __future__ import annotations

from typing import Any

from mercia.cdm import Store
from mercia.governance.audit import AuditLog
from mercia.governance.db import GovernanceDB
from mercia.governance.identity import Identity
from mercia.governance.model import DEFAULT_THEMES
from mercia.governance.projects import Projects


class Governance:
    """Identity, projects and audit over one Store's ``mercia_*`` tables."""

    def __init__(self, store: Store, themes: dict[str, str] | None = None, audit: AuditLog | None = None):
        self.db = GovernanceDB(store)
        self.db.init()
        self.audit = audit or AuditLog(self.db)
        self.identity = Identity(self.db, self.audit)
        self.projects = Projects(self.db, self.audit, self.identity)
        self.projects.seed(themes or DEFAULT_THEMES)

    def __getattr__(self, name: str) -> Any:
        """``gov.decide(...)`` is ``gov.projects.decide(...)``, ``gov.authenticate`` is
        ``gov.identity.authenticate``: one object for the routes and pages that use both."""
        for part in ("identity", "projects"):
            service = self.__dict__.get(part)
            if service is not None and not name.startswith("_") and hasattr(service, name):
                return getattr(service, name)
        raise AttributeError(f"Governance has no {name!r}")
