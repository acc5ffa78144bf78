"""An opt-out purge leaves nothing derived from the person's records in the research store (rows,
provenance, versions, content hashes, rejects naming them, links, tokens), a resend while the person is
opted out is withheld, and after re-admission a resend is judged afresh (not "unchanged", not "older")."""

from __future__ import annotations

import json

import pyarrow as pa

from mercia.federation.cli import ingest_with_tokens
from mercia.ingest.service import ingest
from mercia.linkage.probabilistic import merge_persons
from mercia.privacy.optout import purge, readmit
from tests.ingest.test_vcf import HEADER

GP = "M90001"
STAYS, LEAVES = ("a", "9912003888"), ("b", "9449307539")
NETWORK_KEY = b"a-network-key-for-the-purge-tests-0123456789"
KINDS = ("Patient", "Encounter", "Condition", "Claim")
# bookkeeping that names a record by its (organisation-scoped, pseudonymised) key
RECORD_TABLES = ("mercia_provenance", "mercia_record_version", "mercia_record_hash", "mercia_reject")


def resources(pid: str, nhs: str, updated: str = "2024-02-01T00:00:00Z", onset: str = "2020-01-01") -> list[dict]:
    """A person's extract: their Patient, a visit, a condition of it, a condition whose date is not a
    date (a reject naming the record) and a bill of the visit (a cost row, which has no person_id)."""
    meta, subject = {"lastUpdated": updated}, {"reference": f"Patient/{pid}"}
    code = {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]}
    return [
        {"resourceType": "Patient", "id": pid, "meta": meta, "birthDate": "1980-03-04", "gender": "female",
         "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
         "name": [{"family": "Doe", "given": ["Jane"]}]},
        {"resourceType": "Encounter", "id": f"e-{pid}", "meta": meta, "status": "finished", "subject": subject,
         "class": {"code": "AMB"}, "period": {"start": "2020-01-01"}},
        {"resourceType": "Condition", "id": f"c-{pid}", "meta": meta, "subject": subject, "code": code,
         "encounter": {"reference": f"Encounter/e-{pid}"}, "onsetDateTime": onset},
        {"resourceType": "Condition", "id": f"bad-{pid}", "meta": meta, "subject": subject, "code": code,
         "onsetDateTime": "not a date"},
        {"resourceType": "Claim", "id": f"claim-{pid}", "meta": meta, "patient": subject, "created": "2020-01-02",
         "total": {"value": 10, "currency": "GBP"},
         "item": [{"sequence": 1, "encounter": [{"reference": f"Encounter/e-{pid}"}]}]},
    ]


def write_ndjson(folder, items):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all.ndjson").write_text("\n".join(json.dumps(r) for r in items) + "\n")
    return folder


def record_keys(options, org: str, records: list[str]) -> set[str]:
    """The keys the store names these source records by (``Type/<org-scoped HMAC>``)."""
    hashed = options.pseudonymiser.hash_values(f"record/{org}", pa.array(records, pa.string())).to_pylist()
    return {f"{r.split('/', 1)[0]}/{h}" for r, h in zip(records, hashed)}


def person_records(pid: str) -> list[str]:
    return [f"Patient/{pid}", f"Encounter/e-{pid}", f"Condition/c-{pid}", f"Condition/bad-{pid}",
            f"Claim/claim-{pid}"]


def named(store, keys: set[str]) -> dict[str, int]:
    """Per bookkeeping table, how many of its rows name one of ``keys``."""
    return {table: sum(1 for (r,) in store.query(f"SELECT source_record FROM {table}") if r in keys)
            for table in RECORD_TABLES}


