"""axe-core (Deque, MPL-2.0, shipped inside the pinned ``axe-playwright-python`` package: no CDN) run
on a Playwright page; a test fails on any serious or critical WCAG violation."""

from __future__ import annotations

from axe_playwright_python.sync_playwright import Axe

BLOCKING = ("serious", "critical")
_axe = Axe()


def blocking_violations(page) -> list[str]:
    """Serious and critical violations on the page as it is now, one line each (rule, impact, where)."""
    results = _axe.run(page, options={"resultTypes": ["violations"],
                                      "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a",
                                                                           "wcag21aa", "wcag22aa"]}})
    found = []
    for violation in results.response["violations"]:
        if violation["impact"] in BLOCKING:
            targets = ", ".join(str(node["target"]) for node in violation["nodes"][:3])
            found.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return found


def assert_accessible(page) -> None:
    problems = blocking_violations(page)
    assert not problems, f"axe-core on {page.url}:\n" + "\n".join(problems)


def assert_fits(page, width: int = 390) -> None:
    """No horizontal scroll at a phone's width (WCAG 1.4.10 reflow)."""
    page.set_viewport_size({"width": width, "height": 844})
    scroll = page.evaluate("document.documentElement.scrollWidth")
    widest = page.evaluate("""w => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > w && !e.closest('.table-wrap'))
        .slice(0, 3).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""", width)
    assert scroll <= width, f"{page.url} scrolls sideways at {width}px ({scroll}px wide): {widest}"
