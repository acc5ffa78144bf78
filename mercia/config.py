"""Configuration in one place: defaults, then a TOML file, then ``MERCIA_*`` environment variables.

The file is ``$MERCIA_CONFIG`` if set, else ``./mercia.toml`` if present.  Every setting has a
default, so ``mercia`` works with no configuration at all (an embedded DuckDB file in the current
directory).  Secrets are never read from the file: they come from the environment or from a key
file outside the repository (see ``mercia.privacy``).
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str = Field("mercia.duckdb", description="DuckDB path or postgresql:// URL of the CDM store")
    state_db: str | None = Field(
        None, description="mercia serve: DuckDB path or postgresql:// URL of a separate store for the server's "
                          "own tables (users, projects, jobs, the audit log); needed when db is Spark; "
                          "default: db itself")
    data_dir: Path = Field(Path.home() / ".cache" / "mercia", description="caches built at first use")
    allow_synthetic_nhs_numbers: bool = Field(
        False, description="accept the never-issued 999 range of NHS numbers (synthetic data only)")
    pseudonym_key_file: Path | None = Field(
        None, description="file holding the HMAC key for NHS-number pseudonyms (outside the repo)")
    disclosure_policy: str = Field("opensafely", description="statistical disclosure control policy")
    enforce_primary_keys: bool = Field(False, description="create CDM primary keys as constraints")
    duckdb_memory_limit: str | None = Field(
        None, description="DuckDB store: cap of its buffer manager, in DuckDB's units ('3GB'); default half of "
                          "this machine's memory, so the API, PostgreSQL or a second process fit beside it")
    duckdb_threads: int | None = Field(
        None, ge=1, description="DuckDB store: worker threads of its queries (default: one per core); fewer when "
                                "several stores share one machine's cores, as the federation demo's nodes do")
    duckdb_temp_directory: Path | None = Field(
        None, description="DuckDB store: where work beyond the memory limit spills (default <store file>.tmp)")
    max_request_bytes: int = Field(1_048_576, ge=1024, description="largest request body the server reads (413 beyond)")
    max_upload_bytes: int = Field(2_147_483_648, ge=1024, description="largest extract upload (multipart) it reads")
    audit_key_file: Path | None = Field(
        None, description="file holding the audit chain's HMAC key (outside the repo and the database); "
                          "default <data_dir>/audit.key, created once; $MERCIA_AUDIT_KEY overrides")
    totp_key_file: Path | None = Field(
        None, description="file holding the key that seals second-factor secrets at rest (outside the repo and "
                          "the database); default <data_dir>/totp.key, created once; $MERCIA_TOTP_KEY overrides")
    audit_anchor_file: Path | None = Field(
        None, description="file the audit log's head hashes are appended to (default: one per store "
                          "under <data_dir>/audit-anchors)")
    audit_anchor_syslog: bool = Field(False, description="also send each audit head hash to syslog")
    public_requests_per_minute: int = Field(
        60, ge=1, description="requests a minute one client address may make to the public register and its API")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses/networks of reverse proxies whose X-Forwarded-For is "
                                          "believed; from any other peer the header is ignored")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``MERCIA_TRUSTED_PROXIES=10.0.0.1,10.1.0.0/16`` as well as a TOML list."""
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


def _config_file() -> Path | None:
    explicit = os.environ.get("MERCIA_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("mercia.toml")
    return local if local.exists() else None


def _from_environment() -> dict[str, str]:
    return {name: os.environ[f"MERCIA_{name.upper()}"]
            for name in Settings.model_fields if f"MERCIA_{name.upper()}" in os.environ}


class ConfigError(ValueError):
    """The configuration file or environment is wrong; the message names the file or variable."""


def _from_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} (from MERCIA_CONFIG) does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    section = document.get("mercia", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [mercia] must be a table of settings")
    return section


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """Defaults, then the TOML file's ``[mercia]`` table, then ``MERCIA_<NAME>`` variables.
    Cached: call ``load_settings.cache_clear()`` after changing the environment."""
    path = _config_file()
    file_values = _from_file(path) if path is not None else {}
    env_values = _from_environment()
    try:
        return Settings(**{**file_values, **env_values})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'MERCIA_' + str(e['loc'][0]).upper() if e['loc'] and e['loc'][0] in env_values else e['loc'][0]}: "
            f"{e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid Mercia configuration{f' in {path}' if path else ''}: {problems}") from None
