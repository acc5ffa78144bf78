"""Settings: defaults, then mercia.toml (or $MERCIA_CONFIG), then MERCIA_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercia.config import ConfigError, load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MERCIA_* variables, an empty working directory, and a fresh settings cache."""
    import os

    for name in list(os.environ):
        if name.startswith("MERCIA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    load_settings.cache_clear()
    yield monkeypatch
    load_settings.cache_clear()


def test_defaults_need_no_configuration(clean_env):
    settings = load_settings()
    assert settings.db == "mercia.duckdb"
    assert settings.data_dir == Path.home() / ".cache" / "mercia"
    assert settings.enforce_primary_keys is False


def test_local_toml_file_is_read(clean_env, tmp_path):
    (tmp_path / "mercia.toml").write_text('[mercia]\ndb = "postgresql://x@h/db"\nenforce_primary_keys = true\n')
    settings = load_settings()
    assert (settings.db, settings.enforce_primary_keys) == ("postgresql://x@h/db", True)


def test_environment_overrides_the_file(clean_env, tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text('[mercia]\ndb = "from-file.duckdb"\ndata_dir = "/srv/cache"\n')
    clean_env.setenv("MERCIA_CONFIG", str(config))
    clean_env.setenv("MERCIA_DB", "from-env.duckdb")
    clean_env.setenv("MERCIA_ENFORCE_PRIMARY_KEYS", "1")
    settings = load_settings()
    assert settings.db == "from-env.duckdb"
    assert settings.data_dir == Path("/srv/cache")
    assert settings.enforce_primary_keys is True


def test_result_is_cached_until_cleared(clean_env):
    first = load_settings()
    clean_env.setenv("MERCIA_DB", "other.duckdb")
    assert load_settings() is first
    load_settings.cache_clear()
    assert load_settings().db == "other.duckdb"


@pytest.mark.parametrize("content, fragment", [
    ('[mercia]\ndbb = "typo.duckdb"\n', "dbb"),
    ("[mercia\ndb = 1\n", "not valid TOML"),
    ('mercia = "flat"\n', "[mercia] must be a table"),
])
def test_bad_files_name_the_file_and_setting(clean_env, tmp_path, content, fragment):
    (tmp_path / "mercia.toml").write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert fragment in str(caught.value) and "mercia.toml" in str(caught.value)


def test_bad_environment_value_names_the_variable(clean_env):
    clean_env.setenv("MERCIA_ENFORCE_PRIMARY_KEYS", "perhaps")
    with pytest.raises(ConfigError, match="MERCIA_ENFORCE_PRIMARY_KEYS"):
        load_settings()


def test_missing_explicit_config_file(clean_env, tmp_path):
    clean_env.setenv("MERCIA_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_store_open_uses_the_configured_database(clean_env, tmp_path):
    from mercia.cdm import Store

    clean_env.setenv("MERCIA_DB", str(tmp_path / "configured.duckdb"))
    with Store.open() as store:
        assert store.url == str(tmp_path / "configured.duckdb") and store.dialect == "duckdb"
