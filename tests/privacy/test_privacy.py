"""NHS numbers, keys and pseudonyms, date-of-birth policy, geography, national data opt-out."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from mercia.ingest.service import ingest
from mercia.privacy.geography import GeographyError, GeographyLookup
from mercia.privacy.nhs import is_valid_nhs_number, nhs_number_problems, normalise_nhs_numbers
from mercia.privacy.optout import purge, read_opt_out_file
from mercia.privacy.policy import DobPolicy, postcode_district, reduced_birth_columns_sql, soundex
from mercia.privacy.pseudonym import KeyError_, Pseudonymiser, load_key


def test_nhs_number_modulus_11():
    values = normalise_nhs_numbers(pa.array(["943 476 5919", "9912003890", "9912003888", "9449307539",
                                             "943-476-5910", "12345", None, "9990000018"]))
    problems = nhs_number_problems(values).to_pylist()
    assert problems[:4] == [None, "NHS number fails the modulus-11 check digit", None, None]
    assert problems[4] == "NHS number fails the modulus-11 check digit"
    assert problems[5] == "NHS number is not 10 digits"
    assert problems[6] is None
    assert problems[7] == "NHS number in the never-issued 999 range (synthetic data not allowed)"
    assert nhs_number_problems(values, allow_synthetic=True).to_pylist()[7] is None
    assert is_valid_nhs_number("9434765919") and not is_valid_nhs_number("9434765918")


def test_reasons_never_quote_the_number():
    reasons = nhs_number_problems(pa.array(["9912003890", "1234", "9990000018"])).to_pylist()
    assert not any(n in r for r in reasons for n in ("9912003890", "1234", "9990000018"))


def test_key_from_environment_or_file_outside_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("MERCIA_PSEUDONYM_KEY", "x" * 40)
    assert load_key() == b"x" * 40
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY")
    short = tmp_path / "short.key"
    short.write_text("tooshort")
    with pytest.raises(KeyError_, match="too short"):
        load_key(short)
    import mercia
    inside = mercia.__path__[0] + "/../mercia.key"
    with pytest.raises(KeyError_, match="inside the repository"):
        load_key(inside)
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY_FILE")
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("MERCIA_CONFIG", str(tmp_path / "empty.toml"))
    from mercia.config import load_settings
    load_settings.cache_clear()
    with pytest.raises(KeyError_, match="no pseudonymisation key"):
        load_key()
    load_settings.cache_clear()


def test_a_key_file_not_yet_made_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MERCIA_PSEUDONYM_KEY", raising=False)
    with pytest.raises(KeyError_, match=r"absent\.key does not exist \(.*openssl rand -hex 32 > FILE"):
        load_key(tmp_path / "absent.key")


def test_pseudonyms_are_keyed_purpose_bound_and_project_specific():
    one, two = Pseudonymiser(b"k" * 40), Pseudonymiser(b"j" * 40)
    nhs = one.nhs_pseudonyms(["9434765919"]).to_pylist()[0]
    assert nhs == one.nhs_pseudonyms(["9434765919"]).to_pylist()[0]
    assert nhs != two.nhs_pseudonyms(["9434765919"]).to_pylist()[0]
    assert nhs != one.source_pseudonyms("RR8", ["9434765919"]).to_pylist()[0]
    a = one.research_pseudonyms("project-a", [nhs]).to_pylist()[0]
    b = one.research_pseudonyms("project-b", [nhs]).to_pylist()[0]
    assert a != b and a == one.research_pseudonyms("project-a", [nhs]).to_pylist()[0]
    assert "k" * 8 not in repr(one) and "k" * 8 not in str(vars(one).keys())
    assert one.nhs_pseudonyms([None, ""]).to_pylist() == [None, None]


def test_soundex_and_postcode_district():
    # Knuth's examples
    assert [soundex(n) for n in ("Robert", "Rupert", "Ashcraft", "Tymczak", "Pfister", "O'Hara")] == \
        ["R163", "R163", "A261", "T522", "P236", "O600"]
    assert postcode_district("ls8 3dr") == "LS8" and postcode_district("B152TT") == "B15"


@pytest.mark.parametrize("policy, expected", [
    (DobPolicy.YEAR, (1980, None, None)), (DobPolicy.YEAR_MONTH, (1980, 5, None)), (DobPolicy.FULL, (1980, 5, 6))])
def test_date_of_birth_policy(policy, expected):
    import duckdb
    sql = reduced_birth_columns_sql("b", policy)
    row = duckdb.sql(f"SELECT {sql} FROM (SELECT '1980-05-06' AS b)").fetchall()[0]
    assert row[:3] == expected
    assert duckdb.sql(f"SELECT {sql} FROM (SELECT '1980' AS b)").fetchall()[0][:3] == (1980, None, None)


def write_geography(tmp_path, vintage: str):
    onspd = tmp_path / "ONSPD.csv"
    onspd.write_text("pcd,pcd2,pcds,dointr,doterm,lsoa11,lsoa21,imd\n"
                     "B152TT,B15 2TT,B15 2TT,198001,,E01000001,E01033001,100\n"
                     "LS8 3DR,LS8  3DR,LS8 3DR,198001,,E01000002,E01033002,200\n")
    imd = tmp_path / f"imd{vintage}.csv"
    code = "E0100000" if vintage == "2011" else "E0103300"
    imd.write_text(f'"LSOA code ({vintage})","LSOA name ({vintage})","Local Authority District code",'
                   '"Index of Multiple Deprivation (IMD) Rank","Index of Multiple Deprivation (IMD) Decile"\n'
                   f'{code}1,Birmingham 001A,E08000025,1234,1\n{code}2,Leeds 002B,E08000035,30000,9\n')
    return onspd, imd


@pytest.mark.parametrize("vintage", ["2011", "2021"])
def test_geography_loaders_pick_the_lsoa_vintage_of_the_imd_file(tmp_path, vintage):
    lookup = GeographyLookup.from_files(*write_geography(tmp_path, vintage))
    rows = {r["postcode"]: (r["lsoa"], r["imd_decile"]) for r in lookup.table.to_pylist()}
    prefix = "E0100000" if vintage == "2011" else "E0103300"
    assert rows == {"B15 2TT": (f"{prefix}1", 1), "LS8 3DR": (f"{prefix}2", 9)}


def test_geography_loader_names_a_missing_column(tmp_path):
    onspd, imd = write_geography(tmp_path, "2011")
    imd.write_text("lsoa,decile\nE01000001,1\n")
    with pytest.raises(GeographyError, match="no LSOA code column"):
        GeographyLookup.from_files(onspd, imd)


def test_imd_decile_kept_and_postcode_dropped(store, shared_data, options, tmp_path):
    options.geography = GeographyLookup.from_files(*write_geography(tmp_path, "2021"))
    ingest(store, "fhir", shared_data / "fhir/ukcore_examples/json", "RR8", options=options)
    rows = store.query("SELECT year_of_birth, lsoa, imd_decile FROM mercia_person_link ORDER BY 1")
    assert (2021, "E01033002", 9) in rows  # the baby lives at LS8 3DR
    assert store.query("""SELECT l.location_source_value FROM person p JOIN location l USING (location_id)
                          WHERE p.year_of_birth = 2021""") == [("E01033002",)]


def patient(pid: str, nhs: str, birth: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": "female",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Doe", "given": ["Jane"]}]}


def condition(cid: str, pid: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]},
            "onsetDateTime": "2020-01-01"}


def write_ndjson(folder, resources):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all.ndjson").write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    return folder


def test_opt_out_at_load_and_purge_later(store, options, tmp_path):
    people = [("a", "9434765919", "1970-01-02"), ("b", "9449307539", "1980-03-04"), ("c", "9912003888", "1990-05-06")]
    extract = write_ndjson(tmp_path / "gp", [patient(*p) for p in people] +
                           [condition(f"c-{p[0]}", p[0]) for p in people])
    opt_out = tmp_path / "optout.txt"
    opt_out.write_text("# national data opt-out\n943 476 5919\n")
    options.opt_out = read_opt_out_file(opt_out)
    summary = ingest(store, "fhir", extract, "M90001", options=options)
    assert (summary.withheld, summary.loaded, summary.rejected) == (2, 4, 0)
    assert store.query_one("SELECT count(*) FROM person") == 2
    assert store.query("SELECT reason, source_record FROM mercia_reject WHERE action = 'withheld'") == \
        [("national data opt-out (2 records withheld)", None)]
    # a second organisation holds person b too (same NHS number): linked deterministically
    ingest(store, "fhir", write_ndjson(tmp_path / "trust", [patient("x", "9449307539", "1980-03-04"),
                                                            condition("c-x", "x")]), "R9A", options=options)
    assert store.query_one("SELECT count(*) FROM person") == 2
    assert store.query_one("SELECT count(DISTINCT person_id) FROM condition_occurrence") == 2
    # b now opts out: purged from every table, both organisations' records
    opt_out.write_text("9449307539\n")
    deleted = purge(store, read_opt_out_file(opt_out), options.pseudonymiser)
    assert deleted["condition_occurrence"] == 2 and deleted["person"] == 1 and deleted["mercia_person_link"] == 2
    assert store.query_one("SELECT count(*) FROM person") == 1
    assert store.query_one("SELECT count(*) FROM condition_occurrence") == 1
    assert store.query_one("""SELECT count(*) FROM mercia_provenance p LEFT JOIN condition_occurrence c
        ON c.condition_occurrence_id = p.row_id WHERE p.cdm_table = 'condition_occurrence'
        AND c.condition_occurrence_id IS NULL""") == 0
    # the list is remembered (as pseudonyms): a later resend without --opt-out still withholds b
    options.opt_out = frozenset()
    again = ingest(store, "fhir", tmp_path / "trust", "R9A", options=options)
    assert again.withheld == 2 and store.query_one("SELECT count(*) FROM person") == 1
    assert "9449307539" not in str(store.query("SELECT * FROM mercia_opt_out"))


def test_purge_from_the_command_line_is_audited_without_nhs_numbers(pseudonym_key, tmp_path):
    from typer.testing import CliRunner

    from mercia.cdm import Store
    from mercia.cdm.extensions import ensure_extension_tables
    from mercia.cli import app
    from mercia.governance import Governance

    db = str(tmp_path / "purge.duckdb")
    with Store(db) as made:
        ensure_extension_tables(made)
    opt_out = tmp_path / "optout.txt"
    opt_out.write_text("943 476 5919\n")
    result = CliRunner().invoke(app, ["privacy", "purge", "--opt-out", str(opt_out), "--db", db])
    assert result.exit_code == 0, result.output
    with Store(db) as store:
        gov = Governance(store)
        [entry] = gov.audit.search(action="privacy.purge")
        assert entry["actor"].startswith("cli:") and entry["detail"]["listed"] == 1
        assert "9434765919" not in str(entry) and "943 476 5919" not in str(entry)
        assert gov.audit.verify().ok
