"""``import mercia`` keeps Arrow's and numpy's allocators off transparent huge pages (see mercia/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("MIMALLOC_ARENA_EAGER_COMMIT", "NUMPY_MADVISE_HUGEPAGE", "MIMALLOC_VERBOSE")
PROBE = """
import sys
{first}
import numpy, pyarrow
from numpy._core import multiarray
pyarrow.array([1, 2, 3])
print(pyarrow.default_memory_pool().backend_name, multiarray._get_madvise_hugepage())
"""


def _probe(first: str, **env: str) -> tuple[str, str]:
    """(stdout, stderr) of a fresh interpreter that runs ``first`` and then allocates with Arrow and numpy."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    done = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT), "MIMALLOC_VERBOSE": "1", **env}, timeout=120,
                          check=True)
    return done.stdout.strip(), done.stderr


def test_import_mercia_turns_eager_arenas_and_numpy_huge_pages_off():
    out, err = _probe("import mercia")
    assert out == "mimalloc False"
    assert "option 'arena_eager_commit': 0" in err


def test_without_mercia_the_libraries_defaults_hold():
    # the probe can tell: without the settings mimalloc commits arenas eagerly and numpy madvises huge pages
    out, err = _probe("")
    assert out == "mimalloc True"
    assert "option 'arena_eager_commit': 0" not in err


def test_a_callers_own_setting_wins():
    out, err = _probe("import mercia", MIMALLOC_ARENA_EAGER_COMMIT="1", NUMPY_MADVISE_HUGEPAGE="1")
    assert out == "mimalloc True"
    assert "option 'arena_eager_commit': 1" in err
