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
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mercia.governance.audit import _create_key_file, _repository_root
from mercia.governance.db import GovernanceDB
from mercia.governance.model import GovernanceError

KEY_ENV = "MERCIA_TOTP_KEY"
PREFIX = "fernet:"
_MIN_KEY_BYTES = 32


def load_cipher() -> Fernet:
    raw = os.environ.get(KEY_ENV)
    if raw is None:
        from mercia.config import load_settings

        settings = load_settings()
        path = Path(settings.totp_key_file or settings.data_dir / "totp.key").expanduser().resolve()
        if path.is_relative_to(_repository_root()):
            raise GovernanceError(f"refusing a second-factor key file inside the repository: {path}")
        if not path.exists() and settings.totp_key_file is None:
            _create_key_file(path)
        try:
            raw = path.read_text().strip()
        except OSError as exc:
            raise GovernanceError(f"cannot read the second-factor key file {path}: {exc.strerror}") from exc
    if len(raw.encode()) < _MIN_KEY_BYTES:
        raise GovernanceError(f"the second-factor key is too short: need at least {_MIN_KEY_BYTES} bytes")
    # Any key text of enough entropy, made into the 32 bytes Fernet takes.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw.encode()).digest()))


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
