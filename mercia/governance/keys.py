"""Governance's keys (the audit chain's HMAC key, the key sealing second-factor secrets): read from
the environment or a file outside the repository and the database, created once if none is set."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mercia.governance.model import GovernanceError

MIN_KEY_BYTES = 32


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def read_key(env: str, configured: Path | None, default: Path, what: str) -> bytes:
    """``$env``, else the ``configured`` file, else ``default`` (created once, readable only by its
    owner).  A key file inside the repository is refused; ``what`` names the key in messages."""
    raw = os.environ.get(env)
    if raw is None:
        path = Path(configured or default).expanduser().resolve()
        if path.is_relative_to(_repository_root()):
            raise GovernanceError(f"refusing {what} file inside the repository: {path}")
        if not path.exists() and configured is None:
            _create_key_file(path)
        try:
            raw = path.read_text().strip()
        except OSError as exc:
            raise GovernanceError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if len(raw.encode()) < MIN_KEY_BYTES:
        raise GovernanceError(f"{what} is too short: need at least {MIN_KEY_BYTES} bytes")
    return raw.encode()


def _create_key_file(path: Path) -> None:
    """Write a new random key atomically (linked into place complete, never overwriting one that
    another process made first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
