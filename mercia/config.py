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

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str = Field("mercia.duckdb", description="DuckDB path or postgresql:// URL of the CDM store")
    data_dir: Path = Field(Path.home() / ".cache" / "mercia", description="caches built at first use")
    allow_synthetic_nhs_numbers: bool = Field(
        False, description="accept the never-issued 999 range of NHS numbers (synthetic data only)")
    pseudonym_key_file: Path | None = Field(
        None, description="file holding the HMAC key for NHS-number pseudonyms (outside the repo)")
    disclosure_policy: str = Field("opensafely", description="statistical disclosure control policy")
    enforce_primary_keys: bool = Field(False, description="create CDM primary keys as constraints")


def _config_file() -> Path | None:
    explicit = os.environ.get("MERCIA_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("mercia.toml")
    return local if local.exists() else None


def _from_environment() -> dict[str, str]:
    return {name: os.environ[f"MERCIA_{name.upper()}"]
            for name in Settings.model_fields if f"MERCIA_{name.upper()}" in os.environ}


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    values: dict[str, object] = {}
    path = _config_file()
    if path is not None:
        with path.open("rb") as f:
            values.update(tomllib.load(f).get("mercia", {}))
    values.update(_from_environment())
    return Settings(**values)
