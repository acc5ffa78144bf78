"""Research governance: pillars, projects and approvals, people and roles, audit, airlock."""

from mercia.governance.airlock import Airlock
from mercia.governance.audit import AuditLog, Verification
from mercia.governance.model import (
    DOMAINS, PILLARS, Conflict, Forbidden, GovernanceError, NotFound, ProjectStatus, Role,
)
from mercia.governance.service import Governance, Project, Throttled, User

__all__ = ["DOMAINS", "PILLARS", "Airlock", "AuditLog", "Conflict", "Forbidden", "Governance", "GovernanceError",
           "NotFound", "Project", "ProjectStatus", "Role", "Throttled", "User", "Verification"]
