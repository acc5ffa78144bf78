"""Backup and restore of a whole store: a consistent DuckDB copy, or ``pg_dump -Fc`` / ``pg_restore``.

DuckDB: ``COPY FROM DATABASE`` into a fresh database file, inside one read transaction, so the copy
is the store as of one moment.  Restore replaces the store file atomically (copy beside it, then
rename) and removes a stale write-ahead log, which would otherwise be replayed over the restored file.

PostgreSQL: the client tools do it (they must be on PATH): ``pg_dump --format=custom`` of the schema
named in the URL's ``search_path`` option (else the whole database), and ``pg_restore --clean
--single-transaction``, so a restore that fails leaves the database as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import duckdb

from mercia.cdm.store import Store, StoreError


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def backup(url: str, path: Path) -> Path:
    """Write a backup of the store at ``url`` to ``path`` (refusing to overwrite one)."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path} exists; choose a new backup file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_postgres(url):
        schema = search_path_schema(url)
        _run_tool(["pg_dump", "--format=custom", "--no-owner", *(["--schema", schema] if schema else []),
                   "--file", str(path), "--dbname", url], url)
        return path
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    source = _duckdb_path(url)
    if not source.is_file():
        raise StoreError(f"no DuckDB store at {source}")
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS mercia_source (READ_ONLY)", [str(source)])
        con.execute("ATTACH ? AS mercia_backup", [str(partial)])
        con.execute("COPY FROM DATABASE mercia_source TO mercia_backup")
    except duckdb.Error as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    os.replace(partial, path)  # a backup file exists only once it is complete
    return path


def restore(path: Path, url: str, replace: bool = False) -> None:
    """Restore the backup at ``path`` into the store at ``url``."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no backup file {path}")
    if is_postgres(url):
        _run_tool(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
                   "--exit-on-error", "--dbname", url, str(path)], url)
        return
    target = _duckdb_path(url)
    if target.exists() and not replace:
        raise StoreError(f"{target} exists; pass --replace to overwrite it with the backup")
    with Store.open(str(path), read_only=True):
        pass  # refuse a file that is not a DuckDB database before touching the store
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as scratch:
        shutil.copyfile(path, scratch.name)
    Path(f"{target}.wal").unlink(missing_ok=True)
    os.replace(scratch.name, target)


def _duckdb_path(url: str) -> Path:
    return Path(url.removeprefix("duckdb://").removeprefix("/") if url.startswith("duckdb:///") else url)


def search_path_schema(url: str) -> str | None:
    """The schema named by ``options=-csearch_path=NAME`` in a PostgreSQL URL, if any."""
    for option in parse_qs(urlsplit(url).query).get("options", []):
        for part in unquote(option).split():
            if part.startswith("-csearch_path="):
                return part.split("=", 1)[1].split(",")[0].strip('"') or None
    return None


def _run_tool(command: list[str], url: str) -> None:
    if shutil.which(command[0]) is None:
        raise StoreError(f"{command[0]} is not on PATH (install the PostgreSQL client tools)")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip().replace(url, "<store URL>")[-800:]  # the URL may hold a password
        raise StoreError(f"{command[0]} failed (exit {done.returncode}): {message}")
