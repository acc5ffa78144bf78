"""Research governance: pillars, projects and approvals, people and roles, audit, airlock."""

from mercia.governance.airlock import Airlock
from mercia.governance.audit import AuditLog, Verification
from mercia.governance.identity import Identity, Throttled, User
from mercia.governance.model import (
    DOMAINS, PILLARS, Conflict, Forbidden, GovernanceError, NotFound, ProjectStatus, Role,
)
from mercia.governance.projects import Project, Projects
from mercia.governance.service import Governance

__all__ = ["DOMAINS", "PILLARS", "Airlock", "AuditLog", "Conflict", "Forbidden", "Governance", "GovernanceError",
           "Identity", "NotFound", "Project", "Projects", "ProjectStatus", "Role", "Throttled", "User",
           "Verification"]
