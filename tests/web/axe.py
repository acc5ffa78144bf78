"""axe-core (the copy bundled with ``axe-playwright-python``, no CDN) over a Playwright page,
checking the WCAG 2.0, 2.1 and 2.2 A and AA rules."""

from __future__ import annotations

from typing import Any

from axe_playwright_python.sync_playwright import Axe

WCAG_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]},
           "resultTypes": ["violations"]}
BLOCKING = ("serious", "critical")


def blocking_violations(page) -> list[dict[str, Any]]:
    """The serious and critical WCAG A/AA violations on the page now, each with where it occurs."""
    violations = Axe().run(page, options=WCAG_AA).response["violations"]
    return [{"rule": v["id"], "impact": v["impact"], "help": v["help"],
             "where": [n["target"] for n in v["nodes"]][:5]}
            for v in violations if v["impact"] in BLOCKING]
