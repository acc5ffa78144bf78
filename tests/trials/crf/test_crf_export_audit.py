"""Exports (flat, REDCap, ODM 1.3.2 against the schema), dictionary migrations, and tamper detection."""

import csv
import io
import shutil
from pathlib import Path

import odmlib
import pytest
from lxml import etree
from typer.testing import CliRunner

from mercia.cli import app
from mercia.governance import GovernanceError
from mercia.trials.crf.dictionary import read_dictionary, write_dictionary
from mercia.trials.crf.export import write_csv, write_odm
from mercia.trials.crf.service import MigrationRefused

from .conftest import DICTIONARIES, PASSWORD
from .test_crf_entry import _enrol_and_baseline

ODM = "{http://www.cdisc.org/ns/odm/v1.3}"


@pytest.fixture(scope="module")
def odm_schema(tmp_path_factory):
    """The ODM 1.3.2 XSD shipped with odmlib; its xmldsig import sits beside the Define-XML schemas."""
    schemas = Path(odmlib.__file__).parent / "schemas"
    folder = tmp_path_factory.mktemp("odm")
    shutil.copytree(schemas / "odm" / "1.3.2", folder, dirs_exist_ok=True)
    shutil.copy(schemas / "define" / "2.1" / "xmldsig-core-schema.xsd", folder)
    return etree.XMLSchema(etree.parse(str(folder / "ODM1-3-2.xsd")))


def _session(team):
    _enrol_and_baseline(team, "H001")
    team.crf.save_form(team.entry, "heart", "H002", "enrolment_arm_1", "enrolment",
                       {"consent_date": "2024-03-02", "sex": "2", "email": "p2@example.org"})
    team.crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"weight_kg": "81"},
                       reason="re-weighed", status="complete")
    team.crf.sign(team.signer, "heart", "H001", "enrolment_arm_1", "enrolment", "dr_pi", PASSWORD, "Approved")


def test_flat_and_redcap_csv(team):
    _session(team)
    out = io.StringIO()
    assert write_csv(team.crf, team.manager, "heart", out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["record_id"], r["event"]) for r in rows] == [
        ("H001", "enrolment_arm_1"), ("H001", "baseline_arm_1"), ("H002", "enrolment_arm_1")]
    assert rows[1]["weight_kg"] == "81" and rows[1]["bmi"] == "28" and rows[1]["smoking___1"] == "1"
    assert rows[2]["weight_kg"] == "" and not {"initials", "email", "dob"} & set(rows[0])    # identifiers
    with_identifiers = io.StringIO()
    write_csv(team.crf, team.manager, "heart", with_identifiers, include_identifiers=True)
    assert list(csv.DictReader(io.StringIO(with_identifiers.getvalue())))[2]["email"] == "p2@example.org"
    redcap = io.StringIO()
    write_csv(team.crf, team.manager, "heart", redcap, redcap=True, include_identifiers=True)
    lines = list(csv.reader(io.StringIO(redcap.getvalue())))
    header = lines[0]
    assert header[:3] == ["record_id", "redcap_event_name", "initials"]
    assert header.index("enrolment_complete") == header.index("pregnant") + 1
    assert header[-1] == "demographics_complete"
    assert "smoking___98" in header
    h002 = dict(zip(header, lines[3], strict=True))
    assert h002["enrolment_complete"] == "0" and h002["demographics_complete"] == ""
    exports = team.gov.audit.search(action="crf.export")
    assert {(e["detail"]["format"], e["detail"]["include_identifiers"]) for e in exports} == {
        ("flat_csv", False), ("flat_csv", True), ("redcap_csv", True)}


