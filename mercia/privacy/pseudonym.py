"""Keyed pseudonyms: HMAC-SHA-256 under a secret that never enters the repository or the database.

One master key (from ``MERCIA_PSEUDONYM_KEY`` or a key file outside the repo) derives separate
sub-keys per purpose, so an NHS-number pseudonym, an organisation-scoped source pseudonym, a linkage
token and a per-project research pseudonym can never be compared with each other, and a leaked
research extract cannot be joined back to the platform's own identifiers without the master key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path

import duckdb
import pyarrow as pa

KEY_ENV = "MERCIA_PSEUDONYM_KEY"
KEY_FILE_ENV = "MERCIA_PSEUDONYM_KEY_FILE"
# What a new machine does to get a key (a missing key names it).
MAKE_KEY_HINT = "a file outside the repository, e.g. created with `openssl rand -hex 32 > FILE`"
_MIN_KEY_BYTES = 32


_VECTOR_MIN = 5000
_LOCK = threading.Lock()
_DUCK: list[duckdb.DuckDBPyConnection] = []


def _connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per process for hashing; callers take a cursor each."""
    if not _DUCK:
        _DUCK.append(duckdb.connect())
    return _DUCK[0]


class KeyError_(Exception):
    """The pseudonymisation key is missing, too short, or stored somewhere it must not be."""


def _repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def load_key(key_file: Path | str | None = None) -> bytes:
    """The master key: ``$MERCIA_PSEUDONYM_KEY``, else the key file (argument, ``$MERCIA_PSEUDONYM_KEY_FILE``
    or ``settings.pseudonym_key_file``).  A key file inside the repository is refused."""
    raw = os.environ.get(KEY_ENV)
    if raw is None:
        if key_file is None:
            key_file = os.environ.get(KEY_FILE_ENV)
        if key_file is None:
            from mercia.config import load_settings

            key_file = load_settings().pseudonym_key_file
        if key_file is None:
            raise KeyError_(f"no pseudonymisation key: set {KEY_ENV} or {KEY_FILE_ENV} ({MAKE_KEY_HINT})")
        path = Path(key_file).expanduser().resolve()
        if path.is_relative_to(_repository_root()):
            raise KeyError_(f"refusing a pseudonymisation key file inside the repository: {path}")
        try:
            raw = path.read_text().strip()
        except FileNotFoundError:
            raise KeyError_(f"pseudonymisation key file {path} does not exist ({MAKE_KEY_HINT})") from None
        except OSError as exc:
            raise KeyError_(f"cannot read pseudonymisation key file {path}: {exc.strerror}") from exc
    key = raw.encode()
    if len(key) < _MIN_KEY_BYTES:
        raise KeyError_(f"pseudonymisation key too short: need at least {_MIN_KEY_BYTES} bytes")
    return key


class Pseudonymiser:
    """Derives purpose-specific HMAC keys from the master key and applies them to columns."""

    def __init__(self, master_key: bytes):
        self._master = master_key

    def __repr__(self) -> str:  # never print key material
        return "Pseudonymiser(<key hidden>)"

    def _subkey(self, purpose: str) -> bytes:
        return hmac.new(self._master, f"mercia/{purpose}".encode(), hashlib.sha256).digest()

    def hash_values(self, purpose: str, values: pa.Array | list) -> pa.Array:
        """HMAC-SHA-256 (hex) of each non-null value under the purpose's sub-key; null stays null.

        Large columns are hashed in DuckDB SQL, vectorised and in parallel, with HMAC (RFC 2104)
        written out: H((K ^ opad) || H((K ^ ipad) || m)), the padded keys passed as parameters.
        Short lists use the standard library (same digests, no connection overhead).
        """
        key = self._subkey(purpose)
        if not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array([None if v is None else str(v) for v in values], pa.string())
        if len(values) < _VECTOR_MIN:
            return pa.array([None if v is None or v == "" else hmac.new(key, v.encode(), hashlib.sha256).hexdigest()
                             for v in values.cast(pa.string()).to_pylist()], pa.string())
        padded = key.ljust(64, b"\0")
        inner, outer = bytes(b ^ 0x36 for b in padded).hex(), bytes(b ^ 0x5C for b in padded).hex()
        with _LOCK:
            con = _connection().cursor()
        con.register("pseudonym_input", pa.table({"v": values.cast(pa.string())}))
        result = con.sql("""SELECT CASE WHEN v IS NULL OR v = '' THEN NULL
                                 ELSE sha256(unhex($outer) || unhex(sha256(unhex($inner) || encode(v)))) END AS h
                            FROM pseudonym_input""", params={"inner": inner, "outer": outer}).to_arrow_table()
        con.close()
        return result.column("h").combine_chunks().cast(pa.string())

    def nhs_pseudonyms(self, nhs_numbers: pa.Array) -> pa.Array:
        return self.hash_values("nhs-number", nhs_numbers)

    def source_pseudonyms(self, org: str, source_ids: pa.Array) -> pa.Array:
        """Organisation-scoped: the same local id at two organisations gives two pseudonyms."""
        return self.hash_values(f"source/{org}", source_ids)

    def linkage_tokens(self, field: str, values: pa.Array | list) -> pa.Array:
        return self.hash_values(f"linkage/{field}", values)

    def research_pseudonyms(self, project: str, pseudonyms: pa.Array | list) -> pa.Array:
        """A per-project pseudonym for exports: derivable again by the platform, unlinkable across projects."""
        return self.hash_values(f"project/{project}", pseudonyms)
