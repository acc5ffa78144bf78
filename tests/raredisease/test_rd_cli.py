"""``mercia raredisease`` end to end through the CLI."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from mercia.cli import app

runner = CliRunner()
MARFAN = "HP:0001166,HP:0001083,HP:0002616,HP:0000098,HP:0000767,HP:0001634,HP:0100775,HP:0002650,HP:0001065"


def invoke(*args):
    return runner.invoke(app, ["raredisease", *args])


def test_terms_search_json():
    result = invoke("terms", "ectopia lent", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["knowledge_base"].startswith("HPO 2025-01-16")
    assert data["terms"][0]["id"] == "HP:0001083"


def test_rank_json_with_genes_and_explanation():
    result = invoke("rank", "--hpo", MARFAN, "--excluded", "HP:0001250", "--genes", "FBN1,CFTR", "--top", "3",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["knowledge_base"].startswith("HPO 2025-01-16")
    assert data["ranking"][0]["disease_id"] == "OMIM:154700"
    assert data["ranking"][0]["evidence"]
    assert data["genes"][0]["gene"] == "FBN1"


def test_rank_table_shows_the_hpo_version():
    result = invoke("rank", "--hpo", MARFAN, "--top", "2", "--explain")
    assert result.exit_code == 0, result.output
    assert "Marfan syndrome" in result.output and "HPO 2025-01-16" in result.output


def test_rank_unknown_term_is_a_one_line_error():
    result = invoke("rank", "--hpo", "HP:0001166,HP:9999999")
    assert result.exit_code == 1
    assert "HP:9999999 is not a current term" in result.output


def test_batch_rank(tmp_path, kb):
    cases = tmp_path / "in.jsonl"
    cases.write_text(json.dumps({"id": "a", "observed": MARFAN.split(","), "excluded": []}) + "\n"
                     + json.dumps({"id": "b", "observed": ["HP:0001250", "HP:9999999"], "excluded": ["HP:0000252"],
                                   "genes": ["SCN1A"]}) + "\n")
    out = tmp_path / "out.jsonl"
    result = invoke("rank", "--cases", str(cases), "--out", str(out), "--top", "4")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", "b"]
    assert lines[0]["ranking"][0] == {**lines[0]["ranking"][0], "rank": 1, "disease_id": "OMIM:154700"}
    assert set(lines[0]["ranking"][0]) == {"rank", "disease_id", "label", "score"}
    assert len(lines[0]["ranking"]) == 4
    scn1a = {str(kb.disease_ids[d]) for d in kb.diseases_of_gene("SCN1A")}
    assert lines[1]["ranking"] and {r["disease_id"] for r in lines[1]["ranking"]} <= scn1a


def test_batch_rank_bad_line(tmp_path):
    cases = tmp_path / "in.jsonl"
    cases.write_text('{"observed": []}\n')
    result = invoke("rank", "--cases", str(cases), "--out", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 1 and "line 1" in result.output


def test_import_export_and_match(tmp_path, examples, monkeypatch):
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "k" * 40)
    db = str(tmp_path / "rd.duckdb")
    result = invoke("import", *map(str, examples[:6]), "--db", db)
    assert result.exit_code == 0, result.output
    out = tmp_path / "p1.json"
    result = invoke("export", "1", "--db", db, "--out", str(out))
    assert result.exit_code == 0, result.output
    exported = json.loads(out.read_text())
    original = json.loads(examples[0].read_text())
    assert [f["type"]["id"] for f in exported["phenotypicFeatures"]] == \
        [f["type"]["id"] for f in original["phenotypicFeatures"]]
    result = invoke("match", "1", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    matches = json.loads(result.output)["matches"]
    assert len(matches) == 5
    assert all(len(m["pseudonym"]) == 64 for m in matches)


def test_match_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY_FILE", str(tmp_path / "missing-key"))
    result = invoke("match", "1", "--db", str(tmp_path / "x.duckdb"))
    assert result.exit_code == 1 and "key" in result.output


def test_kb_load_activates_a_release_and_reset_returns(tmp_path, monkeypatch, write_release):
    from mercia.raredisease.kb import active_files, default_files

    monkeypatch.setenv("MERCIA_CACHE_DIR", str(tmp_path / "cache"))
    obo, hpoa = write_release(tmp_path)
    result = invoke("kb", "load", "--obo", str(obo), "--hpoa", str(hpoa))
    assert result.exit_code == 0, result.output
    assert "HPO 2030-01-01" in result.output
    assert active_files()["obo"] == obo.resolve()
    assert invoke("kb", "reset").exit_code == 0
    assert active_files() == default_files()


def test_kb_info():
    result = invoke("kb", "info", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["diseases"]["OMIM"] > 8000 and info["genes"] > 4000


def test_disease_command():
    result = invoke("disease", "OMIM:154700", "--json", "--limit", "5")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["label"] == "Marfan syndrome" and "FBN1" in info["genes"]
    assert len(info["annotations"]) == 5
    frequencies = [a["frequency"] for a in info["annotations"]]
    assert frequencies == sorted(frequencies, reverse=True)
    assert invoke("disease", "MONDO:0007947").exit_code == 1


def test_rank_with_a_vcf_restricts_diseases_to_its_genes(tmp_path):
    vcf = tmp_path / "case.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\n"
                   "7\t117559590\t.\tG\tA\t50\tPASS\tANN=A|stop_gained|HIGH|CFTR|E|x\tGT\t1/1\n")
    result = invoke("rank", "--hpo", MARFAN, "--vcf", str(vcf), "--json", "--top", "3")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["genes"][0]["gene"] == "CFTR" and data["genes"][0]["alleles"] == 2
    assert data["ranking"] and all("CFTR" in c["genes"] for c in data["ranking"])
    bad = tmp_path / "bad.vcf"
    bad.write_text("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n1\t5\t.\tA\tG\t.\t.\tDP=1\n")
    result = invoke("rank", "--hpo", MARFAN, "--vcf", str(bad))
    assert result.exit_code == 1 and "line 2: field INFO" in result.output


def test_diagnose_json_has_probabilities_explanations_and_the_sparse_flag():
    result = invoke("diagnose", "--hpo", MARFAN, "--excluded", "HP:0001249", "--top", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["knowledge_base"].startswith("HPO 2025-01-16")
    top = data["ranking"][0]
    assert top["disease_id"] == "OMIM:154700" and 0 < top["probability"] <= 1
    assert top["supporting"] and all(e["effect"] > 0 for e in top["supporting"])
    assert data["too_sparse_to_decide"] is False


def test_diagnose_table_warns_when_too_sparse_and_rejects_bad_input():
    result = invoke("diagnose", "--hpo", "HP:0001250", "--top", "2")
    assert result.exit_code == 0, result.output
    assert "too sparse to decide" in result.output and "calibrated" in result.output
    result = invoke("diagnose", "--hpo", "HP:9999999,HP:0000000x")
    assert result.exit_code == 1 and "HP:9999999" in result.output and "HP:0000000x" in result.output
    result = invoke("diagnose")
    assert result.exit_code == 1 and "no observed or excluded HPO term" in result.output


def test_train_ensemble_names_the_bad_line(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "a", "observed": ["HP:0001166"], "diseases": ["OMIM:154700"]}\n')
    result = invoke("train-ensemble", "--cases", str(cases), "--out", str(tmp_path / "m.json"))
    assert result.exit_code == 1 and "line 1" in result.output and "cohort" in result.output


def test_batch_diagnose_explains_every_shown_disease_by_its_term_lrs(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "marfan", "observed": MARFAN.split(","), "excluded": ["HP:0001249"]}) + "\n"
                     + json.dumps({"id": "newer-hpo", "observed": ["HP:0001166", "HP:9999999"]}) + "\n"
                     + json.dumps({"id": "fbn1", "observed": MARFAN.split(","), "genes": ["FBN1"]}) + "\n")
    out = tmp_path / "out.jsonl"
    result = invoke("diagnose", "--cases", str(cases), "--out", str(out), "--top", "5")
    assert result.exit_code == 0, result.output
    assert "1 cases had HPO ids this release does not know" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["marfan", "newer-hpo", "fbn1"]
    assert rows[0]["ranking"][0]["disease_id"] == "OMIM:154700" and len(rows[0]["ranking"]) == 5
    assert all("FBN1" in d["genes"] for d in rows[2]["ranking"])
    for row in rows:
        for disease in row["ranking"]:
            lrs = disease["term_lrs"]
            assert "not HP:0001249" in lrs if row["id"] == "marfan" else "HP:0001166" in lrs
            # the terms' likelihood ratios and the unreported features' share multiply to the LR score
            assert sum(math.log10(v) for v in lrs.values()) == pytest.approx(disease["lr_score"], abs=2e-3)
    marfan = rows[0]["ranking"][0]["term_lrs"]
    assert marfan["HP:0001083"] > 1  # ectopia lentis supports Marfan syndrome


def test_batch_diagnose_needs_an_output_and_names_a_bad_line(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "a", "observed": ["HP:0001166"]}\n{"observed": ["HP:0001166"]}\n')
    result = invoke("diagnose", "--cases", str(cases))
    assert result.exit_code == 1 and "--cases needs --out" in result.output
    result = invoke("diagnose", "--cases", str(cases), "--out", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 1 and "line 2" in result.output


@pytest.mark.slow
def test_the_shipped_model_is_reproduced_byte_for_byte_by_the_command(tmp_path, shared_data):
    from mercia.raredisease.ensemble import MODEL_FILE

    out = tmp_path / "ensemble.json"
    result = invoke("train-ensemble", "--cases", str(shared_data / "phenopackets" / "dev_cases.jsonl"),
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == MODEL_FILE.read_bytes()


def test_the_diagnose_command_imports_neither_pyarrow_nor_duckdb():
    """The ranking path reaches ``mercia.cdm`` and ``mercia.vocab`` (the HPO reader) only through light
    submodules; the packages import their store-facing names on first use (a tenth of a second of start-up)."""
    import subprocess
    import sys

    code = ("import sys; from mercia.cli import load_command; load_command('raredisease'); "
            "import mercia.raredisease.ensemble, mercia.raredisease.kb; "
            "print(sorted({'pyarrow', 'duckdb'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