def test_identifier_fields_leave_every_export_unless_a_data_manager_asks(team):
    """REDCap's de-identified export: initials, e-mail and date of birth (flagged "Identifier?") are in no
    CSV, ODM or ODM history by default; a monitor asking for them is refused, and the refusal audited."""
    _session(team)
    team.crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"dob": "1960-05-01"},
                       reason="dob from the notes")
    flat, redcap = io.StringIO(), io.StringIO()
    write_csv(team.crf, team.monitor, "heart", flat)
    write_csv(team.crf, team.monitor, "heart", redcap, redcap=True)
    for text in (flat.getvalue(), redcap.getvalue()):
        assert "p2@example.org" not in text and "1960-05-01" not in text
        assert not {"initials", "email", "dob"} & set(text.splitlines()[0].split(","))
    for history in (False, True):
        odm = io.BytesIO()
        write_odm(team.crf, team.monitor, "heart", odm, history=history)
        assert b"p2@example.org" not in odm.getvalue() and b"1960-05-01" not in odm.getvalue()
        assert b'"I.email"' not in odm.getvalue() and b'"I.weight_kg"' in odm.getvalue()
        odm = io.BytesIO()
        write_odm(team.crf, team.manager, "heart", odm, history=history, include_identifiers=True)
        assert b"p2@example.org" in odm.getvalue() and b"1960-05-01" in odm.getvalue()
    for export in (lambda: write_csv(team.crf, team.monitor, "heart", io.StringIO(), include_identifiers=True),
                   lambda: write_odm(team.crf, team.monitor, "heart", io.BytesIO(), include_identifiers=True)):
        with pytest.raises(GovernanceError, match="needs the study role data_manager"):
            export()
    refusals = team.gov.audit.search(action="crf.refused", actor="cra_mo")
    assert len(refusals) == 2 and refusals[0]["detail"]["needed"] == ["data_manager"]


def test_odm_export_validates_and_carries_audit_and_signatures(team, odm_schema, tmp_path):
    _session(team)
    path = tmp_path / "heart.xml"
    with path.open("wb") as f:
        items = write_odm(team.crf, team.monitor, "heart", f)
    document = etree.parse(str(path))
    assert odm_schema.validate(document), odm_schema.error_log
    assert items == len(document.findall(f".//{ODM}ItemData"))
    weight = document.find(f".//{ODM}ItemData[@ItemOID='I.weight_kg']")
    assert weight.get("Value") == "81"
    audit = weight.find(f"{ODM}AuditRecord")
    assert audit.find(f"{ODM}UserRef").get("UserOID") == "U.nurse_ed"
    assert audit.findtext(f"{ODM}ReasonForChange") == "re-weighed"
    assert audit.findtext(f"{ODM}SourceID").startswith("mercia_audit:")
    signature = document.find(f".//{ODM}FormData[@FormOID='F.enrolment']/{ODM}Signature")
    assert signature.find(f"{ODM}UserRef").get("UserOID") == "U.dr_pi"
    assert document.find(f".//{ODM}SignatureDef/{ODM}Meaning").text == "Approved"
    assert {u.get("OID") for u in document.iter(f"{ODM}User")} == {"U.nurse_ed", "U.dr_pi"}


def test_odm_shows_a_voided_signature_and_batches_do_not_change_the_file(team, odm_schema, tmp_path):
    _session(team)
    team.crf.unlock(team.manager, "heart", "H001", "enrolment_arm_1", "enrolment", "correct initials")
    whole, batched = io.BytesIO(), io.BytesIO()
    write_odm(team.crf, team.manager, "heart", whole)
    write_odm(team.crf, team.manager, "heart", batched, batch=1)
    assert _without_dates(whole) == _without_dates(batched)
    document = etree.fromstring(whole.getvalue())
    assert odm_schema.validate(document), odm_schema.error_log
    form = document.find(f".//{ODM}FormData[@FormOID='F.enrolment']")
    assert form.find(f"{ODM}Signature") is None
    assert "VOIDED" in form.find(f"{ODM}Annotation/{ODM}Comment").text


def _without_dates(buffer):
    root = etree.fromstring(buffer.getvalue())
    for attr in ("CreationDateTime", "FileOID"):
        root.attrib.pop(attr, None)
    return etree.tostring(root)