def test_purge_leaves_nothing_of_the_person_s_records_and_a_resend_is_withheld(store, options, tmp_path):
    extract = write_ndjson(tmp_path / "gp", resources(*STAYS) + resources(*LEAVES))
    first = ingest_with_tokens(store, "fhir", extract, GP, options, NETWORK_KEY)
    assert (first.loaded, first.rejected) == (8, 2)
    stays, leaves = (record_keys(options, GP, person_records(pid)) for pid, _ in (STAYS, LEAVES))
    before = named(store, leaves)
    # the person's records are named in every table that can name them (so the checks below check something)
    assert before["mercia_provenance"] >= 4 and before["mercia_record_version"] == 4 and before["mercia_reject"] == 1
    kept_before = named(store, stays)
    leaver = store.query_one("SELECT person_id FROM mercia_person_link WHERE source_pseudonym = ?",
                             [options.pseudonymiser.source_pseudonyms(GP, ["b"]).to_pylist()[0]])
    assert store.query_one("SELECT count(*) FROM mercia_person_token WHERE person_id = ?", [leaver]) == 1
    assert store.query_one("SELECT count(*) FROM cost") == 2

    purge(store, frozenset({LEAVES[1]}), options.pseudonymiser)

    assert named(store, leaves) == dict.fromkeys(RECORD_TABLES, 0)
    assert named(store, stays) == kept_before  # the other person keeps everything
    b_pseudonym = options.pseudonymiser.source_pseudonyms(GP, ["b"]).to_pylist()[0]
    assert store.query_one("SELECT count(*) FROM mercia_network_token WHERE source_pseudonym = ?", [b_pseudonym]) == 0
    assert store.query_one("SELECT count(*) FROM mercia_network_token") == 2  # a's NHS and demographic tokens
    assert store.query("SELECT person_id FROM mercia_person_token") == store.query("SELECT person_id FROM person")
    # the bill of the leaver's visit went with the visit; the other's stays, and so does its provenance
    assert store.query_one("SELECT count(*) FROM cost") == 1
    assert store.query_one("""SELECT count(*) FROM cost c JOIN visit_occurrence v
                              ON v.visit_occurrence_id = c.cost_event_id""") == 1
    assert store.query_one("""SELECT count(*) FROM mercia_provenance p WHERE p.cdm_table = 'cost' AND NOT EXISTS
                              (SELECT 1 FROM cost c WHERE c.cost_id = p.row_id)""") == 0

    # sent again (the list not given this time): the leaver's records are withheld, nothing of them stored,
    # also from an extract that refers to them by their local id only (no Patient resource in it)
    again = ingest_with_tokens(store, "fhir", extract, GP, options, NETWORK_KEY)
    assert (again.withheld, again.rejected, again.unchanged) == (5, 1, 4)
    assert store.query_one("SELECT count(*) FROM mercia_network_token WHERE source_pseudonym = ?", [b_pseudonym]) == 0
    later = ingest(store, "fhir", write_ndjson(tmp_path / "later", resources(*LEAVES)[1:3]), GP, options=options)
    assert (later.withheld, later.rejected, later.loaded) == (2, 0, 0)
    assert named(store, leaves | record_keys(options, GP, ["Encounter/e-b", "Condition/c-b"])) == \
        dict.fromkeys(RECORD_TABLES, 0)
    assert store.query_one("SELECT count(*) FROM mercia_person_link") == 1


def test_after_readmission_a_resend_loads_even_an_older_version(store, options, tmp_path):
    """The store kept no version of the purged records, so the version sent after the person opts back
    in loads, even one older than the version purged (it would have been "superseded")."""
    ingest(store, "fhir", write_ndjson(tmp_path / "new", resources(*STAYS) + resources(*LEAVES)), GP, options=options)
    purge(store, frozenset({LEAVES[1]}), options.pseudonymiser)
    readmit(store, frozenset({LEAVES[1]}), options.pseudonymiser)
    older = write_ndjson(tmp_path / "old", resources(*LEAVES, updated="2024-01-01T00:00:00Z", onset="2019-06-01"))
    summary = ingest(store, "fhir", older, GP, options=options)
    assert (summary.loaded, summary.unchanged, summary.superseded, summary.withheld) == (4, 0, 0, 0)
    assert store.query("SELECT condition_start_date FROM condition_occurrence ORDER BY 1") == store.query(
        "SELECT DATE '2019-06-01' UNION ALL SELECT DATE '2020-01-01' ORDER BY 1")
    assert store.query_one("SELECT count(*) FROM person") == 2


def test_a_reject_follows_its_person_through_linkage_to_the_purge(store, options, tmp_path):
    """A trust holds the leaver without an NHS number (a person of its own) with a rejected condition;
    linkage merges the two persons, and the purge of the merged person takes the trust's reject too."""
    ingest(store, "fhir", write_ndjson(tmp_path / "gp", resources(*LEAVES)), GP, options=options)
    trust = resources("x", LEAVES[1])
    del trust[0]["identifier"]
    ingest(store, "fhir", write_ndjson(tmp_path / "trust", trust), "R9A", options=options)
    (gp_person,), (trust_person,) = store.query("SELECT person_id FROM mercia_person_link ORDER BY org")
    trust_reject = record_keys(options, "R9A", ["Condition/bad-x"])
    assert store.query("SELECT person_id FROM mercia_reject WHERE source_record = ?", [*trust_reject]) == \
        [(trust_person,)]
    merge_persons(store, pa.table({"old": [trust_person], "new": [gp_person]}))
    purge(store, frozenset({LEAVES[1]}), options.pseudonymiser)
    assert named(store, trust_reject | record_keys(options, "R9A", person_records("x"))) == \
        dict.fromkeys(RECORD_TABLES, 0)
    assert store.query_one("SELECT count(*) FROM mercia_person_link") == 0


