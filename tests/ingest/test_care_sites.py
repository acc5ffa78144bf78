"""Care sites: one per ODS code in the store, however many extracts mention it; a registering practice's
site gets the name an Organization resource gives it, in place (docs/ingest.md, "Care sites")."""

from __future__ import annotations

import pytest

from tests.ingest.test_registered_practice import MOVER, NEW_GP, OLD_GP, STAYER, TRUST, extract, patient, \
    registration

OTHER_TRUST = "R9B"


def organization(ods: str, name: str | None, rid: str | None = None) -> dict:
    resource = {"resourceType": "Organization", "id": rid or f"org-{ods}",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}]}
    return resource | ({"name": name} if name is not None else {})


def encounter(eid: str, pid: str, provider: str) -> dict:
    return {"resourceType": "Encounter", "id": eid, "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"}, "period": {"start": "2020-01-01"},
            "serviceProvider": {"reference": f"Organization/{provider}"}}


def sites(store) -> list[tuple]:
    return store.query("SELECT care_site_id, care_site_source_value, care_site_name FROM care_site ORDER BY 1")


def site_provenance(store) -> list[tuple]:
    return store.query("SELECT row_id, org FROM mercia_provenance WHERE cdm_table = 'care_site' ORDER BY 1, 2")


def registered(store, load, tmp_path) -> int:
    """The old practice's extract of registrations only: its site is added without a name; its id."""
    load(store, "fhir", extract(tmp_path, "registrations", [patient("s", STAYER), registration("s", "2015-01-01")]),
         OLD_GP)
    (site_id,) = [i for i, code, _ in sites(store) if code == OLD_GP]
    return site_id


def test_a_later_organization_of_the_practice_names_its_registration_site_in_place(store, load, snapshot,
                                                                                   tmp_path):
    site_id = registered(store, load, tmp_path)
    assert sites(store) == [(site_id, OLD_GP, None)]
    named = extract(tmp_path, "named", [organization(OLD_GP, "Old Surgery")])

    first = load(store, "fhir", named, OLD_GP)

    assert sites(store) == [(site_id, OLD_GP, "Old Surgery")]
    assert site_provenance(store) == [(site_id, OLD_GP)]
    assert (first.loaded, first.rows["care_site"]) == (1, 1)
    before = snapshot(store)
    again = load(store, "fhir", named, OLD_GP)
    assert (again.unchanged, again.changed, again.rows.get("care_site", 0)) == (1, 0, 0)
    assert snapshot(store) == before


def test_the_practice_s_own_resend_renames_its_site_in_place_and_its_visits_keep_pointing_at_it(store, load,
                                                                                               tmp_path):
    load(store, "fhir", extract(tmp_path, "d1", [organization(OLD_GP, "Old Surgery"), patient("s", STAYER),
                                                 registration("s", "2015-01-01"), encounter("e", "s", f"org-{OLD_GP}")]),
         OLD_GP)
    (site_id, _, _), = sites(store)
    assert store.query_one("SELECT care_site_id FROM visit_occurrence") == site_id
    load(store, "fhir", extract(tmp_path, "trust", [organization(NEW_GP, "New Surgery")]), TRUST)  # a later site

    renamed = load(store, "fhir", extract(tmp_path, "d2", [organization(OLD_GP, "The Old Surgery")]), OLD_GP)

    assert (renamed.changed, renamed.rows["care_site"]) == (1, 1)
    assert sites(store)[0] == (site_id, OLD_GP, "The Old Surgery") and len(sites(store)) == 2
    assert store.query("SELECT care_site_id FROM visit_occurrence UNION ALL SELECT care_site_id FROM person") == [
        (site_id,), (site_id,)]
    assert site_provenance(store)[0] == (site_id, OLD_GP)


def test_another_organisation_names_an_unnamed_site_and_only_the_namer_or_the_practice_renames_it(store, load,
                                                                                                  tmp_path):
    site_id = registered(store, load, tmp_path)

    def send(folder: str, org: str, name: str):
        return load(store, "fhir", extract(tmp_path, folder, [organization(OLD_GP, name)]), org)

    send("t1", TRUST, "Old Surgery")                          # the trust names the unnamed site
    assert sites(store) == [(site_id, OLD_GP, "Old Surgery")]
    send("o1", OTHER_TRUST, "Old Surgery Branch")             # another trust: the first name stays
    assert sites(store) == [(site_id, OLD_GP, "Old Surgery")]
    send("t2", TRUST, "Old Surgery, High Street")             # the trust corrects the name it gave
    assert sites(store) == [(site_id, OLD_GP, "Old Surgery, High Street")]
    send("p1", OLD_GP, "The Old Surgery")                     # the practice's own name wins
    assert sites(store) == [(site_id, OLD_GP, "The Old Surgery")]
    send("t3", TRUST, "Old Surgery (closed)")                 # and stays when the trust changes its own
    assert sites(store) == [(site_id, OLD_GP, "The Old Surgery")]
    assert site_provenance(store) == sorted([(site_id, OLD_GP), (site_id, TRUST), (site_id, OTHER_TRUST)])


def test_a_registration_s_site_is_named_from_the_start_when_its_extract_carries_the_organization(store, load,
                                                                                                 tmp_path):
    load(store, "fhir", extract(tmp_path, "x", [patient("m", MOVER), registration("m", "2010-01-01"),
                                                organization(OLD_GP, "Old Surgery")]), OLD_GP)
    (site_id, code, name), = sites(store)
    assert (code, name) == (OLD_GP, "Old Surgery")
    assert store.query_one("SELECT care_site_id FROM person") == site_id


