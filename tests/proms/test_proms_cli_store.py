"""``mercia proms score`` on files, and stored responses re-scored without losing earlier scores."""

import csv

import pytest
from typer.testing import CliRunner

from mercia.cli import app
from mercia.proms.store import import_region_csv, rescore, scores
from tests.conftest import drop_store, open_store

runner = CliRunner()


@pytest.fixture
def store(engine, tmp_path):
    opened = open_store(engine, tmp_path)
    yield opened
    drop_store(opened)


def _write(path, header, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_score_command_adds_the_index(tmp_path):
    _write(tmp_path / "in.csv", ["id", "MO", "SC", "UA", "PD", "AD"], [["p1", 1, 1, 1, 1, 1], ["p2", 5, 5, 5, 5, 5]])
    result = runner.invoke(app, ["proms", "score", "--instrument", "eq5d5l", "--value-set", "england_2018",
                                 "--in", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [(r["id"], float(r["index"])) for r in rows] == [("p1", 1.0), ("p2", -0.285)]


def test_score_command_lists_rejected_rows_and_exits_1(tmp_path):
    _write(tmp_path / "in.csv", ["id", "MO", "SC", "UA", "PD", "AD"], [["p1", 1, 2, 1, 1, 1], ["p2", 6, 1, 1, 1, ""]])
    result = runner.invoke(app, ["proms", "score", "--instrument", "eq5d5l", "--value-set", "crosswalk_uk_2012",
                                 "--in", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 1
    assert "row 2 (id p2): MO = '6'" in result.output
    rejected = list(csv.DictReader((tmp_path / "out.rejected.csv").open()))
    assert [(r["id"], r["field"], r["reason"]) for r in rejected] == [
        ("p2", "MO", "must be a level from 1 to 5"), ("p2", "AD", "missing answer")]
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert out[1]["index"] == ""


def test_score_command_refuses_a_file_without_a_dimension(tmp_path):
    _write(tmp_path / "in.csv", ["id", "MO", "SC", "UA", "PD"], [["p1", 1, 1, 1, 1]])
    result = runner.invoke(app, ["proms", "score", "--instrument", "eq5d3l", "--value-set", "uk_1997",
                                 "--in", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 2 and "no column AD" in result.output


def test_region_returns_rescored_into_new_rows(tmp_path, store):
    header = ["record_id", "nhs_number", "date_of_birth", "sex", "postcode", "provider_code", "procedure_opcs4",
              "questionnaire", "timepoint", "completed_date", "eq5d_mobility", "eq5d_selfcare",
              "eq5d_usual_activities", "eq5d_pain_discomfort", "eq5d_anxiety_depression", "eq_vas", "oks_score"]
    _write(tmp_path / "proms.csv", header, [
        ["P1", "", "", "F", "", "", "W40.1", "EQ-5D-5L", "pre", "2024-01-02", 5, 5, 5, 5, 5, 40, ""],
        ["P2", "", "", "M", "", "", "W40.1", "EQ-5D-5L", "post", "2024-07-02", 1, 1, 1, 1, 2, 80, ""],
        ["P3", "", "", "M", "", "", "W40.1", "OKS", "post", "2024-07-02", "", "", "", "", "", "", 37]])
    assert import_region_csv(store, tmp_path / "proms.csv") == 3
    assert import_region_csv(store, tmp_path / "proms.csv") == 0          # idempotent
    assert rescore(store, "england_2018")[0] == 2
    assert rescore(store, "uk_2026")[0] == 2
    p1 = store.query_one("SELECT response_id FROM mercia_prom_response WHERE source_record = 'P1'")
    history = [(s["value_set_id"], s["doi"], s["score"]) for s in scores(store, p1)]
    assert history == [("england_2018", "10.1002/hec.3564", -0.285), ("uk_2026", "10.1016/j.jval.2026.03.008", -0.567)]


def _qr(rid, questionnaire, answers, authored="2024-05-01T10:00:00Z"):
    return {"resourceType": "QuestionnaireResponse", "id": rid, "questionnaire": questionnaire, "status": "completed",
            "authored": authored, "item": [{"linkId": link, "answer": [answer]} for link, answer in answers.items()]}


def test_fhir_questionnaire_responses_become_responses(store):
    from mercia.proms.store import import_fhir_responses

    five = {"mobility": {"valueCoding": {"code": "2"}}, "SC": {"valueInteger": 1}, "UA": {"valueInteger": 1},
            "PD": {"valueInteger": 3}, "AD": {"valueInteger": 1}, "EQ-VAS": {"valueInteger": 70}}
    resources = [
        _qr("a", "http://example.org/Questionnaire/eq-5d-5l", five),
        _qr("b", "http://example.org/Questionnaire/eq-5d-5l|2.1", {**five, "PD": {"valueInteger": 9}}),
        _qr("c", "http://example.org/Questionnaire/phq-9", five),
        _qr("d", "http://example.org/Questionnaire/eq-5d-5l", five, authored=None),
        {"resourceType": "Patient", "id": "p"},
    ]
    loaded, problems = import_fhir_responses(store, resources)
    assert loaded == 2
    assert problems == [
        "QuestionnaireResponse/c: questionnaire: 'http://example.org/Questionnaire/phq-9' is not an EQ-5D questionnaire",
        "QuestionnaireResponse/d: authored: missing", "Patient/p: resourceType: not a QuestionnaireResponse"]
    assert import_fhir_responses(store, resources)[0] == 0                     # idempotent
    n, rejections = rescore(store, "england_2018")
    assert n == 1 and [(r.record, r.field, r.value) for r in rejections] == [("QuestionnaireResponse/b", "PD", "9")]
    a = store.query_one("SELECT response_id FROM mercia_prom_response WHERE source_record = 'QuestionnaireResponse/a'")
    assert scores(store, a)[0]["score"] == round(1 - 0.058 - 0.084, 3)
    assert store.query_one("SELECT vas FROM mercia_prom_response WHERE response_id = ?", [a]) == 70


def test_import_fhir_command_reads_a_bundle(tmp_path):
    import json

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _qr(
        "x", "http://example.org/Questionnaire/EQ-5D-3L", {d: {"valueInteger": 1} for d in ["MO", "SC", "UA", "PD", "AD"]})}]}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    db = str(tmp_path / "cdm.duckdb")
    result = runner.invoke(app, ["proms", "import-fhir", str(tmp_path / "bundle.json"), "--db", db])
    assert result.exit_code == 0 and "1 new responses" in result.output
    rescored = runner.invoke(app, ["proms", "rescore", "--value-set", "uk_1997", "--db", db])
    assert "1 scores added with uk_1997" in rescored.output


def test_score_command_imports_only_what_it_uses(tmp_path):
    """The root command mounts groups lazily: scoring a file never imports the cohort compiler,
    the synthesiser, governance, the web app or pandas (their imports cost more than the scoring)."""
    import subprocess
    import sys

    _write(tmp_path / "in.csv", ["id", "MO", "SC", "UA", "PD", "AD"], [["p1", 1, 2, 3, 4, 5]])
    script = ("import sys; from mercia.cli import app; "
              "app(['proms', 'score', '--instrument', 'eq5d5l', '--value-set', 'england_2018', "
              f"'--in', {str(tmp_path / 'in.csv')!r}, '--out', {str(tmp_path / 'out.csv')!r}], standalone_mode=False); "
              "print(' '.join(sorted(m for m in sys.modules if m.startswith(('mercia', 'pandas')))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.splitlines()[-1].split())
    assert "mercia.proms.scoring" in loaded
    assert not loaded & {"mercia.cohorts", "mercia.synth", "mercia.governance", "mercia.web", "mercia.demo",
                         "mercia.trials", "pandas"}
    assert (tmp_path / "out.csv").exists()


def test_score_command_writes_text_that_looks_like_a_formula_as_text(tmp_path):
    _write(tmp_path / "in.csv", ["id", "MO", "SC", "UA", "PD", "AD"],
           [["=HYPERLINK(\"http://x\",\"y\")", 5, 5, 5, 5, 5], ["p2", "@SUM(A1)", 1, 1, 1, 1]])
    result = runner.invoke(app, ["proms", "score", "--instrument", "eq5d5l", "--value-set", "england_2018",
                                 "--in", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 1
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [(r["id"], r["MO"], r["index"]) for r in out] == [("'=HYPERLINK(\"http://x\",\"y\")", "5", "-0.285"),
                                                            ("p2", "'@SUM(A1)", "")]
    rejected = list(csv.DictReader((tmp_path / "out.rejected.csv").open()))
    assert [(r["id"], r["field"], r["value"]) for r in rejected] == [("p2", "MO", "'@SUM(A1)")]