def test_a_record_the_source_withdrew_leaves_nothing_after_the_purge(store, options, tmp_path):
    """The source withdraws the leaver's condition (entered-in-error): its rows go, and its removal (a
    ``removed`` reject, the version that withdrew it) keeps whose it was, so the purge takes those too."""
    ingest(store, "fhir", write_ndjson(tmp_path / "gp", resources(*STAYS) + resources(*LEAVES)), GP, options=options)
    withdrawn = [{**r, "meta": {"lastUpdated": "2024-03-01T00:00:00Z"},
                  "verificationStatus": {"coding": [{"code": "entered-in-error"}]}}
                 for r in resources(*STAYS)[2:3] + resources(*LEAVES)[2:3]]
    removal = ingest(store, "fhir", write_ndjson(tmp_path / "withdrawn", withdrawn), GP, options=options)
    assert removal.removed == 2
    leaver_condition = record_keys(options, GP, ["Condition/c-b"])
    assert named(store, leaver_condition) == {"mercia_provenance": 0, "mercia_record_version": 1,
                                              "mercia_record_hash": 0, "mercia_reject": 1}
    purge(store, frozenset({LEAVES[1]}), options.pseudonymiser)
    assert named(store, leaver_condition) == dict.fromkeys(RECORD_TABLES, 0)
    assert named(store, record_keys(options, GP, ["Condition/c-a"])) == {  # the other person's removal stays
        "mercia_provenance": 0, "mercia_record_version": 1, "mercia_record_hash": 0, "mercia_reject": 1}


def _phenopackets(folder, people: dict[str, str | None]):
    folder.mkdir()
    for pid, nhs in people.items():
        subject = {"id": pid, "dateOfBirth": "2001-04-02T00:00:00Z", "sex": "MALE",
                   **({"alternateIds": [f"NHS:{nhs}"]} if nhs else {})}
        (folder / f"{pid}.json").write_text(json.dumps({
            "id": pid, "subject": subject, "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
            "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "t", "phenopacketSchemaVersion": "2.0"}}))
    return folder


def test_a_vcf_sample_without_rows_leaves_no_hash_and_is_loaded_again_after_readmission(store, options, tmp_path):
    """P3 carries no allele, so its sample's content hash sits in ``mercia_record_hash`` (no provenance
    holds it): the purge takes it, a resend while P3 is opted out withholds the sample, and after P3
    opts back in the sample is loaded, not "unchanged"."""
    people = _phenopackets(tmp_path / "pp", {"P1": None, "P2": None, "P3": LEAVES[1]})
    ingest(store, "phenopackets", people, "R9G", options=options)
    vcf = tmp_path / "trio.vcf"
    vcf.write_text(HEADER + "".join(f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t1/1:20:50\t"
                                    "0/0:1:1\n" for i in range(2)))
    first = ingest(store, "vcf", vcf, "R9G", options=options)
    assert (first.loaded, store.query_one("SELECT count(*) FROM mercia_record_hash")) == (3, 1)

    purge(store, frozenset({LEAVES[1]}), options.pseudonymiser)
    assert store.query_one("SELECT count(*) FROM mercia_record_hash") == 0
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 4  # P1's and P2's calls stay

    again = ingest(store, "vcf", vcf, "R9G", options=options)
    assert (again.withheld, again.rejected, again.unchanged) == (1, 0, 2)
    assert store.query_one("SELECT count(*) FROM mercia_record_hash") == 0
    assert store.query_one("SELECT count(*) FROM mercia_reject WHERE source_record IS NOT NULL") == 0

    readmit(store, frozenset({LEAVES[1]}), options.pseudonymiser)
    ingest(store, "phenopackets", people, "R9G", options=options)
    back = ingest(store, "vcf", vcf, "R9G", options=options)
    assert (back.loaded, back.unchanged, back.withheld) == (3, 2, 0)  # P3's sample loaded anew, not unchanged
    assert store.query_one("SELECT count(*) FROM mercia_record_hash") == 1


def test_readmission_from_the_command_line_is_audited_without_nhs_numbers(options, tmp_path):
    from typer.testing import CliRunner

    from mercia.cdm import Store
    from mercia.cli import app
    from mercia.governance import Governance

    db = str(tmp_path / "readmit.duckdb")
    with Store(db) as store:
        ingest(store, "fhir", write_ndjson(tmp_path / "gp", resources(*LEAVES)), GP, options=options)
    listed = tmp_path / "people.txt"
    listed.write_text(f"{LEAVES[1]}\n")
    for command, option in (("purge", "--opt-out"), ("readmit", "--opt-in")):
        result = CliRunner().invoke(app, ["privacy", command, option, str(listed), "--db", db])
        assert result.exit_code == 0, result.output
    assert "1 taken off the stored opt-out list" in result.output
    with Store(db) as store:
        assert store.query_one("SELECT count(*) FROM mercia_opt_out") == 0
        assert store.query_one("SELECT count(*) FROM mercia_opt_out_source") == 0
        gov = Governance(store)
        [purged] = gov.audit.search(action="privacy.purge")
        [readmitted] = gov.audit.search(action="privacy.readmit")
        assert purged["detail"]["removed"]["person"] == 1 and readmitted["detail"]["readmitted"] == 1
        assert LEAVES[1] not in str(purged) + str(readmitted)
        assert gov.audit.verify().ok
