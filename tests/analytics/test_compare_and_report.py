"""Comparison (SMD) by hand, the HTML report, charts and the ``mercia analyse`` commands."""

from __future__ import annotations

import math
import re
from datetime import date

import orjson
import pytest
from typer.testing import CliRunner

from mercia.analytics.compare import compare, smd_continuous
from mercia.analytics.report import render_html, write_charts
from mercia.cli import app
from mercia.privacy.disclosure import DisclosureError, Kind, smd_binary
from tests.conftest import engine_missing


@pytest.fixture
def two_cohorts(store, cdm):
    """Target 1: 30 women, 10 men, all born 1970.  Comparator 2: 20 women, 20 men, born 1980."""
    for pid in range(1, 41):
        cdm.person(pid, sex=8532 if pid <= 30 else 8507, born=1970)
        cdm.cohort(1, pid, date(2020, 1, 1))
    for pid in range(41, 81):
        cdm.person(pid, sex=8532 if pid <= 60 else 8507, born=1980)
        cdm.cohort(2, pid, date(2020, 1, 1))
    for pid in list(range(1, 21)) + list(range(41, 51)):  # 20/40 vs 10/40 with concept 201
        cdm.condition(pid, date(2019, 6, 1), 201)
    return cdm.flush()


def test_smd_of_binary_and_continuous_covariates(two_cohorts):
    result = compare(two_cohorts, 1, 2, domains=["condition"], raw=True)
    rows = {r["covariate"]: r for r in result.table("smd_binary").rows}
    female = rows["Sex: Female"]
    # p1 = 0.75, p2 = 0.5: (0.75 - 0.5) / sqrt((0.75*0.25 + 0.5*0.5) / 2)
    assert female["smd"] == pytest.approx(0.25 / math.sqrt((0.1875 + 0.25) / 2))
    concept = next(r for k, r in rows.items() if k.endswith("(201)"))
    assert (concept["count_target"], concept["count_comparator"]) == (20, 10)
    assert concept["smd"] == pytest.approx(smd_binary(20, 40, 10, 40))
    age = next(r for r in result.table("smd_continuous").rows if r["variable"].startswith("Age"))
    assert (age["mean_target"], age["mean_comparator"]) == (50.0, 40.0)
    assert age["smd"] is None  # both SDs are 0 and the means differ: undefined
    assert smd_continuous(50, 10, 40, 10) == pytest.approx(1.0)


def test_controlled_smd_is_recomputed_from_published_counts(two_cohorts):
    result = compare(two_cohorts, 1, 2, domains=["condition"])
    female = next(r for r in result.table("smd_binary").rows if r["covariate"] == "Sex: Female")
    assert (female["count_target"], female["count_comparator"]) == (30, 20)
    assert female["smd"] == pytest.approx(smd_binary(30, 40, 20, 40))


def test_html_report_is_self_contained_and_states_the_policy(two_cohorts, tmp_path):
    result = compare(two_cohorts, 1, 2, domains=["condition"])
    page = render_html(result)
    assert "opensafely" in page and "<svg" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page
    ids = re.findall(r'id="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # several inline SVGs, no clashing ids
    written = write_charts(result, tmp_path)
    assert {p.suffix for p in written} == {".png", ".svg"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_raw_results_are_refused_by_renderers(two_cohorts):
    with pytest.raises(DisclosureError, match="disclosure control"):
        render_html(compare(two_cohorts, 1, 2, domains=["condition"], raw=True))


def test_cli_json_is_controlled_and_counts_sit_under_count_keys(two_cohorts, tmp_path):
    url = two_cohorts.url
    if two_cohorts.dialect == "postgres":  # the fixture's schema, through libpq's options parameter
        url += ("&" if "?" in url else "?") + f"options=-csearch_path%3D{two_cohorts.schema}"
    else:
        two_cohorts.close()
    runner = CliRunner()
    html = tmp_path / "report.html"
    out = runner.invoke(app, ["analyse", "characterise", "--cohort-id", "1", "--db", url, "--json",
                              "--html", str(html), "--domain", "condition"])
    assert out.exit_code == 0, out.output
    payload = orjson.loads(out.stdout)
    assert payload["disclosure"]["policy"] == "opensafely"
    for table in payload["tables"]:
        for col in table["columns"]:
            if col["kind"] == Kind.COUNT:
                assert col["name"].startswith("count")
                values = [r[col["name"]] for r in table["rows"]]
                assert all(v is None or v == 0 or v >= 10 for v in values)
    assert html.read_text().startswith("<!DOCTYPE html>")
    for command in (["compare", "--target", "1", "--comparator", "2", "--domain", "condition"],
                    ["incidence", "--target", "1", "--outcome", "2"],
                    ["survival", "--target", "1", "--outcome", "death", "--policy", "hes"]):
        out = runner.invoke(app, ["analyse", *command, "--db", url, "--json"])
        assert out.exit_code == 0, out.output
        assert orjson.loads(out.stdout)["disclosure"]["policy"] in ("opensafely", "nhse-hes")
    missing = runner.invoke(app, ["analyse", "characterise", "--cohort-id", "9", "--db", url])
    assert missing.exit_code == 1 and "cohort 9 has no rows" in missing.output


@pytest.mark.browser
def test_report_renders_in_headless_chromium(two_cohorts, tmp_path):
    """The report as a browser shows it: a screenshot that is not blank, with the charts drawn."""
    import shutil
    import subprocess

    import matplotlib.image

    if two_cohorts.dialect != "duckdb":
        pytest.skip("rendering does not depend on the engine; run once")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        engine_missing("Chromium not installed (apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(render_html(compare(two_cohorts, 1, 2, domains=["condition"])))
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,1600", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels[..., :3].std() > 0.05  # header, tables and charts, not an empty page
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<svg") >= 1 and "Disclosure control: opensafely" in dom


def test_html_report_escapes_every_value():
    """The report is a Jinja2 template with autoescape on: a value cannot inject markup."""
    from mercia.analytics.base import count, label
    from mercia.privacy.disclosure import AnalysisResult, StatTable, get_policy

    table = StatTable(name="codes", title="Codes <b>", population=100,
                      columns=[label("code", "Code <i>"), count("count_persons", "Persons")],
                      rows=[{"code": "<script>alert(1)</script>", "count_persons": 40}])
    result = get_policy("opensafely").apply(
        AnalysisResult(analysis="test", title="A & B <x>", parameters={"note": "<y>"}, tables=[table]))
    page = render_html(result)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Codes &lt;b&gt;" in page
    assert "<title>A &amp; B &lt;x&gt;</title>" in page and "&lt;y&gt;" in page and "Code &lt;i&gt;" in page
