"""The browser evaluates the same AST to the same value as the Python reference (Chromium, Playwright)."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import mercia.trials.crf
from mercia.trials.crf.logic import Record, evaluate, parse
from tests.web.conftest import browser  # noqa: F401 - the shared Chromium fixture

from .logic_cases import expressions, records
from .test_crf_logic import CASES, R

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCRIPT = Path(mercia.trials.crf.__file__).parent / "static" / "crf-logic.js"
TODAY = "2024-06-30"
# Playwright hands NaN back as NaN, but a label keeps bool/number/text apart on the way.
CALL = """([tree, record]) => { const v = MerciaLogic.evaluate(tree, record);
  return {type: typeof v, value: (typeof v === 'number' && isNaN(v)) ? 'NaN' : v}; }"""


@pytest.fixture(scope="module")
def page(browser):  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    page.set_content("<html><body></body></html>")
    page.add_script_tag(content=SCRIPT.read_text())
    yield page
    context.close()


def _python(value):
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, float):
        return ("number", "NaN" if math.isnan(value) else value)
    return ("string", value)


def _same(py, js) -> bool:
    if py[0] != js["type"]:
        return False
    if py[0] == "number" and py[1] != "NaN" and js["value"] != "NaN":
        return math.isclose(py[1], js["value"], rel_tol=1e-12, abs_tol=1e-12) or py[1] == js["value"]
    return py[1] == js["value"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expressions, records)
def test_browser_and_python_agree(page, text, record):
    tree = json.loads(json.dumps(parse(text)))          # what the browser receives
    py = _python(evaluate(tree, Record(record["values"], record["events"], today=TODAY)))
    js = page.evaluate(CALL, [tree, {**record, "today": TODAY}])
    assert _same(py, js), f"{text!r} on {record}: python {py}, browser {js}"


@pytest.mark.parametrize("text", [c[0] for c in CASES])
def test_browser_matches_the_documented_cases(page, text):
    py = _python(evaluate(parse(text), R))
    js = page.evaluate(CALL, [parse(text), {"values": dict(R.values), "events": dict(R.events), "today": R.today}])
    assert _same(py, js), f"{text!r}: python {py}, browser {js}"