def test_migration_shows_the_diff_and_refuses_to_orphan_data(team):
    crf = team.crf
    _enrol_and_baseline(team)
    d = read_dictionary((DICTIONARIES / "baseline.csv").read_text())
    without_weight = [f for f in d.fields if f.name not in ("weight_kg", "bmi")]
    text = write_dictionary(type(d)(tuple(without_weight)))
    with pytest.raises(GovernanceError, match="needs a reason"):
        crf.import_dictionary(team.manager, "heart", text)
    with pytest.raises(MigrationRefused, match="weight_kg is removed but holds 1 values"):
        crf.import_dictionary(team.manager, "heart", text, reason="drop weight")
    assert crf.study("heart").dictionary_version == 1
    done = crf.import_dictionary(team.manager, "heart", text, reason="protocol v2 drops weight", force=True)
    assert done.applied and done.version == 2 and {c.field for c in done.changes} == {"weight_kg", "bmi"}
    versions = crf.dictionary_versions("heart")
    assert [(v["version"], v["forced"]) for v in versions] == [(1, False), (2, True)]
    entry = team.gov.audit.search(action="crf.dictionary.version")[0]
    assert entry["detail"]["orphans"] and entry["detail"]["reason"] == "protocol v2 drops weight"


def test_removing_a_choice_in_use_is_an_orphan(team):
    _enrol_and_baseline(team)
    text = (DICTIONARIES / "baseline.csv").read_text().replace("1, Female | 2, Male | 3, Prefer not to say",
                                                               "2, Male | 3, Prefer not to say")
    plan = team.crf.plan_migration(team.crf.study("heart"), read_dictionary(text))
    assert plan.orphans == ["sex: 1 stored values are not valid under the new definition"]
    added = (DICTIONARIES / "baseline.csv").read_text() + "waist_cm,demographics,,text,Waist,,,number,,,,,,,,,,\n"
    assert team.crf.import_dictionary(team.manager, "heart", added, reason="add waist").version == 2


@pytest.mark.parametrize("engine", ["duckdb"])
def test_tampering_with_the_trail_fails_audit_verify(team):
    _enrol_and_baseline(team)
    store = team.gov.db.store
    assert team.gov.audit.verify().ok
    store.execute("UPDATE mercia_audit SET detail = replace(detail, '\"80\"', '\"70\"') WHERE action = 'crf.form.save'")
    result = team.gov.audit.verify()
    assert not result.ok and "altered" in result.problem
    store.close()
    cli = CliRunner().invoke(app, ["audit", "verify", "--db", store.url])
    assert cli.exit_code == 1 and "audit log altered" in cli.output


@pytest.mark.parametrize("engine", ["postgres"])
def test_postgres_refuses_to_rewrite_the_trail(team):
    _enrol_and_baseline(team)
    with pytest.raises(Exception, match="append-only"):
        team.gov.db.store.execute("DELETE FROM mercia_audit WHERE action = 'crf.form.save'")


