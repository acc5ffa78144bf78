"""Password rules after NCSC guidance ("Password administration for system owners", 2018): a
minimum length, a deny list of the most common passwords, no composition rules, no expiry.
Hashing is Argon2id."""

from __future__ import annotations

import gzip
import re
import secrets
from functools import lru_cache
from importlib.resources import files

from argon2 import PasswordHasher

from mercia.governance.model import GovernanceError

MIN_LENGTH = 12
MAX_LENGTH = 256  # bounds the hashing work a request can ask for
hasher = PasswordHasher()


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """Verified against when the username is unknown, so a miss costs as long as a wrong password; made on
    first need (an Argon2 hash is ~64 MiB and tens of ms, which every command importing this would pay)."""
    return hasher.hash(secrets.token_urlsafe(16))


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The deny list (see ``data/README.md`` for its source), lower-cased."""
    raw = files("mercia.governance").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(gzip.decompress(raw).decode().lower().split())


def _is_common(password: str) -> bool:
    """A listed password, or one padded with digits/symbols, or one word repeated ("passwordpassword")."""
    text = re.sub(r"\s+", "", password.lower())
    listed = common_passwords()
    core = re.sub(r"^[\W\d_]+|[\W\d_]+$", "", text)
    repeated = re.fullmatch(r"(.+?)\1+", text)
    return (text in listed or (len(core) >= 4 and core in listed)
            or (repeated is not None and (len(set(text)) == 1 or repeated.group(1) in listed)))


def check_password(password: str, username: str = "") -> None:
    """Raise GovernanceError naming the rule a new password breaks; the password is never echoed."""
    if len(password) > MAX_LENGTH:
        raise GovernanceError(f"a password can be at most {MAX_LENGTH} characters long")
    if len(password.strip()) < MIN_LENGTH:
        raise GovernanceError(f"a password must be at least {MIN_LENGTH} characters long, not counting "
                              "spaces at either end")
    if _is_common(password):
        raise GovernanceError("that password is on the list of commonly used passwords; choose another "
                              "(three random words make a good one)")
    if username and username.lower() in password.lower():
        raise GovernanceError("a password must not contain your username")