def test_one_site_per_ods_code_however_many_extracts_name_it(store, load, tmp_path):
    """Two trusts' extracts each carry the practice's Organization (each its own resource id), then the practice
    sends its registrations: one site, which every visit and the person point at."""
    for org in (TRUST, OTHER_TRUST):
        load(store, "fhir", extract(tmp_path, org, [organization(NEW_GP, "New Surgery", f"{org}-gp"),
                                                    patient(f"{org}-p", MOVER), encounter(f"{org}-e", f"{org}-p",
                                                                                          f"{org}-gp")]), org)
    load(store, "fhir", extract(tmp_path, NEW_GP, [organization(NEW_GP, "New Surgery"), patient("m", MOVER),
                                                   registration("m", "2019-07-01")]), NEW_GP)
    (site_id, code, name), = sites(store)
    assert (code, name) == (NEW_GP, "New Surgery")
    assert store.query("SELECT DISTINCT care_site_id FROM visit_occurrence") == [(site_id,)]
    assert store.query("SELECT DISTINCT care_site_id FROM person WHERE care_site_id IS NOT NULL") == [(site_id,)]


def test_sites_of_one_extract_sharing_an_ods_code_are_one_site(store, load, tmp_path):
    load(store, "fhir", extract(tmp_path, "x", [organization(NEW_GP, "New Surgery", "a"),
                                                organization(NEW_GP, "New Surgery", "b")]), TRUST)
    assert [code for _, code, _ in sites(store)] == [NEW_GP]


def test_an_organization_without_a_name_or_with_a_malformed_ods_code_is_rejected_by_field(store, load, tmp_path):
    summary = load(store, "fhir", extract(tmp_path, "x", [organization(NEW_GP, None), organization("M9 0001!", "X"),
                                                          organization(OLD_GP, "Old Surgery")]), TRUST)
    assert [code for _, code, _ in sites(store)] == [OLD_GP]
    assert summary.rejected == 2
    assert sorted(store.query("SELECT field, reason FROM mercia_reject")) == [
        ("identifier", "the ODS code is not 3 to 10 letters and digits"), ("name", "Organization has no name")]


def test_a_site_keeps_its_id_between_chunks_of_one_load(store, options, tmp_path):
    """A later chunk's Organization names the site an earlier chunk's registrations added."""
    from mercia.ingest.load import load_staged
    from mercia.ingest.service import read_source

    first = extract(tmp_path / "1", "x", [patient("m", MOVER), registration("m", "2010-01-01")])
    second = extract(tmp_path / "2", "x", [organization(OLD_GP, "Old Surgery"), patient("s", STAYER),
                                           registration("s", "2011-01-01")])
    load_staged(store, [read_source("fhir", first), read_source("fhir", second)], OLD_GP, "fhir", options)
    assert sites(store) == [(1, OLD_GP, "Old Surgery")]
    assert store.query("SELECT DISTINCT care_site_id FROM person") == [(1,)]


def test_a_csv_site_row_names_a_registration_site_and_bad_rows_are_rejected_by_field(store, load, tmp_path):
    site_id = registered(store, load, tmp_path)
    folder = tmp_path / "trust-sites"
    folder.mkdir()
    (folder / "sites.csv").write_text(f"site_id,site_name,ods\n1,Old Surgery,{OLD_GP.lower()}\n2,,{NEW_GP}\n"
                                      "3,Nowhere,M9-0001\n")
    mapping = tmp_path / "sites.yaml"
    mapping.write_text("sites:\n  - source: sites.csv\n    record: site_id\n    name: site_name\n    ods_code: ods\n")

    summary = load(store, "csv", folder, TRUST, mapping=mapping)

    assert sites(store) == [(site_id, OLD_GP, "Old Surgery")]
    assert sorted(store.query("SELECT line, field, reason FROM mercia_reject WHERE org = ?", [TRUST])) == [
        (3, "name", "Organization has no name"), (4, "ods_code", "the ODS code is not 3 to 10 letters and digits")]
    assert (summary.loaded, summary.rejected) == (1, 2)


def test_a_csv_sites_entry_of_another_kind_is_a_mapping_error(tmp_path):
    from mercia.ingest.csv import CsvReader, MappingError

    (tmp_path / "staff.csv").write_text("id,name\n1,Dr Who\n")
    reader = CsvReader({"sites": [{"source": "staff.csv", "kind": "Practitioner", "record": "id", "name": "name"}]},
                       "x")
    with pytest.raises(MappingError, match="staff.csv sites\\[0\\]: kind 'Practitioner' is not one of Organization"):
        reader.read(tmp_path)


def test_a_registering_practice_s_site_takes_its_registered_name_before_or_after_it_is_added(store, load,
                                                                                            tmp_path):
    """The name the data manager registered the practice under (data sources) names its unnamed site, whichever
    comes first; a trust's later Organization does not rename it, the practice's own does."""
    from mercia.services.sources import register_organisation

    register_organisation(store, NEW_GP, "New Surgery")
    load(store, "fhir", extract(tmp_path, "new", [patient("m", MOVER), registration("m", "2019-07-01")]), NEW_GP)
    site_id = registered(store, load, tmp_path)
    assert sites(store) == sorted([(site_id, OLD_GP, None), (site_id - 1, NEW_GP, "New Surgery")])

    register_organisation(store, OLD_GP, "Old Surgery")
    load(store, "fhir", extract(tmp_path, "trust", [organization(NEW_GP, "Newe Surgery")]), TRUST)
    assert sites(store) == [(site_id - 1, NEW_GP, "New Surgery"), (site_id, OLD_GP, "Old Surgery")]
    load(store, "fhir", extract(tmp_path, "own", [organization(NEW_GP, "The New Surgery")]), NEW_GP)
    assert sites(store)[0] == (site_id - 1, NEW_GP, "The New Surgery")
