"""Mercia: an open-source clinical research data platform for an NHS region."""

import importlib
import sys

__version__ = "0.1.0"


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
