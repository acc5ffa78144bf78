"""Research governance: pillars, projects and approvals, people and roles, audit, airlock.

The names are imported on first use: a command that only writes its audit row (``governance.audit``) then does not
bring in the airlock's disclosure control, password checks and readability scoring (a third of a second)."""

from mercia import lazy_exports

_MODULES = {
    "mercia.governance.airlock": ["Airlock"],
    "mercia.governance.audit": ["AuditLog", "Verification"],
    "mercia.governance.identity": ["Identity", "Throttled", "User"],
    "mercia.governance.model": ["DOMAINS", "PILLARS", "Conflict", "Forbidden", "GovernanceError", "NotFound",
                                "ProjectStatus", "Role"],
    "mercia.governance.projects": ["Project", "Projects"],
    "mercia.governance.service": ["Governance"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
