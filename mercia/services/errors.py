"""The refusals every service raises, one class per answer a caller can act on.

The HTTP API and the web app map them to status codes in one place (``mercia.api.errors``); the
message names the rule or the field, never the caller's input, SQL or a stack trace.  Governance's
own refusals (``NotFound``, ``Forbidden``, ``Conflict``, ``Throttled``) are the same classes.
"""

from __future__ import annotations

from mercia.governance import Conflict, Forbidden, GovernanceError, NotFound, Throttled

ServiceError = GovernanceError


class Invalid(GovernanceError):
    """The request is well formed but cannot be done as asked (a definition that is not Circe, a
    cohort not run yet); the message says which field or rule."""


class TooLarge(GovernanceError):
    """The request is bigger than the server accepts."""


class NotOffered(GovernanceError):
    """This server cannot do it as it is set up (say, ingestion on a Spark research store); the
    message says why and what would."""


__all__ = ["Conflict", "Forbidden", "Invalid", "NotFound", "NotOffered", "ServiceError", "Throttled", "TooLarge"]