def test_odm_with_full_history_is_transactional_and_valid(team, odm_schema, tmp_path):
    _session(team)
    team.crf.save_form(team.entry, "heart", "H001", "baseline_arm_1", "demographics", {"cig_per_day": ""},
                       reason="not a smoker after all", status="complete")
    team.crf.delete_form(team.manager, "heart", "H002", "enrolment_arm_1", "enrolment", reason="consent withdrawn")
    path = tmp_path / "history.xml"
    with path.open("wb") as f:
        items = write_odm(team.crf, team.monitor, "heart", f, history=True, batch=1)
    document = etree.parse(str(path))
    assert odm_schema.validate(document), odm_schema.error_log
    assert document.getroot().get("FileType") == "Transactional"
    changes = [e for e in team.gov.audit.search(action="crf.form.save")]
    assert items == sum(c["field"] not in ("initials", "email", "dob") for e in changes for c in e["detail"]["changes"]
                        ) == len(document.findall(f".//{ODM}ItemData"))
    weights = document.findall(f".//{ODM}ItemData[@ItemOID='I.weight_kg']")
    assert [(w.get("TransactionType"), w.get("Value")) for w in weights] == [("Insert", "80"), ("Update", "81")]
    assert weights[1].findtext(f"{ODM}AuditRecord/{ODM}ReasonForChange") == "re-weighed"
    sources = [int(w.findtext(f"{ODM}AuditRecord/{ODM}SourceID").split(":")[1]) for w in weights]
    assert sources == sorted(sources)
    removed = document.find(f".//{ODM}ItemData[@ItemOID='I.cig_per_day'][@TransactionType='Remove']")
    assert removed.get("Value") is None
    assert removed.findtext(f"{ODM}AuditRecord/{ODM}ReasonForChange") == "not a smoker after all"
    deleted = document.find(f".//{ODM}SubjectData[@SubjectKey='H002']//{ODM}FormData[@TransactionType='Remove']")
    assert deleted.findtext(f"{ODM}AuditRecord/{ODM}ReasonForChange") == "consent withdrawn"
    assert deleted.find(f"{ODM}AuditRecord/{ODM}UserRef").get("UserOID") == "U.dm_dana"
    users = {u.get("OID") for u in document.iter(f"{ODM}User")}
    assert {ref.get("UserOID") for ref in document.iter(f"{ODM}UserRef")} <= users
    assert team.gov.audit.search(action="crf.export")[0]["detail"]["history"] is True


def test_an_underscore_in_a_study_name_is_not_a_wildcard(team, tmp_path):
    """On each engine: the look-alike study 'he_rt' reads none of 'heart''s trail or history."""
    _session(team)
    other = team.look_alike()
    assert {e["target"].split(":")[1] for e in team.crf.audit_trail(other, "he_rt")} == {"he_rt"}
    assert team.crf.audit_trail(other, "he_rt", "H00_") == []
    path = tmp_path / "history.xml"
    with path.open("wb") as f:
        assert write_odm(team.crf, other, "he_rt", f, history=True) == 0
    assert b"nurse_ed" not in path.read_bytes() and b"dr_pi" not in path.read_bytes()
    assert len(team.crf.audit_trail(team.monitor, "heart", "H001")) > 1      # heart's own trail still reads


def test_a_survey_answer_that_a_spreadsheet_would_run_is_exported_as_text(team):
    """A participant's free text beginning like a formula is prefixed with ' in both CSV layouts; a negative
    number in a number field, a choice code and the ODM export keep the value as saved."""
    from mercia.trials.crf.surveys import SurveyService

    dictionary = (DICTIONARIES / "baseline.csv").read_text().rstrip("\n")
    team.crf.import_dictionary(team.manager, "heart", dictionary + "\ntemp_change,demographics,,text,"
                               "Change in temperature,,,number,,,,,,,,,,\n", reason="temperature")
    formula = '=HYPERLINK("http://x","y")'
    token = SurveyService(team.crf).invite(team.entry, "heart", "H001", "baseline_arm_1", "demographics")["token"]
    SurveyService(team.crf).submit(token, {"notes": formula, "temp_change": "-1.5", "ethnicity": "A",
                                           "height_cm": "170", "weight_kg": "70"})
    for redcap in (False, True):
        out = io.StringIO()
        write_csv(team.crf, team.manager, "heart", out, redcap=redcap)
        [row] = [r for r in csv.DictReader(io.StringIO(out.getvalue())) if r["notes"]]
        assert row["notes"] == "'" + formula
        assert (row["temp_change"], row["height_cm"], row["ethnicity"]) == ("-1.5", "170", "A")
    odm = io.BytesIO()
    write_odm(team.crf, team.manager, "heart", odm)
    assert b'Value="=HYPERLINK(&quot;http://x&quot;,&quot;y&quot;)"' in odm.getvalue()
