"""Second-factor codes for the demo's people in tests: a TOTP code at enrolment (read from the setup
page), then their recovery codes, since a TOTP step is accepted only once."""

from __future__ import annotations

import re

import pyotp

_RECOVERY: dict[str, list[str]] = {}


def code_for(username: str, page_html: str) -> str:
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page_html)
    if secret:
        return pyotp.TOTP(secret.group(1)).now()
    return _RECOVERY[username].pop()


def remember_recovery_codes(username: str, page_html: str) -> None:
    codes = re.findall(r'<li><code class="code">([0-9a-f]+)</code></li>', page_html)
    if codes:
        _RECOVERY[username] = codes
