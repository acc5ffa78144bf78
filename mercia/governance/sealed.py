"""Second-factor secrets sealed at rest: whoever reads the database (a backup, a dump) cannot mint
authenticator codes without the key, which lives outside the repository and the database.

Fernet (``cryptography``: AES-128-CBC with HMAC-SHA-256) under a key from ``$MERCIA_TOTP_KEY``, else
``settings.totp_key_file``, else ``<data_dir>/totp.key`` (created once, readable only by its owner).
Sealed values carry the prefix ``fernet:``; a plaintext secret from before sealing is sealed when
governance starts (``seal_plaintext_secrets``).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from mercia.governance.db import GovernanceDB
from mercia.governance.keys import read_key
from mercia.governance.model import GovernanceError

KEY_ENV = "MERCIA_TOTP_KEY"
PREFIX = "fernet:"


def load_cipher() -> Fernet:
    from mercia.config import load_settings

    settings = load_settings()
    raw = read_key(KEY_ENV, settings.totp_key_file, settings.data_dir / "totp.key", "the second-factor key")
    # Any key text of enough entropy, made into the 32 bytes Fernet takes.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))


class SecretBox:
    """Seals and opens second-factor secrets with the configured key."""

    def __init__(self, cipher: Fernet | None = None):
        self.cipher = cipher or load_cipher()

    def seal(self, secret: str) -> str:
        return PREFIX + self.cipher.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # not sealed yet: sealed at the next start (seal_plaintext_secrets)
        try:
            return self.cipher.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise GovernanceError("the second-factor key is not the one these secrets were sealed with "
                                  "(check $MERCIA_TOTP_KEY / totp_key_file)") from None

    def seal_plaintext_secrets(self, db: GovernanceDB) -> int:
        """Seal every secret stored in plaintext (written before sealing existed); returns how many."""
        with db.transaction():
            rows = db.rows(f"SELECT user_id, secret FROM mercia_totp WHERE secret NOT LIKE '{PREFIX}%'")
            for r in rows:
                db.execute("UPDATE mercia_totp SET secret = ? WHERE user_id = ?", [self.seal(r["secret"]), r["user_id"]])
        return len(rows)

    def __repr__(self) -> str:  # never print key material
        return "SecretBox(<key hidden>)"
