"""Per-client rate limit for what answers without sign-in (the public register and its API):
a moving one-minute window per client address, kept in memory by the ``limits`` library."""

from __future__ import annotations

import time

from fastapi import Request
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from mercia.api.auth import client_source
from mercia.config import load_settings
from mercia.services.errors import Throttled


class PublicRateLimit:
    def __init__(self, per_minute: int | None = None):
        self.item = RateLimitItemPerMinute(per_minute or load_settings().public_requests_per_minute)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, client: str) -> None:
        if not self.limiter.hit(self.item, "public", client):
            reset = self.limiter.get_window_stats(self.item, "public", client).reset_time
            raise Throttled(f"too many requests from your address; at most {self.item.amount} a minute, "
                            "try again shortly", reset - time.time())


def public_rate_limit(request: Request) -> None:
    """A route dependency: refuse (429) a client over its limit on the app's ``public_rate_limit``."""
    request.app.state.public_rate_limit.check(client_source(request))
