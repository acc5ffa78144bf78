"""Mercia: an open-source clinical research data platform for an NHS region."""

import importlib
import os
import sys

__version__ = "0.1.0"

# Memory from the allocators without transparent huge pages.  Arrow's mimalloc commits its arenas eagerly and
# numpy madvises large arrays to MADV_HUGEPAGE: on first touch the kernel then zeroes (on a busy machine first
# compacts memory for) 2 MB pages.  A process's first FHIR load spent 1.2-1.8 s of system time on it (0.3 s
# without; docs/ingest.md), the rare-disease batch 0.95-1.25 s (0.27-0.36 s; docs/raredisease.md).  Each library
# reads its setting when it first allocates, so they hold wherever mercia is imported first; a caller's wins.
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def lazy_exports(package: str, exports: dict[str, str]):
    """A package's PEP 562 ``__getattr__`` and ``__dir__`` for public names that live in submodules which are slow
    to import (pyarrow, DuckDB): each name is imported on its first use, so a command that needs one light
    submodule (the rare-disease ranker needs the HPO reader) does not import them all.  ``exports``: name ->
    module."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value = getattr(importlib.import_module(module), name)
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
