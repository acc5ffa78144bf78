"""The import rule (docs/architecture.md): arrows point one way.

- The foundation (``config``, ``cdm``, ``vocab``, ``privacy``) is what every capability may use.
- A capability's library modules import the foundation and no other capability, except the arrows
  in ``ALLOWED`` below, each a documented public API with the reason it exists.
- Command modules (``cli.py``, of any package) and the listed demo harness modules are composition roots: they wire
  capabilities together for one command (load then link, load then record network tokens, audit a
  CLI write) and may import any capability, never the outer layers.
- The outer layers (``services``, ``api``, ``web``, the top-level ``cli`` and ``demo``) use
  capabilities; nothing below imports them.

Every import counts, deferred (inside a function) ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mercia

PACKAGE = Path(mercia.__file__).parent
FOUNDATION = {  # foundation package -> what it may import
    "config": set(),
    "cdm": {"config"},
    "vocab": {"cdm", "config"},
    "privacy": {"cdm", "config"},
}
OUTER = {"services", "api", "web", "cli", "demo"}
# Capability -> capability arrows in library code, each with the public API it goes through and why.
ALLOWED = {
    ("federation", "cohorts"): "a node validates, compiles and runs the hub's Circe cohort (cohorts.model, compiler)",
    ("federation", "governance"): "the hub authorises researchers by approved project and audits every question",
    ("trials", "cohorts"): "trial eligibility is a cohort definition run by the cohort engine",
    ("trials", "governance"): "trial access goes through projects, roles and the audit log",
    ("ingest", "raredisease"): "the Phenopacket reader validates with raredisease.phenopackets (one parser)",
    ("ingest", "trials"): "a load given the organisation's own store fills its re-identification key map (trials.reid)",
    ("ingest", "proms"): "PROM returns arriving through ingest (region CSV, FHIR QuestionnaireResponse) are scored "
                         "with proms.omop.score_item_answers (one scorer), coded as proms.omop says like eCRF ones, "
                         "QuestionnaireResponse items found by proms.store.FHIR_ITEMS, DOIs from proms.valuesets",
    ("trials", "proms"): "PROM items on eCRF forms are scored with proms.scoring (one scorer) and stored in proms.store",
    ("federation", "analytics"): "a node builds strata and characterisation cells from analytics.base's index table",
    ("trials", "analytics"): "the CONSORT diagram is a chart of the one chart stack (analytics.charts: Chart, "
                             "write_chart)",
}
# Demo/test harness modules that compose capabilities like a command does.
COMPOSITION_ROOTS = {
    "federation/demo.py": "`mercia federation demo`: a synthetic region (synth), real hub and node processes",
    "federation/region.py": "builds node stores from a synthetic region (ingest) and scores them (linkage truth)",
}


def _imports(path: Path) -> set[str]:
    """Top-level ``mercia`` sub-packages a module imports (absolute and relative, deferred included)."""
    rel = path.relative_to(PACKAGE).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["mercia", *rel[:len(rel) - node.level]]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mercia" and len(parts) > 1:
                found.add(parts[1])
    return found


def _owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _arrows() -> list[tuple[str, str, str]]:
    """(importing package, imported package, module) for every import between top-level packages."""
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        arrows.extend((owner, target, str(path.relative_to(PACKAGE)))
                      for target in _imports(path) if target not in (owner, "__init__"))
    return arrows


def violation(source: str, target: str, module: str) -> str | None:
    """Why the arrow breaks the rule, or None if it is allowed."""
    if source in OUTER:
        return None
    if target in OUTER:
        return f"{module}: {source} imports the outer layer {target}"
    if Path(module).name == "cli.py" or module in COMPOSITION_ROOTS:
        return None   # a command wires capabilities together (e.g. `mercia privacy purge` audits its write)
    if source in FOUNDATION:
        return None if target in FOUNDATION[source] else f"{module}: foundation {source} imports {target}"
    if target in FOUNDATION or (source, target) in ALLOWED:
        return None
    return f"{module}: capability {source} imports capability {target} (not in ALLOWED)"


def test_no_sideways_imports():
    problems = [v for arrow in _arrows() if (v := violation(*arrow))]
    assert not problems, "\n".join(problems)


def test_every_allowed_arrow_is_still_used():
    """An arrow that no longer exists is removed from ALLOWED, so the list stays the true picture."""
    used = {(source, target) for source, target, _ in _arrows()}
    assert set(ALLOWED) <= used, set(ALLOWED) - used
    assert all((PACKAGE / module).exists() for module in COMPOSITION_ROOTS)


@pytest.mark.parametrize("arrow, expected", [
    (("linkage", "ingest", "linkage/probabilistic.py"), "capability linkage imports capability ingest"),
    (("cdm", "ingest", "cdm/persons.py"), "foundation cdm imports ingest"),
    (("ingest", "services", "ingest/cli.py"), "ingest imports the outer layer services"),
    (("ingest", "linkage", "ingest/cli.py"), None),
    (("trials", "cohorts", "trials/register.py"), None),
])
def test_the_rule_refuses_what_it_should(arrow, expected):
    found = violation(*arrow)
    assert (found is None) if expected is None else (expected in found)
